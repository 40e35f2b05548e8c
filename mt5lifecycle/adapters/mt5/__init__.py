"""MetaTrader 5: the broker port over the ``MetaTrader5`` package or anything with its API."""

from __future__ import annotations

from .broker import (
    DeadlineExceeded,
    MT5Broker,
    TerminalNotConfigured,
    TerminalShared,
    TerminalUnavailable,
    filling_for,
    read_journal_line,
)
from .classify import Classifier, classify_login_failure
from .mt5linux import mt5linux_client

__all__ = [
    "Classifier",
    "DeadlineExceeded",
    "MT5Broker",
    "TerminalNotConfigured",
    "TerminalShared",
    "TerminalUnavailable",
    "classify_login_failure",
    "filling_for",
    "mt5linux_client",
    "read_journal_line",
]
