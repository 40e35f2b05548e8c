"""One test per row of SPEC section 4's transition table, named after it.

Each runs through the public ``Lifecycle`` on in-memory backends, the fake broker and
the fake clock, and checks the destination, the reasons, the counters and the
effects the row lists.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest

from mt5lifecycle import (
    ConnectionState,
    CredentialsRejected,
    InvalidTransition,
    Policy,
    Reason,
    State,
)
from mt5lifecycle.core.records import Outcome
from mt5lifecycle.core.states import Due

from ..conftest import CREDS, World


def test_start_with_credentials_goes_connecting_and_logs_in_now(world: World) -> None:
    world.started()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.CONNECTING
    assert snap.connection_state is ConnectionState.DISCONNECTED
    assert world.lc.next_due == world.clock.now()
    world.lc.run_due()
    assert world.logins() == [0.0]


def test_start_without_credentials_fails_credentials_missing(world: World) -> None:
    world.lc.start()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.CREDENTIALS_MISSING
    assert world.kinds() == ["LOGIN_FAILURE"]
    assert world.notifier.notifications[0].reason is Reason.CREDENTIALS_MISSING
    assert world.lc.next_due is None
    assert world.logins() == []


def test_login_succeeded_connecting_to_connected(world: World) -> None:
    world.connected()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.CONNECTED
    assert snap.connection_state is ConnectionState.CONNECTED
    assert snap.login_attempt_count == 0 and snap.restart_count == 0
    assert snap.login_failure_reason is None
    assert snap.last_login_attempt is not None
    assert snap.last_login_attempt.timestamp() == world.clock.now()
    assert world.kinds() == []  # no failure before: no LOGIN_RECOVERED


def test_login_succeeded_after_failures_fires_login_recovered(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=1)
    world.started()
    world.run(10)
    assert world.lc.state is State.CONNECTED
    assert world.kinds() == ["LOGIN_RECOVERED"]


def test_login_failed_auth_with_attempts_left_retries_after_backoff(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=3)
    world.started()
    world.run(0)
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.CONNECTING
    assert snap.login_attempt_count == 1
    assert snap.login_failure_reason is Reason.AUTH_FAILED
    assert world.lc.next_due == world.clock.now() + 5
    world.run(100)
    assert world.logins() == [0, 5, 15, 45]
    assert world.kinds() == ["REPEATED_LOGIN_FAILURE", "LOGIN_RECOVERED"]
    failures = world.archive.failures(world.id)
    assert [f.attempt for f in failures] == [1, 2, 3]
    assert all(f.reason is Reason.AUTH_FAILED and f.code == -6 for f in failures)
    assert all(f.message for f in failures)


def test_login_failed_auth_on_last_attempt_fails_exhausted(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED)
    world.started()
    world.run(1000)
    snap = world.lc.snapshot()
    assert snap is not None
    assert world.logins() == [0, 5, 15, 45, 105]
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED
    assert snap.login_attempt_count == 5
    assert snap.connection_state is ConnectionState.FAILED
    assert world.lc.next_due is None
    assert world.kinds() == ["REPEATED_LOGIN_FAILURE", "LOGIN_FAILURE"]
    assert world.broker.stops(world.id) == 1
    assert len(world.archive.failures(world.id)) == 5


def test_login_failed_network_with_retries_left_checks_after_delay(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.NETWORK, times=1)
    world.started()
    world.run(0)
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.CONNECTING
    assert snap.login_attempt_count == 0  # network losses are not password tries
    assert snap.network_retry_count == 1
    assert snap.due is Due.RECONNECT_CHECK
    assert world.lc.next_due == world.clock.now() + 10
    world.run(10)
    assert world.logins() == [0, 10]
    assert world.lc.state is State.CONNECTED


def test_login_failed_network_takes_the_terminals_own_reconnection(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.NETWORK, times=1)
    world.started()
    world.run(0)
    world.broker.restore_connection(world.id)
    world.run(10)
    assert world.lc.state is State.CONNECTED
    assert world.logins() == [0]  # no second login: it reconnected by itself
    assert world.kinds() == ["LOGIN_RECOVERED"]


def test_login_failed_network_with_none_left_fails_network_and_schedules_restart(
    world: World,
) -> None:
    world.broker.fail_logins(world.id, Reason.NETWORK)
    world.started()
    world.run(65)
    snap = world.lc.snapshot()
    assert snap is not None
    assert world.logins() == [0, 10, 20, 30, 40, 50, 60]  # seven login calls at most
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.NETWORK
    assert snap.login_attempt_count == 0
    assert snap.due is Due.RESTART
    assert world.lc.next_due == pytest.approx(world.clock.now() - 5 + 30)


def test_login_failed_terminal_fails_terminal(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.TERMINAL, times=1)
    world.started()
    world.run(0)
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.TERMINAL
    assert snap.login_failure_reason is Reason.TERMINAL
    assert snap.due is Due.RESTART


def test_terminal_failed_from_connected_fails_terminal_and_schedules_restart(world: World) -> None:
    world.connected()
    world.lc.terminal_failed()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.TERMINAL
    assert snap.connection_state is ConnectionState.FAILED
    assert world.lc.next_due == world.clock.now() + 30


def test_terminal_failed_from_connecting(world: World) -> None:
    world.started()
    world.lc.terminal_failed()
    assert world.lc.state is State.FAILED


def test_restart_due_with_restarts_left_goes_connecting_and_logs_in(world: World) -> None:
    world.connected()
    world.broker.crash_terminal(world.id)
    world.lc.terminal_failed()
    world.run(30)
    snap = world.lc.snapshot()
    assert snap is not None
    assert world.broker.restarts(world.id) == 1
    assert snap.status is State.CONNECTED  # restarted, logged in, counters cleared
    assert world.logins() == [0, 30]
    assert world.kinds() == ["LOGIN_RECOVERED"]


def test_restart_due_with_none_left_fails_recovery_exhausted(world: World) -> None:
    world.connected()
    world.broker.fail_restarts(world.id)  # the terminal never comes back
    world.lc.terminal_failed()
    world.run(1000)
    snap = world.lc.snapshot()
    assert snap is not None
    assert world.broker.restarts(world.id) == 3
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.RECOVERY_EXHAUSTED
    assert snap.restart_count == 3
    assert world.lc.next_due is None
    assert world.kinds() == ["AUTO_RECOVERY_FAILURE"]
    # restart waits 30, 60, 120; exhaustion is entered at once when the last fails
    assert world.at() == 1000
    failed = [t for t in world.archive.history(world.id) if t.reason is Reason.RECOVERY_EXHAUSTED]
    assert failed and failed[0].at.timestamp() - 1767225600.0 == 210


def test_restart_due_finding_credentials_gone_fails_credentials_missing(world: World) -> None:
    world.connected()
    world.lc.terminal_failed()
    world.backends.credentials.delete(world.id)
    world.run(30)
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.CREDENTIALS_MISSING
    assert world.broker.restarts(world.id) == 0
    assert world.kinds() == ["LOGIN_FAILURE"]


def test_restart_due_finding_the_account_closed_takes_the_closure_row(world: World) -> None:
    world.connected()
    world.lc.terminal_failed()
    world.broker.close_account(world.id)
    world.run(30)
    assert world.lc.state is State.ACCOUNT_CLOSED


def test_connection_lost_connected_to_connecting_and_relogs_after_delay(world: World) -> None:
    world.connected()
    world.broker.drop_connection(world.id)
    world.lc.connection_lost()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.CONNECTING
    assert snap.connection_state is ConnectionState.DISCONNECTED
    assert world.lc.next_due == world.clock.now() + 10
    world.run(10)
    assert world.logins() == [0, 10]
    assert world.lc.state is State.CONNECTED
    assert world.kinds() == ["LOGIN_RECOVERED"]


def test_connection_lost_is_found_by_the_connection_check(world: World) -> None:
    world.connected()
    world.broker.drop_connection(world.id)
    world.run(60)
    assert world.lc.state is State.CONNECTING
    world.broker.restore_connection(world.id)
    world.run(10)
    assert world.lc.snapshot().status is State.CONNECTED  # type: ignore[union-attr]
    assert world.logins() == [0]


@pytest.mark.parametrize("setup", ["connecting", "connected", "failed"])
def test_account_closed_from_every_live_state(world: World, setup: str) -> None:
    world.started()
    if setup != "connecting":
        world.run(0)
    if setup == "failed":
        world.lc.terminal_failed()
    world.broker.open_position(world.id, 11, "EURUSD", 0.4)
    world.broker.pending_order(world.id, 12, "EURUSD")
    world.lc.account_closed()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.ACCOUNT_CLOSED
    assert snap.last_failure_reason is Reason.ACCOUNT_CLOSED
    assert snap.connection_state is ConnectionState.DISCONNECTED
    assert snap.login_attempt_count == 0
    assert world.lc.next_due is None
    assert world.broker.positions(world.id) == [] and world.broker.orders(world.id) == []
    outcomes = {(o.ticket, o.outcome, o.retcode) for o in world.archive.outcomes(world.id)}
    assert outcomes == {(11, Outcome.CLOSED, 10009), (12, Outcome.CANCELLED, 10009)}
    assert "ACCOUNT_CLOSED" in world.kinds()
    assert world.backends.credentials.get(world.id) is not None  # not before confirmation
    world.run(10_000)
    assert world.lc.state is State.ACCOUNT_CLOSED  # never recovers


def test_login_failed_account_closed_goes_account_closed(world: World) -> None:
    world.connected()
    world.broker.close_account(world.id)  # ends the session: the check sees it drop
    world.run(60 + 10)
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.ACCOUNT_CLOSED
    assert snap.login_failure_reason is Reason.ACCOUNT_CLOSED
    assert world.kinds() == ["ACCOUNT_CLOSED"]


@pytest.mark.parametrize("setup", ["connecting", "connected", "failed"])
def test_account_banned_from_every_live_state(world: World, setup: str) -> None:
    world.started()
    if setup != "connecting":
        world.run(0)
    if setup == "failed":
        world.lc.terminal_failed()
    world.lc.account_banned()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.INACTIVE
    assert snap.last_failure_reason is Reason.ACCOUNT_BANNED
    assert world.kinds()[-1] == "ACCOUNT_BANNED"
    assert not world.broker.is_up(world.id)
    assert world.lc.next_due is None


def test_login_failed_account_banned_goes_inactive(world: World) -> None:
    world.broker.ban_account(world.id)
    world.started()
    world.run(0)
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.INACTIVE
    assert snap.last_failure_reason is Reason.ACCOUNT_BANNED
    assert snap.login_failure_reason is Reason.ACCOUNT_BANNED


@pytest.mark.parametrize("setup", ["exhausted", "banned", "disabled", "recovery_exhausted"])
def test_reset_from_failed_and_inactive_logs_in_now(world: World, setup: str) -> None:
    if setup == "exhausted":
        world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=5)
        world.started()
        world.run(200)
        # Credentials that exhausted their attempts are not tried again unchanged
        # (SPEC 15): the operator replaces them first.
        world.backends.credentials.put(world.id, attrs.evolve(CREDS, password="n3w-Pa55"))
    elif setup == "banned":
        world.broker.ban_account(world.id)
        world.started()
        world.run(0)
        world.broker.lift_ban(world.id)
    elif setup == "disabled":
        world.connected()
        world.lc.disable()
    else:
        world.connected()
        world.broker.fail_restarts(world.id, times=3)
        world.lc.terminal_failed()
        world.run(1000)
        assert world.lc.snapshot().last_failure_reason is Reason.RECOVERY_EXHAUSTED  # type: ignore[union-attr]
    before = len(world.logins())
    world.lc.reset()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.CONNECTING
    assert snap.login_attempt_count == 0 and snap.restart_count == 0
    assert snap.login_failure_reason is None
    assert world.lc.next_due == world.clock.now()
    world.lc.run_due()
    assert len(world.logins()) == before + 1
    assert world.lc.state is State.CONNECTED
    assert world.broker.is_up(world.id)  # the stopped terminal was started again
    if setup != "disabled":  # a manual disable is no failure
        assert world.kinds()[-1] == "LOGIN_RECOVERED"


@pytest.mark.parametrize("setup", ["connecting", "connected", "failed", "inactive"])
def test_disable_from_any_but_account_closed(world: World, setup: str) -> None:
    world.started()
    if setup != "connecting":
        world.run(0)
    if setup == "failed":
        world.lc.terminal_failed()
    if setup == "inactive":
        world.lc.account_banned()
    world.lc.disable()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.INACTIVE
    assert snap.last_failure_reason is Reason.MANUAL
    assert not world.broker.is_up(world.id)
    world.run(10_000)
    assert world.lc.state is State.INACTIVE


def test_confirm_closure_deletes_credentials_state_and_archives(world: World) -> None:
    world.connected()
    world.lc.account_closed()
    world.lc.confirm_closure()
    assert world.lc.state is State.INACTIVE
    assert world.backends.credentials.get(world.id) is None
    assert world.backends.state.load(world.id) is None
    assert world.archive.is_confirmed(world.id)
    closure = world.archive.closures[world.id]
    assert closure.status is State.INACTIVE
    assert closure.final.status is State.ACCOUNT_CLOSED
    assert world.kinds()[-1] == "CREDENTIALS_DELETED"
    last = world.archive.history(world.id)[-1]
    assert (last.event, last.source, last.dest) == (
        "confirm_closure",
        State.ACCOUNT_CLOSED,
        State.INACTIVE,
    )


# --- refusals: every other event in every other state ----------------------------

EVENTS: dict[str, Callable[[World], None]] = {
    "connection_lost": lambda w: w.lc.connection_lost(),
    "terminal_failed": lambda w: w.lc.terminal_failed(),
    "account_closed": lambda w: w.lc.account_closed(),
    "account_banned": lambda w: w.lc.account_banned(),
    "reset": lambda w: w.lc.reset(),
    "disable": lambda w: w.lc.disable(),
    "confirm_closure": lambda w: w.lc.confirm_closure(),
}

ALLOWED: dict[str, set[str]] = {
    "new": set(),
    "CONNECTING": {"terminal_failed", "account_closed", "account_banned", "disable"},
    "CONNECTED": {
        "connection_lost",
        "terminal_failed",
        "account_closed",
        "account_banned",
        "disable",
    },
    "FAILED": {"account_closed", "account_banned", "reset", "disable"},
    "INACTIVE": {"reset", "disable"},
    "ACCOUNT_CLOSED": {"confirm_closure"},
    "confirmed": set(),
}


def _put_in(world: World, state: str) -> None:
    if state == "new":
        return
    world.started()
    if state == "CONNECTING":
        return
    world.run(0)
    if state == "FAILED":
        world.lc.terminal_failed()
    elif state == "INACTIVE":
        world.lc.disable()
    elif state in ("ACCOUNT_CLOSED", "confirmed"):
        world.lc.account_closed()
        if state == "confirmed":
            world.lc.confirm_closure()


@pytest.mark.parametrize(
    ("state", "event"),
    [(s, e) for s, allowed in ALLOWED.items() for e in EVENTS if e not in allowed],
)
def test_every_other_event_is_refused_and_changes_nothing(state: str, event: str) -> None:
    world = World()
    _put_in(world, state)
    before = world.backends.state.load(world.id)
    snap = world.lc.snapshot()
    notified = len(world.notifier.notifications)
    history = len(world.archive.transitions)
    logins = world.logins()
    with pytest.raises(InvalidTransition) as caught:
        EVENTS[event](world)
    error = caught.value
    assert error.event == event
    assert error.instance_id == world.id
    assert event in str(error) and world.id in str(error)
    assert world.backends.state.load(world.id) == before
    assert world.lc.snapshot() == snap
    assert len(world.notifier.notifications) == notified
    assert len(world.archive.transitions) == history
    assert world.logins() == logins


def test_reset_on_account_closed_says_a_closed_account_never_comes_back(world: World) -> None:
    world.connected()
    world.lc.account_closed()
    with pytest.raises(InvalidTransition, match="never comes back"):
        world.lc.reset()


def test_start_twice_is_refused(world: World) -> None:
    world.started()
    with pytest.raises(InvalidTransition, match="already started"):
        world.lc.start()


def test_max_attempts_at_or_below_threshold_fires_both_alerts_on_the_final_failure(
    make_world: Callable[..., World],
) -> None:
    world = make_world(Policy(max_login_attempts=2))
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED)
    world.started()
    world.run(100)
    assert world.logins() == [0, 5]
    assert world.kinds() == ["REPEATED_LOGIN_FAILURE", "LOGIN_FAILURE"]
    snap = world.lc.snapshot()
    assert snap is not None and snap.login_attempt_count == 2


def test_exhaustion_after_credentials_worked_says_the_account_may_be_closed(world: World) -> None:
    world.connected()
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED)
    world.broker.drop_connection(world.id)
    world.lc.connection_lost()
    world.run(1000)
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED  # suspected, not closed
    failure = next(n for n in world.notifier.notifications if n.kind.value == "LOGIN_FAILURE")
    assert "worked before" in failure.message and "may have been closed" in failure.message
    assert world.backends.credentials.get(world.id) is not None


def test_reset_with_unchanged_exhausted_credentials_is_refused(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=5)
    world.started()
    world.run(200)
    before = world.lc.snapshot()
    with pytest.raises(CredentialsRejected) as refused:
        world.lc.reset()
    assert refused.value.instance_id == world.id
    assert world.lc.snapshot() == before
    assert len(world.logins()) == 5


def test_reset_with_force_tries_exhausted_credentials_once_more(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=6)
    world.started()
    world.run(200)
    world.lc.reset(force=True)
    world.run(1000)
    snap = world.lc.snapshot()
    assert snap is not None and snap.last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED
    assert len(world.logins()) == 6  # one more login, not another round of five
    world.lc.reset(force=True)
    world.run(10)
    assert world.lc.state is State.CONNECTED
    assert len(world.logins()) == 7
    # The credentials logged in: the mark is gone, and the next exhaustion starts over.
    assert not world.backends.credentials.rejected(world.id, CREDS)  # type: ignore[attr-defined]


def test_start_with_known_bad_credentials_fails_without_calling_the_terminal(
    world: World,
) -> None:
    world.store_credentials()
    world.backends.credentials.reject(world.id, CREDS)  # type: ignore[attr-defined]
    world.lc.start()
    snap = world.lc.snapshot()
    assert snap is not None and snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED
    assert world.logins() == []
    assert world.kinds() == ["LOGIN_FAILURE"]
