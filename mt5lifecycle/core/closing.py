"""Closing a closed account's trades (SPEC section 8): the pure decision per answer.

``close_step`` says what one broker answer to a close request leads to; the runtime
(``runtime/_closing.py``) drives the broker port with it. Every position and order
ends with exactly one outcome and the broker's last return code, whatever the broker
answers, and closing always ends: requotes are retried a bounded number of times,
partial fills until the position is gone or ``max_close_calls`` is reached.
"""

from __future__ import annotations

import enum

from .answers import TradeResult
from .policy import Policy

__all__ = ["FILLED", "RETRYABLE", "CloseStep", "close_step"]

# MetaTrader 5 TRADE_RETCODE_* values (the MetaTrader5 package's constants).
DONE = 10009
DONE_PARTIAL = 10010
PLACED = 10008
REQUOTE = 10004
PRICE_CHANGED = 10020
PRICE_OFF = 10021
POSITION_CLOSED = 10036
"""The position is no longer open (a stop loss or the broker closed it first)."""
FILLED = frozenset({DONE, DONE_PARTIAL, PLACED})
"""Answers that took (some of) the volume; ``remaining`` says how much is left."""
RETRYABLE = frozenset({REQUOTE, PRICE_CHANGED, PRICE_OFF})
"""Answers that say "try again at the new price"."""

_EPSILON = 1e-9


class CloseStep(enum.Enum):
    CLOSED = "CLOSED"
    AGAIN = "AGAIN"
    """Send another request (the rest of a partial fill, or after a requote)."""
    FAILED = "FAILED"


def close_step(result: TradeResult, *, requotes: int, calls: int, policy: Policy) -> CloseStep:
    """What to do after one close request, given how many were made so far.

    ``requotes`` counts requote-like answers so far, this one included; ``calls``
    counts requests so far, this one included. Rejections, locked (10028) and frozen
    (10029) positions, a closed market and a lost connection end ``FAILED``.
    """
    code = result.retcode
    more_calls = calls < policy.max_close_calls
    if code == POSITION_CLOSED and result.remaining <= _EPSILON:
        return CloseStep.CLOSED
    if code in FILLED:
        if result.remaining <= _EPSILON:
            return CloseStep.CLOSED
        return CloseStep.AGAIN if more_calls else CloseStep.FAILED
    if code in RETRYABLE and requotes <= policy.max_requote_retries and more_calls:
        return CloseStep.AGAIN
    return CloseStep.FAILED
