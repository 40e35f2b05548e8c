"""The ``mt5lifecycle`` command line: the demo, the operator's actions, ``serve``."""

from __future__ import annotations

from .main import EXIT_CODES, main

__all__ = ["EXIT_CODES", "main"]
