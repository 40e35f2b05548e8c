"""The pages keep the convention that lets every block be run or checked.

See tests/docs/__init__.py: every block has a language, fragments say why, every
POSIX command has its PowerShell beside it, and a ``pip install mt5lifecycle`` says
that no release is published yet.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_it.token import Token
from pytest_examples import find_examples

from ._pages import PAGES, POSIX, ROOT, RUN, SHOWN, WINDOWS, Block, all_blocks, blocks, page_id


def _near(tokens: list[Token]) -> str:
    return " ".join(t.content for t in tokens if t.type == "inline")


def _fences(tokens: list[Token]) -> list[str]:
    return [t.info.split()[0] for t in tokens if t.type == "fence" and t.info]


@pytest.mark.parametrize("block", all_blocks(), ids=lambda b: b.name)
def test_every_block_is_run_checked_or_shown(block: Block) -> None:
    assert block.info != "(indented)", "an indented code block: fence it, with its language"
    assert block.lang in RUN | SHOWN | WINDOWS, f"unknown language {block.info!r}"
    if block.mark is not None:
        assert block.lang in RUN, f"a {block.mark} mark before a {block.lang} block"
    if block.fragment:
        assert block.reason, "a fragment says why it is not run: <!-- test: fragment, WHY -->"


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.lang in POSIX], ids=lambda b: b.name)
def test_every_posix_block_has_its_powershell_beside_it(block: Block) -> None:
    beside = "powershell" in _fences(block.before[-3:]) + _fences(block.after[:3])
    said = "PowerShell" in _near(block.before) + _near(block.after) + block.content
    assert beside or said, (
        "put a ```powershell block next to it, or say in the paragraph next to it (or a "
        "comment in it) that the same lines work in PowerShell, or why there is no "
        "PowerShell form"
    )


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_pytest_examples_finds_the_python_blocks_the_parser_finds(page: Path) -> None:
    ours = [b.line for b in blocks(page) if b.lang == "python"]
    assert [e.start_line for e in find_examples(page)] == ours


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_pip_install_from_pypi_says_no_release_is_published(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    if re.search(r"pip install [\"']?mt5lifecycle\b", text):
        assert "no release is published yet" in text.lower()


def test_the_readme_says_how_to_get_bare_commands_before_using_one() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    paragraph = text.index("**From a checkout.**")
    for needed in (". .venv/bin/activate", r".venv\Scripts\Activate.ps1", 'pip install -e ".[all]"'):
        assert text.index(needed) > paragraph
    for block in blocks(readme):
        if block.lang in POSIX and not block.content.lstrip().startswith("python3 dev.py"):
            assert text.index(block.content) > paragraph, block.name
