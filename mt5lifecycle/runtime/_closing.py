"""The broker's side of closing a closed account's trades: list them, settle one.

The table decides what each step leads to (``trades_listed``, ``trade_settled``);
this module only asks the terminal, and ``core.closing.close_step`` decides what each
answer to a close request means. A ticket is settled only after it is stored as the
first of the closing plan, so settling starts by asking whether it is still there:
one that is gone (a worker died after the broker filled it) is read from the
terminal's history, never sent again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..core.answers import Order, Position, Ticket, TradeResult
from ..core.closing import DONE, FILLED, PLACED, POSITION_CLOSED, RETRYABLE, CloseStep, close_step
from ..core.policy import Policy
from ..core.records import Outcome, TradeOutcomeRecord
from ..core.snapshot import utc
from ..ports import Broker, TradeHistory

__all__ = ["list_tickets", "settle"]

log = logging.getLogger("mt5lifecycle.closing")

T = TypeVar("T")


def list_tickets(broker: Broker, instance_id: str) -> tuple[Ticket, ...]:
    """Every open position, then every pending order, as the closing plan.

    Closing happens "while the terminal still answers": a terminal that cannot even
    list them leaves them as they are (logged), rather than keep a closed account's
    cleanup pending for ever.
    """
    positions = _listed(broker.positions, instance_id, "positions")
    orders = _listed(broker.orders, instance_id, "orders")
    return (
        *(Ticket(kind="position", ticket=p.ticket, symbol=p.symbol, volume=p.volume)
          for p in positions),
        *(Ticket(kind="order", ticket=o.ticket, symbol=o.symbol, volume=o.volume)
          for o in orders),
    )  # fmt: skip


def settle(
    broker: Broker, instance_id: str, ticket: Ticket, policy: Policy, now: Callable[[], float]
) -> TradeOutcomeRecord:
    """Close or cancel ``ticket``, or read how it ended if it is gone; one outcome."""
    if ticket.kind == "position":
        position = _find(broker.positions, instance_id, ticket)
        if isinstance(position, Position):
            result, outcome = _close_position(broker, instance_id, position, policy)
        else:
            result, outcome = _gone(broker, instance_id, ticket, position)
    else:
        order = _find(broker.orders, instance_id, ticket)
        if isinstance(order, Order):
            result, outcome = _cancel_order(broker, instance_id, order)
        else:
            result, outcome = _gone(broker, instance_id, ticket, order)
    return TradeOutcomeRecord(
        instance_id=instance_id,
        at=utc(now()),
        kind=ticket.kind,
        ticket=ticket.ticket,
        symbol=ticket.symbol,
        volume=ticket.volume,
        outcome=outcome,
        retcode=result.retcode,
        comment=result.comment,
    )


_UNANSWERED = "the terminal did not answer"


def _find(call: Callable[[str], Sequence[T]], instance_id: str, ticket: Ticket) -> T | str | None:
    """The live position or order, ``None`` when it is gone, or why nobody could say."""
    try:
        live = call(instance_id)
    except Exception as exc:
        log.warning(
            "instance %s: the terminal did not list its %ss (%s)",
            instance_id,
            ticket.kind,
            type(exc).__name__,
        )
        return f"{_UNANSWERED} ({type(exc).__name__})"
    return next((item for item in live if getattr(item, "ticket", None) == ticket.ticket), None)


def _gone(
    broker: Broker, instance_id: str, ticket: Ticket, why: str | None
) -> tuple[TradeResult, Outcome]:
    if why is not None:
        # The terminal cannot say whether the ticket is still there: sending blind could
        # close it twice, so it ends FAILED, for an operator to look at.
        return TradeResult(retcode=None, comment=why), Outcome.FAILED
    if isinstance(broker, TradeHistory):
        try:
            known = broker.trade_outcome(instance_id, ticket.kind, ticket.ticket)
        except Exception as exc:
            log.warning(
                "instance %s: the history of %s %s did not answer (%s)",
                instance_id,
                ticket.kind,
                ticket.ticket,
                type(exc).__name__,
            )
            known = None
        if known is not None:
            done = known.retcode in (DONE, PLACED)
            if ticket.kind == "order":
                return known, Outcome.CANCELLED if done else Outcome.FAILED
            return known, Outcome.CLOSED if done else Outcome.FAILED
    if ticket.kind == "position":
        # Closed meanwhile (a stop loss, the broker's close-out, or our own close whose
        # answer was lost with the worker that sent it): nothing to send.
        return TradeResult(
            retcode=POSITION_CLOSED, comment=f"position {ticket.ticket} is no longer open"
        ), Outcome.CLOSED
    return TradeResult(
        retcode=None, comment=f"order {ticket.ticket} is no longer pending"
    ), Outcome.CANCELLED


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
    broker: Broker, instance_id: str, position: Position, policy: Policy
) -> tuple[TradeResult, Outcome]:
    remaining = position.volume
    calls = requotes = 0
    result = TradeResult(retcode=None, remaining=remaining)
    while True:
        calls += 1
        try:
            result = broker.close_position(instance_id, position, remaining)
        except Exception as exc:  # a broker adapter's fault must not stop the closing
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
    return result, Outcome.CLOSED if step is CloseStep.CLOSED else Outcome.FAILED


def _cancel_order(broker: Broker, instance_id: str, order: Order) -> tuple[TradeResult, Outcome]:
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
    return result, Outcome.CANCELLED if cancelled else Outcome.FAILED
