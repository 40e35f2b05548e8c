"""Extract the public API of the real ``MetaTrader5`` wheel, without importing it.

The package ships for Windows only and its functions live in a native ``_core`` .pyd
that cannot be loaded here, so nothing is imported:

* ``MetaTrader5/__init__.py`` is parsed with ``ast``: its constants (with their
  values) and its Python functions (``Buy``, ``Sell``, ``Close``) with their
  parameters;
* the .pyd's printable strings give the native functions: each one's docstring
  starts with its call shape (``positions_get([symbol="SYMBOL"],[ticket=TICKET],...)``);
  the result types' names and field names, and ``last_error()``'s messages, are
  there too (the fields' order is not: the fake takes it from the documentation).

Run it to refresh the committed extract after a new release::

    pip download --no-deps --platform win_amd64 --only-binary=:all: MetaTrader5 -d /tmp/w
    python tests/data/make_mt5_reference.py /tmp/w/metatrader5-*.whl > tests/data/mt5_reference.json

``tests/adapters/test_mt5_fake_api.py`` imports :func:`extract` from here, so the
test reads a downloaded wheel exactly as this script does.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

_SIGNATURE = re.compile(r"^([a-z_][a-z0-9_]*)\((.*)\)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PRINTABLE = re.compile(rb"[\x20-\x7e]{2,}")
# last_error() texts: "Terminal: Authorization failed", "No IPC connection", ...
_MESSAGE = re.compile(r"^(Terminal: .+|.*\bIPC\b.*|Success)$")


def _value(node: ast.expr) -> int | float | str:
    """The value of a constant expression such as ``-6``, ``1 | 0x4000`` or ``'x'``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _value(node.operand)
        if isinstance(inner, str):
            raise ValueError("cannot negate a string")
        return -inner
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _value(node.left), _value(node.right)
        if not isinstance(left, int) or not isinstance(right, int):
            raise ValueError("| of non-integers")
        return left | right
    raise ValueError(f"not a constant expression: {ast.dump(node)}")


def parse_init(source: str) -> dict[str, Any]:
    """Constants and public Python functions of ``MetaTrader5/__init__.py``."""
    tree = ast.parse(source)
    constants: dict[str, int | float | str] = {}
    functions: dict[str, dict[str, list[str]]] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            constants[node.targets[0].id] = _value(node.value)
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            args = node.args
            positional = [a.arg for a in args.posonlyargs + args.args]
            n_defaults = len(args.defaults)
            functions[node.name] = {
                "required": positional[: len(positional) - n_defaults],
                "optional": positional[len(positional) - n_defaults :],
                "keyword_only": [a.arg for a in args.kwonlyargs],
            }
    return {"constants": constants, "python_functions": functions}


def parse_core(binary: bytes) -> dict[str, Any]:
    """Native functions (name -> docstring call shape) and identifier strings of ``_core``."""
    strings = [m.group().decode("ascii") for m in _PRINTABLE.finditer(binary)]
    natives: dict[str, str] = {}
    for text in strings:
        match = _SIGNATURE.match(text)
        if match is not None:
            natives[match.group(1)] = text
    identifiers = sorted({s for s in strings if _IDENTIFIER.match(s)})
    messages = sorted({s for s in strings if _MESSAGE.match(s)})
    return {
        "native_functions": dict(sorted(natives.items())),
        "identifiers": identifiers,
        "messages": messages,
    }


def extract(wheel: Path) -> dict[str, Any]:
    """The reference extract of one wheel (or of an unpacked wheel directory)."""
    if wheel.is_dir():
        init = (wheel / "MetaTrader5" / "__init__.py").read_text(encoding="utf-8")
        core = next((wheel / "MetaTrader5").glob("_core*")).read_bytes()
    else:
        with zipfile.ZipFile(wheel) as zf:
            init = zf.read("MetaTrader5/__init__.py").decode("utf-8")
            name = next(n for n in zf.namelist() if n.startswith("MetaTrader5/_core"))
            core = zf.read(name)
    parsed = parse_init(init)
    version = parsed["constants"].pop("__version__")
    parsed["constants"].pop("__author__", None)
    return {"source": wheel.name, "version": version, **parsed, **parse_core(core)}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} WHEEL_OR_DIR", file=sys.stderr)
        return 2
    json.dump(extract(Path(argv[1])), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
