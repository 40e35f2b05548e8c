"""The pages keep the convention that lets every block be run or checked.

See tests/docs/__init__.py: every block has a language, fragments say why, every
POSIX command has its PowerShell beside it, and a ``pip install mt5lifecycle`` says
that no release is published yet. A page listed in ``_pages.UNCONVERTED`` is held
to it as a whole, by one test expected to fail until the page is converted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_it.token import Token
from pytest_examples import find_examples

from ._pages import (
    PAGES,
    POSIX,
    ROOT,
    RUN,
    SHOWN,
    UNCONVERTED,
    WINDOWS,
    Block,
    blocks,
    page_id,
    unconverted,
)

CONVERTED = [p for p in PAGES if unconverted(p) is None]


def _near(tokens: list[Token]) -> str:
    return " ".join(t.content for t in tokens if t.type == "inline")


def _fences(tokens: list[Token]) -> list[str]:
    return [t.info.split()[0] for t in tokens if t.type == "fence" and t.info]


def _block_problems(block: Block) -> list[str]:
    if block.info == "(indented)":
        return ["an indented code block: fence it, with its language"]
    problems = []
    if block.lang not in RUN | SHOWN | WINDOWS:
        problems.append(f"unknown language {block.info!r}")
    if block.mark is not None and block.lang not in RUN:
        problems.append(f"a {block.mark} mark before a {block.lang} block")
    if block.fragment and not block.reason:
        problems.append("a fragment says why it is not run: <!-- test: fragment, WHY -->")
    if block.lang in POSIX:
        beside = "powershell" in _fences(block.before[-5:]) + _fences(block.after[:5])
        said = "PowerShell" in _near(block.before) + _near(block.after) + block.content
        if not (beside or said):
            problems.append(
                "no PowerShell beside it: put a ```powershell block next to it, or say in "
                "the paragraph next to it that the same lines work in PowerShell (or why "
                "there is no PowerShell form)"
            )
    return problems


def _page_problems(page: Path) -> list[str]:
    problems = [f"{b.name}: {p}" for b in blocks(page) for p in _block_problems(b)]
    text = page.read_text(encoding="utf-8")
    said = "no release is published yet" in " ".join(text.split()).lower()
    if re.search(r"pip install [\"']?mt5lifecycle\b", text) and not said:
        problems.append(f"{page_id(page)}: pip install mt5lifecycle, but no 'no release is "
                        "published yet'")  # fmt: skip
    ours = [b.line for b in blocks(page) if b.lang == "python"]
    theirs = [e.start_line for e in find_examples(page)]
    if theirs != ours:
        problems.append(f"{page_id(page)}: pytest-examples finds {theirs}, markdown-it {ours}")
    return problems


@pytest.mark.parametrize("block", [b for p in CONVERTED for b in blocks(p)], ids=lambda b: b.name)
def test_every_block_is_run_checked_or_shown(block: Block) -> None:
    assert not _block_problems(block)


@pytest.mark.parametrize("page", CONVERTED, ids=page_id)
def test_every_page_keeps_the_convention(page: Path) -> None:
    assert not _page_problems(page)


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(ROOT / name, id=name, marks=pytest.mark.xfail(reason=why, strict=True))
        for name, why in UNCONVERTED.items()
    ],
)
def test_a_page_not_yet_converted_breaks_the_convention(page: Path) -> None:
    # Strict: once the page keeps the convention this passes, and fails the run, so
    # that its entry leaves UNCONVERTED and its blocks are run like every other page's.
    assert not _page_problems(page), "\n".join(_page_problems(page))


def test_the_readme_says_how_to_get_bare_commands_before_using_one() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    paragraph = text.index("**From a checkout.**")
    for needed in (
        ". .venv/bin/activate",
        r".venv\Scripts\Activate.ps1",
        'pip install -e ".[all]"',
    ):
        assert text.index(needed) > paragraph
    for block in blocks(readme):
        if block.lang in POSIX and not block.content.lstrip().startswith("python3 dev.py"):
            assert text.index(block.content) > paragraph, block.name
