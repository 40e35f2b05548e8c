"""Workers -> Redis stream -> one archiver -> DuckDB, against the real Redis on 6379."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mt5lifecycle.adapters import _archive_codec as codec
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.redis.queue import Archiver, RedisStreamArchive
from mt5lifecycle.core.records import (
    ArchiveRecord,
    ClosureRecord,
    LoginFailureRecord,
    Outcome,
    TradeOutcomeRecord,
    TransitionRecord,
)
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.core.states import Reason, State
from mt5lifecycle.errors import StoreUnavailable
from tests.adapters.test_duckdb_archive import Metrics

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    # No skip: a missing Redis must fail these tests.
    c = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    c.ping()
    yield c
    c.close()


@pytest.fixture
def stream(client: redis.Redis) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}:archive"
    yield name
    client.delete(name, f"{name}:confirmed", f"{name}:dead")


def transition(i: int, instance_id: str = "acc-1") -> TransitionRecord:
    return TransitionRecord(
        instance_id=instance_id,
        at=T0 + timedelta(seconds=i),
        event="login_failed",
        source=State.CONNECTING,
        dest=State.FAILED,
        reason=Reason.LOGIN_ATTEMPTS_EXHAUSTED,
        record_id=f"t-{instance_id}-{i}",
    )


def closure(instance_id: str = "acc-1") -> ClosureRecord:
    return ClosureRecord(
        instance_id=instance_id,
        at=T0,
        final=Snapshot(status=State.ACCOUNT_CLOSED, last_login_attempt=T0),
    )


def transitions_in(path: Path) -> tuple[int, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute("SELECT count(*), count(DISTINCT record_id) FROM transitions").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def drain(archiver: Archiver) -> int:
    total = 0
    while (n := archiver.run_once(block=0)) > 0:
        total += n
    return total


# -- the codec -------------------------------------------------------------------------


def test_codec_round_trips_every_record_type() -> None:
    records: list[ArchiveRecord] = [
        transition(0),
        TransitionRecord(
            instance_id="a", at=T0, event="start", source=None, dest=State.CONNECTING, reason=None
        ),
        LoginFailureRecord(
            instance_id="a", at=T0, attempt=1, reason=Reason.NETWORK, code=None, message="IPC"
        ),
        TradeOutcomeRecord(
            instance_id="a",
            at=T0,
            kind="order",
            ticket=7,
            symbol="XAUUSD",
            volume=0.0,
            outcome=Outcome.CANCELLED,
            retcode=10009,
        ),
        closure(),
    ]
    for record in records:
        assert codec.decode(codec.encode(record)) == record
    assert codec.decode_many(codec.encode_many(records)) == records


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "nope"}', "unknown archive record type"),
        ('{"type": "closure", "instance_id": "a"}', "lacks the field"),
        (codec.encode(closure())[:-1] + ',"password":"x"}', "unknown fields"),
        (codec.encode(transition(0)).replace("+00:00", ""), "timezone-aware"),
        (codec.encode(transition(0)).replace('"FAILED"', '"MAYBE"'), "not a State"),
        ("[1]", "JSON object"),
        (codec.encode(transition(0)).replace('"acc-1"', '"../etc"'), "invalid instance id"),
    ],
)
def test_codec_refuses_what_it_cannot_read_exactly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec.decode(text) if not text.startswith("[") else codec.decode_many(text)


# -- the worker side -------------------------------------------------------------------


def test_a_closure_is_confirmed_at_once_through_the_set(client: redis.Redis, stream: str) -> None:
    archive = RedisStreamArchive(client, stream=stream)
    assert not archive.is_confirmed("acc-1")
    archive.write([transition(0), closure()])
    assert archive.pending == 0
    assert client.xlen(stream) == 1
    assert archive.is_confirmed("acc-1")
    assert client.sismember(f"{stream}:confirmed", "acc-1")


def test_a_redis_fault_never_fails_write_and_the_entry_follows_later(
    client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    # A key of the wrong type makes the real server refuse the XADD.
    client.set(stream, "not a stream")
    archive = RedisStreamArchive(client, stream=stream, metrics=metrics, retry_interval=0)
    with caplog.at_level(logging.ERROR, logger="mt5lifecycle.archive"):
        archive.write([transition(0), closure()])
    assert archive.pending == 2
    assert metrics.errors == [("archive", None)]
    assert "unavailable" in caplog.text
    assert archive.is_confirmed("acc-1")
    client.delete(stream)
    archive.flush()
    assert archive.pending == 0
    entries: Any = client.xrange(stream)
    (entry,) = entries
    assert codec.decode_many(entry[1][b"records"]) == [transition(0), closure()]


def unreachable() -> redis.Redis:
    # Nothing listens on port 1: refused at once; no retries, so no waiting either.
    return redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )


def test_an_unreachable_redis_is_store_unavailable_for_is_confirmed() -> None:
    dead = unreachable()
    metrics = Metrics()
    archive = RedisStreamArchive(dead, metrics=metrics)
    archive.write([transition(0)])  # does not raise
    assert archive.pending == 1
    assert metrics.errors == [("archive", None)]
    with pytest.raises(StoreUnavailable):
        archive.is_confirmed("acc-1")
    dead.close()


def test_the_buffer_bound_drops_oldest_entries_but_never_a_closure() -> None:
    dead = unreachable()
    archive = RedisStreamArchive(dead, max_buffer=2, retry_interval=3600)
    archive.write([closure()])
    for i in range(3):
        archive.write([transition(i)])
    assert archive.pending == 2
    assert archive.dropped == 2
    assert archive.is_confirmed("acc-1")
    dead.close()


# -- the archiver ------------------------------------------------------------------------


def test_the_archiver_moves_every_entry_to_duckdb_and_empties_the_stream(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    workers = [RedisStreamArchive(client, stream=stream) for _ in range(2)]
    for i in range(50):
        workers[i % 2].write([transition(i)])
    workers[0].write([closure("gone-1")])
    archive = DuckDBArchive(tmp_path / "a.duckdb", background=False)
    archiver = Archiver(client, archive, stream=stream, consumer="c1", batch_size=7)
    assert drain(archiver) == 51
    assert client.xlen(stream) == 0
    assert client.xpending(stream, "archiver")["pending"] == 0
    assert archive.is_confirmed("gone-1")
    assert len(archive.history("acc-1")) == 50
    archive.close()


def test_entries_committed_but_not_acknowledged_land_once(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    producer = RedisStreamArchive(client, stream=stream)
    for i in range(10):
        producer.write([transition(i)])
    archive = DuckDBArchive(tmp_path / "a.duckdb", background=False)
    archiver = Archiver(client, archive, stream=stream, consumer="c1")
    archiver.setup()
    # What an archiver killed between its commit and its XACK leaves behind.
    reply: Any = client.xreadgroup("archiver", "c1", {stream: ">"})
    ((_, entries),) = reply
    archive.store([r for _, fields in entries for r in codec.decode_many(fields[b"records"])])
    assert client.xpending(stream, "archiver")["pending"] == 10

    restarted = Archiver(client, archive, stream=stream, consumer="c1")
    assert drain(restarted) == 10
    assert client.xpending(stream, "archiver")["pending"] == 0
    archive.close()
    assert transitions_in(tmp_path / "a.duckdb") == (10, 10)


def test_entries_of_a_dead_consumer_are_claimed(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    producer = RedisStreamArchive(client, stream=stream)
    for i in range(5):
        producer.write([transition(i)])
    archive = DuckDBArchive(tmp_path / "a.duckdb", background=False)
    Archiver(client, archive, stream=stream).setup()
    client.xreadgroup("archiver", "dead-host", {stream: ">"})  # read, never acknowledged
    live = Archiver(client, archive, stream=stream, consumer="live", claim_idle=0)
    assert drain(live) == 5
    assert client.xpending(stream, "archiver")["pending"] == 0
    archive.close()
    assert transitions_in(tmp_path / "a.duckdb") == (5, 5)


def test_an_undecodable_entry_goes_to_the_dead_letter_stream(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    metrics = Metrics()
    client.xadd(stream, {"v": "1", "records": '[{"type": "unknown"}]'})
    RedisStreamArchive(client, stream=stream).write([transition(0)])
    archive = DuckDBArchive(tmp_path / "a.duckdb", background=False)
    archiver = Archiver(client, archive, stream=stream, metrics=metrics)
    assert drain(archiver) == 2
    assert client.xlen(f"{stream}:dead") == 1
    assert metrics.errors == [("archive", None)]
    assert len(archive.history("acc-1")) == 1
    archive.close()


def test_a_failing_duckdb_acknowledges_nothing_until_it_works(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    RedisStreamArchive(client, stream=stream).write([transition(0), transition(1)])
    path = tmp_path / "later" / "a.duckdb"
    archive = DuckDBArchive(path, background=False)
    archiver = Archiver(client, archive, stream=stream)
    with pytest.raises(StoreUnavailable):
        archiver.run_once(block=0)
    assert client.xpending(stream, "archiver")["pending"] == 1
    path.parent.mkdir()
    assert drain(archiver) == 1
    archive.close()
    assert transitions_in(path) == (2, 2)


def test_the_archiver_seeds_the_confirmed_set_from_the_file(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    archive = DuckDBArchive(tmp_path / "a.duckdb", background=False)
    archive.write([closure("old-1")])
    Archiver(client, archive, stream=stream).setup()
    assert RedisStreamArchive(client, stream=stream).is_confirmed("old-1")
    archive.close()


# -- four worker processes, an archiver killed and restarted -------------------------------

_WORKER = """
import sys
from datetime import datetime, timezone
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from mt5lifecycle.adapters.redis.queue import RedisStreamArchive
from mt5lifecycle.core.records import TransitionRecord
from mt5lifecycle.core.states import State

stream, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = redis.Redis(host="127.0.0.1", port=6379)
archive = RedisStreamArchive(client, stream=stream)
for i in range(count):
    if i == count // 2:
        print("half", flush=True)
        sys.stdin.readline()
    archive.write([TransitionRecord(
        instance_id=f"worker-{worker}", at=datetime.now(timezone.utc), event="start",
        source=None, dest=State.CONNECTING, reason=None)])
archive.close()
assert archive.pending == 0
"""

_ARCHIVER = """
import signal, sys, threading
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.redis.queue import Archiver

path, stream = sys.argv[1], sys.argv[2]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
archive = DuckDBArchive(path, background=False)
archiver = Archiver(redis.Redis(host="127.0.0.1", port=6379), archive, stream=stream,
                    consumer="archiver-1", batch_size=500)
while not stop.is_set():
    archiver.run_once(block=0.05)
    print(archiver.records, flush=True)
archive.close()
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _close(proc: subprocess.Popen[str]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def test_four_workers_and_an_archiver_killed_mid_run_land_every_record_once(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    path = tmp_path / "archive.duckdb"
    per_worker = 1000
    archiver = _spawn(_ARCHIVER, str(path), stream)
    workers = [_spawn(_WORKER, stream, str(w), str(per_worker)) for w in range(4)]
    restarted: subprocess.Popen[str] | None = None
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "half"
        # Kill -9 once the first archiver has committed some of the 2,000 written so far.
        assert archiver.stdout is not None
        while int(archiver.stdout.readline()) < 1000:
            pass
        archiver.kill()  # SIGKILL; TerminateProcess on Windows
        archiver.wait(timeout=10)
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        restarted = _spawn(_ARCHIVER, str(path), stream)
        for worker in workers:
            assert worker.wait(timeout=60) == 0
        assert restarted.stdout is not None
        while True:
            line = restarted.stdout.readline()
            assert line, "the restarted archiver died"
            if client.xlen(stream) == 0 and client.xpending(stream, "archiver")["pending"] == 0:
                break
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=10) == 0
    finally:
        for proc in (archiver, *workers, *([restarted] if restarted else [])):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            _close(proc)

    assert transitions_in(path) == (4 * per_worker, 4 * per_worker)
    with duckdb.connect(str(path), read_only=True) as con:
        per = con.execute(
            "SELECT instance_id, count(*) FROM transitions GROUP BY instance_id ORDER BY 1"
        ).fetchall()
    assert per == [(f"worker-{w}", per_worker) for w in range(4)]
