"""Helpers and fixtures for the command line's tests.

The operator commands run against the real Redis and PostgreSQL on 127.0.0.1, each
test under its own key prefix and schema, cleaned up afterwards.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from mt5lifecycle import Backends, Credentials, Lifecycle
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.cli import main
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
ROOT = Path(__file__).resolve().parents[2]


class Run:
    """One in-process run of the command line."""

    def __init__(self, *argv: str, env: dict[str, str] | None = None, stdin: str = "") -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.code = main(
            list(argv),
            stdout=self.out,
            stderr=self.err,
            stdin=io.StringIO(stdin),
            env=env if env is not None else {},
        )
        self.stdout = self.out.getvalue()
        self.stderr = self.err.getvalue()


class TtyInput(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a new process, no TTY on stdin."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MT5LIFECYCLE_")}
    full_env.update(env or {})
    full_env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "mt5lifecycle", *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("mt5lifecycle: error: ")
    return lines[0]


# --- the demo -----------------------------------------------------------------------


class Servers:
    """A unique Redis prefix, PostgreSQL schema and DuckDB file for one test."""

    def __init__(self, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"test-cli-{tag}"
        self.schema = f"test_cli_{tag}"
        self.key = PostgresCredentialStore.generate_key()
        self.archive_path = tmp_path / "archive.duckdb"
        self.client = redis.Redis.from_url(REDIS_URL)
        self.clock = FakeClock()
        self.broker = FakeBroker(self.clock)

    @property
    def env(self) -> dict[str, str]:
        return {
            "MT5LIFECYCLE_REDIS_URL": REDIS_URL,
            "MT5LIFECYCLE_POSTGRES_DSN": PG_DSN,
            "MT5LIFECYCLE_KEYS": self.key,
            "MT5LIFECYCLE_ARCHIVE": str(self.archive_path),
            "MT5LIFECYCLE_PREFIX": self.prefix,
            "MT5LIFECYCLE_SCHEMA": self.schema,
        }

    def drive(self, instance_id: str, *, credentials: bool = True) -> Lifecycle:
        """An instance as a worker left it, on the same servers the command reads."""
        store = RedisStateStore(self.client, prefix=self.prefix)
        creds = PostgresCredentialStore(PG_DSN, keys=[self.key], schema=self.schema)
        archive = DuckDBArchive(self.archive_path, background=False)
        backends = Backends(
            state=store,
            credentials=creds,
            broker=self.broker,
            clock=self.clock,
            archive=archive,
            notifier=RecordingNotifier(),
        )
        if credentials:
            creds.put(instance_id, Credentials(7001234, "Broker-Demo", "pa55word"))
        lifecycle = Lifecycle(instance_id, backends)
        lifecycle.start()
        self._opened = (creds, archive)
        return lifecycle

    def play(self, lifecycle: Lifecycle, seconds: float) -> None:
        end = self.clock.now() + seconds
        lifecycle.run_due()
        while (due := lifecycle.next_due) is not None and due <= end:
            self.clock.advance_to(due)
            lifecycle.run_due()
        self.clock.advance_to(end)

    def release(self) -> None:
        """Let go of the archive file and the pool, as a stopped worker would."""
        creds, archive = self._opened
        archive.close()
        creds.close()

    def load(self, instance_id: str) -> object:
        return RedisStateStore(self.client, prefix=self.prefix).load(instance_id)

    def cleanup(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*"))
        if keys:
            self.client.delete(*keys)
        self.client.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()
