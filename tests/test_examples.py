"""Every example runs, as a user would run it: a new process from the repository root.

``production.py`` runs against the real Redis and PostgreSQL on 127.0.0.1 with fake
terminals (``--dry-run``), under its own key prefix and schema, cleaned up afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.postgres import PostgresCredentialStore

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
REDIS_URL = "redis://127.0.0.1:6379/0"
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"

COVERED = {"bot_loop.py", "async_fleet.py", "test_my_bot.py", "production.py"}


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MT5LIFECYCLE_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env=clean,
        timeout=120,
        check=False,
    )


def test_every_example_is_run_here() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == COVERED


def test_bot_loop() -> None:
    done = run("examples/bot_loop.py")
    assert done.returncode == 0, done.stderr
    assert "state after 30 simulated minutes: CONNECTED" in done.stdout
    assert "CONNECTED -> CONNECTING on connection_checked" in done.stderr
    assert "correct horse" not in done.stdout + done.stderr


def test_async_fleet() -> None:
    done = run("examples/async_fleet.py")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("acct-1: trading")
    assert lines[1].startswith("acct-2: trading")
    assert "INACTIVE (ACCOUNT_BANNED)" in lines[2]
    assert "FAILED (CREDENTIALS_MISSING)" in lines[3]


def test_my_bot_tests_pass_with_the_plugin_fixtures() -> None:
    done = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/test_my_bot.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout


def test_production_gives_each_terminal_its_own_worker_process() -> None:
    # Issue 21: one MetaTrader5 module for every id made the second a TerminalShared.
    text = (EXAMPLES / "production.py").read_text(encoding="utf-8")
    assert "ProcessTerminals(paths)" in text
    assert "import MetaTrader5" not in text
    assert "mt5lifecycle serve" in text


def test_production_refuses_to_run_without_its_servers() -> None:
    done = run("examples/production.py", "acct-1")
    assert done.returncode == 2
    assert "needs MT5LIFECYCLE_REDIS_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_production_wiring_on_the_real_servers(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    prefix, schema = f"test-prod-{tag}", f"test_prod_{tag}"
    archive = tmp_path / "archive.duckdb"
    env = {
        "MT5LIFECYCLE_REDIS_URL": REDIS_URL,
        "MT5LIFECYCLE_POSTGRES_DSN": PG_DSN,
        "MT5LIFECYCLE_KEYS": PostgresCredentialStore.generate_key(),
        "MT5LIFECYCLE_ARCHIVE": str(archive),
        "MT5LIFECYCLE_PREFIX": prefix,
        "MT5LIFECYCLE_SCHEMA": schema,
    }
    client = redis.Redis.from_url(REDIS_URL)
    try:
        done = run(
            "examples/production.py",
            "--dry-run",
            "--seconds",
            "0.3",
            "--metrics-port",
            "0",
            "acct-1",
            "acct-2",
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["acct-1: CONNECTED", "acct-2: CONNECTED"]
        assert client.get(f"{prefix}:acct-1:status") == b"CONNECTED"
        # Leases handed back at the end: another process may adopt at once.
        assert list(client.scan_iter(match=f"mt5lifecycle:lease:{prefix}:*")) == []
        with DuckDBArchive(archive, background=False) as duck:
            assert [t.event for t in duck.history("acct-2")] == ["start", "login_succeeded"]
    finally:
        keys = [
            *client.scan_iter(match=f"{prefix}:*"),
            *client.scan_iter(match=f"mt5lifecycle:lease:{prefix}:*"),
        ]
        if keys:
            client.delete(*keys)
        client.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
