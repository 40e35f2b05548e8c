"""The package's layout is its architecture, and no module reaches into another.

The tree shows the roles (a pure core, the ports, the runtime, the built-in backends,
the adapters, the testing kit, the command line and the web service); these tests
keep the imports between them going one way, and keep every module's private names
its own, so the driver API of ``Lifecycle`` is the only way a ``Fleet`` drives one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mt5lifecycle"

# What each part may import from the package (besides itself and ``errors``).
ALLOWED = {
    "core": set(),
    "ports": {"core"},
    "builtin": {"core", "ports"},
    "runtime": {"core", "ports", "builtin"},
    "adapters": {"core", "ports", "builtin"},
    "testing": {"core", "ports", "builtin", "runtime", "adapters"},
    "cli": {"core", "ports", "builtin", "runtime", "adapters", "testing", "web"},
    "web": {"core", "ports", "builtin", "runtime", "adapters"},
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def _imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = path.relative_to(PACKAGE).parent.parts
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - (node.level - 1)]) if node.level > 1 else list(here)
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("mt5lifecycle"):
                target = node.module.split(".")[1:]
            else:
                continue
            if not target:
                # ``from . import x`` / ``from .. import x``: the names are modules.
                found |= {alias.name for alias in node.names}
            else:
                found.add(target[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mt5lifecycle."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_one_way(path: Path) -> None:
    part = _part(path)
    if part not in ALLOWED:
        return  # the package's own __init__, __main__, errors
    allowed = ALLOWED[part] | {part, "errors", "__version__"}
    wrong = _imported_parts(path) - allowed
    assert not wrong, f"{path.relative_to(PACKAGE)} ({part}) imports {sorted(wrong)}"


def _own_names(tree: ast.AST) -> set[str]:
    """The names a module defines: its functions, classes, attributes and slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries, getattr names
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _private(name: str) -> bool:
    dunder = name.startswith("__") and name.endswith("__")
    sunder = name.startswith("_") and name.endswith("_") and not dunder
    return name.startswith("_") and not dunder and not sunder


_TREES = {path: ast.parse(path.read_text(encoding="utf-8")) for path in _modules()}
_DEFINED = {path: {n for n in _own_names(tree) if _private(n)} for path, tree in _TREES.items()}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_reaches_another_modules_private_members(path: Path) -> None:
    # A private name of another module of the package, used here: the driver API of
    # Lifecycle (and each module's public names) is the only way in. (A third-party
    # library's private seam, where one is needed, is that adapter's own business.)
    own = _DEFINED[path]
    others = set().union(*(names for other, names in _DEFINED.items() if other != path))
    reached = [
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(_TREES[path])
        if isinstance(node, ast.Attribute)
        and _private(node.attr)
        and node.attr not in own
        and node.attr in others
    ]
    assert not reached, f"{path.relative_to(PACKAGE)} reaches private members: {reached}"


def test_the_check_catches_a_driver_reaching_into_lifecycle() -> None:
    lifecycle = PACKAGE / "runtime" / "lifecycle.py"
    assert "_snap" in _DEFINED[lifecycle]
    assert "_snap" not in _DEFINED[PACKAGE / "runtime" / "fleet.py"]
