"""``MT5Broker`` under a real ``Lifecycle``: each SPEC section 11 path end to end.

The terminal is the fake ``MetaTrader5`` module (and the same through an
mt5linux-shaped proxy); the lifecycle, its machine and its closing logic are the
library's own, over the in-memory backends and a ``FakeClock``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mt5lifecycle import Credentials, Lifecycle, Reason, State
from mt5lifecycle.builtin.memory import MemoryArchive
from mt5lifecycle.core.records import Outcome
from mt5lifecycle.core.states import AlertKind, ConnectionState
from mt5lifecycle.testing import RecordingNotifier, memory_backends, run_for
from tests.adapters.test_mt5_broker import CREDS, LOGIN, PASSWORD, SERVER, World


class Run:
    """A World with a Lifecycle on top."""

    def __init__(self, world: World, creds: Credentials = CREDS) -> None:
        self.w = world
        self.mt5 = world.mt5
        self.b = memory_backends(broker=world.broker, clock=world.clock)
        self.b.credentials.put(world.id, creds)
        self.lc = Lifecycle(world.id, self.b)

    def play(self, seconds: float) -> None:
        run_for(self.lc, self.w.clock, seconds)

    @property
    def archive(self) -> MemoryArchive:
        archive = self.b.archive
        assert isinstance(archive, MemoryArchive)
        return archive

    @property
    def alerts(self) -> list[AlertKind]:
        notifier = self.b.notifier
        assert isinstance(notifier, RecordingNotifier)
        return [n.kind for n in notifier.notifications]

    def connected(self) -> Run:
        self.lc.start()
        self.play(1)
        assert self.lc.state is State.CONNECTED
        return self


@pytest.fixture(params=["module", "mt5linux"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    return Run(World(tmp_path, proxy=request.param == "mt5linux"))


def test_login_succeeds(run: Run) -> None:
    run.connected()
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.connection_state, snap.login_attempt_count, snap.ever_logged_in) == (
        ConnectionState.CONNECTED,
        0,
        True,
    )
    assert run.mt5.logged_in == LOGIN


def test_a_wrong_password_exhausts_the_attempts(tmp_path: Path) -> None:
    run = Run(World(tmp_path), Credentials(LOGIN, SERVER, "not-the-password"))
    run.lc.start()
    run.play(200)
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.last_failure_reason, snap.login_attempt_count) == (
        State.FAILED,
        Reason.LOGIN_ATTEMPTS_EXHAUSTED,
        5,
    )
    failures = run.archive.failures(run.w.id)
    assert [(f.reason, f.code) for f in failures] == [(Reason.AUTH_FAILED, -6)] * 5
    assert all(PASSWORD not in f.message and "not-the-password" not in f.message for f in failures)
    assert AlertKind.REPEATED_LOGIN_FAILURE in run.alerts and AlertKind.LOGIN_FAILURE in run.alerts


def test_a_mistyped_login_is_auth_failed_not_closed(tmp_path: Path) -> None:
    run = Run(World(tmp_path), Credentials(9999999, SERVER, PASSWORD))
    run.lc.start()
    run.play(1)
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.login_failure_reason, snap.login_attempt_count) == (
        State.CONNECTING,
        Reason.AUTH_FAILED,
        1,
    )
    assert "Invalid account" in run.archive.failures(run.w.id)[0].message


def test_account_closed_closes_every_trade_through_the_terminal(run: Run) -> None:
    # The host learns of the closure first (the broker's e-mail, its back office):
    # the session is still live, so every close reaches the broker.
    run.connected()
    run.mt5.open_position(7001, "EURUSD", 1.0, close_retcodes=[10004, 10021, 10020, 10009])
    run.mt5.open_position(7002, "EURUSD", 2.0, close_retcodes=[10010, 10010, 10009])
    run.mt5.open_position(7003, "XAUUSD", 0.5, close_retcodes=10028)
    run.mt5.open_position(7004, "XAUUSD", 0.5, close_retcodes=10029)
    run.mt5.open_position(7005, "USDJPY", 0.1, close_retcodes=10018)
    run.mt5.open_position(7006, "USDJPY", 0.1, close_retcodes=10006)
    run.mt5.open_position(7007, "USDJPY", 0.1, close_retcodes=10027)
    run.mt5.open_position(7008, "USDJPY", 0.1, close_retcodes=10004)  # requotes for ever
    run.mt5.open_position(7009, "USDJPY", 0.1, close_retcodes=10031)
    run.mt5.pending_order(8001, "EURUSD")
    run.mt5.pending_order(8002, "EURUSD", cancel_retcodes=10028)
    run.lc.account_closed()
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.last_failure_reason) == (State.ACCOUNT_CLOSED, Reason.ACCOUNT_CLOSED)
    outcomes = {o.ticket: (o.outcome, o.retcode) for o in run.archive.outcomes(run.w.id)}
    assert outcomes == {
        7001: (Outcome.CLOSED, 10009),
        7002: (Outcome.CLOSED, 10009),
        7003: (Outcome.FAILED, 10028),
        7004: (Outcome.FAILED, 10029),
        7005: (Outcome.FAILED, 10018),
        7006: (Outcome.FAILED, 10006),
        7007: (Outcome.FAILED, 10027),
        7008: (Outcome.FAILED, 10004),
        7009: (Outcome.FAILED, 10031),
        8001: (Outcome.CANCELLED, 10009),
        8002: (Outcome.FAILED, 10028),
    }
    sent = run.mt5.requests
    # Partial fills asked for the rest each time: 2.0, then 1.0, then 0.5.
    assert [r["volume"] for r in sent if r.get("position") == 7002] == [2.0, 1.0, 0.5]
    assert len([r for r in sent if r.get("position") == 7001]) == 4
    # Requotes are retried a bounded number of times (Policy.max_requote_retries).
    assert len([r for r in sent if r.get("position") == 7008]) == 4
    assert [len([r for r in sent if r.get("position") == t]) for t in range(7003, 7008)] == [1] * 5
    assert AlertKind.ACCOUNT_CLOSED in run.alerts
    assert run.b.credentials.get(run.w.id) is not None  # only confirm_closure deletes


def test_a_deleted_account_is_closed_and_its_trades_fail_without_connection(run: Run) -> None:
    # Found at a login: the broker already ended the session, so the terminal has no
    # trade connection left and every close answers 10031.
    run.connected()
    run.mt5.open_position(7001, "EURUSD", 1.0)
    run.mt5.pending_order(8001, "EURUSD")
    run.mt5.delete_account(LOGIN)
    run.play(120)  # connection check -> lost -> reconnect check -> login: Invalid account
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.last_failure_reason, snap.login_failure_reason) == (
        State.ACCOUNT_CLOSED,
        Reason.ACCOUNT_CLOSED,
        Reason.ACCOUNT_CLOSED,
    )
    outcomes = {o.ticket: (o.outcome, o.retcode) for o in run.archive.outcomes(run.w.id)}
    assert outcomes == {7001: (Outcome.FAILED, 10031), 8001: (Outcome.FAILED, 10031)}
    [failure] = run.archive.failures(run.w.id)
    assert "failed (Invalid account)" in failure.message
    assert AlertKind.ACCOUNT_CLOSED in run.alerts


def test_closing_with_no_connection_records_10031(run: Run) -> None:
    run.connected()
    run.mt5.open_position(7001, "EURUSD", 1.0)
    run.mt5.drop_connection()
    run.lc.account_closed()
    assert run.lc.state is State.ACCOUNT_CLOSED
    [outcome] = run.archive.outcomes(run.w.id)
    assert (outcome.outcome, outcome.retcode) == (Outcome.FAILED, 10031)


def test_a_disabled_account_is_banned(run: Run) -> None:
    run.connected()
    run.mt5.disable_account(LOGIN)
    run.play(120)
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.last_failure_reason) == (State.INACTIVE, Reason.ACCOUNT_BANNED)
    assert AlertKind.ACCOUNT_BANNED in run.alerts
    assert run.mt5.calls[-1] == "shutdown"  # the terminal is stopped


def test_a_single_minus_6_after_success_is_not_a_closure(run: Run) -> None:
    run.connected()
    run.mt5.drop_connection()
    run.mt5.fail_logins(-6, "Terminal: Authorization failed")
    run.lc.connection_lost()
    run.play(10)  # network_retry_delay: still down, so log in: a bare -6
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.login_failure_reason, snap.login_attempt_count) == (
        State.CONNECTING,
        Reason.AUTH_FAILED,
        1,
    )


def test_a_login_that_timed_out_but_succeeded_connects(run: Run) -> None:
    run.mt5.raise_on_login()
    run.connected()
    snap = run.lc.snapshot()
    assert snap is not None and snap.login_attempt_count == 0
    assert run.archive.failures(run.w.id) == []


def test_a_login_that_raised_counts_as_network(run: Run) -> None:
    run.mt5.raise_on_login(succeed=False)
    run.lc.start()
    run.play(1)
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.login_failure_reason, snap.login_attempt_count) == (
        State.CONNECTING,
        Reason.NETWORK,
        0,
    )
    run.play(10)  # network_retry_delay, then a login that goes through
    assert run.lc.state is State.CONNECTED


@pytest.mark.parametrize("code", [-10000, -10001, -10002, -10004, -10005])
def test_network_codes_retry_without_counting(run: Run, code: int) -> None:
    run.mt5.fail_logins(code, "IPC trouble", times=3)
    run.lc.start()
    run.play(100)
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.login_attempt_count) == (State.CONNECTED, 0)
    assert AlertKind.LOGIN_RECOVERED in run.alerts


def test_a_crashed_terminal_is_restarted(run: Run) -> None:
    run.connected()
    run.mt5.crash()
    run.play(60)  # connection check: DOWN -> FAILED (TERMINAL)
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.last_failure_reason) == (State.FAILED, Reason.TERMINAL)
    run.play(31)  # restart 1 after 30 s: shutdown, initialize, login
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.restart_count) == (State.CONNECTED, 0)
    assert "initialize" in run.mt5.calls[-4:]


def test_a_terminal_that_never_starts_exhausts_the_restarts(run: Run) -> None:
    run.mt5.fail_initialize(times=None)
    run.lc.start()
    run.play(3600)
    snap = run.lc.snapshot()
    assert snap is not None
    assert (snap.status, snap.last_failure_reason) == (State.FAILED, Reason.RECOVERY_EXHAUSTED)
    assert AlertKind.AUTO_RECOVERY_FAILURE in run.alerts


def test_confirm_closure_after_a_deleted_account(run: Run) -> None:
    run.connected()
    run.mt5.delete_account(LOGIN)
    run.play(120)
    assert run.lc.state is State.ACCOUNT_CLOSED
    run.lc.confirm_closure()
    assert run.b.credentials.get(run.w.id) is None
    assert run.archive.is_confirmed(run.w.id)
