"""Each backend goes away mid-flow and comes back: typed errors, nothing half-written.

Redis: a private ``redis-server`` on a free port with an append-only file, killed
with SIGKILL and started again on the same file (the shared 6379 is never touched).
PostgreSQL: the module's own database refuses connections (``ALLOW_CONNECTIONS
false`` and its sessions terminated), then accepts them again. DuckDB: the archive's
write-ahead log cannot be created (a directory stands where the file must go), or
another process holds the file's lock.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from mt5lifecycle import InvalidTransition, Lifecycle, Policy, State, StoreUnavailable
from mt5lifecycle.testing import FakeClock
from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5

from .conftest import LOGIN, PASSWORD, SERVER, World
from .test_crash_safety import ID as VICTIM_ID
from .test_crash_safety import closed_account

ID = "outage-1"


class RedisServer:
    """A redis-server of this test alone, persisting every write to its AOF."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.directory = directory
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:  # the server's own word, not a timer
            if "Ready to accept connections" in line:
                return
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 1),
        )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def wait_for_expiry(client: redis.Redis, key: str) -> None:
    deadline = time.monotonic() + 5
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.02)  # a real Redis TTL (lock_ttl=0.2 s), not logic
    assert not client.exists(key)


# --- Redis ------------------------------------------------------------------------------


def test_redis_killed_between_two_logins(
    redis_server: RedisServer, make_world: Callable[..., World]
) -> None:
    client = redis_server.client()
    world = make_world(client=client)
    mt5 = world.terminal(ID)
    mt5.fail_logins(times=3)
    lc = world.lifecycle(ID)
    lc.start()
    world.play(lc, 6)  # failures at t=0 and 5: the third login is due at t=15
    before = world.redis(ID)
    calls = list(mt5.calls)
    snapshot = lc.snapshot()

    redis_server.kill()
    world.clock.advance_to(lc.next_due or 0)
    with pytest.raises(StoreUnavailable) as caught:
        lc.run_due()
    assert caught.value.backend == "redis"
    assert mt5.calls == calls, "no login without the lock"
    with pytest.raises(StoreUnavailable):
        lc.disable()
    assert lc.snapshot() == snapshot, "the machine's state is unchanged"
    assert world.metric("mt5lifecycle_errors_total", component="redis") >= 1

    redis_server.start()
    assert world.redis(ID) == before, "nothing half-written"
    world.play(lc, 120)
    attempts = world.sql(
        "SELECT attempt FROM login_failures WHERE instance_id = ? ORDER BY seq", ID
    )
    assert attempts == [(1,), (2,), (3,)], "the outage cost no attempt"
    assert lc.state is State.CONNECTED
    client.close()


class _KillsRedisOnLogin(FakeMetaTrader5):
    """A terminal during whose login the state store's server dies."""

    def __init__(self, server: RedisServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server: RedisServer | None = server

    def login(self, *args: Any, **kwargs: Any) -> bool:
        if kwargs.get("password") and self.server is not None:
            self.server.kill()
            self.server = None
        return super().login(*args, **kwargs)


def test_redis_killed_during_a_login(
    redis_server: RedisServer, make_world: Callable[..., World]
) -> None:
    client = redis_server.client()
    policy = Policy(lock_ttl=0.2)  # the orphaned lock expires in real time
    world = make_world(client=client, policy=policy)
    mt5 = _KillsRedisOnLogin(redis_server, data_path=world.directory / ID, clock=world.clock)
    mt5.add_account(LOGIN, PASSWORD, SERVER)
    world.terminals[ID] = mt5
    lc = world.lifecycle(ID)
    lc.start()
    before = world.redis(ID)
    with pytest.raises(StoreUnavailable):
        lc.run_due()  # the terminal logged in; the result could not be stored
    assert lc.state is State.CONNECTING
    redis_server.start()
    after = world.redis(ID)
    # The login's lock may or may not have outlived the restart (0.2 s of real time).
    after.pop("login_lock", None)
    assert after == before, "nothing half-written"
    wait_for_expiry(client, f"{world.prefix}:{ID}:login_lock")
    world.play(lc, 30)
    r = world.redis(ID)
    assert (r["status"], r["login_attempt_count"]) == ("CONNECTED", "0")
    client.close()


# --- PostgreSQL ---------------------------------------------------------------------------


class Unreachable:
    """Makes one database refuse every connection, then accept them again."""

    def __init__(self, conninfo: str) -> None:
        self.name = psycopg.conninfo.conninfo_to_dict(conninfo)["dbname"]
        self.admin = psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
        )

    def __enter__(self) -> Unreachable:
        db = sql.Identifier(str(self.name))
        self.admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(db))
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,),
        )
        return self

    def __exit__(self, *_: object) -> None:
        db = sql.Identifier(str(self.name))
        self.admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(db))
        self.admin.close()


def resume(world: World, action: Callable[[], object]) -> None:
    """Do ``action`` once the pool has reconnected, retrying as the lifecycle would.

    After an outage psycopg_pool reconnects in the background with its own backoff
    (real seconds); each try here waits at most the store's timeout for it.
    """
    deadline = time.monotonic() + 30
    while True:
        try:
            action()
            return
        except StoreUnavailable:
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            world.clock.advance(10)  # Policy.transient_retry_delay


def test_postgres_unreachable_at_start(make_world: Callable[..., World], pg_database: str) -> None:
    world = make_world(pg_timeout=0.5)
    lc = world.lifecycle(ID)
    with Unreachable(pg_database), pytest.raises(StoreUnavailable) as caught:
        lc.start()
    assert caught.value.backend == "postgresql"
    assert lc.state is None and world.keys() == [], "nothing half-written"
    resume(world, lc.start)
    world.play(lc, 1)
    assert lc.state is State.CONNECTED


def test_postgres_unreachable_when_a_restart_is_due(
    make_world: Callable[..., World], pg_database: str
) -> None:
    world = make_world(pg_timeout=0.5)
    lc = world.lifecycle(ID)
    lc.start()
    world.play(lc, 1)
    mt5 = world.terminal(ID)
    mt5.crash()
    world.play(lc, 61)
    before = world.redis(ID)
    assert (before["status"], before["last_failure_reason"]) == ("FAILED", "TERMINAL")
    calls = list(mt5.calls)
    with Unreachable(pg_database):
        world.clock.advance_to(lc.next_due or 0)
        with pytest.raises(StoreUnavailable):
            lc.run_due()
        assert world.redis(ID) == before, "no restart counted, nothing written"
        assert mt5.calls == calls, "the terminal was not restarted"
    assert world.metric("mt5lifecycle_errors_total", component="postgresql") >= 1
    resume(world, lambda: world.play(lc, 60))
    r = world.redis(ID)
    assert (r["status"], r["login_attempt_count"]) == ("CONNECTED", "0")
    assert world.metric("mt5lifecycle_restarts_total") == 1


# --- DuckDB -------------------------------------------------------------------------------


def test_archive_unwritable_mid_flow(world: World) -> None:
    lc = world.lifecycle(ID)
    lc.start()
    world.play(lc, 1)
    con = duckdb.connect(str(world.archive_path))
    con.execute("CHECKPOINT")  # the write-ahead log is gone until the next write
    con.close()
    wal = Path(f"{world.archive_path}.wal")
    assert not wal.exists()
    wal.mkdir()  # ... and now it cannot be created
    try:
        lc.disable()
        lc.reset()
        world.play(lc, 5)
        assert world.redis(ID)["status"] == "CONNECTED", "the archive never blocks"
        # Kept for later, not lost: the records wait in the instance's outbox.
        waiting = world.backends.state.outbox([ID])  # type: ignore[attr-defined]
        assert waiting[ID].records
        with pytest.raises(StoreUnavailable):
            world.archive.is_confirmed(ID)
        assert world.metric("mt5lifecycle_errors_total", component="archive") >= 1
    finally:
        wal.rmdir()
    world.play(lc, 600)  # the relay tries the archive again, with backoff
    rows = world.sql("SELECT event FROM transitions WHERE instance_id = ? ORDER BY seq", ID)
    assert [r[0] for r in rows] == [
        "start",
        "login_succeeded",
        "disable",
        "reset",
        "login_succeeded",
    ], "every record landed once"
    assert world.archive.pending == 0


def test_archive_locked_by_another_process(world: World) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.read()",
            str(world.archive_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        lc = world.lifecycle(ID)
        lc.start()  # the archive cannot say; the lifecycle goes on
        world.play(lc, 10)
        assert lc.state is State.CONNECTED
        with pytest.raises(StoreUnavailable):
            world.archive.is_confirmed(ID)
        # Not lost: waiting in the instance's outbox until the archive takes them.
        assert world.backends.state.outbox([ID])[ID].records  # type: ignore[attr-defined]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
    world.play(lc, 600)  # the relay tries the archive again, with backoff
    rows = world.sql("SELECT event FROM transitions WHERE instance_id = ? ORDER BY seq", ID)
    assert [r[0] for r in rows] == ["start", "login_succeeded"]


def test_a_closure_the_archive_cannot_store_keeps_the_live_state_until_it_can(
    make_world: Callable[..., World],
) -> None:
    first = make_world()
    closed_account(first)
    victim = VICTIM_ID
    wal = Path(f"{first.archive_path}.wal")
    assert not wal.exists()
    wal.mkdir()  # the archive cannot write: the closure must not live only in memory
    world = make_world(clock=FakeClock(first.clock.now()))
    try:
        with pytest.raises(StoreUnavailable):
            Lifecycle(victim, world.backends).confirm_closure()
        assert world.credential_rows(victim) == []  # the credentials go first
        assert world.keys() != []  # the live state stays: it still remembers the closure
        with pytest.raises(InvalidTransition):
            Lifecycle(victim, world.backends).reset()  # cleanup pending: refused
    finally:
        wal.rmdir()
    Lifecycle(victim, world.backends).confirm_closure()  # run again: it finishes
    assert world.keys() == []
    with pytest.raises(InvalidTransition):
        Lifecycle(victim, world.backends).start()
