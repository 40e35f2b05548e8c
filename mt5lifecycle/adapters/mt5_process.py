"""Many MetaTrader 5 terminals from one process (SPEC section 12): one worker process each.

``ProcessTerminals`` is a callable (and a read-only mapping) for ``MT5Broker``: for each
instance id it gives a proxy with the ``MetaTrader5`` API whose calls run in that
terminal's own worker process. See :mod:`mt5lifecycle.adapters.mt5.process`.
"""

from __future__ import annotations

from .mt5.broker import DeadlineExceeded
from .mt5.process import ProcessTerminals, TerminalProxy

__all__ = ["DeadlineExceeded", "ProcessTerminals", "TerminalProxy"]
