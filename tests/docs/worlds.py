"""What a page's sample assumes has happened before its command: built for real.

A ``<!-- test: setup -->`` comment before a block calls these (as ``worlds.NAME``).
Each builds its state on the servers the docs tests point the environment at
(``MT5LIFECYCLE_REDIS_URL`` and ``MT5LIFECYCLE_PREFIX``, ``MT5LIFECYCLE_POSTGRES_DSN``
and ``MT5LIFECYCLE_KEYS``, ``MT5LIFECYCLE_ARCHIVE``), through the library, on a fake
clock that starts at 2026-01-01T00:00:00Z, so the page's times are reproduced exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import redis

from mt5lifecycle import Backends, Credentials, Lifecycle, Reason
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.core.records import AuditRecord
from mt5lifecycle.core.states import State
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, run_for

LOGIN, SERVER = 7001234, "Broker-Live"


def _env(name: str) -> str:
    return os.environ[f"MT5LIFECYCLE_{name}"]


@contextmanager
def _backends(clock: FakeClock, broker: FakeBroker) -> Iterator[Backends]:
    client = redis.Redis.from_url(_env("REDIS_URL"))
    credentials = PostgresCredentialStore(_env("POSTGRES_DSN"), keys=_env("KEYS").split(","))
    archive = DuckDBArchive(_env("ARCHIVE"), clock=clock, background=False)
    try:
        yield Backends(
            state=RedisStateStore(client, prefix=_env("PREFIX")),
            credentials=credentials,
            broker=broker,
            clock=clock,
            archive=archive,
            notifier=RecordingNotifier(),
        )
    finally:
        archive.close()
        credentials.close()
        client.close()


def archive_file() -> None:
    """An empty archive file, as ``serve`` creates it (``add`` wants one)."""
    with DuckDBArchive(_env("ARCHIVE"), background=False) as archive:
        archive.is_confirmed("acct-0")  # the first read creates the file


def exhausted(instance_id: str) -> None:
    """Five wrong passwords in a row: ``FAILED (LOGIN_ATTEMPTS_EXHAUSTED)`` at t = 105 s."""
    clock = FakeClock()
    broker = FakeBroker(clock)
    broker.fail_logins(instance_id, Reason.AUTH_FAILED)
    with _backends(clock, broker) as backends:
        backends.credentials.put(instance_id, Credentials(LOGIN, SERVER, "wrong"))
        lifecycle = Lifecycle(instance_id, backends)
        lifecycle.start()
        run_for(lifecycle, clock, 600)
        assert lifecycle.state is State.FAILED


def closed(instance_id: str, *, confirm_by: str | None = None) -> None:
    """Added by alice, connected, closed by the broker at t = 70 s with a position open.

    With ``confirm_by``, that operator confirms the closure at t = 200 s.
    """
    clock = FakeClock()
    broker = FakeBroker(clock)
    with _backends(clock, broker) as backends:
        backends.credentials.put(instance_id, Credentials(LOGIN, SERVER, "secret"))
        lifecycle = Lifecycle(instance_id, backends)
        lifecycle.start()
        backends.archive.write(
            [
                AuditRecord(
                    instance_id=instance_id,
                    at=datetime.fromtimestamp(clock.now(), UTC),
                    actor="alice",
                    action="add",
                    source=None,
                    dest=State.CONNECTING,
                    outcome="done",
                    detail=f"login {LOGIN} on {SERVER}",
                )
            ]
        )
        run_for(lifecycle, clock, 50)
        broker.open_position(instance_id, 1002, "GBPUSD", 0.8)
        broker.close_account(instance_id)  # seen at the connection check, t = 60 s
        run_for(lifecycle, clock, 20)
        assert lifecycle.state is State.ACCOUNT_CLOSED
        if confirm_by is not None:
            clock.advance(200 - (clock.now() - FakeClock().now()))
            lifecycle.confirm_closure(by=confirm_by)
