"""How a ticket gone from the terminal ended, read from its deal and order history.

Closing a closed account's trades records each ticket as in progress before its
request is sent (SPEC section 12). A worker killed after the broker filled the request
and before the outcome was stored leaves a ticket that is no longer open: sending it
again would at best be refused and at worst trade. Its outcome is read here instead,
from ``history_deals_get(position=)`` (a position) or ``history_orders_get(ticket=)``
(an order). These are pure functions of what the terminal answered; the adapter asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...core.records import TradeResult

__all__ = ["order_outcome", "position_outcome"]

# The package's constants (checked against the wheel by tests/adapters/test_mt5_fake_api.py).
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_DONE_PARTIAL = 10010
DEAL_ENTRY_IN = 0
DEAL_ENTRY_OUT = 1
DEAL_ENTRY_INOUT = 2
DEAL_ENTRY_OUT_BY = 3
ORDER_STATE_CANCELED = 2
ORDER_STATE_PARTIAL = 3
ORDER_STATE_FILLED = 4
ORDER_STATE_REJECTED = 5
ORDER_STATE_EXPIRED = 6

_DEAL_REASONS = {
    0: "by the client",
    1: "from the mobile app",
    2: "from the web platform",
    3: "by an expert or the API",
    4: "by its stop loss",
    5: "by its take profit",
    6: "by a stop out",
    7: "by a rollover",
    8: "by a variation margin",
    9: "by a split",
}
# The states an order ends in: it is no longer pending, whatever became of it.
_ENDED = {
    ORDER_STATE_CANCELED: "cancelled",
    ORDER_STATE_PARTIAL: "partially filled",
    ORDER_STATE_FILLED: "filled",
    ORDER_STATE_REJECTED: "rejected",
    ORDER_STATE_EXPIRED: "expired",
}
_EPSILON = 1e-9


def position_outcome(ticket: int, deals: Iterable[Any]) -> TradeResult | None:
    """A position's ending from its deals; ``None`` when they do not show one.

    Closed: its last deal takes volume out (``DEAL_ENTRY_OUT``/``OUT_BY``) and no more
    went out than came in (``retcode`` 10009, ``remaining`` 0). Partly closed:
    ``retcode`` 10010 with what is still open. Never closed, or reversed by an
    ``INOUT`` deal (a netting account turning it around): ``None``.
    """
    mine = sorted(
        (d for d in deals if int(d.position_id) == ticket),
        key=lambda d: (int(d.time_msc), int(d.ticket)),
    )
    if not mine or int(mine[-1].entry) not in (DEAL_ENTRY_OUT, DEAL_ENTRY_OUT_BY):
        return None
    opened = sum(float(d.volume) for d in mine if int(d.entry) == DEAL_ENTRY_IN)
    closed = sum(
        float(d.volume) for d in mine if int(d.entry) in (DEAL_ENTRY_OUT, DEAL_ENTRY_OUT_BY)
    )
    last = mine[-1]
    how = _DEAL_REASONS.get(int(last.reason), f"(deal reason {int(last.reason)})")
    # The history may not reach back to the opening deal: then the closing one is all
    # there is to go by.
    remaining = round(opened - closed, 8) if opened else 0.0
    if remaining > _EPSILON:
        return TradeResult(
            retcode=TRADE_RETCODE_DONE_PARTIAL,
            remaining=remaining,
            comment=f"position {ticket}: {closed:g} of {opened:g} closed, last by deal "
            f"{int(last.ticket)} {how}",
        )
    return TradeResult(
        retcode=TRADE_RETCODE_DONE,
        remaining=0.0,
        comment=f"position {ticket} closed by deal {int(last.ticket)} {how}",
    )


def order_outcome(ticket: int, orders: Iterable[Any]) -> TradeResult | None:
    """A pending order's ending from the order history; ``None`` when it is not there.

    An order in the history is no longer pending: cancelled, filled (a position may
    have opened from it), rejected or expired, each ``retcode`` 10009 with the state in
    the comment.
    """
    mine = [o for o in orders if int(o.ticket) == ticket]
    if not mine:
        return None
    state = int(mine[-1].state)
    word = _ENDED.get(state)
    if word is None:
        return None
    comment = f"order {ticket} {word}"
    if state in (ORDER_STATE_FILLED, ORDER_STATE_PARTIAL):
        comment += " (a position may have opened from it)"
    return TradeResult(retcode=TRADE_RETCODE_DONE, remaining=0.0, comment=comment)
