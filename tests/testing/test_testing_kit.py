"""The testing kit and its pytest plugin, as a bot's author uses them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mt5lifecycle import Backends, Credentials, Lifecycle, Reason, State
from mt5lifecycle.builtin.memory import MemoryStateStore
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends, run_for

pytest_plugins = ["pytester"]


def test_fixtures_are_wired_together(
    mt5_clock: FakeClock,
    mt5_broker: FakeBroker,
    mt5_backends: Backends,
    mt5_notifier: RecordingNotifier,
    mt5_lifecycle: Callable[..., Lifecycle],
) -> None:
    assert mt5_backends.clock is mt5_clock
    assert mt5_backends.broker is mt5_broker
    assert mt5_backends.notifier is mt5_notifier
    mt5_broker.fail_logins("bot-1", Reason.AUTH_FAILED, times=1)
    lc = mt5_lifecycle("bot-1")
    run_for(lc, mt5_clock, 10)
    assert lc.state is State.CONNECTED
    assert [n.kind.value for n in mt5_notifier.notifications] == ["LOGIN_RECOVERED"]


def test_a_bot_test_needs_no_boilerplate(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from mt5lifecycle import Reason, State
        from mt5lifecycle.testing import run_for

        def test_bot(mt5_lifecycle, mt5_broker, mt5_clock):
            mt5_broker.fail_logins("bot-1", Reason.AUTH_FAILED)
            lc = mt5_lifecycle("bot-1")
            run_for(lc, mt5_clock, 1000)
            assert lc.state is State.FAILED
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_memory_backends_defaults_and_shared_clock() -> None:
    b = memory_backends()
    assert isinstance(b.clock, FakeClock)
    assert isinstance(b.broker, FakeBroker)
    assert isinstance(b.notifier, RecordingNotifier)
    assert isinstance(b.state, MemoryStateStore)
    broker = FakeBroker(FakeClock(5.0))
    assert memory_backends(broker=broker).clock is broker.clock
    clock = FakeClock(7.0)
    assert memory_backends(clock=clock).broker.clock is clock  # type: ignore[attr-defined]


def test_fake_clock_jumps_and_only_forward() -> None:
    clock = FakeClock()
    assert clock.now() == 1767225600.0
    clock.advance(5)
    clock.sleep(5)
    assert clock.now() == 1767225610.0
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="finite"):
        FakeClock(float("nan"))


def test_fake_broker_queues_failures_one_after_another() -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)
    broker.fail_logins("a", Reason.AUTH_FAILED, times=2)
    broker.fail_logins("a", Reason.NETWORK, times=1)
    creds = Credentials(1, "s", "p")
    reasons = [broker.login("a", creds, logged_in_before=False).reason for _ in range(4)]
    assert reasons == [Reason.AUTH_FAILED, Reason.AUTH_FAILED, Reason.NETWORK, None]
    assert broker.login_times("a") == [clock.now()] * 4


def test_fake_broker_close_and_ban_end_the_session_and_every_later_login() -> None:
    broker = FakeBroker(FakeClock())
    creds = Credentials(1, "s", "p")
    assert broker.login("a", creds, logged_in_before=False).ok
    broker.close_account("a")
    assert broker.status("a").value == "DISCONNECTED"
    assert broker.login("a", creds, logged_in_before=True).reason is Reason.ACCOUNT_CLOSED
    broker.ban_account("b")
    assert broker.login("b", creds, logged_in_before=True).reason is Reason.ACCOUNT_BANNED


def test_fake_broker_partial_fill_closes_half_the_remaining_volume() -> None:
    broker = FakeBroker(FakeClock())
    broker.open_position("a", 1, "EURUSD", 1.0, close_retcode=10010)
    [position] = broker.positions("a")
    result = broker.close_position("a", position, 1.0)
    assert (result.retcode, result.remaining) == (10010, 0.5)
    assert broker.positions("a")[0].volume == 0.5


def test_fake_broker_rejects_bad_scripts() -> None:
    broker = FakeBroker(FakeClock())
    with pytest.raises(ValueError, match="cannot fail"):
        broker.fail_logins("a", Reason.MANUAL)
    with pytest.raises(ValueError, match="times"):
        broker.fail_logins("a", Reason.AUTH_FAILED, times=-1)
    with pytest.raises(ValueError, match="volume"):
        broker.open_position("a", 1, "X", 0)
