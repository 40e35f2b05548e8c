"""MetaTrader 5: the broker port over the ``MetaTrader5`` package or anything with its API."""

from __future__ import annotations

from .broker import (
    MT5Broker,
    TerminalNotConfigured,
    TerminalShared,
    TerminalUnavailable,
    filling_for,
    read_journal_line,
)
from .classify import Classifier, classify_login_failure

__all__ = [
    "Classifier",
    "MT5Broker",
    "TerminalNotConfigured",
    "TerminalShared",
    "TerminalUnavailable",
    "classify_login_failure",
    "filling_for",
    "read_journal_line",
]
