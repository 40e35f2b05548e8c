"""Closing a closed account's trades (SPEC section 8): every return-code path."""

from __future__ import annotations

import pytest

from mt5lifecycle import Policy, State
from mt5lifecycle.core.closing import CloseStep, close_step
from mt5lifecycle.core.records import Outcome, Position, TradeResult

from ..conftest import World


@pytest.mark.parametrize(
    ("code", "outcome", "retcode"),
    [
        (10009, Outcome.CLOSED, 10009),
        (10010, Outcome.CLOSED, 10009),  # partial fills, retried for the rest
        (10004, Outcome.FAILED, 10004),  # requote forever: bounded
        (10020, Outcome.FAILED, 10020),
        (10021, Outcome.FAILED, 10021),
        (10006, Outcome.FAILED, 10006),
        (10018, Outcome.FAILED, 10018),
        (10027, Outcome.FAILED, 10027),
        (10028, Outcome.FAILED, 10028),
        (10029, Outcome.FAILED, 10029),
        (10031, Outcome.FAILED, 10031),
    ],
)
def test_each_return_code_ends_in_one_outcome(
    world: World, code: int, outcome: Outcome, retcode: int
) -> None:
    world.connected()
    world.broker.open_position(world.id, 7, "XAUUSD", 1.0, close_retcode=code)
    world.lc.account_closed()
    [record] = world.archive.outcomes(world.id)
    assert (record.ticket, record.symbol, record.volume) == (7, "XAUUSD", 1.0)
    assert (record.outcome, record.retcode) == (outcome, retcode)
    assert world.lc.state is State.ACCOUNT_CLOSED


def test_a_requote_then_done_closes(world: World) -> None:
    world.connected()
    world.broker.open_position(world.id, 1, "EURUSD", 0.3, close_retcode=[10004, 10021, 10009])
    world.lc.account_closed()
    [record] = world.archive.outcomes(world.id)
    assert (record.outcome, record.retcode) == (Outcome.CLOSED, 10009)


def test_requotes_are_retried_max_requote_retries_times(make_world: type[World]) -> None:
    world = make_world(Policy(max_requote_retries=2))
    world.connected()
    world.broker.open_position(world.id, 1, "EURUSD", 0.3, close_retcode=[10004, 10004, 10009])
    world.broker.open_position(
        world.id, 2, "EURUSD", 0.3, close_retcode=[10004, 10004, 10004, 10009]
    )
    world.lc.account_closed()
    got = {r.ticket: r.outcome for r in world.archive.outcomes(world.id)}
    assert got == {1: Outcome.CLOSED, 2: Outcome.FAILED}


def test_pending_orders_are_cancelled_or_recorded_failed(world: World) -> None:
    world.connected()
    world.broker.pending_order(world.id, 21, "EURUSD")
    world.broker.pending_order(world.id, 22, "EURUSD", cancel_retcode=10029)
    world.lc.account_closed()
    got = {(r.ticket, r.kind, r.outcome, r.retcode) for r in world.archive.outcomes(world.id)}
    assert got == {(21, "order", Outcome.CANCELLED, 10009), (22, "order", Outcome.FAILED, 10029)}
    assert [o.ticket for o in world.broker.orders(world.id)] == [22]


def test_closing_always_ends_even_when_partial_fills_never_finish(make_world: type[World]) -> None:
    world = make_world(Policy(max_close_calls=3))
    world.connected()
    world.broker.open_position(world.id, 1, "EURUSD", 10.0, close_retcode=10010)
    world.lc.account_closed()
    [record] = world.archive.outcomes(world.id)
    assert (record.outcome, record.retcode) == (Outcome.FAILED, 10010)


def test_close_step_is_a_pure_decision() -> None:
    p = Policy(max_requote_retries=1, max_close_calls=5)
    assert close_step(TradeResult(retcode=10009), requotes=0, calls=1, policy=p) is CloseStep.CLOSED
    assert (
        close_step(TradeResult(retcode=10010, remaining=0.5), requotes=0, calls=1, policy=p)
        is CloseStep.AGAIN
    )
    assert close_step(TradeResult(retcode=10004), requotes=1, calls=1, policy=p) is CloseStep.AGAIN
    assert close_step(TradeResult(retcode=10004), requotes=2, calls=2, policy=p) is CloseStep.FAILED
    assert close_step(TradeResult(retcode=None), requotes=0, calls=1, policy=p) is CloseStep.FAILED


def test_a_crash_between_closure_and_closing_leaves_the_closing_due(world: World) -> None:
    world.connected()
    world.broker.open_position(world.id, 1, "EURUSD", 1.0)

    def boom(*_: object) -> object:
        raise SystemExit("killed")

    world.broker.positions = boom  # type: ignore[method-assign,assignment]
    with pytest.raises(SystemExit):
        world.lc.account_closed()
    stored = world.backends.state.load(world.id)
    assert stored is not None
    assert stored.snapshot.status is State.ACCOUNT_CLOSED
    assert stored.snapshot.due is not None and stored.snapshot.due.value == "CLOSE_TRADES"
    del world.broker.positions
    from mt5lifecycle import Lifecycle

    again = Lifecycle(world.id, world.backends)
    again.start()
    again.run_due()
    assert [r.outcome for r in world.archive.outcomes(world.id)] == [Outcome.CLOSED]
    assert world.broker.positions(world.id) == []


def test_a_position_the_broker_already_closed_is_recorded_closed(world: World) -> None:
    world.connected()
    # listed, then closed by its stop loss before our request reached the broker
    stale = [Position(ticket=5, symbol="EURUSD", volume=1.0)]
    world.broker.positions = lambda _: stale  # type: ignore[method-assign,assignment]
    world.lc.account_closed()
    [record] = world.archive.outcomes(world.id)
    assert (record.outcome, record.retcode) == (Outcome.CLOSED, 10036)


def test_a_terminal_that_cannot_list_its_trades_leaves_them_and_the_closure_ends(
    world: World,
) -> None:
    world.connected()
    world.broker.open_position(world.id, 5, "EURUSD", 1.0)

    def gone(_: str) -> list[object]:
        raise ConnectionError("No IPC connection")

    world.broker.positions = gone  # type: ignore[method-assign,assignment]
    world.lc.account_closed()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.ACCOUNT_CLOSED
    assert snap.due is None
    assert world.archive.outcomes(world.id) == []
