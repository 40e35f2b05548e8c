"""The DuckDB page's investigation queries run, and answer the questions they ask.

The archive is a real one, written by lifecycles on a fake clock: an account that
worked and was then refused five times, one that never logged in, and one whose
credentials an operator replaced after it had worked (a new password, refused).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import attrs
import duckdb
import pytest

from mt5lifecycle import Credentials, Lifecycle, Reason, State
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.core.records import AuditRecord
from mt5lifecycle.testing import FakeBroker, FakeClock, memory_backends, run_for

from ._pages import ROOT, blocks

PAGE = ROOT / "docs" / "adapters" / "duckdb.md"


def _queries() -> list[str]:
    (block,) = [b for b in blocks(PAGE) if b.lang == "sql" and "-- history(" in b.content]
    return [q.strip() for q in block.content.split("\n\n") if q.strip()]


def _archive(path: Path) -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)
    archive = DuckDBArchive(path, clock=clock, background=False)
    backends = memory_backends(broker=broker, clock=clock)
    backends = attrs.evolve(backends, archive=archive)
    ids = ("worked", "never", "replaced")
    for instance_id in ids:
        backends.credentials.put(instance_id, Credentials(5012345, "Broker-Live", "secret"))
    broker.fail_logins("never", Reason.AUTH_FAILED)
    lifecycles = {i: Lifecycle(i, backends) for i in ids}
    for lifecycle in lifecycles.values():
        lifecycle.start()
        run_for(lifecycle, clock, 1)
    assert lifecycles["worked"].state is State.CONNECTED
    # An operator stores a new password for "replaced", which the broker refuses.
    archive.write(
        [
            AuditRecord(
                instance_id="replaced",
                at=datetime.fromtimestamp(clock.now(), UTC),
                actor="alice",
                action="put_credentials",
                source=State.CONNECTED,
                dest=State.CONNECTED,
                outcome="done",
                detail="login 5012345 on Broker-Live",
            )
        ]
    )
    for instance_id in ("worked", "replaced"):
        broker.fail_logins(instance_id, Reason.AUTH_FAILED)
        broker.drop_connection(instance_id)
    for lifecycle in lifecycles.values():
        run_for(lifecycle, clock, 600)
        assert lifecycle.snapshot().last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED  # type: ignore[union-attr]
    archive.close()


@pytest.fixture(scope="module")
def archive_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("duckdb-queries") / "archive.duckdb"
    _archive(path)
    return path


def test_every_investigation_query_runs(archive_path: Path) -> None:
    path = archive_path
    with duckdb.connect(str(path), read_only=True) as con:
        for query in _queries():
            con.execute(query).fetchall()


def test_exhausted_on_passwords_that_had_worked_before_means_that(archive_path: Path) -> None:
    path = archive_path
    (query,) = [q for q in _queries() if "worked before" in q.splitlines()[0]]
    with duckdb.connect(str(path), read_only=True) as con:
        found = [row[0] for row in con.execute(query).fetchall()]
    assert found == ["worked"]
