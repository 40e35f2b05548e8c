"""MkDocs hook: draws the lifecycle from the transition table at build time, offline.

``mt5lifecycle.core.machine.dot()`` writes the table as Graphviz source; Graphviz's
``dot`` (Debian's ``graphviz`` package) turns it into ``docs/img/lifecycle.svg``,
which the lifecycle page and the README show. The SVG carries the SHA-256 of the
source it was drawn from, so the build redraws it only when the table changed, and a
test (``tests/test_docs.py``) fails when the committed picture is not the table's.

Run it by hand to redraw: ``python docs/hooks/diagram.py``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

SVG = Path(__file__).resolve().parents[1] / "img" / "lifecycle.svg"
MARK = "<!-- mt5lifecycle table sha256:{} -->"


def source_and_mark() -> tuple[str, str]:
    from mt5lifecycle.core.machine import dot

    source = dot()
    return source, MARK.format(hashlib.sha256(source.encode()).hexdigest())


def draw() -> bool:
    """Redraw the SVG when the table changed; ``True`` when it did."""
    source, mark = source_and_mark()
    if SVG.exists() and mark in SVG.read_text(encoding="utf-8"):
        return False
    program = shutil.which("dot")
    if program is None:
        raise RuntimeError(
            "the lifecycle diagram needs Graphviz's dot (apt-get install graphviz): the "
            "transition table changed and docs/img/lifecycle.svg must be drawn again"
        )
    svg = subprocess.run(  # noqa: S603 - a fixed program on the table's own source
        [program, "-Tsvg"], input=source, capture_output=True, text=True, check=True
    ).stdout
    # The mark goes after the XML declaration, which must stay first.
    head, _, rest = svg.partition("\n")
    SVG.parent.mkdir(parents=True, exist_ok=True)
    SVG.write_text(f"{head}\n{mark}\n{rest}", encoding="utf-8")
    return True


def on_pre_build(config: Any) -> None:  # noqa: ARG001 - MkDocs' hook signature
    draw()


if __name__ == "__main__":
    print("redrawn" if draw() else "up to date")
