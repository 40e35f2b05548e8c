"""What the DuckDB archive costs, against baselines measured in the same run.

1. A transition's cost with the DuckDB archive against the in-memory archive (the
   same Lifecycle loop, FakeClock, in-memory stores; only the archive differs).
2. ``write()`` per record: DuckDBArchive (buffer only) against a list append and
   against MemoryArchive.
3. Commit paths for one batch (why the adapter filters known ids and appends):
   appender insert, appender upsert, executemany INSERT OR IGNORE.
4. The archiver: rows per second from the Redis stream into DuckDB, against
   ``DuckDBArchive.store`` of the same records without Redis.
5. Letting go of the file between flushes (``keep_open=False``, the default, so
   other processes can read it) against keeping it open (``keep_open=True``): the
   writer's time per flush, and a reader's time to open the file and read a history.

Run: ``python benchmarks/archive.py`` (Redis on 127.0.0.1:6379 for part 4).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import duckdb

from mt5lifecycle import Credentials, Lifecycle
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.builtin.memory import MemoryArchive
from mt5lifecycle.core.records import ArchiveRecord, TransitionRecord
from mt5lifecycle.core.states import Reason, State
from mt5lifecycle.ports import Archive
from mt5lifecycle.testing import memory_backends

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def records(n: int, instance_id: str = "bench-1") -> list[ArchiveRecord]:
    return [
        TransitionRecord(
            instance_id=instance_id,
            at=T0 + timedelta(milliseconds=i),
            event="connection_lost",
            source=State.CONNECTED,
            dest=State.CONNECTING,
            reason=Reason.NETWORK,
        )
        for i in range(n)
    ]


def best(fn: Callable[[], float], rounds: int = 3) -> float:
    return min(fn() for _ in range(rounds))


def transition_cost(make_archive: Callable[[], Archive], loops: int) -> float:
    """Seconds per transition: disable, reset, login_succeeded, over and over."""
    backends = memory_backends()
    backends = attrs.evolve(backends, archive=make_archive())
    backends.credentials.put("bench-1", Credentials(5550001, "Bench-Server", "pw-bench"))
    lc = Lifecycle("bench-1", backends)
    lc.start()
    lc.run_due()
    start = time.perf_counter()
    for _ in range(loops):
        lc.disable()
        lc.reset()
        lc.run_due()
    elapsed = time.perf_counter() - start
    backends.archive.close()
    return elapsed / (3 * loops)


def part1(tmp: Path) -> None:
    loops = 2000
    memory = best(lambda: transition_cost(MemoryArchive, loops))
    duck = best(
        lambda: transition_cost(lambda: DuckDBArchive(tmp / f"t-{uuid.uuid4().hex}.duckdb"), loops)
    )
    print("1. cost of one transition (Lifecycle, in-memory stores, FakeClock)")
    print(f"   MemoryArchive (baseline) {memory * 1e6:9.1f} us")
    print(f"   DuckDBArchive            {duck * 1e6:9.1f} us   ratio {duck / memory:.2f}x")


def part2(tmp: Path) -> None:
    n = 100_000
    batch = records(n)

    def append_list() -> float:
        out: list[ArchiveRecord] = []
        start = time.perf_counter()
        for r in batch:
            out.append(r)
        return (time.perf_counter() - start) / n

    def memory_archive() -> float:
        archive = MemoryArchive()
        start = time.perf_counter()
        for r in batch:
            archive.write([r])
        return (time.perf_counter() - start) / n

    def duck_write() -> float:
        # The flusher thread writes the full batches meanwhile, as in production.
        archive = DuckDBArchive(tmp / f"w-{uuid.uuid4().hex}.duckdb", max_buffer=2 * n)
        start = time.perf_counter()
        for r in batch:
            archive.write([r])
        elapsed = (time.perf_counter() - start) / n
        archive.close()
        return elapsed

    def duck_buffer_only() -> float:
        # No flush during the loop: what write() itself costs the caller's thread.
        archive = DuckDBArchive(
            ":memory:", batch_size=2 * n, max_buffer=2 * n, flush_interval=3600, background=False
        )
        start = time.perf_counter()
        for r in batch:
            archive.write([r])
        elapsed = (time.perf_counter() - start) / n
        archive.close()
        return elapsed

    base, mem = best(append_list), best(memory_archive)
    buffer_only, duck = best(duck_buffer_only), best(duck_write)
    print("2. write() of one record")
    print(f"   list.append (baseline)                 {base * 1e9:7.0f} ns")
    print(
        f"   MemoryArchive.write                    {mem * 1e9:7.0f} ns   ratio {mem / base:.1f}x"
    )
    print(
        f"   DuckDBArchive.write, buffer only       {buffer_only * 1e9:7.0f} ns"
        f"   ratio {buffer_only / base:.1f}x"
    )
    print(
        f"   DuckDBArchive.write, flusher running   {duck * 1e9:7.0f} ns   ratio {duck / base:.1f}x"
    )


def part3(tmp: Path) -> None:
    ddl = (
        "CREATE TABLE t (record_id VARCHAR PRIMARY KEY, occurred_at TIMESTAMPTZ, "
        "instance_id VARCHAR, event VARCHAR, source VARCHAR, dest VARCHAR, reason VARCHAR, "
        "seq BIGINT)"
    )
    size, batches = 1000, 20
    rows: list[tuple[object, ...]] = [
        (uuid.uuid4().hex, T0, "bench-1", "login_failed", "CONNECTING", "CONNECTING", None, i)
        for i in range(size * batches)
    ]

    def run(
        write: Callable[[duckdb.DuckDBPyConnection, list[tuple[object, ...]]], None],
        count: int = batches,
    ) -> float:
        with duckdb.connect(str(tmp / f"c-{uuid.uuid4().hex}.duckdb")) as con:
            con.execute(ddl)
            start = time.perf_counter()
            for b in range(count):
                con.begin()
                write(con, rows[b * size : (b + 1) * size])
                con.commit()
            return count * size / (time.perf_counter() - start)

    def filtered_append(con: duckdb.DuckDBPyConnection, batch: list[tuple[object, ...]]) -> None:
        known = con.execute(
            "SELECT record_id FROM t WHERE record_id IN (SELECT unnest(?::VARCHAR[]))",
            [[r[0] for r in batch]],
        ).fetchall()
        assert not known
        appender = con.appender("t")
        appender.append_rows(batch)
        appender.flush()

    def upsert(con: duckdb.DuckDBPyConnection, batch: list[tuple[object, ...]]) -> None:
        appender = con.appender("t", action="upsert")
        appender.append_rows(batch)
        appender.flush()

    def executemany(con: duckdb.DuckDBPyConnection, batch: list[tuple[object, ...]]) -> None:
        con.executemany("INSERT OR IGNORE INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)

    base = run(executemany, 2)  # slow: two batches tell enough
    print(f"3. committing batches of {size} rows into a file (rows/s)")
    print(f"   executemany INSERT OR IGNORE (baseline) {base:10.0f}")
    for name, fn in (("appender upsert", upsert), ("known-id filter + appender", filtered_append)):
        rate = run(fn)
        print(f"   {name:<39} {rate:10.0f}   ratio {rate / base:.1f}x")


def part4(tmp: Path) -> None:
    import redis

    from mt5lifecycle.adapters.redis.queue import Archiver, RedisStreamArchive

    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"4. archiver: Redis on 127.0.0.1:6379 unavailable ({exc}); not measured")
        return
    n = 20_000
    batch = records(n)
    baseline_archive = DuckDBArchive(tmp / "store.duckdb", background=False)
    start = time.perf_counter()
    for i in range(0, n, 1000):
        baseline_archive.store(batch[i : i + 1000])
    direct = n / (time.perf_counter() - start)
    baseline_archive.close()

    stream = f"bench-{uuid.uuid4().hex}:archive"
    try:
        worker = RedisStreamArchive(client, stream=stream)
        start = time.perf_counter()
        for r in batch:
            worker.write([r])
        produce = n / (time.perf_counter() - start)
        archive = DuckDBArchive(tmp / "archiver.duckdb", background=False)
        archiver = Archiver(client, archive, stream=stream, consumer="bench", batch_size=1000)
        archiver.setup()
        start = time.perf_counter()
        while archiver.run_once(block=0):
            pass
        rate = archiver.records / (time.perf_counter() - start)
        archive.close()
    finally:
        client.delete(stream, f"{stream}:confirmed", f"{stream}:dead")
    print(f"4. archiver, {n} records, one stream entry per write()")
    print(f"   DuckDBArchive.store, no Redis (baseline) {direct:10.0f} rows/s")
    print(f"   stream -> Archiver -> DuckDB             {rate:10.0f} rows/s", end="")
    print(f"   ratio {rate / direct:.2f}x")
    print(f"   RedisStreamArchive.write (workers' side) {produce:10.0f} rows/s")


def part5(tmp: Path) -> None:
    flushes = 200
    print("5. one flush (write + flush), the file already holding 20,000 rows")
    for size in (1, 100, 1000):
        batch = records(size * flushes, "bench-5")
        rates: dict[bool, float] = {}
        for keep_open in (True, False):
            path = tmp / f"hold-{uuid.uuid4().hex}.duckdb"
            with DuckDBArchive(path, background=False, keep_open=True) as seed:
                seed.store(records(20_000, "seed"))
            archive = DuckDBArchive(
                path, background=False, keep_open=keep_open, batch_size=size, max_buffer=size * 2
            )
            archive.flush()
            start = time.perf_counter()
            for i in range(flushes):
                archive.write(batch[i * size : (i + 1) * size])
                archive.flush()
            rates[keep_open] = (time.perf_counter() - start) / flushes
            archive.close()
        held, let_go = rates[True], rates[False]
        print(f"   {size:>4} record(s): kept open (baseline) {held * 1e3:7.2f} ms", end="")
        print(f"   let go {let_go * 1e3:7.2f} ms   ratio {let_go / held:.1f}x")
    path = tmp / "read.duckdb"
    with DuckDBArchive(path, background=False, keep_open=True) as seed:
        seed.store(records(20_000, "seed") + records(50, "bench-5"))
    rounds = 100
    with DuckDBArchive(path, background=False, keep_open=True) as held_reader:
        start = time.perf_counter()
        for _ in range(rounds):
            held_reader.history("bench-5")
        held = (time.perf_counter() - start) / rounds
    reader = DuckDBArchive.reader(path)
    start = time.perf_counter()
    for _ in range(rounds):
        reader.history("bench-5")
    fresh = (time.perf_counter() - start) / rounds
    print("   history() of 50 transitions, in a file of 20,050")
    print(f"   on an open connection (baseline) {held * 1e3:7.2f} ms", end="")
    print(
        f"   a reader opening the file each time {fresh * 1e3:7.2f} ms   ratio {fresh / held:.1f}x"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        part1(path)
        part2(path)
        part3(path)
        part4(path)
        part5(path)


if __name__ == "__main__":
    main()
