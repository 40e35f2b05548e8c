"""The documentation's copies of the table and the diagram stay equal to the code's."""

from __future__ import annotations

from pathlib import Path

from mt5lifecycle.core.machine import markdown_table, mermaid

DOC = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_diagram_in_the_docs_is_generated_from_the_table() -> None:
    block = _between(DOC.read_text(), "<!-- diagram:start -->\n", "<!-- diagram:end -->")
    assert block == f"```mermaid\n{mermaid()}```\n"


def test_the_table_in_the_docs_is_the_code_table() -> None:
    block = _between(DOC.read_text(), "<!-- table:start -->\n", "<!-- table:end -->")
    assert block == markdown_table()


def test_the_readme_example_runs() -> None:
    import re

    readme = (DOC.parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None
    exec(compile(block.group(1), "README.md", "exec"), {})
