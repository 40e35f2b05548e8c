"""The blocks of README.md and docs/, read with markdown-it-py (a CommonMark parser).

Each fenced block is a :class:`Block`: its page, its line, its language (the first
word of the fence's info string) and, when an HTML comment of the form
``<!-- test: ... -->`` stands right before it, what that comment says about it (see
tests/docs/__init__.py for the convention).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")))

POSIX = frozenset({"sh", "bash", "console"})
"""Blocks of POSIX shell: run, unless marked as a fragment."""
RUN = POSIX | {"python"}
"""The languages whose blocks are run (or type-checked, as fragments)."""
SHOWN = frozenset({"text", "sql", "json", "yaml", "toml", "ini", "xml", "promql", "mermaid"})
"""Not commands: shown as they are (data, configuration, output, diagrams)."""
WINDOWS = frozenset({"powershell"})
"""PowerShell: not run here (no PowerShell on the Linux CI); checked to stand beside
each POSIX block instead."""

UNCONVERTED: dict[str, str] = {}
"""Pages whose blocks do not follow the convention yet. Their tests are expected to
fail (strictly: once a page is converted its entry must go) and the pages' blocks are
not run meanwhile. Every other page is held to the convention."""

_MARK = re.compile(r"<!--\s*test:\s*(fragment|setup)\b(.*?)-->", re.S)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    """1-based line of the opening fence."""
    info: str
    content: str
    mark: str | None = None
    """``"fragment"`` or ``"setup"`` when a ``<!-- test: ... -->`` comment precedes it."""
    reason: str = ""
    """For a fragment: why it is not run (the rest of the comment's first line)."""
    context: str = ""
    """Python: for a fragment, the names it assumes (type-checked with it, never run);
    for a setup, what runs before the block, unseen by the reader."""
    before: list[Token] = field(default_factory=list, compare=False, repr=False)
    after: list[Token] = field(default_factory=list, compare=False, repr=False)

    @property
    def lang(self) -> str:
        return self.info.split()[0] if self.info else ""

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def fragment(self) -> bool:
        return self.mark == "fragment"


def _mark(token: Token | None) -> tuple[str | None, str, str]:
    if token is None or token.type != "html_block":
        return None, "", ""
    found = _MARK.fullmatch(token.content.strip())
    if found is None:
        return None, "", ""
    head, _, rest = found.group(2).partition("\n")
    return found.group(1), head.strip(" :,"), textwrap.dedent(rest).strip("\n")


@cache
def blocks(page: Path) -> tuple[Block, ...]:
    tokens = MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8"))
    found = []
    for i, token in enumerate(tokens):
        if token.type not in ("fence", "code_block"):
            continue
        assert token.map is not None
        mark, reason, context = _mark(tokens[i - 1] if i else None)
        found.append(
            Block(
                page=page,
                line=token.map[0] + 1,
                info=token.info.strip() if token.type == "fence" else "(indented)",
                content=token.content,
                mark=mark,
                reason=reason,
                context=context,
                before=tokens[max(0, i - 6) : i],
                after=tokens[i + 1 : i + 7],
            )
        )
    return tuple(found)


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def unconverted(page: Path) -> str | None:
    return UNCONVERTED.get(page_id(page))
