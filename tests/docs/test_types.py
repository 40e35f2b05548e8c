"""Every Python block of the documentation type-checks, fragments included.

The blocks a page runs are checked as the session they run in: one module per page,
each block after the ones above it (and after its hidden setup). A fragment is
checked on its own, after the names its ``<!-- test: fragment ... -->`` comment
says it assumes. mypy reads them as a reader's code (functions need no annotations,
their bodies are still checked) against the library as it is typed (``--strict``),
for Linux and for Windows. Doctest blocks (``>>>``) are run, not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

from ._pages import PAGES, ROOT, Block, blocks, unconverted

PACKAGE = "docsblocks"
HEADER = "from tests.docs import worlds  # noqa: F401\n"

CONFIG = f"""\
[mypy]
strict = True
python_version = 3.11
mypy_path = {ROOT}
cache_dir = {ROOT / ".mypy_cache"}
allow_redefinition = True

[mypy-transitions.*,MetaTrader5.*,mt5linux.*,rpyc.*]
ignore_missing_imports = True

[mypy-{PACKAGE}.*]
disallow_untyped_defs = False
disallow_incomplete_defs = False
disallow_untyped_calls = False
check_untyped_defs = True
warn_return_any = False
"""


def _slug(page: Path) -> str:
    return re.sub(r"\W", "_", str(page.relative_to(ROOT).with_suffix("")).lower())


class Module:
    """A generated module, and which line of which page each of its lines is."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.origin: list[str] = []
        self.add(HEADER, "(header)")

    def add(self, text: str, origin: str | Block) -> None:
        for k, line in enumerate(text.splitlines()):
            self.lines.append(line)
            if isinstance(origin, Block):
                self.origin.append(f"{origin.name.rsplit(':', 1)[0]}:{origin.line + 1 + k}")
            else:
                self.origin.append(origin)


def _modules() -> list[Module]:
    modules = []
    for page in PAGES:
        if unconverted(page):
            continue  # its blocks are not yet written to be checked (see _pages.UNCONVERTED)
        session = Module(_slug(page))
        for block in blocks(page):
            if block.lang != "python" or block.content.lstrip().startswith(">>>"):
                continue
            if block.fragment:
                alone = Module(f"{_slug(page)}_{block.line}")
                alone.add(block.context, f"{block.name} (the names it assumes)")
                alone.add(block.content, block)
                modules.append(alone)
                continue
            if block.mark == "setup":
                session.add(block.context, f"{block.name} (setup)")
            session.add(block.content, block)
        if len(session.lines) > 1:
            modules.append(session)
    return modules


@pytest.mark.parametrize("platform", ["linux", "win32"])
def test_every_python_block_type_checks(tmp_path: Path, platform: str) -> None:
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    modules = {m.name: m for m in _modules()}
    for module in modules.values():
        (package / f"{module.name}.py").write_text("\n".join(module.lines) + "\n", encoding="utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text(CONFIG, encoding="utf-8")
    out, err, status = api.run(
        [
            "--config-file",
            str(config),
            "--platform",
            platform,
            "--no-error-summary",
            str(package),
        ]
    )
    problems = []
    for line in out.splitlines():
        found = re.match(rf".*{PACKAGE}[/\\](\w+)\.py:(\d+): (.*)", line)
        if found is None:
            problems.append(line)
            continue
        module = modules[found.group(1)]
        problems.append(f"{module.origin[int(found.group(2)) - 1]}: {found.group(3)}")
    assert status == 0 and not problems, "\n".join([*problems, err])
