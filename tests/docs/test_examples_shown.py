"""A block that a page says is a file of the repository ("`examples/serve.toml` in the
repository") is that file, as it is: the page cannot drift from the file it shows.
"""

from __future__ import annotations

import re

import pytest

from ._pages import PAGES, ROOT, Block, blocks

_NAMED = re.compile(r"`((?:examples|benchmarks)/[\w./-]+)` in the repository")


def _shown() -> list[tuple[Block, str]]:
    found = []
    for page in PAGES:
        for block in blocks(page):
            text = " ".join(t.content for t in block.before[-3:] if t.type == "inline")
            named = _NAMED.search(text)
            if named is not None:
                found.append((block, named.group(1)))
    return found


SHOWN = _shown()


def test_the_serve_page_shows_its_example() -> None:
    assert any(path == "examples/serve.toml" for _, path in SHOWN)


@pytest.mark.parametrize(("block", "path"), SHOWN, ids=[b.name for b, _ in SHOWN])
def test_a_file_shown_in_full_is_the_file(block: Block, path: str) -> None:
    assert block.content == (ROOT / path).read_text(encoding="utf-8"), (
        f"{block.name} shows {path}, but not as it is: copy the file into the page"
    )
