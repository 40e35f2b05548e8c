"""One implementation of each step: a fleet that groups its writes decides what one
that does not decides.

A ``Fleet`` with a worker pool drives its due instances from several threads, and
their writes share round trips through ``GroupCommitStore``; a ``Fleet`` of one worker
writes them one by one. The same random scripts (policies, broker behaviour, operator
actions, clock jumps) go through both, on the in-memory store and on the real Redis,
and everything each instance stored, archived and was told must be the same.

Each instance has its own broker server here: a server outage is decided across
instances (the first of them to fail takes it down), so which instance announces it
depends on the order instances run in, which is exactly what grouping may change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt5lifecycle import Credentials, CredentialsRejected, Fleet, InvalidTransition, Policy, Reason
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.builtin.memory import MemoryArchive, MemoryStateStore
from mt5lifecycle.ports import StateStore
from mt5lifecycle.runtime._group_commit import GroupCommitStore
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends, run_for

URL = "redis://127.0.0.1:6379/0"
T0 = 1767225600.0

policies = st.builds(
    Policy,
    max_login_attempts=st.integers(1, 4),
    login_backoff=st.lists(st.sampled_from([1.0, 5.0, 20.0]), min_size=1, max_size=3),
    network_retry_delay=st.sampled_from([2.0, 10.0]),
    max_network_retries=st.integers(0, 2),
    max_restarts=st.integers(0, 2),
    restart_backoff=st.lists(st.sampled_from([5.0, 30.0]), min_size=1, max_size=2),
    connection_check_interval=st.sampled_from([15.0, 60.0]),
)

broker_changes = st.one_of(
    st.tuples(
        st.just("fail"),
        st.sampled_from([Reason.AUTH_FAILED, Reason.NETWORK, Reason.TERMINAL]),
        st.integers(1, 6),
    ),
    st.tuples(
        st.sampled_from(["drop", "restore", "crash", "close", "ban", "trades", "fail_restarts"]),
        st.none(),
        st.integers(0, 3),
    ),
)
operator = st.sampled_from(
    ["reset", "reset_force", "disable", "confirm_closure", "connection_lost", "replace"]
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("broker"), st.integers(0, 3), broker_changes),
        st.tuples(st.just("operator"), st.integers(0, 3), operator),
        st.tuples(st.just("wait"), st.integers(0, 3), st.sampled_from([1.0, 10.0, 45.0, 200.0])),
    ),
    min_size=1,
    max_size=25,
)


def _apply_broker(broker: FakeBroker, iid: str, change: tuple[str, Any, int]) -> None:
    kind, reason, n = change
    if kind == "fail":
        broker.fail_logins(iid, reason, times=n)
    elif kind == "drop":
        broker.drop_connection(iid)
    elif kind == "restore":
        broker.restore_connection(iid)
    elif kind == "crash":
        broker.crash_terminal(iid)
    elif kind == "close":
        broker.close_account(iid)
    elif kind == "ban":
        broker.ban_account(iid)
    elif kind == "trades":
        broker.open_position(iid, 100 + n, "EURUSD", 1.0, close_retcode=[10004, 10010, 10009])
        broker.pending_order(iid, 200 + n, "EURUSD")
    else:
        broker.fail_restarts(iid, times=n)


def _operate(fleet: Fleet, iid: str, action: str) -> str:
    if iid not in fleet:
        return "gone"
    lifecycle = fleet[iid]
    try:
        if action == "reset":
            lifecycle.reset(by="op")
        elif action == "reset_force":
            lifecycle.reset(force=True, by="op")
        elif action == "replace":
            fleet.backends.credentials.put(iid, Credentials(5550000, f"srv-{iid}", "n3w"))
        else:
            getattr(lifecycle, action)()
    except (InvalidTransition, CredentialsRejected) as refused:
        return type(refused).__name__
    return "done"


def _play(
    state: StateStore, workers: int, policy: Policy, script: list[tuple[str, int, Any]]
) -> dict[str, Any]:
    clock = FakeClock(T0)
    broker = FakeBroker(clock)
    backends = attrs.evolve(memory_backends(broker=broker, clock=clock), state=state)
    ids = [f"d{n}" for n in range(4)]
    for n, iid in enumerate(ids):
        backends.credentials.put(iid, Credentials(5550000 + n, f"srv-{iid}", "pw"))
    fleet = Fleet(backends, policy, workers=workers)
    assert isinstance(fleet.backends.state, GroupCommitStore) == (workers > 1)
    fleet.add_many(ids)
    answers = []
    for kind, who, what in script:
        iid = ids[who]
        if kind == "broker":
            _apply_broker(broker, iid, what)
        elif kind == "operator":
            answers.append(_operate(fleet, iid, what))
        run_for(fleet, clock, what if kind == "wait" else 0.0)
    run_for(fleet, clock, 300.0)
    fleet.close()
    archive, notifier = backends.archive, backends.notifier
    assert isinstance(archive, MemoryArchive) and isinstance(notifier, RecordingNotifier)
    stored = state.load_many(ids)
    return {
        "answers": answers,
        "stored": {i: s.snapshot for i, s in stored.items()},
        "transitions": {
            i: [(r.at, r.event, r.source, r.dest, r.reason) for r in archive.history(i)]
            for i in ids
        },
        "failures": {
            i: [(r.at, r.attempt, r.reason, r.code) for r in archive.failures(i)] for i in ids
        },
        "outcomes": {
            i: [(r.kind, r.ticket, r.outcome, r.retcode) for r in archive.outcomes(i)] for i in ids
        },
        "audits": sorted((r.instance_id, r.at, r.action, r.outcome) for r in archive.audits),
        "closures": sorted(archive.closures),
        "notifications": {
            i: [
                (n.at, n.kind, n.reason, n.message)
                for n in notifier.notifications
                if n.instance_id == i
            ]
            for i in ids
        },
        "logins": {i: broker.login_times(i) for i in ids},
    }


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(URL)
    client.ping()
    yield client
    client.close()


def _drop(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(policy=policies, script=steps)
def test_grouped_and_one_by_one_fleets_agree_in_memory(
    policy: Policy, script: list[tuple[str, int, Any]]
) -> None:
    one = _play(MemoryStateStore(FakeClock(T0)), 1, policy, script)
    grouped = _play(MemoryStateStore(FakeClock(T0)), 8, policy, script)
    assert grouped == one


@settings(SETTINGS, max_examples=15)
@given(policy=policies, script=steps)
def test_grouped_and_one_by_one_fleets_agree_on_redis(
    redis_client: redis.Redis, policy: Policy, script: list[tuple[str, int, Any]]
) -> None:
    prefixes = [f"diff-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        one = _play(RedisStateStore(redis_client, prefix=prefixes[0]), 1, policy, script)
        grouped = _play(RedisStateStore(redis_client, prefix=prefixes[1]), 8, policy, script)
    finally:
        for prefix in prefixes:
            _drop(redis_client, prefix)
    assert grouped == one
