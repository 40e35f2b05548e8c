"""Many processes, one instance: no lost update, never two lock holders, and an
outbox entry for every write that landed and none for a refused one.

Real processes against the real Redis, because the guarantees are about what
separate clients see. The run is short by default (``RACE_SECONDS``); set
``MT5L_RACE_SECONDS=10`` for the issue's full ten seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier

import attrs
import pytest
import redis

from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.core.records import TransitionRecord
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.core.states import State
from mt5lifecycle.errors import ConcurrentUpdate, LockLost

if sys.platform == "win32":
    pytest.skip("POSIX only: a forkserver pool and signal.pause()", allow_module_level=True)

WORKERS = 8
RACE_SECONDS = float(os.environ.get("MT5L_RACE_SECONDS", "1.0"))
LOCKED, UNLOCKED = "locked-acct", "unlocked-acct"

# forkserver, not fork: a child forked from the test process would inherit its Redis
# sockets and threads. The server imports this module once; each worker is a cheap
# fork of it rather than a fresh interpreter.
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload([__name__])


def record(instance_id: str, count: int) -> TransitionRecord:
    """What the write that makes ``restart_count == count`` has to archive."""
    return TransitionRecord(
        instance_id=instance_id,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        event=f"bump-{count}",
        source=State.CONNECTING,
        dest=State.CONNECTING,
        reason=None,
    )


def increment(store: RedisStateStore, instance_id: str) -> int:
    """One read-modify-write, restart_count += 1, under the version alone: 1 if it landed."""
    stored = store.load(instance_id)
    assert stored is not None
    count = stored.snapshot.restart_count + 1
    bumped = attrs.evolve(stored.snapshot, restart_count=count)
    try:
        store.commit(
            instance_id,
            bumped,
            expected_version=stored.version,
            outbox=[record(instance_id, count)],
        )
    except ConcurrentUpdate:
        return 0
    return 1


def worker(prefix: str, barrier: Barrier, seconds: float, out: Connection) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379)
    store = RedisStateStore(client, prefix=prefix)
    side = f"{prefix}:holders"
    landed = {LOCKED: 0, UNLOCKED: 0}
    refused = 0
    barrier.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # Under the lock: each holder announces itself and checks it is alone.
        lock = store.acquire_lock(LOCKED, 5.0)
        if lock is not None:
            if client.incr(side) != 1:
                client.incr(f"{prefix}:overlaps")
            stored = store.load(LOCKED)
            assert stored is not None
            count = stored.snapshot.restart_count + 1
            bumped = attrs.evolve(stored.snapshot, restart_count=count)
            try:
                store.commit(
                    LOCKED,
                    bumped,
                    expected_version=stored.version,
                    lock=lock,
                    outbox=[record(LOCKED, count)],
                )
                landed[LOCKED] += 1
            except (ConcurrentUpdate, LockLost):
                refused += 1
            client.decr(side)
            store.release_lock(lock)
        # Without the lock: the version alone must keep every update.
        done = increment(store, UNLOCKED)
        landed[UNLOCKED] += done
        refused += 1 - done
    out.send((landed, refused))
    out.close()
    client.close()


def hold_the_lock(prefix: str, ttl: float, out: Connection) -> None:
    store = RedisStateStore(redis.Redis(host="127.0.0.1", port=6379), prefix=prefix)
    lock = store.acquire_lock(LOCKED, ttl)
    out.send(lock is not None)
    # Holds the lock until killed: this is the holder that dies mid-login.
    signal.pause()


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"mt5l-race-{uuid.uuid4().hex}"
    yield name
    raw = redis.Redis(host="127.0.0.1", port=6379)
    leftovers = list(raw.scan_iter(match=f"{name}*", count=1000))
    if leftovers:
        raw.delete(*leftovers)
    raw.close()


def test_racing_processes_lose_no_update_and_never_share_the_lock(prefix: str) -> None:
    raw = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    store = RedisStateStore(raw, prefix=prefix)
    for instance_id in (LOCKED, UNLOCKED):
        store.commit(instance_id, Snapshot(status=State.CONNECTING), expected_version=0)
    barrier = CONTEXT.Barrier(WORKERS)
    pipes = [CONTEXT.Pipe(duplex=False) for _ in range(WORKERS)]
    processes = [
        CONTEXT.Process(target=worker, args=(prefix, barrier, RACE_SECONDS, send))
        for _, send in pipes
    ]
    for process in processes:
        process.start()
    results = [receive.recv() for receive, _ in pipes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    landed = {key: sum(r[0][key] for r in results) for key in (LOCKED, UNLOCKED)}
    refused = sum(r[1] for r in results)
    for instance_id in (LOCKED, UNLOCKED):
        stored = store.load(instance_id)
        assert stored is not None
        assert stored.snapshot.restart_count == landed[instance_id]
        assert stored.version == landed[instance_id] + 1
        # One entry per write that landed, in the order they landed: a refused write
        # (a stale version, a lost lock) left none.
        records = store.outbox([instance_id])[instance_id].records
        events = [r.event for r in records if isinstance(r, TransitionRecord)]
        assert len(events) == len(records)
        assert events == [f"bump-{n}" for n in range(1, landed[instance_id] + 1)]
        assert stored.pending == landed[instance_id]
    assert landed[LOCKED] > 0
    assert landed[UNLOCKED] > 0
    # The unlocked writers did collide, so the version check was exercised.
    assert refused > 0
    assert raw.get(f"{prefix}:overlaps") is None
    assert raw.get(f"{prefix}:holders") == "0"
    raw.close()


def test_a_killed_holder_s_lock_is_taken_after_its_ttl(prefix: str) -> None:
    raw = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    store = RedisStateStore(raw, prefix=prefix)
    receive, send = CONTEXT.Pipe(duplex=False)
    holder = CONTEXT.Process(target=hold_the_lock, args=(prefix, 0.3, send))
    holder.start()
    assert receive.recv() is True

    holder.kill()  # SIGKILL
    holder.join()

    assert holder.exitcode == -signal.SIGKILL
    assert store.acquire_lock(LOCKED, 5.0) is None
    # Real time, unavoidably: only Redis's own clock expires the dead holder's key
    # (PX 300 ms, less whatever the spawn took). Sleep just past what Redis reports.
    remaining = raw.pttl(f"{prefix}:{LOCKED}:login_lock")
    assert 0 < remaining <= 300
    time.sleep(remaining / 1000 + 0.02)
    assert store.acquire_lock(LOCKED, 5.0) is not None
    raw.close()
