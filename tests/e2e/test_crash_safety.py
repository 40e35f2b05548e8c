"""kill -9 mid-way, on the real backends: whoever comes next finishes the job.

A real worker process (``_victim.py``) does the flow on the shared Redis, this
module's PostgreSQL database and the test's DuckDB file, and sends itself SIGKILL at
one step (a tripwire around one port method). This process then looks at what the
dead worker left and carries on with a new ``Lifecycle`` for the id.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mt5lifecycle import InvalidTransition, Lifecycle, Policy, State
from mt5lifecycle.testing import FakeClock
from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5

from .conftest import LOGIN, PASSWORD, REDIS_HOST, REDIS_PORT, SERVER, T0, World

ID = "victim-1"
VICTIM = Path(__file__).with_name("_victim.py")

# The steps of confirm_closure's cleanup, in the order the core takes them: the
# confirmation is stored (1st commit), the credentials deleted, the closure archived,
# the deletion stored with its CREDENTIALS_DELETED notification in the outbox (2nd
# commit), the outbox handed over (to the archive, to the notifier, then dropped), and
# the live state deleted (3rd commit).
CLOSURE_STEPS = [
    pytest.param({"at": "state.commit", "when": "before"}, id="before-storing-the-cleanup"),
    pytest.param({"at": "state.commit", "when": "after"}, id="after-storing-the-cleanup"),
    pytest.param({"at": "credentials.delete", "when": "after"}, id="after-credentials-delete"),
    pytest.param({"at": "archive.confirm", "when": "before"}, id="before-closure-record-stored"),
    pytest.param({"at": "archive.confirm", "when": "after"}, id="after-closure-record-stored"),
    pytest.param(
        {"at": "state.commit", "when": "before", "nth": 2}, id="before-storing-the-deletion"
    ),
    pytest.param(
        {"at": "state.commit", "when": "after", "nth": 2}, id="after-storing-the-deletion"
    ),
    pytest.param({"at": "archive.store", "when": "after"}, id="after-history-handed-over"),
    pytest.param({"at": "notifier.notify", "when": "after"}, id="after-notification"),
    pytest.param({"at": "state.acknowledge", "when": "after"}, id="after-outbox-drained"),
    pytest.param({"at": "state.commit", "when": "before", "nth": 3}, id="before-redis-delete"),
    pytest.param({"at": "state.commit", "when": "after", "nth": 3}, id="after-redis-delete"),
]


def run_victim(world: World, key: str, **config: Any) -> None:
    """Run the worker on the world's backends; it must die by SIGKILL."""
    full = {
        "redis_host": REDIS_HOST,
        "redis_port": REDIS_PORT,
        "prefix": world.prefix,
        "conninfo": world.conninfo,
        "key": key,
        "archive": str(world.archive_path),
        "directory": str(world.directory),
        "instance_id": ID,
        "now": world.clock.now(),
        "login": LOGIN,
        "server": SERVER,
        "password": PASSWORD,
        **config,
    }
    done = subprocess.run(
        [sys.executable, str(VICTIM), json.dumps(full)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -9, f"the worker was not killed: {done.stdout}{done.stderr}"
    assert PASSWORD not in done.stderr


def closed_account(world: World) -> None:
    """An instance in ACCOUNT_CLOSED with its trades closed, in a closed world."""
    lc = world.lifecycle(ID)
    lc.start()
    world.play(lc, 1)
    world.terminal(ID).open_position(7001, "EURUSD", 1.0)
    lc.account_closed()
    assert lc.state is State.ACCOUNT_CLOSED
    world.close()  # the worker must be able to open the DuckDB file


@pytest.mark.parametrize("kill", CLOSURE_STEPS)
def test_confirm_closure_killed_at_each_step_is_finished_by_the_next_run(
    make_world: Callable[..., World], pg_key: str, kill: dict[str, Any]
) -> None:
    first = make_world()
    closed_account(first)
    run_victim(first, pg_key, mode="closure", kill=kill)

    world = make_world(clock=FakeClock(first.clock.now()))
    left = world.redis(ID)
    if not world.credential_rows(ID):
        # Credentials are only ever deleted after the confirmation is stored.
        assert left == {} or left["due"] in ("CLEANUP", "PURGE"), left
    if left.get("due") not in ("CLEANUP", "PURGE") and left:
        assert left["status"] == "ACCOUNT_CLOSED", "killed before it began: nothing changed"
        assert world.credential_rows(ID) == [(ID, LOGIN, SERVER)]
    lc = Lifecycle(ID, world.backends)
    if left:
        lc.confirm_closure()
    else:
        # The worker died after deleting the live state: there is nothing left to
        # confirm, and the archive already says so.
        with pytest.raises(InvalidTransition):
            lc.confirm_closure()
    if not left and world.keys():
        # Deleted, with its last notification still in the outbox: whoever drives the
        # fleet next hands it over (a lone Lifecycle for the id does it on reading it).
        lc.run_due()
    assert world.credential_rows(ID) == []
    assert world.keys() == []
    # The closure's CREDENTIALS_DELETED reached a notifier: the dead worker's, or ours.
    assert world.kinds(ID).count("CREDENTIALS_DELETED") <= 1
    rows = world.sql("SELECT status FROM instances WHERE instance_id = ?", ID)
    assert rows == [("INACTIVE",)], "exactly one closure record"
    assert world.sql("SELECT outcome FROM trade_outcomes WHERE instance_id = ?", ID) == [
        ("CLOSED",)
    ]
    confirmed = world.sql(
        "SELECT count(*) FROM transitions WHERE instance_id = ? AND event = 'confirm_closure'", ID
    )
    # The transition record is buffered by the archive: a kill before its flush loses
    # the line of history, never the closure (docs/reliability.md).
    assert confirmed[0][0] <= 1
    again = Lifecycle(ID, world.backends)
    with pytest.raises(InvalidTransition, match="closure was confirmed"):
        again.start()
    assert world.keys() == []


@pytest.mark.parametrize("when", ["before", "after"])
def test_login_killed_mid_way_frees_the_lock_and_counts_exactly(
    make_world: Callable[..., World], pg_key: str, when: str
) -> None:
    # Redis expires the lock in real time, so this test waits for it: 0.2 s keeps the
    # wait short while staying far longer than one login round trip here.
    policy = Policy(lock_ttl=0.2)
    first = make_world(policy=policy)
    first.close()
    run_victim(
        first,
        pg_key,
        mode="login",
        fail_auth=2,
        batch_size=1,
        policy={"lock_ttl": 0.2},
        kill={"at": "mt5.login", "when": when, "nth": 3},
    )
    lock_key = f"{first.prefix}:{ID}:login_lock"
    world = make_world(clock=FakeClock(T0 + 15), policy=policy)
    r = world.redis(ID)
    assert (r["status"], r["login_attempt_count"]) == ("CONNECTING", "2")
    assert r["next_due"] == repr(T0 + 15), "the third login is still due"
    mt5 = world.terminal(ID)
    mt5.fail_logins(times=1)
    lc = Lifecycle(ID, world.backends, policy)
    lc.start()
    if world.client.pttl(lock_key) > 50:
        lc.run_due()
        assert mt5.calls == [], "no login while the dead worker's lock holds"
        assert world.redis(ID)["login_attempt_count"] == "2"
    deadline = time.monotonic() + 5
    while world.client.exists(lock_key) and time.monotonic() < deadline:
        time.sleep(0.02)  # a real Redis TTL, not logic: see lock_ttl above
    assert not world.client.exists(lock_key), "the lock expired by itself"
    world.clock.advance(1)
    world.play(lc, 1)
    r = world.redis(ID)
    assert (r["status"], r["login_attempt_count"]) == ("CONNECTING", "3"), "counted once"
    world.play(lc, 60)
    assert lc.state is State.CONNECTED
    attempts = world.sql(
        "SELECT attempt FROM login_failures WHERE instance_id = ? ORDER BY seq", ID
    )
    assert attempts == [(1,), (2,), (3,)]


def _attached_terminal(world: World, positions: list[int]) -> FakeMetaTrader5:
    """The instance's terminal as the next worker finds it: running, logged in."""
    mt5 = world.terminal(ID)
    for ticket in positions:
        mt5.open_position(ticket, "EURUSD", 1.0)
    assert mt5.initialize(login=LOGIN, password=PASSWORD, server=SERVER)
    return mt5


def _closing_killed_after_the_first_close(make_world: Callable[..., World], key: str) -> World:
    first = make_world()
    first.close()
    run_victim(
        first,
        key,
        mode="close",
        positions=[7001, 7002],
        batch_size=1,
        kill={"at": "mt5.order_send", "when": "after"},
    )
    world = make_world(clock=FakeClock(first.clock.now()))
    r = world.redis(ID)
    # The whole plan was stored before the first ticket was touched.
    assert (r["status"], r["due"]) == ("ACCOUNT_CLOSED", "SETTLE_TRADE"), "the closing is due"
    assert [t["ticket"] for t in json.loads(r["tickets"])] == [7001, 7002]
    # 7001 was closed at the broker by the dead worker; 7002 is still open.
    _attached_terminal(world, [7002])
    lc = Lifecycle(ID, world.backends)
    lc.start()
    world.play(lc, 1)
    return world


def test_closing_trades_killed_mid_way_is_finished_by_the_next_worker(
    make_world: Callable[..., World], pg_key: str
) -> None:
    world = _closing_killed_after_the_first_close(make_world, pg_key)
    r = world.redis(ID)
    assert r["status"] == "ACCOUNT_CLOSED" and "due" not in r, "the closing finished"
    sent = [request["position"] for request in world.terminal(ID).requests]
    assert sent == [7002], "only what was still open was closed"
    outcomes = world.sql("SELECT ticket, outcome FROM trade_outcomes WHERE instance_id = ?", ID)
    assert (7002, "CLOSED") in outcomes
    Lifecycle(ID, world.backends).confirm_closure()
    assert world.keys() == [] and world.credential_rows(ID) == []


def test_closing_trades_killed_mid_way_keeps_every_outcome_already_recorded(
    make_world: Callable[..., World], pg_key: str
) -> None:
    first = make_world()
    first.close()
    # Killed in the second close request: the first position's outcome was recorded
    # (and flushed) before the second was touched.
    run_victim(
        first,
        pg_key,
        mode="close",
        positions=[7001, 7002],
        batch_size=1,
        kill={"at": "mt5.order_send", "when": "before", "nth": 2},
    )
    world = make_world(clock=FakeClock(first.clock.now()))
    _attached_terminal(world, [7002])
    lc = Lifecycle(ID, world.backends)
    lc.start()
    world.play(lc, 1)
    tickets = world.sql("SELECT ticket FROM trade_outcomes WHERE instance_id = ?", ID)
    assert sorted(t for (t,) in tickets) == [7001, 7002]


def test_closing_trades_killed_between_a_fill_and_its_record_keeps_its_outcome(
    make_world: Callable[..., World], pg_key: str
) -> None:
    world = _closing_killed_after_the_first_close(make_world, pg_key)
    outcomes = world.sql(
        "SELECT ticket, outcome FROM trade_outcomes WHERE instance_id = ? ORDER BY ticket", ID
    )
    # 7001 was in progress when the worker died: gone from the terminal, its outcome
    # is read back (never sent again), and each ticket has exactly one.
    assert outcomes == [(7001, "CLOSED"), (7002, "CLOSED")]
    sent = [request["position"] for request in world.terminal(ID).requests]
    assert sent == [7002]


def test_a_new_worker_keeps_a_connected_instance_connected(
    make_world: Callable[..., World],
) -> None:
    first = make_world()
    lc = first.lifecycle(ID)
    lc.start()
    first.play(lc, 1)
    mt5 = first.terminal(ID)
    first.close()
    mt5.shutdown()  # the worker dies: its IPC link goes, the terminal runs on
    world = make_world(clock=FakeClock(first.clock.now()))
    world.terminals[ID] = mt5
    again = Lifecycle(ID, world.backends)
    again.start()
    world.play(again, 1)
    assert again.state is State.CONNECTED
