"""The end-to-end world: every shipped adapter on its real backend, one fake clock.

``World`` wires ``RedisStateStore`` (the shared Redis on 6379, a unique prefix per
test), ``PostgresCredentialStore`` (a throwaway database per test module),
``DuckDBArchive`` (a file under ``tmp_path``, flushed inline on the fake clock),
``PrometheusMetrics`` (a private registry) and ``MT5Broker`` over one
``FakeMetaTrader5`` per instance. Tests read the backends back with plain clients
(redis-py, SQL, DuckDB SQL, the registry), never through the library.

Every e2e test runs with every logger at DEBUG, and every world, when it closes,
checks that the password reached none of: the log, the notifications, the scrape
text, the Redis values under its prefix, the DuckDB file. ``test_secrets.py`` adds
``pg_dump``, exceptions and reprs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from psycopg import sql

from mt5lifecycle import Backends, Credentials, Lifecycle, Policy
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.mt5 import MT5Broker
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.adapters.prometheus import PrometheusMetrics
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.testing import FakeClock, RecordingNotifier, run_for
from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5

T0 = 1767225600.0
"""2026-01-01T00:00:00Z: every world's clock starts here."""
ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
LOGIN = 5012345
SERVER = "Broker-Demo"
PASSWORD = f"E2E-pw-{uuid.uuid4().hex}"
"""Unique to this run, so finding it anywhere is unambiguous."""
CREDS = Credentials(login=LOGIN, server=SERVER, password=PASSWORD)
SECRET = PASSWORD.encode()


# --- the servers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for the module; its conninfo. Dropped after."""
    name = f"mt5l_e2e_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def pg_key() -> str:
    return PostgresCredentialStore.generate_key()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    client.ping()  # a missing server fails the test, never skips it
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test alone; every key under it is deleted afterwards."""
    name = f"e2e-{uuid.uuid4().hex}"
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture(autouse=True)
def _every_logger_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every e2e test logs at DEBUG on every logger; the password must not show."""
    caplog.set_level(logging.DEBUG)
    yield
    assert_not_in_log(caplog)


def assert_not_in_log(caplog: pytest.LogCaptureFixture) -> None:
    assert PASSWORD not in caplog.text
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
        assert PASSWORD not in repr(record.args)
        if record.exc_info is not None and record.exc_info[1] is not None:
            assert PASSWORD not in repr(record.exc_info[1])


# --- the world ------------------------------------------------------------------------


class World:
    """One set of real backends, one fake clock, one fake terminal per instance."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        prefix: str,
        conninfo: str,
        key: str,
        directory: Path,
        clock: FakeClock | None = None,
        policy: Policy | None = None,
        pg_timeout: float = 2.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.conninfo = conninfo
        self.directory = directory
        self.clock = clock if clock is not None else FakeClock(T0)
        self.policy = policy
        self.terminals: dict[str, FakeMetaTrader5] = {}
        self.registry = CollectorRegistry()
        self.metrics = PrometheusMetrics(self.registry)
        self.notifier = RecordingNotifier()
        self.archive_path = directory / "archive.duckdb"
        self.archive = DuckDBArchive(
            self.archive_path, background=False, clock=self.clock, metrics=self.metrics
        )
        self.state = RedisStateStore(client, prefix=prefix)
        self.credentials = PostgresCredentialStore(conninfo, keys=[key], timeout=pg_timeout)
        # Wait for the pool's first connection (and the schema) now: the pool opens in
        # the background, and a hypothesis test must not see its threads draw from
        # the global random module while it generates.
        self.credentials.get("warm-up")
        ttl = (policy or Policy()).lock_ttl
        # Deadlines inside the login lock (a broker whose longest call is past half of it
        # is refused); the fake terminals answer at once, so the waits for a journal
        # written late are counted out rather than slept.
        self.broker = MT5Broker(
            self.terminal,
            call_timeout=ttl / 4,
            login_timeout_ms=max(1, int(ttl * 250)),
            sleep=lambda _: None,
        )
        self.backends = Backends(
            state=self.state,
            credentials=self.credentials,
            broker=self.broker,
            clock=self.clock,
            archive=self.archive,
            notifier=self.notifier,
            metrics=self.metrics,
        )
        self._closed = False

    # -- building --------------------------------------------------------------------

    def terminal(self, instance_id: str) -> FakeMetaTrader5:
        """The instance's fake terminal (made on first use, kept across restarts)."""
        mt5 = self.terminals.get(instance_id)
        if mt5 is None:
            mt5 = FakeMetaTrader5(data_path=self.directory / instance_id, clock=self.clock)
            mt5.add_account(LOGIN, PASSWORD, SERVER)
            self.terminals[instance_id] = mt5
        return mt5

    def lifecycle(self, instance_id: str, *, credentials: bool = True) -> Lifecycle:
        if credentials:
            self.credentials.put(instance_id, CREDS)
        return Lifecycle(instance_id, self.backends, self.policy)

    def play(self, lc: Lifecycle, seconds: float) -> float:
        """Simulated seconds on the lifecycle; returns the seconds since ``T0``."""
        return run_for(lc, self.clock, seconds) - T0

    def at(self) -> float:
        return self.clock.now() - T0

    # -- reading the backends with plain clients --------------------------------------

    def keys(self) -> list[str]:
        """Every Redis key under this world's prefix."""
        return sorted(k.decode() for k in self.client.scan_iter(match=f"{self.prefix}:*"))

    def redis(self, instance_id: str) -> dict[str, str]:
        """``{field: value}`` of the instance's string keys, read with plain GETs (the
        outbox's lists are left out)."""
        head = f"{self.prefix}:{instance_id}:"
        out: dict[str, str] = {}
        for key in self.client.scan_iter(match=f"{head}*"):
            if self.client.type(key) != b"string":
                continue
            value = self.client.get(key)
            if isinstance(key, bytes) and isinstance(value, bytes):
                out[key.decode()[len(head) :]] = value.decode()
        return out

    def sql(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        """A query on the archive file, on a connection of our own (after a flush)."""
        self.archive.flush()
        con = duckdb.connect(str(self.archive_path))
        try:
            con.execute("SET TimeZone = 'UTC'")
            return con.execute(query, list(params)).fetchall()
        finally:
            con.close()

    def credential_rows(self, instance_id: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            return conn.execute(
                "SELECT instance_id, login, server FROM mt5lifecycle.credentials "
                "WHERE instance_id = %s",
                (instance_id,),
            ).fetchall()

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def scrape(self) -> bytes:
        return generate_latest(self.registry)

    def kinds(self, instance_id: str) -> list[str]:
        return [k.value for k in self.notifier.kinds(instance_id)]

    # -- closing -----------------------------------------------------------------------

    def assert_no_secret(self) -> None:
        """The password is in none of the places this world wrote to."""
        assert SECRET not in self.scrape()
        for n in self.notifier.notifications:
            assert PASSWORD not in n.message and PASSWORD not in repr(n)
        for key in self.client.scan_iter(match=f"{self.prefix}:*"):
            kind = self.client.type(key)
            if kind == b"string":
                value = self.client.get(key)
                assert value is None or SECRET not in value
        for name in (self.archive_path, Path(f"{self.archive_path}.wal")):
            if name.exists() and name.is_file():
                assert SECRET not in name.read_bytes()
        for path in self.directory.rglob("*.log"):
            # The terminal's journal is the terminal's, but it must not carry it either.
            assert SECRET not in path.read_bytes()
        assert PASSWORD not in repr(self.backends)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.archive.close()
        self.credentials.close()
        self.metrics.unregister()
        self.assert_no_secret()


@pytest.fixture
def make_world(
    redis_client: redis.Redis, prefix: str, pg_database: str, pg_key: str, tmp_path: Path
) -> Iterator[Callable[..., World]]:
    """Worlds on this test's prefix, database and directory (several = several processes)."""
    made: list[World] = []

    def make(**kwargs: Any) -> World:
        kwargs.setdefault("client", redis_client)
        kwargs.setdefault("prefix", prefix)
        kwargs.setdefault("conninfo", pg_database)
        kwargs.setdefault("key", pg_key)
        kwargs.setdefault("directory", tmp_path)
        world = World(**kwargs)
        made.append(world)
        return world

    yield make
    for world in made:
        world.close()
    # The database is the module's: leave no credentials to the next test.
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS mt5lifecycle CASCADE")


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()
