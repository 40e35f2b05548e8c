"""The world the documentation's blocks run in: the real servers, under names of their own.

``docs_env`` gives each test a Redis key prefix, a PostgreSQL database, a credential
key and an archive path of its own, puts them in the environment the way an operator
sets them for the command line (``MT5LIFECYCLE_*``), and makes the working directory
a temporary one that looks like a checkout (its top-level entries are links to this
one), so that ``python examples/bot_loop.py`` finds its file while whatever a block
writes (``mt5lifecycle-demo.duckdb``) stays in the temporary directory. Everything
is removed afterwards.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from mt5lifecycle.adapters.postgres import PostgresCredentialStore

from ._pages import ROOT

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
LINKED = ("benchmarks", "dev.py", "docs", "examples", "mt5lifecycle", "pyproject.toml", "tests")
BIN = Path(sys.executable).parent
"""The virtual environment's scripts (``mt5lifecycle``, ``pytest``, ``python``)."""


def _admin(statement: sql.Composed) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def docs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:12]
    database = f"docs_{tag}"
    prefix = f"docs-{tag}"
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    work = tmp_path / "checkout"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    env = {
        "MT5LIFECYCLE_REDIS_URL": REDIS_URL,
        "MT5LIFECYCLE_PREFIX": prefix,
        "MT5LIFECYCLE_POSTGRES_DSN": f"host=127.0.0.1 port=5432 user=postgres dbname={database}",
        "MT5LIFECYCLE_KEYS": PostgresCredentialStore.generate_key(),
        "MT5LIFECYCLE_ARCHIVE": str(tmp_path / "archive.duckdb"),
    }
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("MT5LIFECYCLE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(work)
    try:
        yield env
    finally:
        # A block may set variables of its own (os.environ[...] = ...): undo those too.
        os.environ.clear()
        os.environ.update(saved)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
