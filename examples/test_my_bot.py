"""Testing a bot with the kit's pytest fixtures.

The fixtures come with the package (a ``pytest11`` plugin): ``mt5_clock`` (a
``FakeClock``), ``mt5_broker`` (a ``FakeBroker`` on it), ``mt5_backends`` (in-memory
stores around both), ``mt5_notifier`` (the ``RecordingNotifier`` of those backends)
and ``mt5_lifecycle`` (a factory: stores demo credentials, starts a ``Lifecycle``).
Nothing waits: ``run_for`` jumps the fake clock from one due time to the next, so a
test of an hour of retries takes milliseconds.

Run it::

    pytest examples/test_my_bot.py
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from bot_loop import run_bot

from mt5lifecycle import (
    AlertKind,
    Backends,
    Credentials,
    CredentialsRejected,
    Lifecycle,
    Policy,
    Reason,
    State,
)
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, run_for

MakeLifecycle = Callable[..., Lifecycle]


def test_a_wrong_password_is_retried_and_recovers(
    mt5_lifecycle: MakeLifecycle, mt5_broker: FakeBroker, mt5_clock: FakeClock
) -> None:
    mt5_broker.fail_logins("bot-1", Reason.AUTH_FAILED, times=2)
    lifecycle = mt5_lifecycle("bot-1")
    run_for(lifecycle, mt5_clock, 60)
    assert lifecycle.state is State.CONNECTED


def test_five_wrong_passwords_stop_until_an_operator_fixes_them(
    mt5_lifecycle: MakeLifecycle,
    mt5_broker: FakeBroker,
    mt5_clock: FakeClock,
    mt5_notifier: RecordingNotifier,
    mt5_backends: Backends,
) -> None:
    mt5_broker.fail_logins("bot-1", Reason.AUTH_FAILED, times=5)
    lifecycle = mt5_lifecycle("bot-1")
    run_for(lifecycle, mt5_clock, 3600)
    snapshot = lifecycle.snapshot()
    assert snapshot is not None
    assert snapshot.status is State.FAILED
    assert snapshot.last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED
    assert AlertKind.LOGIN_FAILURE in mt5_notifier.kinds("bot-1")

    # The same password is never tried again unasked: the operator stores the right one.
    with pytest.raises(CredentialsRejected):
        lifecycle.reset()
    mt5_backends.credentials.put("bot-1", Credentials(5550001, "Broker-Demo", "the right one"))
    lifecycle.reset()
    run_for(lifecycle, mt5_clock, 1)
    assert lifecycle.state is State.CONNECTED


def test_a_closed_account_has_its_positions_closed(
    mt5_lifecycle: MakeLifecycle, mt5_broker: FakeBroker, mt5_clock: FakeClock
) -> None:
    lifecycle = mt5_lifecycle("bot-1")
    run_for(lifecycle, mt5_clock, 1)
    mt5_broker.open_position("bot-1", 42, "EURUSD", 1.0, close_retcode=[10010, 10009])
    mt5_broker.close_account("bot-1")
    lifecycle.account_closed()
    closed = lifecycle.state
    assert closed is State.ACCOUNT_CLOSED
    assert mt5_broker.positions("bot-1") == []

    lifecycle.confirm_closure()
    assert lifecycle.state is State.INACTIVE


def test_my_policy_gives_up_sooner(
    mt5_lifecycle: MakeLifecycle, mt5_broker: FakeBroker, mt5_clock: FakeClock
) -> None:
    mt5_broker.fail_logins("bot-1", Reason.AUTH_FAILED)
    lifecycle = mt5_lifecycle("bot-1", policy=Policy(max_login_attempts=2, login_backoff=(1,)))
    run_for(lifecycle, mt5_clock, 10)
    assert lifecycle.state is State.FAILED
    assert [t - mt5_clock.now() for t in mt5_broker.login_times("bot-1")] == [-10, -9]


def test_my_bot_stops_trading_when_the_account_is_banned(
    mt5_lifecycle: MakeLifecycle, mt5_broker: FakeBroker, mt5_clock: FakeClock
) -> None:
    lifecycle = mt5_lifecycle("bot-1")
    trades: list[float] = []
    start = mt5_clock.now()
    run_bot(lifecycle, mt5_clock, lambda: trades.append(mt5_clock.now()), until=start + 300)
    assert len(trades) == 20  # one turn every 15 s

    mt5_broker.ban_account("bot-1")
    run_bot(lifecycle, mt5_clock, lambda: trades.append(mt5_clock.now()), until=start + 3600)
    snapshot = lifecycle.snapshot()
    assert snapshot is not None
    assert (snapshot.status, snapshot.last_failure_reason) == (
        State.INACTIVE,
        Reason.ACCOUNT_BANNED,
    )
    assert max(trades) < start + 370  # noticed at the next connection check
    assert mt5_clock.now() < start + 3600  # the loop returned: it needs an operator
