"""The outbox on the real backends: no kill -9 and no Redis outage loses an alert or a record.

A worker process (``_victim.py``) exhausts an instance's login attempts on the shared
Redis, this module's PostgreSQL database and the test's DuckDB file, delivering its
alerts to a file, and dies by SIGKILL at one step of the relay. A second worker (a
``Fleet`` in this process, on the same backends and the same file) then takes the
instance over. Whatever the step, every alert reaches the file at least once, under
one id however often, and every transition reaches the archive once (SPEC 14).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis

from mt5lifecycle import AlertKind, Backends, Fleet, Lifecycle, Policy, Reason, State
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.core.records import Notification
from mt5lifecycle.testing import FakeClock, run_for

from ._victim import FileNotifier
from .conftest import CREDS, World
from .test_backend_outages import RedisServer, redis_server  # noqa: F401 (a fixture)
from .test_crash_safety import ID, run_victim

# Five wrong passwords: REPEATED_LOGIN_FAILURE after the third, LOGIN_FAILURE at the
# fifth; each transition stored with its alert and its records in one write, then
# handed to the archive, the notifier, and acknowledged.
RELAY_STEPS = [
    pytest.param(
        {"at": "state.commit", "when": "after", "only": "notifications"},
        id="after-the-first-alert-is-stored",
    ),
    pytest.param(
        {"at": "state.commit", "when": "after", "only": "notifications", "nth": 2},
        id="after-the-last-alert-is-stored",
    ),
    pytest.param({"at": "archive.store", "when": "before"}, id="before-the-first-records"),
    pytest.param({"at": "archive.store", "when": "after", "nth": 3}, id="after-some-records"),
    pytest.param({"at": "notifier.notify", "when": "before"}, id="before-the-first-alert"),
    pytest.param({"at": "notifier.notify", "when": "after"}, id="after-the-first-alert"),
    pytest.param({"at": "notifier.notify", "when": "after", "nth": 2}, id="after-the-last-alert"),
    pytest.param({"at": "state.acknowledge", "when": "before"}, id="before-acknowledging"),
    pytest.param({"at": "state.acknowledge", "when": "after", "nth": 4}, id="after-acknowledging"),
]

EXPECTED = [AlertKind.REPEATED_LOGIN_FAILURE.value, AlertKind.LOGIN_FAILURE.value]


def delivered_once_each(lines: list[dict[str, str]]) -> list[str]:
    """The kinds in the order first delivered; a repeat must be the same alert (same id)."""
    first: dict[str, str] = {}
    for line in lines:
        assert first.setdefault(line["id"], line["kind"]) == line["kind"], line
    return list(first.values())


def outbox_keys(world: World) -> list[str]:
    keys: list[str] = world.keys()
    return [k for k in keys if k.endswith((":notifications", ":records"))]


@pytest.mark.parametrize("kill", RELAY_STEPS)
def test_a_worker_killed_at_any_step_of_the_relay_loses_no_alert_and_no_record(
    make_world: Callable[..., World], pg_key: str, tmp_path: Path, kill: dict[str, Any]
) -> None:
    alerts = tmp_path / "alerts.jsonl"
    first = make_world()
    run_victim(
        first,
        pg_key,
        mode="login",
        fail_auth=5,
        kill=kill,
        notify_file=str(alerts),
        # The archive writes each record as it comes, so "some records" is a real step.
        batch_size=1,
    )
    first.close()
    by_victim = FileNotifier(str(alerts)).delivered()

    # The next worker: same backends and file, a terminal that refuses the password too.
    world = make_world(clock=FakeClock(first.clock.now()))
    world.terminal(ID).fail_logins(times=5)
    notifier = FileNotifier(str(alerts))
    fleet = Fleet(attrs.evolve(world.backends, notifier=notifier), workers=2)
    try:
        fleet.add(ID)
        run_for(fleet, world.clock, 3600)
        instance = fleet[ID]
        assert instance.state is State.FAILED
        snapshot = instance.snapshot()
        assert snapshot is not None
        assert snapshot.last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED
    finally:
        fleet.close()

    lines = notifier.delivered()
    assert lines[: len(by_victim)] == by_victim
    assert delivered_once_each(lines) == EXPECTED
    # A repeat only ever follows a kill between the hand-over and its acknowledgement.
    repeats = [n for n, seen in Counter(line["id"] for line in lines).items() if seen > 1]
    assert len(repeats) <= 1, lines
    # Every transition in the archive once, the five failed logins with it.
    events = world.sql(
        "SELECT event, count(*) FROM transitions WHERE instance_id = ? GROUP BY event", ID
    )
    assert dict(events) == {"start": 1, "login_failed": 5}, events
    failures = world.sql("SELECT count(*) FROM login_failures WHERE instance_id = ?", ID)
    assert failures == [(5,)]
    assert outbox_keys(world) == []


class KillsRedisOnce:
    """A notifier whose first call takes Redis down, after taking the alert: the
    acknowledgement that follows cannot be stored."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.taken: list[Notification] = []

    def notify(self, notification: Notification) -> None:
        self.taken.append(notification)
        if len(self.taken) == 1:
            self.server.kill()


def test_redis_down_while_the_relay_runs_loses_nothing_and_delivery_resumes(
    make_world: Callable[..., World],
    redis_server: RedisServer,  # noqa: F811 (the fixture)
) -> None:
    world = make_world()
    client: redis.Redis = redis_server.client()
    state = RedisStateStore(client, prefix=world.prefix)
    notifier = KillsRedisOnce(redis_server)
    backends: Backends = attrs.evolve(world.backends, state=state, notifier=notifier)
    world.credentials.put(ID, CREDS)
    world.terminal(ID).fail_logins(times=5)
    lc = Lifecycle(ID, backends, Policy())
    lc.start()
    # The first failures are stored, the third with its alert; the notifier takes it
    # and Redis goes away before the alert is acknowledged.
    run_for(lc, world.clock, 30)
    assert len(notifier.taken) == 1
    assert redis_server.process is not None and redis_server.process.poll() is not None

    redis_server.start()  # the same append-only file: every stored write is back
    run_for(lc, world.clock, 3600)
    assert lc.state is State.FAILED
    kinds = [n.kind.value for n in {n.id: n for n in notifier.taken}.values()]
    assert kinds == EXPECTED
    # The one the outage interrupted came again under its id; nothing else twice.
    assert len(notifier.taken) <= len(EXPECTED) + 1
    assert [k for k in client.scan_iter(match=f"{world.prefix}:*:notifications")] == []
    assert [k for k in client.scan_iter(match=f"{world.prefix}:*:records")] == []
