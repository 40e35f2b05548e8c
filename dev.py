#!/usr/bin/env python3
"""The newcomer's entry point: ``python3 dev.py demo`` and ``python3 dev.py test``.

It needs nothing but Python: it makes ``.venv`` on first use (and again when
``pyproject.toml`` changes), installs the package with its ``dev`` extras there, and
runs the command inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".mt5lifecycle-installed"

USAGE = """usage: python3 dev.py COMMAND [ARGS...]

  demo [ARGS]    run the demo: a simulated fleet through every flow
  test [ARGS]    run the whole test suite (pytest ARGS)
  check          ruff, and mypy --strict for Linux and for Windows
  bench          run every benchmark in benchmarks/
  ARGS...        anything else runs the mt5lifecycle command line
"""


def ensure_venv() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def run(*argv: str) -> int:
    return subprocess.run(list(argv), cwd=ROOT).returncode


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    ensure_venv()
    command, rest = args[0], args[1:]
    py = str(PYTHON)
    if command == "test":
        return run(py, "-m", "pytest", *rest)
    if command == "check":
        return (
            run(py, "-m", "ruff", "check", ".")
            or run(py, "-m", "ruff", "format", "--check", ".")
            or run(py, "-m", "mypy", "--strict")
            # Windows is where the MetaTrader5 package runs: read the code as it is there.
            or run(py, "-m", "mypy", "--strict", "--platform", "win32")
        )
    if command == "bench":
        status = 0
        for script in sorted((ROOT / "benchmarks").glob("*.py")):
            print(f"== {script.name}", flush=True)
            status = run(py, str(script), *rest) or status
        return status
    return run(py, "-m", "mt5lifecycle", command, *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
