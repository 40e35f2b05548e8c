"""The DuckDB archive against real DuckDB files under tmp_path."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import duckdb
import pytest

from mt5lifecycle import Credentials, InvalidTransition, Lifecycle
from mt5lifecycle.adapters.duckdb import _V1, SCHEMA_VERSION, DuckDBArchive
from mt5lifecycle.core.records import (
    ArchiveRecord,
    AuditRecord,
    ClosureRecord,
    LoginFailureRecord,
    Notification,
    Outcome,
    TradeOutcomeRecord,
    TransitionRecord,
)
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.core.states import ConnectionState, Reason, State
from mt5lifecycle.errors import InvalidInstanceId, StoreUnavailable
from mt5lifecycle.testing import FakeBroker, FakeClock, memory_backends, run_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """Just enough of the clock port: time moves only when the test says so."""

    def __init__(self, start: float = T0.timestamp()) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    async def asleep(self, seconds: float) -> None:
        self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Metrics:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str | None]] = []

    def transition(
        self, instance_id: str, source: State | None, dest: State | None, reason: Reason | None
    ) -> None:
        pass

    def login(self, instance_id: str, failure: Reason | None, consecutive_failures: int) -> None:
        pass

    def alert(self, notification: Notification) -> None:
        pass

    def restart(self, instance_id: str, restart_count: int) -> None:
        pass

    def error(self, component: str, instance_id: str | None) -> None:
        self.errors.append((component, instance_id))


def transition(i: int = 0, instance_id: str = "acc-1") -> TransitionRecord:
    return TransitionRecord(
        instance_id=instance_id,
        at=T0 + timedelta(seconds=i),
        event="login_failed",
        source=State.CONNECTING,
        dest=State.CONNECTING,
        reason=None,
        record_id=f"t-{instance_id}-{i}",
    )


def failure(i: int = 0, reason: Reason = Reason.AUTH_FAILED) -> LoginFailureRecord:
    return LoginFailureRecord(
        instance_id="acc-1",
        at=T0 + timedelta(seconds=i),
        attempt=i + 1,
        reason=reason,
        code=-6,
        message="Terminal: Authorization failed",
        record_id=f"f-{i}",
    )


def outcome() -> TradeOutcomeRecord:
    return TradeOutcomeRecord(
        instance_id="acc-1",
        at=T0,
        kind="position",
        ticket=123456789012,
        symbol="EURUSD",
        volume=0.25,
        outcome=Outcome.FAILED,
        retcode=10028,
        comment="locked",
        record_id="o-1",
    )


def closure(instance_id: str = "acc-1", at: datetime = T0) -> ClosureRecord:
    return ClosureRecord(
        instance_id=instance_id,
        at=at,
        final=Snapshot(
            status=State.ACCOUNT_CLOSED,
            connection_state=ConnectionState.DISCONNECTED,
            login_attempt_count=2,
            last_login_attempt=T0 - timedelta(minutes=1),
            login_failure_reason=Reason.ACCOUNT_CLOSED,
            last_failure_reason=Reason.ACCOUNT_CLOSED,
            restart_count=1,
        ),
    )


def count(path: Path, table: str) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_each_record_type_is_written_and_read_back(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "archive.duckdb"
    first = TransitionRecord(
        instance_id="acc-1", at=T0, event="start", source=None, dest=State.CONNECTING, reason=None
    )
    records: list[ArchiveRecord] = [first, transition(1), failure(), outcome(), closure()]
    with DuckDBArchive(path, clock=clock, background=False) as archive:
        archive.write(records)
        assert archive.history("acc-1") == [first, transition(1)]
        assert archive.failures("acc-1") == [failure()]
        assert archive.outcomes("acc-1") == [outcome()]
        (closed,) = archive.closed_accounts()
        assert closed.instance_id == "acc-1"
        assert closed.status is State.INACTIVE
        assert closed.final_status is State.ACCOUNT_CLOSED
        assert closed.closed_at == T0
        assert closed.login_attempt_count == 2
        assert closed.restart_count == 1
        assert closed.last_login_attempt == T0 - timedelta(minutes=1)
        assert closed.last_failure_reason is Reason.ACCOUNT_CLOSED
        assert closed.connection_state is ConnectionState.DISCONNECTED
        assert archive.history("acc-1")[0].at.tzinfo is not None

    with duckdb.connect(str(path), read_only=True) as con:
        types = dict(
            con.execute(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
            ).fetchall()
        )
    for column in (
        "transitions.occurred_at",
        "login_failures.occurred_at",
        "trade_outcomes.occurred_at",
        "instances.closed_at",
        "instances.last_login_attempt",
    ):
        assert types[column] == "TIMESTAMP WITH TIME ZONE", column


def test_duplicates_by_record_id_land_once(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "archive.duckdb"
    records: list[ArchiveRecord] = [transition(0), failure(), outcome(), closure()]
    with DuckDBArchive(path, clock=clock, background=False) as archive:
        archive.write(records + records)  # twice in one batch
        archive.flush()
        archive.write(records)  # and again in a later one
        archive.write([closure(at=T0 + timedelta(days=1))])  # a second closure: the first wins
        archive.flush()
        assert archive.closed_accounts()[0].closed_at == T0
    for table in ("transitions", "login_failures", "trade_outcomes", "instances"):
        assert count(path, table) == 1, table


def test_a_full_batch_is_written_at_once(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "archive.duckdb"
    archive = DuckDBArchive(path, batch_size=3, clock=clock, background=False)
    archive.write([transition(0), transition(1)])
    assert archive.pending == 2
    archive.write([transition(2)])
    assert archive.pending == 0
    archive.write([transition(3)])
    assert archive.pending == 1
    archive.close()
    assert count(path, "transitions") == 4


def test_flush_writes_what_is_buffered(tmp_path: Path, clock: Clock) -> None:
    archive = DuckDBArchive(tmp_path / "a.duckdb", clock=clock, background=False)
    archive.write([transition(0)])
    assert archive.pending == 1
    archive.flush()
    assert archive.pending == 0
    archive.close()
    assert count(tmp_path / "a.duckdb", "transitions") == 1


def test_the_oldest_record_is_written_after_flush_interval(tmp_path: Path, clock: Clock) -> None:
    archive = DuckDBArchive(
        tmp_path / "a.duckdb", flush_interval=5.0, clock=clock, background=False
    )
    archive.write([transition(0)])
    clock.advance(4.9)
    archive.write([transition(1)])
    assert archive.pending == 2
    clock.advance(0.1)
    archive.write([transition(2)])
    assert archive.pending == 0
    archive.close()


def test_the_background_flusher_writes_by_time(tmp_path: Path, clock: Clock) -> None:
    # The flusher thread wakes on real time (a few ms here) and asks the clock port
    # whether the oldest record is due; only the fake clock's jump makes it so.
    archive = DuckDBArchive(tmp_path / "a.duckdb", flush_interval=0.005, clock=clock)
    try:
        archive.write([transition(0)])
        clock.advance(1.0)
        waiter = threading.Event()
        for _ in range(400):
            if archive.pending == 0:
                break
            waiter.wait(0.005)
        assert archive.pending == 0
    finally:
        archive.close()
    assert count(tmp_path / "a.duckdb", "transitions") == 1


def test_memory_archive_path(clock: Clock) -> None:
    with DuckDBArchive(":memory:", clock=clock, background=False) as archive:
        archive.write([transition(0), closure("gone-1")])
        archive.flush()
        assert archive.history("acc-1") == [transition(0)]
        assert archive.is_confirmed("gone-1")


def test_is_confirmed_sees_the_buffer_and_the_file(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "a.duckdb"
    with DuckDBArchive(path, clock=clock, background=False) as archive:
        assert not archive.is_confirmed("acc-1")
        archive.write([closure()])
        assert archive.pending == 1
        assert archive.is_confirmed("acc-1")
        archive.flush()
        assert archive.is_confirmed("acc-1")
        assert not archive.is_confirmed("acc-2")
        with pytest.raises(InvalidInstanceId):
            archive.is_confirmed("no/such id")
    with DuckDBArchive(path, clock=clock, background=False) as reopened:
        assert reopened.is_confirmed("acc-1")


def test_schema_is_versioned_and_created_once(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "a.duckdb"
    for _ in range(2):
        with DuckDBArchive(path, clock=clock, background=False) as archive:
            archive.write([transition(0)])
    with duckdb.connect(str(path), read_only=True) as con:
        versions = con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_a_file_from_a_newer_library_is_refused(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "a.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)"
        )
        con.execute("INSERT INTO schema_version VALUES (99, now())")
    archive = DuckDBArchive(path, clock=clock, background=False)
    with pytest.raises(StoreUnavailable, match="schema version 99"):
        archive.is_confirmed("acc-1")
    archive.close()


def test_failures_by_reason_and_closed_accounts(tmp_path: Path, clock: Clock) -> None:
    with DuckDBArchive(tmp_path / "a.duckdb", clock=clock, background=False) as archive:
        archive.write(
            [failure(0), failure(1), failure(2, Reason.NETWORK), failure(100, Reason.TERMINAL)]
        )
        archive.write([closure("b-2", T0 + timedelta(hours=1)), closure("a-1", T0)])
        window = archive.failures_by_reason(T0, T0 + timedelta(seconds=100))
        assert window == [(Reason.AUTH_FAILED, 2), (Reason.NETWORK, 1)]
        assert [c.instance_id for c in archive.closed_accounts()] == ["a-1", "b-2"]
        with pytest.raises(ValueError, match="timezone-aware"):
            archive.failures_by_reason(datetime(2026, 1, 1), T0)


def test_write_refuses_what_is_not_a_record(tmp_path: Path, clock: Clock) -> None:
    with DuckDBArchive(tmp_path / "a.duckdb", clock=clock, background=False) as archive:
        with pytest.raises(TypeError, match="not an archive record"):
            archive.write([transition(0), "password"])  # type: ignore[list-item]
        assert archive.pending == 0


def test_a_missing_directory_never_fails_write_and_is_caught_up_later(
    tmp_path: Path, clock: Clock, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "not-yet" / "archive.duckdb"
    archive = DuckDBArchive(path, batch_size=2, metrics=metrics, clock=clock, background=False)
    with caplog.at_level(logging.ERROR, logger="mt5lifecycle.archive"):
        archive.write([transition(0), transition(1), closure()])
        archive.write([transition(2)])  # within the retry pause: no second attempt
        archive.flush()
    assert archive.pending == 4
    assert metrics.errors == [("archive", None), ("archive", None)]
    assert any("unavailable" in r.getMessage() for r in caplog.records)
    assert all(r.name == "mt5lifecycle.archive" for r in caplog.records)
    assert archive.is_confirmed("acc-1")  # from the buffer
    with pytest.raises(StoreUnavailable):
        archive.is_confirmed("acc-2")  # unknown, and the file cannot tell

    path.parent.mkdir()
    archive.flush()
    assert archive.pending == 0
    assert archive.is_confirmed("acc-1")
    archive.close()
    assert count(path, "transitions") == 3
    assert count(path, "instances") == 1


_HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
con.close()
"""


def test_a_file_locked_by_another_process_never_fails_write(
    tmp_path: Path, clock: Clock, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "archive.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        archive = DuckDBArchive(
            path, batch_size=1, metrics=metrics, clock=clock, background=False, lock_timeout=0.2
        )
        with caplog.at_level(logging.ERROR, logger="mt5lifecycle.archive"):
            archive.write([transition(0)])
        assert archive.pending == 1
        assert metrics.errors == [("archive", None)]
        assert "lock" in caplog.text
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    clock.advance(1.0)  # past the retry pause
    archive.write([transition(1)])
    assert archive.pending == 0
    archive.close()
    assert count(path, "transitions") == 2


def test_past_the_bound_the_oldest_records_go_but_closures_stay(
    tmp_path: Path, clock: Clock, metrics: Metrics
) -> None:
    path = tmp_path / "missing" / "archive.duckdb"
    archive = DuckDBArchive(
        path, batch_size=2, max_buffer=3, metrics=metrics, clock=clock, background=False
    )
    archive.write([closure(), transition(0)])
    archive.write([transition(1), transition(2), transition(3)])
    assert archive.pending == 3
    assert archive.dropped == 2
    assert archive.is_confirmed("acc-1")
    path.parent.mkdir()
    archive.close()
    assert count(path, "instances") == 1
    with duckdb.connect(str(path), read_only=True) as con:
        kept = con.execute("SELECT occurred_at FROM transitions ORDER BY occurred_at").fetchall()
    assert [row[0] for row in kept] == [T0 + timedelta(seconds=2), T0 + timedelta(seconds=3)]


def test_write_after_close_is_counted_not_raised(
    tmp_path: Path, clock: Clock, metrics: Metrics
) -> None:
    archive = DuckDBArchive(tmp_path / "a.duckdb", metrics=metrics, clock=clock, background=False)
    archive.close()
    archive.write([transition(0)])
    assert metrics.errors == [("archive", None)]


# -- every flow of SPEC section 4, through a Lifecycle, into a real DuckDB file ----------

CREDS = Credentials(login=5550001, server="Broker-Demo", password="s3cret-Pa55")


class Flow:
    """One instance on in-memory stores, archiving to a DuckDB file."""

    def __init__(self, path: Path, instance_id: str = "acc-1") -> None:
        self.clock = FakeClock()
        self.broker = FakeBroker(self.clock)
        backends = memory_backends(broker=self.broker, clock=self.clock)
        self.archive = DuckDBArchive(path, clock=self.clock, background=False)
        self.backends = attrs.evolve(backends, archive=self.archive)
        self.path = path
        self.id = instance_id
        self.backends.credentials.put(instance_id, CREDS)
        self.lc = Lifecycle(instance_id, self.backends)

    def state(self) -> State | None:
        return self.lc.state

    def run(self, seconds: float) -> None:
        run_for(self.lc, self.clock, seconds)

    def start(self) -> Flow:
        self.lc.start()
        self.run(1)
        return self

    def rows(self) -> list[tuple[object, ...]]:
        """The instance's transitions as an analyst reads them, from the closed file."""
        self.archive.close()
        with duckdb.connect(str(self.path), read_only=True) as con:
            return con.execute(
                "SELECT event, source, dest, reason FROM transitions "
                "WHERE instance_id = ? ORDER BY occurred_at, seq",
                [self.id],
            ).fetchall()


def test_flow_start_to_connected(tmp_path: Path) -> None:
    flow = Flow(tmp_path / "a.duckdb").start()
    assert flow.state() is State.CONNECTED
    assert flow.rows() == [
        ("start", None, "CONNECTING", None),
        ("login_succeeded", "CONNECTING", "CONNECTED", None),
    ]


def test_flow_auth_failures_to_exhaustion(tmp_path: Path) -> None:
    flow = Flow(tmp_path / "a.duckdb")
    flow.broker.fail_logins(flow.id, Reason.AUTH_FAILED)
    flow.lc.start()
    flow.run(200)
    assert flow.state() is State.FAILED
    failures = flow.archive.failures(flow.id)
    assert [(f.attempt, f.reason) for f in failures] == [
        (i, Reason.AUTH_FAILED) for i in range(1, 6)
    ]
    assert [f.at.timestamp() for f in failures] == flow.broker.login_times(flow.id)
    rows = flow.rows()
    assert rows[0] == ("start", None, "CONNECTING", None)
    assert rows[1:5] == [("login_failed", "CONNECTING", "CONNECTING", "AUTH_FAILED")] * 4
    assert rows[5:] == [("login_failed", "CONNECTING", "FAILED", "LOGIN_ATTEMPTS_EXHAUSTED")]


def test_flow_network_loss_and_reconnection(tmp_path: Path) -> None:
    flow = Flow(tmp_path / "a.duckdb").start()
    flow.broker.drop_connection(flow.id)
    flow.lc.connection_lost()
    flow.broker.restore_connection(flow.id)
    flow.run(20)
    assert flow.state() is State.CONNECTED
    assert flow.rows()[2:] == [
        ("connection_lost", "CONNECTED", "CONNECTING", "NETWORK"),
        # back by itself, no login: archived as the check that found it so
        ("reconnect_checked", "CONNECTING", "CONNECTED", None),
    ]


def test_flow_terminal_crash_and_restart(tmp_path: Path) -> None:
    flow = Flow(tmp_path / "a.duckdb").start()
    flow.broker.crash_terminal(flow.id)
    flow.lc.terminal_failed()
    flow.run(100)
    assert flow.state() is State.CONNECTED
    assert flow.rows()[2:] == [
        ("terminal_failed", "CONNECTED", "FAILED", "TERMINAL"),
        ("restart_due", "FAILED", "CONNECTING", None),
        ("login_succeeded", "CONNECTING", "CONNECTED", None),
    ]


def test_flow_account_closed_with_open_trades_then_confirmed(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    flow = Flow(path).start()
    flow.broker.open_position(flow.id, 1001, "EURUSD", 1.0)
    flow.broker.open_position(flow.id, 1002, "GBPUSD", 0.5, close_retcode=10028)
    flow.broker.pending_order(flow.id, 2001, "EURUSD")
    flow.broker.close_account(flow.id)
    flow.lc.account_closed()
    assert flow.state() is State.ACCOUNT_CLOSED
    flow.lc.confirm_closure()
    assert flow.archive.is_confirmed(flow.id)
    outcomes = {(o.kind, o.ticket, o.outcome, o.retcode) for o in flow.archive.outcomes(flow.id)}
    assert outcomes == {
        ("position", 1001, Outcome.CLOSED, 10009),
        ("position", 1002, Outcome.FAILED, 10028),
        ("order", 2001, Outcome.CANCELLED, 10009),
    }
    (closed,) = flow.archive.closed_accounts()
    assert (closed.instance_id, closed.status, closed.final_status) == (
        flow.id,
        State.INACTIVE,
        State.ACCOUNT_CLOSED,
    )
    assert closed.last_failure_reason is Reason.ACCOUNT_CLOSED
    assert flow.rows()[2:] == [
        ("account_closed", "CONNECTED", "ACCOUNT_CLOSED", "ACCOUNT_CLOSED"),
        # the last ticket settled: closing is done (the others are quiet steps)
        ("trade_settled", "ACCOUNT_CLOSED", "ACCOUNT_CLOSED", "ACCOUNT_CLOSED"),
        ("confirm_closure", "ACCOUNT_CLOSED", "INACTIVE", "ACCOUNT_CLOSED"),
    ]
    # The file remembers: a new Lifecycle for the id is refused.
    again = Flow(path)
    with pytest.raises(InvalidTransition, match="closure was confirmed"):
        again.lc.start()
    again.archive.close()
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT instance_id, status FROM instances").fetchall() == [
            (flow.id, "INACTIVE")
        ]
        assert con.execute("SELECT count(*) FROM trade_outcomes").fetchall() == [(3,)]


def test_flow_ban(tmp_path: Path) -> None:
    flow = Flow(tmp_path / "a.duckdb").start()
    flow.broker.ban_account(flow.id)
    flow.lc.account_banned()
    assert flow.state() is State.INACTIVE
    assert flow.rows()[2:] == [("account_banned", "CONNECTED", "INACTIVE", "ACCOUNT_BANNED")]


def test_flow_disable(tmp_path: Path) -> None:
    flow = Flow(tmp_path / "a.duckdb").start()
    flow.lc.disable()
    assert flow.rows()[2:] == [("disable", "CONNECTED", "INACTIVE", "MANUAL")]


def test_flow_reset_after_exhaustion(tmp_path: Path) -> None:
    flow = Flow(tmp_path / "a.duckdb")
    flow.broker.fail_logins(flow.id, Reason.AUTH_FAILED, times=5)
    flow.lc.start()
    flow.run(200)
    assert flow.state() is State.FAILED
    flow.lc.reset(force=True)  # the broker unlocked it: the same credentials once more
    flow.run(1)
    assert flow.state() is State.CONNECTED
    assert flow.rows()[-2:] == [
        ("reset", "FAILED", "CONNECTING", None),
        ("login_succeeded", "CONNECTING", "CONNECTED", None),
    ]


# --- audits, and reading while another process writes --------------------------------


def audit(i: int = 0, outcome: str = "done") -> AuditRecord:
    return AuditRecord(
        instance_id="acc-1",
        at=T0 + timedelta(seconds=i),
        actor="alice",
        action="reset",
        source=State.FAILED,
        dest=State.CONNECTING if outcome == "done" else State.FAILED,
        outcome=outcome,
        detail="" if outcome == "done" else "the table refuses it",
        record_id=f"a-{i}",
    )


def test_audits_are_written_once_and_read_back_in_order(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "a.duckdb"
    with DuckDBArchive(path, clock=clock, background=False) as archive:
        archive.write([audit(1, "refused"), audit(0), audit(0)])
        got = archive.audits("acc-1")
    assert got == [audit(0), audit(1, "refused")]
    assert count(path, "audits") == 2
    with DuckDBArchive.reader(path) as reader:
        assert reader.audits("acc-1") == got
        assert reader.audits("acc-2") == []


def test_a_version_1_file_is_migrated_and_a_reader_of_one_sees_no_audits(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "v1.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for statement in _V1:
            con.execute(statement)
        con.execute("INSERT INTO schema_version (version) VALUES (1)")
    with DuckDBArchive.reader(path) as reader:
        assert reader.audits("acc-1") == []
        assert reader.history("acc-1") == []
    with DuckDBArchive(path, clock=clock, background=False) as archive:
        archive.write([audit(0)])
        assert archive.audits("acc-1") == [audit(0)]


def test_a_reader_writes_nothing_and_never_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "none.duckdb"
    reader = DuckDBArchive.reader(path, lock_timeout=0)
    with pytest.raises(TypeError, match="reader"):
        reader.write([transition(0)])
    with pytest.raises(TypeError, match="reader"):
        reader.store([transition(0)])
    with pytest.raises(StoreUnavailable):
        reader.history("acc-1")
    reader.close()
    assert not path.exists()


_WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.core.records import TransitionRecord
from mt5lifecycle.core.states import State

path, stop, keep_open = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
archive = DuckDBArchive(path, background=False, keep_open=keep_open)
t0 = datetime(2026, 1, 1, tzinfo=UTC)
written = 0
# Bounded: a test that forgets to stop the writer still ends.
while written < 5000 and not stop.exists():
    archive.write([TransitionRecord(instance_id="acc-1", at=t0 + timedelta(seconds=written),
                   event="connection_lost", source=State.CONNECTED, dest=State.CONNECTING,
                   reason=None, record_id=f"w-{written}")])
    archive.flush()
    written += 1
    if written == 1:
        print("flushing", flush=True)
archive.close()
print(written, flush=True)
"""


def start_writer(path: Path, stop: Path, *, keep_open: bool = False) -> subprocess.Popen[str]:
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(stop), "1" if keep_open else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "flushing"
    return writer


def stop_writer(writer: subprocess.Popen[str], stop: Path) -> int:
    stop.touch()
    out, _ = writer.communicate(timeout=30)
    assert writer.returncode == 0
    return int(out.split()[-1])


def test_history_is_read_while_another_process_flushes_in_a_loop(tmp_path: Path) -> None:
    path, stop = tmp_path / "live.duckdb", tmp_path / "stop"
    writer = start_writer(path, stop)
    try:
        reader = DuckDBArchive.reader(path)
        seen = [len(reader.history("acc-1")) for _ in range(15)]
        reader.close()
    finally:
        written = stop_writer(writer, stop)
    assert seen == sorted(seen)
    assert seen[0] >= 1
    with DuckDBArchive.reader(path) as reader:
        assert len(reader.history("acc-1")) == written


def test_a_writer_that_keeps_the_file_open_locks_readers_out(tmp_path: Path) -> None:
    path, stop = tmp_path / "held.duckdb", tmp_path / "stop"
    writer = start_writer(path, stop, keep_open=True)
    try:
        reader = DuckDBArchive.reader(path, lock_timeout=0.2)
        with pytest.raises(StoreUnavailable, match="lock"):
            reader.history("acc-1")
        reader.close()
    finally:
        stop_writer(writer, stop)


def test_two_writers_share_one_file(tmp_path: Path) -> None:
    path, stop = tmp_path / "shared.duckdb", tmp_path / "stop"
    writer = start_writer(path, stop)
    try:
        with DuckDBArchive(path, background=False) as mine:
            mine.write([transition(i, "acc-2") for i in range(5)])
            mine.flush()
            assert mine.pending == 0
    finally:
        stop_writer(writer, stop)
    with DuckDBArchive.reader(path) as reader:
        assert len(reader.history("acc-2")) == 5
