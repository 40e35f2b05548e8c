"""Every flow of SPEC section 4 on the real backends, read back with plain clients.

Redis keys with plain GETs, PostgreSQL rows with plain SQL, DuckDB rows with DuckDB
SQL on the archive file, metrics from the registry: what an operator would look at.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mt5lifecycle import CredentialsRejected, Fleet, InvalidTransition, Lifecycle, Policy, State
from mt5lifecycle.testing import FakeClock, run_for

from .conftest import CREDS, LOGIN, PASSWORD, SERVER, T0, World

ID = "acc-1"


POLICY_ATTEMPTS = Policy().max_login_attempts


def connected(world: World, instance_id: str = ID) -> Lifecycle:
    lc = world.lifecycle(instance_id)
    lc.start()
    world.play(lc, 1)
    assert lc.state is State.CONNECTED
    return lc


def logins(world: World, instance_id: str = ID) -> int:
    """Login calls that carried credentials (``initialize(login=...)`` or ``login``)."""
    calls = world.terminal(instance_id).calls
    return calls.count("login") + calls.count("initialize")


def transitions(world: World, instance_id: str = ID) -> list[tuple[float, str, str | None, str]]:
    rows = world.sql(
        "SELECT occurred_at, event, source, dest FROM transitions WHERE instance_id = ? "
        "ORDER BY seq",
        instance_id,
    )
    return [(at.timestamp() - T0, event, source, dest) for at, event, source, dest in rows]


def test_start_connects(world: World) -> None:
    lc = connected(world)
    r = world.redis(ID)
    assert (r["status"], r["connection_state"], r["login_attempt_count"]) == (
        "CONNECTED",
        "CONNECTED",
        "0",
    )
    assert r["last_login_attempt"] == "2026-01-01T00:00:00+00:00"
    assert "login_failure_reason" not in r
    assert "login_lock" not in r, "the login lock is released after the login"
    assert [row[1:] for row in transitions(world)] == [
        ("start", None, "CONNECTING"),
        ("login_succeeded", "CONNECTING", "CONNECTED"),
    ]
    assert world.credential_rows(ID) == [(ID, LOGIN, SERVER)]
    assert world.metric("mt5lifecycle_login_attempts_total", result="success") == 1
    assert world.metric("mt5lifecycle_instances", state="CONNECTED") == 1
    assert (
        world.metric("mt5lifecycle_instance_state", instance_id=ID, state="CONNECTED", reason="")
        == 1
    )
    assert world.terminal(ID).logged_in == LOGIN
    assert lc.next_due == T0 + 60, "the connection check is due"


def test_start_without_credentials_fails(world: World) -> None:
    lc = world.lifecycle(ID, credentials=False)
    lc.start()
    world.play(lc, 600)
    r = world.redis(ID)
    assert (r["status"], r["last_failure_reason"]) == ("FAILED", "CREDENTIALS_MISSING")
    assert world.kinds(ID) == ["LOGIN_FAILURE"]
    assert ID not in world.terminals, "no terminal was asked to log in"
    assert lc.next_due is None


def test_auth_failures_follow_the_timeline_then_fail(world: World) -> None:
    world.terminal(ID).fail_logins(times=None)  # -6, no journal line: AUTH_FAILED
    lc = world.lifecycle(ID)
    lc.start()
    world.play(lc, 600)
    rows = world.sql(
        "SELECT occurred_at, attempt, reason, code FROM login_failures WHERE instance_id = ? "
        "ORDER BY seq",
        ID,
    )
    assert [row[0].timestamp() - T0 for row in rows] == [0, 5, 15, 45, 105]
    assert [row[1:] for row in rows] == [(n, "AUTH_FAILED", -6) for n in range(1, 6)]
    r = world.redis(ID)
    assert r["status"] == "FAILED"
    assert r["connection_state"] == "FAILED"
    assert r["login_attempt_count"] == "5"
    assert r["last_failure_reason"] == "LOGIN_ATTEMPTS_EXHAUSTED"
    assert r["login_failure_reason"] == "AUTH_FAILED"
    assert r["last_login_attempt"] == "2026-01-01T00:01:45+00:00"
    assert [(t, dest) for t, _, _, dest in transitions(world)][-1] == (105, "FAILED")
    assert world.kinds(ID) == ["REPEATED_LOGIN_FAILURE", "LOGIN_FAILURE"]
    assert world.metric("mt5lifecycle_login_exhaustions_total") == 1
    assert world.metric("mt5lifecycle_login_attempts_total", result="AUTH_FAILED") == 5
    assert world.metric("mt5lifecycle_login_consecutive_failures", instance_id=ID) == 5
    assert world.terminal(ID).calls[-1] == "shutdown", "the terminal is stopped"
    assert lc.next_due is None, "no automatic recovery"
    assert world.credential_rows(ID) == [(ID, LOGIN, SERVER)], "credentials are kept"


def test_recovery_after_failures(world: World) -> None:
    world.terminal(ID).fail_logins(times=2)
    lc = world.lifecycle(ID)
    lc.start()
    world.play(lc, 60)
    r = world.redis(ID)
    assert (r["status"], r["login_attempt_count"]) == ("CONNECTED", "0")
    assert "login_failure_reason" not in r
    assert r["last_login_attempt"] == "2026-01-01T00:00:15+00:00"
    assert world.kinds(ID) == ["LOGIN_RECOVERED"]
    assert world.metric("mt5lifecycle_login_consecutive_failures", instance_id=ID) == 0
    assert world.metric("mt5lifecycle_login_attempts_total", result="AUTH_FAILED") == 2
    assert world.metric("mt5lifecycle_login_attempts_total", result="success") == 1


def test_network_loss_then_the_terminal_reconnects_by_itself(world: World) -> None:
    lc = connected(world)
    mt5 = world.terminal(ID)
    mt5.drop_connection()
    world.play(lc, 64)  # the check at t=60 finds it disconnected
    r = world.redis(ID)
    assert (r["status"], r["connection_state"]) == ("CONNECTING", "DISCONNECTED")
    before = logins(world)
    mt5.restore_connection()
    world.play(lc, 10)  # at t=70: connected by itself, no login
    assert lc.state is State.CONNECTED
    assert logins(world) == before, "no password was sent"
    assert world.kinds(ID) == ["LOGIN_RECOVERED"]
    assert world.redis(ID)["connection_state"] == "CONNECTED"


def test_network_loss_then_logging_in_again(world: World) -> None:
    lc = connected(world)
    mt5 = world.terminal(ID)
    mt5.drop_connection()
    world.play(lc, 75)  # at t=70 still down: it logs in, and the login times out
    r = world.redis(ID)
    assert (r["status"], r["login_failure_reason"], r["login_attempt_count"]) == (
        "CONNECTING",
        "NETWORK",
        "0",
    ), "a network failure is no password try"
    mt5.restore_connection()
    world.play(lc, 30)
    assert lc.state is State.CONNECTED
    assert world.kinds(ID) == ["LOGIN_RECOVERED"]
    assert world.metric("mt5lifecycle_login_attempts_total", result="NETWORK") >= 1


def test_terminal_crash_then_restart(world: World) -> None:
    lc = connected(world)
    world.terminal(ID).crash()
    world.play(lc, 61)
    r = world.redis(ID)
    assert (r["status"], r["last_failure_reason"]) == ("FAILED", "TERMINAL")
    world.play(lc, 60)  # restart 1 at t=90 brings it back
    assert lc.state is State.CONNECTED
    assert world.metric("mt5lifecycle_restarts_total") == 1
    assert world.kinds(ID) == ["LOGIN_RECOVERED"]
    assert world.redis(ID)["restart_count"] == "0", "a success clears the restarts"


def test_terminal_crash_restarts_exhausted(world: World) -> None:
    lc = connected(world)
    mt5 = world.terminal(ID)
    mt5.crash()
    mt5.fail_initialize(times=None)
    world.play(lc, 3600)
    r = world.redis(ID)
    assert (r["status"], r["last_failure_reason"], r["restart_count"]) == (
        "FAILED",
        "RECOVERY_EXHAUSTED",
        "3",
    )
    restarts = [t for t, event, _, dest in transitions(world) if event == "restart_due"]
    assert restarts[:3] == [90, 150, 270]
    assert world.metric("mt5lifecycle_restarts_total") == 3
    assert world.metric("mt5lifecycle_recovery_exhaustions_total") == 1
    assert "AUTO_RECOVERY_FAILURE" in world.kinds(ID)
    assert lc.next_due is None


def test_account_closed_with_open_trades_then_confirmed(world: World) -> None:
    lc = connected(world)
    mt5 = world.terminal(ID)
    mt5.open_position(7001, "EURUSD", 1.0)
    mt5.open_position(7002, "EURUSD", 1.0, close_retcodes=[10010, 10009])
    mt5.open_position(7003, "GBPUSD", 0.5, close_retcodes=10028)  # locked
    mt5.pending_order(8001, "EURUSD")
    lc.account_closed()
    mt5.delete_account(LOGIN)
    outcomes = world.sql(
        "SELECT kind, ticket, outcome, retcode FROM trade_outcomes WHERE instance_id = ? "
        "ORDER BY ticket",
        ID,
    )
    assert outcomes == [
        ("position", 7001, "CLOSED", 10009),
        ("position", 7002, "CLOSED", 10009),
        ("position", 7003, "FAILED", 10028),
        ("order", 8001, "CANCELLED", 10009),
    ]
    r = world.redis(ID)
    assert (r["status"], r["connection_state"], r["last_failure_reason"]) == (
        "ACCOUNT_CLOSED",
        "DISCONNECTED",
        "ACCOUNT_CLOSED",
    )
    assert world.credential_rows(ID) == [(ID, LOGIN, SERVER)], "kept until confirmed"
    assert "ACCOUNT_CLOSED" in world.kinds(ID)
    assert world.metric("mt5lifecycle_account_closures_total") == 1
    world.play(lc, 7 * 86400)
    assert world.redis(ID) == r, "a closed account never comes back by itself"
    with pytest.raises(InvalidTransition, match="never comes back"):
        lc.reset()
    assert world.redis(ID) == r

    lc.confirm_closure()
    assert world.credential_rows(ID) == []
    assert world.keys() == [], "every key under the prefix is gone"
    closures = world.sql(
        "SELECT status, final_status, last_failure_reason FROM instances WHERE instance_id = ?",
        ID,
    )
    assert closures == [("INACTIVE", "ACCOUNT_CLOSED", "ACCOUNT_CLOSED")]
    assert world.kinds(ID)[-1] == "CREDENTIALS_DELETED"
    assert world.metric("mt5lifecycle_credential_deletions_total") == 1
    assert f'instance_id="{ID}"'.encode() not in world.scrape(), "its series are gone"
    assert lc.state is State.INACTIVE
    for action in (lc.reset, lc.disable, lc.confirm_closure, lc.account_closed):
        with pytest.raises(InvalidTransition):
            action()
    again = Lifecycle(ID, world.backends)
    assert again.state is None
    with pytest.raises(InvalidTransition, match="closure was confirmed"):
        again.start()
    assert world.keys() == [], "a refused start writes nothing"


def test_account_closed_found_at_login(world: World) -> None:
    lc = connected(world)
    world.terminal(ID).delete_account(LOGIN)
    world.play(lc, 120)  # check at 60: dropped; at 70 the login says Invalid account
    r = world.redis(ID)
    assert (r["status"], r["login_failure_reason"]) == ("ACCOUNT_CLOSED", "ACCOUNT_CLOSED")
    assert world.sql("SELECT reason FROM login_failures WHERE instance_id = ?", ID) == [
        ("ACCOUNT_CLOSED",)
    ]


def test_ban_then_reset_after_the_ban_is_lifted(world: World) -> None:
    lc = connected(world)
    mt5 = world.terminal(ID)
    mt5.disable_account(LOGIN)
    world.play(lc, 120)
    r = world.redis(ID)
    assert (r["status"], r["last_failure_reason"]) == ("INACTIVE", "ACCOUNT_BANNED")
    assert "ACCOUNT_BANNED" in world.kinds(ID)
    assert mt5.calls[-1] == "shutdown"
    assert world.credential_rows(ID) == [(ID, LOGIN, SERVER)]
    assert lc.next_due is None
    mt5.add_account(LOGIN, PASSWORD, SERVER)  # the broker lifts the ban
    lc.reset()
    world.play(lc, 1)
    assert lc.state is State.CONNECTED
    assert world.redis(ID)["login_attempt_count"] == "0"


def test_ban_event(world: World) -> None:
    lc = connected(world)
    lc.account_banned()
    r = world.redis(ID)
    assert (r["status"], r["last_failure_reason"]) == ("INACTIVE", "ACCOUNT_BANNED")
    assert world.metric("mt5lifecycle_alerts_total", kind="ACCOUNT_BANNED") == 1


def test_disable_then_reset(world: World) -> None:
    lc = connected(world)
    lc.disable()
    r = world.redis(ID)
    assert (r["status"], r["last_failure_reason"]) == ("INACTIVE", "MANUAL")
    assert world.terminal(ID).calls[-1] == "shutdown"
    world.play(lc, 86400)
    assert world.redis(ID) == r, "nothing happens to a disabled instance"
    lc.reset()
    world.play(lc, 1)
    assert lc.state is State.CONNECTED


def test_reset_after_exhaustion(world: World) -> None:
    world.terminal(ID).fail_logins(times=5)
    lc = world.lifecycle(ID)
    lc.start()
    world.play(lc, 600)
    assert world.redis(ID)["last_failure_reason"] == "LOGIN_ATTEMPTS_EXHAUSTED"
    with pytest.raises(CredentialsRejected):
        lc.reset()  # the same credentials are not tried again unasked (SPEC 15)
    lc.reset(force=True)  # the broker unlocked the account: one more try
    assert world.redis(ID)["login_attempt_count"] == str(POLICY_ATTEMPTS - 1)
    assert "login_failure_reason" not in world.redis(ID)
    world.play(lc, 1)
    assert lc.state is State.CONNECTED
    assert world.kinds(ID)[-1] == "LOGIN_RECOVERED"


def test_a_new_process_resumes_the_stored_flow(make_world: Callable[..., World]) -> None:
    first = make_world()
    first.terminal(ID).fail_logins(times=2)
    lc = first.lifecycle(ID)
    lc.start()
    first.play(lc, 6)  # failures at t=0 and t=5; the next login is due at t=15
    first.close()
    second = make_world(clock=FakeClock(first.clock.now()))
    again = Lifecycle(ID, second.backends)
    again.start()
    assert again.state is State.CONNECTING
    second.play(again, 30)
    r = second.redis(ID)
    assert (r["status"], r["last_login_attempt"]) == ("CONNECTED", "2026-01-01T00:00:15+00:00")
    rows = second.sql("SELECT attempt FROM login_failures WHERE instance_id = ? ORDER BY seq", ID)
    assert rows == [(1,), (2,)]


def test_a_fleet_on_the_real_backends(world: World) -> None:
    fleet = Fleet(world.backends)
    ids = [f"fleet-{n}" for n in range(12)]
    for iid in ids:
        world.credentials.put(iid, CREDS)
    world.terminal("fleet-1").fail_logins(times=None)
    world.terminal("fleet-2").fail_logins(times=2)
    for iid in ids:
        fleet.add(iid)
    run_for(fleet, world.clock, 120)
    world.terminal("fleet-3").drop_connection()
    world.terminal("fleet-4").crash()
    world.terminal("fleet-5").delete_account(LOGIN)
    run_for(fleet, world.clock, 90)
    world.terminal("fleet-3").restore_connection()
    run_for(fleet, world.clock, 3600)
    states = {iid: world.redis(iid)["status"] for iid in ids}
    assert states == {iid: fleet[iid].state for iid in ids}, "Redis says what the fleet says"
    assert states["fleet-1"] == "FAILED"
    assert states["fleet-5"] == "ACCOUNT_CLOSED"
    assert {i: s for i, s in states.items() if i not in ("fleet-1", "fleet-5")} == {
        i: "CONNECTED" for i in ids if i not in ("fleet-1", "fleet-5")
    }
    fleet["fleet-5"].confirm_closure()
    assert world.redis("fleet-5") == {}
    assert world.credential_rows("fleet-5") == []
