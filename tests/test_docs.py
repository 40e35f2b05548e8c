"""The documentation's copies of the table and the diagram stay equal to the code's."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mt5lifecycle.core.machine import dot, markdown_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"
SVG = DOC.parent / "img" / "lifecycle.svg"


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_diagram_in_the_docs_is_drawn_from_the_table() -> None:
    # The picture carries the hash of the table's Graphviz source it was drawn from;
    # `python docs/hooks/diagram.py` (or the docs build) draws it again.
    mark = hashlib.sha256(dot().encode()).hexdigest()
    assert f"mt5lifecycle table sha256:{mark}" in SVG.read_text(encoding="utf-8")
    assert "img/lifecycle.svg" in DOC.read_text(encoding="utf-8")
    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    assert "docs/img/lifecycle.svg" in readme


def test_the_readme_shows_the_console() -> None:
    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    assert "![" in readme and "(docs/img/console.png)" in readme
    picture = (DOC.parent / "img" / "console.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n")


def test_the_table_in_the_docs_is_the_code_table() -> None:
    block = _between(
        DOC.read_text(encoding="utf-8"), "<!-- table:start -->\n", "<!-- table:end -->"
    )
    assert block == markdown_table()


def test_the_readme_example_runs() -> None:
    import re

    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None
    exec(compile(block.group(1), "README.md", "exec"), {})
