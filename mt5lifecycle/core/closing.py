"""Closing a closed account's trades (SPEC section 8).

``close_step`` is the pure decision for one broker answer; ``close_all`` drives the
broker port with it. Every position and order ends with exactly one outcome and the
broker's last return code, whatever the broker answers, and closing always ends:
requotes are retried a bounded number of times, partial fills until the position is
gone or ``max_close_calls`` is reached.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..ports import Broker
from .policy import Policy
from .records import Order, Outcome, Position, TradeOutcomeRecord, TradeResult
from .snapshot import utc

__all__ = ["CloseStep", "close_all", "close_step"]

log = logging.getLogger("mt5lifecycle.closing")

T = TypeVar("T")

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


def close_all(
    broker: Broker,
    instance_id: str,
    policy: Policy,
    now: Callable[[], float],
    on_outcome: Callable[[TradeOutcomeRecord], object] = lambda _: None,
) -> list[TradeOutcomeRecord]:
    """Close every open position and cancel every pending order; one outcome each,
    handed to ``on_outcome`` as soon as it is known.

    Closing happens "while the terminal still answers": a terminal that cannot even
    list its positions or orders leaves them as they are (logged), rather than keep a
    closed account's cleanup pending for ever.
    """
    outcomes = []
    for position in _listed(broker.positions, instance_id, "positions"):
        outcomes.append(_close_position(broker, instance_id, position, policy, now))
        # Recorded as soon as it is known: a worker that dies mid-way loses no outcome
        # of a trade it already closed (the next one finds that trade gone).
        on_outcome(outcomes[-1])
    for order in _listed(broker.orders, instance_id, "orders"):
        outcomes.append(_cancel_order(broker, instance_id, order, now))
        on_outcome(outcomes[-1])
    return outcomes


def _listed(call: Callable[[str], Sequence[T]], instance_id: str, what: str) -> Sequence[T]:
    try:
        return call(instance_id)
    except Exception as exc:  # the terminal is gone: nothing more can be closed through it
        log.error(
            "instance %s: the terminal did not list its %s (%s); they are left as they are",
            instance_id,
            what,
            type(exc).__name__,
        )
        return ()


def _close_position(
    broker: Broker, instance_id: str, position: Position, policy: Policy, now: Callable[[], float]
) -> TradeOutcomeRecord:
    remaining = position.volume
    calls = requotes = 0
    result = TradeResult(retcode=None, remaining=remaining)
    while True:
        calls += 1
        try:
            result = broker.close_position(instance_id, position, remaining)
        except Exception as exc:  # a broker adapter's fault must not stop the others' closing
            log.warning(
                "instance %s: closing position %s raised %s",
                instance_id,
                position.ticket,
                type(exc).__name__,
            )
            result = TradeResult(retcode=None, remaining=remaining, comment=type(exc).__name__)
            step = CloseStep.FAILED
        else:
            if result.retcode in RETRYABLE:
                requotes += 1
            if result.retcode in FILLED and math.isfinite(result.remaining):
                remaining = max(result.remaining, 0.0)
            step = close_step(result, requotes=requotes, calls=calls, policy=policy)
        if step is not CloseStep.AGAIN:
            break
    outcome = Outcome.CLOSED if step is CloseStep.CLOSED else Outcome.FAILED
    return TradeOutcomeRecord(
        instance_id=instance_id,
        at=utc(now()),
        kind="position",
        ticket=position.ticket,
        symbol=position.symbol,
        volume=position.volume,
        outcome=outcome,
        retcode=result.retcode,
        comment=result.comment,
    )


def _cancel_order(
    broker: Broker, instance_id: str, order: Order, now: Callable[[], float]
) -> TradeOutcomeRecord:
    try:
        result = broker.cancel_order(instance_id, order)
    except Exception as exc:  # one order's fault must not stop the others' cancelling
        log.warning(
            "instance %s: cancelling order %s raised %s",
            instance_id,
            order.ticket,
            type(exc).__name__,
        )
        result = TradeResult(retcode=None, comment=type(exc).__name__)
    cancelled = result.retcode in (DONE, PLACED)
    return TradeOutcomeRecord(
        instance_id=instance_id,
        at=utc(now()),
        kind="order",
        ticket=order.ticket,
        symbol=order.symbol,
        volume=order.volume,
        outcome=Outcome.CANCELLED if cancelled else Outcome.FAILED,
        retcode=result.retcode,
        comment=result.comment,
    )
