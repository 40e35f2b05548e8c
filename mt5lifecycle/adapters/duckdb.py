"""The archive in DuckDB (SPEC section 7): history for investigation.

Why it is shaped so:

- A transition must never wait on the archive nor fail because of it. ``write`` only
  appends to an in-memory buffer; the buffer goes to DuckDB in one transaction per
  batch (at ``batch_size`` records, ``flush_interval`` seconds after the oldest
  buffered record, on ``flush()`` and on ``close()``). A backend fault (disk full,
  the file locked by another process, a missing directory) is logged on the
  ``mt5lifecycle.archive`` logger, counted as ``metrics.error("archive", None)``, and
  the records stay buffered for the next flush.
- The buffer is bounded (``max_buffer``). Past the bound the oldest records are
  dropped, logged and counted, except closure records: a dropped closure would let
  a confirmed-closed account start again, so those are always kept.
- Every record carries an id minted once (a closure is identified by its instance),
  and every insert dedupes on it, so a batch retried after a crash, or redelivered
  by the Redis stream (``redis_queue``), lands once.
- DuckDB lets one process open a file for writing at a time, and a read-only open
  from another process is refused while it is held. So by default
  (``keep_open=False``) the archive holds the file only while it flushes or reads:
  connect, append, commit, close (closing checkpoints). In between, another process
  can open it: ``mt5lifecycle history``, a console in another process, an analyst's
  ``duckdb -readonly``, even a second writer. Whoever finds the file held retries
  for ``lock_timeout`` seconds, since a flush holds it for tens of milliseconds.
  ``keep_open=True`` keeps one connection for the object's life: cheaper per flush
  (``benchmarks/archive.py``), and the file is this process's alone.
- Several worker processes can also share one archive through
  ``redis.queue.RedisStreamArchive`` and one ``Archiver`` process that owns the file.

``AT`` is a reserved word in DuckDB's SQL (``AT TIME ZONE``), so the records' ``at``
field is stored as ``occurred_at``: an analyst never has to quote a column.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

from ..builtin.clock import SystemClock
from ..core.ids import check_instance_id
from ..core.records import (
    ArchiveRecord,
    AuditRecord,
    ClosureRecord,
    LoginFailureRecord,
    Outcome,
    TradeOutcomeRecord,
    TransitionRecord,
)
from ..core.states import ConnectionState, Reason, State
from ..errors import StoreUnavailable
from ..ports import Clock, Metrics
from ._archive_codec import record_key

if TYPE_CHECKING:
    import duckdb as _duckdb

__all__ = ["SCHEMA_VERSION", "ClosedAccount", "DuckDBArchive"]

log = logging.getLogger("mt5lifecycle.archive")

_RECORD_TYPES: Final = (
    TransitionRecord,
    LoginFailureRecord,
    TradeOutcomeRecord,
    ClosureRecord,
    AuditRecord,
)

_V1: Final = (
    """
    CREATE TABLE transitions (
        record_id    VARCHAR PRIMARY KEY,
        occurred_at  TIMESTAMPTZ NOT NULL,
        instance_id  VARCHAR NOT NULL,
        event        VARCHAR NOT NULL,
        source       VARCHAR,
        dest         VARCHAR NOT NULL,
        reason       VARCHAR,
        seq          BIGINT NOT NULL
    )""",
    """
    CREATE TABLE login_failures (
        record_id    VARCHAR PRIMARY KEY,
        occurred_at  TIMESTAMPTZ NOT NULL,
        instance_id  VARCHAR NOT NULL,
        attempt      INTEGER NOT NULL,
        reason       VARCHAR NOT NULL,
        code         BIGINT,
        message      VARCHAR NOT NULL,
        seq          BIGINT NOT NULL
    )""",
    """
    CREATE TABLE trade_outcomes (
        record_id    VARCHAR PRIMARY KEY,
        occurred_at  TIMESTAMPTZ NOT NULL,
        instance_id  VARCHAR NOT NULL,
        kind         VARCHAR NOT NULL,
        ticket       BIGINT NOT NULL,
        symbol       VARCHAR NOT NULL,
        volume       DOUBLE NOT NULL,
        outcome      VARCHAR NOT NULL,
        retcode      INTEGER,
        comment      VARCHAR NOT NULL,
        seq          BIGINT NOT NULL
    )""",
    """
    CREATE TABLE instances (
        instance_id          VARCHAR PRIMARY KEY,
        status               VARCHAR NOT NULL,
        closed_at            TIMESTAMPTZ NOT NULL,
        final_status         VARCHAR NOT NULL,
        connection_state     VARCHAR NOT NULL,
        login_attempt_count  INTEGER NOT NULL,
        last_login_attempt   TIMESTAMPTZ,
        login_failure_reason VARCHAR,
        last_failure_reason  VARCHAR,
        restart_count        INTEGER NOT NULL
    )""",
)

_V2: Final = (
    """
    CREATE TABLE audits (
        record_id    VARCHAR PRIMARY KEY,
        occurred_at  TIMESTAMPTZ NOT NULL,
        instance_id  VARCHAR NOT NULL,
        actor        VARCHAR NOT NULL,
        action       VARCHAR NOT NULL,
        source       VARCHAR,
        dest         VARCHAR,
        outcome      VARCHAR NOT NULL,
        detail       VARCHAR NOT NULL,
        seq          BIGINT NOT NULL
    )""",
)

# Each entry upgrades the file by one version, in one transaction; a file is only
# ever moved forward, and a file newer than this library is left untouched.
_MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = ((1, _V1), (2, _V2))
SCHEMA_VERSION: Final = _MIGRATIONS[-1][0]

_TRANSITION_COLUMNS: Final = "record_id, occurred_at, instance_id, event, source, dest, reason"
_FAILURE_COLUMNS: Final = "record_id, occurred_at, instance_id, attempt, reason, code, message"
_OUTCOME_COLUMNS: Final = (
    "record_id, occurred_at, instance_id, kind, ticket, symbol, volume, outcome, retcode, comment"
)
_AUDIT_COLUMNS: Final = (
    "record_id, occurred_at, instance_id, actor, action, source, dest, outcome, detail"
)
_MAX_SEQ: Final = (
    "SELECT greatest((SELECT max(seq) FROM transitions), (SELECT max(seq) FROM login_failures), "
    "(SELECT max(seq) FROM trade_outcomes), (SELECT max(seq) FROM audits))"
)
_INSTANCE_COLUMNS: Final = (
    "instance_id, status, closed_at, final_status, connection_state, login_attempt_count, "
    "last_login_attempt, login_failure_reason, last_failure_reason, restart_count"
)


@attrs.frozen(kw_only=True)
class ClosedAccount:
    """One row of ``instances``: a confirmed closure and the instance's final state."""

    instance_id: str
    status: State
    """Always ``INACTIVE``: the instance is out of service for good."""
    closed_at: datetime
    final_status: State
    """The state the instance was in when the closure was confirmed."""
    connection_state: ConnectionState
    login_attempt_count: int
    last_login_attempt: datetime | None
    login_failure_reason: Reason | None
    last_failure_reason: Reason | None
    restart_count: int


def _name(value: State | Reason | ConnectionState | Outcome | None) -> str | None:
    return None if value is None else value.value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, not {value!r}")
    return value


@attrs.define
class _Rows:
    """One batch split by table."""

    transitions: list[tuple[object, ...]] = attrs.Factory(list)
    failures: list[tuple[object, ...]] = attrs.Factory(list)
    outcomes: list[tuple[object, ...]] = attrs.Factory(list)
    audits: list[tuple[object, ...]] = attrs.Factory(list)
    closures: list[tuple[object, ...]] = attrs.Factory(list)

    def add(self, record: ArchiveRecord) -> None:
        if isinstance(record, TransitionRecord):
            self.transitions.append(
                (
                    record.record_id,
                    _aware(record.at, "TransitionRecord.at"),
                    record.instance_id,
                    record.event,
                    _name(record.source),
                    _name(record.dest),
                    _name(record.reason),
                )
            )
        elif isinstance(record, LoginFailureRecord):
            self.failures.append(
                (
                    record.record_id,
                    _aware(record.at, "LoginFailureRecord.at"),
                    record.instance_id,
                    record.attempt,
                    _name(record.reason),
                    record.code,
                    record.message,
                )
            )
        elif isinstance(record, TradeOutcomeRecord):
            self.outcomes.append(
                (
                    record.record_id,
                    _aware(record.at, "TradeOutcomeRecord.at"),
                    record.instance_id,
                    record.kind,
                    record.ticket,
                    record.symbol,
                    record.volume,
                    _name(record.outcome),
                    record.retcode,
                    record.comment,
                )
            )
        elif isinstance(record, AuditRecord):
            self.audits.append(
                (
                    record.record_id,
                    _aware(record.at, "AuditRecord.at"),
                    record.instance_id,
                    record.actor,
                    record.action,
                    _name(record.source),
                    _name(record.dest),
                    record.outcome,
                    record.detail,
                )
            )
        elif isinstance(record, ClosureRecord):
            final = record.final
            self.closures.append(
                (
                    record.instance_id,
                    _name(record.status),
                    _aware(record.at, "ClosureRecord.at"),
                    _name(final.status),
                    _name(final.connection_state),
                    final.login_attempt_count,
                    final.last_login_attempt,
                    _name(final.login_failure_reason),
                    _name(final.last_failure_reason),
                    final.restart_count,
                )
            )


def _is_transient(exc: BaseException, duckdb: Any) -> bool:
    """Whether a fault is the backend's (retry later) rather than the batch's own.

    A constraint, conversion or input error would fail the same rows forever; an I/O
    error, a lock held by another process, a full disk or an invalidated database
    may pass.
    """
    poison = (duckdb.IntegrityError, duckdb.DataError, duckdb.ProgrammingError, ValueError)
    return not isinstance(exc, poison)


def _held_elsewhere(exc: BaseException, duckdb: Any) -> bool:
    """Whether opening failed only because another process holds the file now."""
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


class DuckDBArchive:
    """The ``Archive`` port on one DuckDB file (or ``":memory:"``).

    ``write`` never raises for a backend fault and never waits on the disk when the
    background flusher runs (the default): it appends to a buffer and, at
    ``batch_size`` records, wakes the flusher. With ``background=False`` nothing runs
    behind the caller's back: ``write`` flushes inline when the batch is full or the
    oldest buffered record is ``flush_interval`` seconds old on ``clock``, which is
    what deterministic tests want.

    ``flush()`` and ``close()`` try every buffered record at once and do not raise
    either; ``pending`` tells what is still waiting, ``dropped`` what the bound cost.
    The read helpers (``history`` ...) flush first, and raise ``StoreUnavailable``
    when the file cannot be read, as ``is_confirmed`` does: a closed account must
    never be taken for an open one because the disk is unreadable.

    ``keep_open=False`` (the default) holds the file only while a flush or a read
    runs, so other processes can read it meanwhile; ``lock_timeout`` is how long
    an open waits for another process to let go. ``read_only=True`` makes a reader
    for another process's archive: it never creates, migrates or writes the file
    (``write`` raises ``TypeError``), and ``audits`` of a file not yet migrated to
    them is empty. See ``DuckDBArchive.reader``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        background: bool = True,
        keep_open: bool = False,
        lock_timeout: float = 5.0,
        read_only: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        if not isinstance(flush_interval, (int, float)) or not flush_interval > 0:
            raise ValueError(f"flush_interval must be a positive number, not {flush_interval!r}")
        if (
            isinstance(max_buffer, bool)
            or not isinstance(max_buffer, int)
            or max_buffer < batch_size
        ):
            raise ValueError(
                f"max_buffer must be an int of at least batch_size, not {max_buffer!r}"
            )
        if not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0:
            raise ValueError(f"lock_timeout must be a number of seconds >= 0, not {lock_timeout!r}")
        import duckdb  # lazily: mt5lifecycle imports without the driver

        self._duckdb: Any = duckdb
        self.path = os.fspath(path)
        # A database in memory lives as long as its connection: it is never let go.
        self.keep_open = bool(keep_open) or self.path == ":memory:"
        self.lock_timeout = float(lock_timeout)
        self.read_only = bool(read_only)
        if self.read_only:
            background = False
        self._migrated = False
        self._file_version = SCHEMA_VERSION
        self._depth = 0
        self.batch_size = batch_size
        self.flush_interval = float(flush_interval)
        self.max_buffer = max_buffer
        self._metrics = metrics
        self._clock: Clock = clock if clock is not None else SystemClock()
        # (arrival time on the clock, record); the left end is the oldest.
        self._buffer: collections.deque[tuple[float, ArchiveRecord]] = collections.deque()
        # Closures written but not yet committed, in-flight ones included, so that
        # is_confirmed never has a gap between the buffer and the table.
        self._unsaved_closures: collections.Counter[str] = collections.Counter()
        self._buffer_lock = threading.Lock()
        self._db_lock = threading.RLock()
        self._con: _duckdb.DuckDBPyConnection | None = None
        self._retry_at = float("-inf")
        self._seq = 0
        """The last ``seq`` given: orders records of one instant as they were written."""
        self._closed = False
        self.dropped = 0
        """Records dropped because the buffer was full while the backend was failing."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Records still buffered when the interpreter exits are written then, unless
        # close() came first.
        atexit.register(self.close)
        if background:
            self._thread = threading.Thread(
                target=self._run, name=f"mt5lifecycle-archive-flusher[{self.path}]", daemon=True
            )
            self._thread.start()

    @classmethod
    def reader(cls, path: str | os.PathLike[str], *, lock_timeout: float = 5.0) -> DuckDBArchive:
        """An archive to read a file that a fleet in another process writes.

        Each read opens the file read-only, waiting up to ``lock_timeout`` seconds
        while the writer's flush holds it, and lets go at once.
        """
        return cls(path, background=False, read_only=True, lock_timeout=lock_timeout)

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"DuckDBArchive({self.path!r}{mode}, pending={self.pending})"

    def __enter__(self) -> DuckDBArchive:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Records written but not yet committed to the file."""
        return len(self._buffer)

    # -- the port ---------------------------------------------------------------------

    def write(self, records: Sequence[ArchiveRecord]) -> None:
        for record in records:
            if not isinstance(record, _RECORD_TYPES):
                raise TypeError(f"not an archive record: {type(record).__name__}")
        if self.read_only:
            raise TypeError(f"{self!r} is a reader: it writes nothing")
        if not records:
            return
        if self._closed:
            log.error("archive %s is closed: %d record(s) not archived", self.path, len(records))
            self._count_error()
            return
        now = self._clock.now()
        with self._buffer_lock:
            for record in records:
                self._buffer.append((now, record))
                if isinstance(record, ClosureRecord):
                    self._unsaved_closures[record.instance_id] += 1
            self._enforce_bound()
            due = self._due(now)
        if due:
            if self._thread is not None:
                self._wake.set()
            else:
                self._flush(automatic=True)

    def is_confirmed(self, instance_id: str) -> bool:
        check_instance_id(instance_id)
        if self._unsaved_closures.get(instance_id):
            return True
        with self._holding():
            con = self._connection()
            try:
                row = con.execute(
                    "SELECT 1 FROM instances WHERE instance_id = ?", [instance_id]
                ).fetchone()
            except self._duckdb.Error as exc:
                self._disconnect()
                raise StoreUnavailable(
                    backend="archive", instance_id=instance_id, detail=str(exc)
                ) from exc
        return row is not None

    def confirm(self, record: ClosureRecord) -> None:
        """Write a confirmed closure now, in its own transaction (``store``).

        Raises ``StoreUnavailable`` when the file cannot take it: the lifecycle then
        keeps the instance's live state until a retry succeeds, so a closure is never
        only in memory when the state that also remembers it is deleted.
        """
        if not isinstance(record, ClosureRecord):
            raise TypeError(f"not a closure record: {type(record).__name__}")
        self.store([record])

    def flush(self) -> None:
        if not self.read_only:
            self._flush(automatic=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join()
        self._flush(automatic=False)
        if self._buffer:
            log.error(
                "archive %s closed with %d record(s) that could not be written; they are lost",
                self.path,
                len(self._buffer),
            )
            self._count_error()
        with self._db_lock:
            self._disconnect()

    # -- for the archiver ---------------------------------------------------------------

    def store(self, records: Sequence[ArchiveRecord]) -> None:
        """Write ``records`` now, in one transaction, bypassing the buffer.

        For the stream archiver, which acknowledges entries only after this returns.
        A backend fault raises ``StoreUnavailable``; the batch is then sent again,
        and whatever of it was committed already lands once (ids dedupe). A record
        DuckDB refuses for its own sake is dropped, logged and counted.
        """
        if self.read_only:
            raise TypeError(f"{self!r} is a reader: it writes nothing")
        with self._holding():
            failure = self._write_batch([(0.0, record) for record in records])
        if failure is not None:
            raise StoreUnavailable(backend="archive", instance_id=None, detail=str(failure[1]))

    # -- investigation -------------------------------------------------------------------

    def history(self, instance_id: str) -> list[TransitionRecord]:
        """The instance's transitions in time order."""
        rows = self._query(
            f"SELECT {_TRANSITION_COLUMNS} FROM transitions WHERE instance_id = ? "  # noqa: S608
            "ORDER BY occurred_at, seq",
            [check_instance_id(instance_id)],
        )
        return [
            TransitionRecord(
                record_id=r[0],
                at=_utc(r[1]),
                instance_id=r[2],
                event=r[3],
                source=None if r[4] is None else State(r[4]),
                dest=State(r[5]),
                reason=None if r[6] is None else Reason(r[6]),
            )
            for r in rows
        ]

    def failures(self, instance_id: str) -> list[LoginFailureRecord]:
        """The instance's failed logins in time order, with what the broker said."""
        rows = self._query(
            f"SELECT {_FAILURE_COLUMNS} FROM login_failures WHERE instance_id = ? "  # noqa: S608
            "ORDER BY occurred_at, seq",
            [check_instance_id(instance_id)],
        )
        return [
            LoginFailureRecord(
                record_id=r[0],
                at=_utc(r[1]),
                instance_id=r[2],
                attempt=r[3],
                reason=Reason(r[4]),
                code=r[5],
                message=r[6],
            )
            for r in rows
        ]

    def outcomes(self, instance_id: str) -> list[TradeOutcomeRecord]:
        """How each position and order of a closed account ended."""
        rows = self._query(
            f"SELECT {_OUTCOME_COLUMNS} FROM trade_outcomes WHERE instance_id = ? "  # noqa: S608
            "ORDER BY occurred_at, seq",
            [check_instance_id(instance_id)],
        )
        return [
            TradeOutcomeRecord(
                record_id=r[0],
                at=_utc(r[1]),
                instance_id=r[2],
                kind=r[3],
                ticket=r[4],
                symbol=r[5],
                volume=r[6],
                outcome=Outcome(r[7]),
                retcode=r[8],
                comment=r[9],
            )
            for r in rows
        ]

    def audits(self, instance_id: str) -> list[AuditRecord]:
        """The operator actions on the instance (done and refused), in time order."""
        check_instance_id(instance_id)
        with self._holding():
            self._connection()
            if self._file_version < 2:  # a reader on a file written before audits
                return []
            rows = self._query(
                f"SELECT {_AUDIT_COLUMNS} FROM audits WHERE instance_id = ? "  # noqa: S608
                "ORDER BY occurred_at, seq",
                [instance_id],
            )
        return [
            AuditRecord(
                record_id=r[0],
                at=_utc(r[1]),
                instance_id=r[2],
                actor=r[3],
                action=r[4],
                source=None if r[5] is None else State(r[5]),
                dest=None if r[6] is None else State(r[6]),
                outcome=r[7],
                detail=r[8],
            )
            for r in rows
        ]

    def closed_accounts(self) -> list[ClosedAccount]:
        """Every confirmed closure, oldest first."""
        rows = self._query(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances ORDER BY closed_at, instance_id",  # noqa: S608
            [],
        )
        return [
            ClosedAccount(
                instance_id=r[0],
                status=State(r[1]),
                closed_at=_utc(r[2]),
                final_status=State(r[3]),
                connection_state=ConnectionState(r[4]),
                login_attempt_count=r[5],
                last_login_attempt=_opt_utc(r[6]),
                login_failure_reason=None if r[7] is None else Reason(r[7]),
                last_failure_reason=None if r[8] is None else Reason(r[8]),
                restart_count=r[9],
            )
            for r in rows
        ]

    def failures_by_reason(self, since: datetime, until: datetime) -> list[tuple[Reason, int]]:
        """Failed logins per reason in ``[since, until)``, the most frequent first."""
        rows = self._query(
            "SELECT reason, count(*) AS failures FROM login_failures "
            "WHERE occurred_at >= ? AND occurred_at < ? "
            "GROUP BY reason ORDER BY failures DESC, reason",
            [_aware(since, "since"), _aware(until, "until")],
        )
        return [(Reason(r[0]), r[1]) for r in rows]

    # -- internals -----------------------------------------------------------------------

    def _query(self, sql: str, params: list[object]) -> list[tuple[Any, ...]]:
        with self._holding():
            self.flush()
            con = self._connection()
            try:
                return con.execute(sql, params).fetchall()
            except self._duckdb.Error as exc:
                self._disconnect()
                raise StoreUnavailable(
                    backend="archive", instance_id=None, detail=str(exc)
                ) from exc

    def _due(self, now: float) -> bool:
        buffer = self._buffer
        if not buffer:
            return False
        return len(buffer) >= self.batch_size or now - buffer[0][0] >= self.flush_interval

    def _enforce_bound(self) -> None:
        # Called with the buffer lock held.
        excess = len(self._buffer) - self.max_buffer
        if excess <= 0:
            return
        kept: list[tuple[float, ArchiveRecord]] = []
        dropped = 0
        while dropped < excess and self._buffer:
            item = self._buffer.popleft()
            if isinstance(item[1], ClosureRecord):
                kept.append(item)
            else:
                dropped += 1
        self._buffer.extendleft(reversed(kept))
        if dropped:
            self.dropped += dropped
            log.error(
                "archive %s: buffer full (%d records) while the backend fails; "
                "dropped the %d oldest record(s)",
                self.path,
                self.max_buffer,
                dropped,
            )
            self._count_error()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._buffer_lock:
                if self._buffer:
                    age = self._clock.now() - self._buffer[0][0]
                    timeout = min(max(self.flush_interval - age, 0.005), self.flush_interval)
                else:
                    timeout = self.flush_interval
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._buffer_lock:
                due = self._due(self._clock.now())
            if due:
                self._flush(automatic=True)

    def _flush(self, *, automatic: bool) -> None:
        """Write the buffer in batches; never raises for a backend fault."""
        # An automatic flush never queues behind one under way: that one takes the
        # records too, and the writer that triggered it must not wait on the disk.
        if not self._db_lock.acquire(blocking=not automatic):
            return
        self._depth += 1
        try:
            if automatic and self._clock.now() < self._retry_at:
                return
            while True:
                with self._buffer_lock:
                    if not self._buffer or (automatic and not self._due(self._clock.now())):
                        return
                    count = min(self.batch_size, len(self._buffer))
                    batch = [self._buffer.popleft() for _ in range(count)]
                failure = self._write_batch(batch)
                if failure is None:
                    self._retry_at = float("-inf")
                    continue
                unsaved, exc = failure
                with self._buffer_lock:
                    self._buffer.extendleft(reversed(unsaved))
                    self._enforce_bound()
                self._retry_at = self._clock.now() + self.flush_interval
                log.error(
                    "archive %s unavailable, %d record(s) kept for the next flush: %s",
                    self.path,
                    len(self._buffer),
                    exc,
                )
                self._count_error()
                return
        finally:
            self._depth -= 1
            self._let_go()
            self._db_lock.release()

    def _write_batch(
        self, batch: list[tuple[float, ArchiveRecord]]
    ) -> tuple[list[tuple[float, ArchiveRecord]], Exception] | None:
        """Commit a batch; on a backend fault return what is still unsaved and why.

        A batch that DuckDB refuses for one record's sake (not a backend fault) is
        written record by record and the refused record dropped, logged and counted:
        otherwise that one record would hold every later one in the buffer forever.
        """
        try:
            self._commit([record for _, record in batch])
        except Exception as exc:
            if _is_transient(exc, self._duckdb):
                return batch, exc
            log.warning(
                "archive %s refused a batch (%s); writing it record by record", self.path, exc
            )
        else:
            self._settled(record for _, record in batch)
            return None
        for index, (_, record) in enumerate(batch):
            try:
                self._commit([record])
            except Exception as exc:
                if _is_transient(exc, self._duckdb):
                    return batch[index:], exc
                log.error(
                    "archive %s refused a %s record for instance %r, dropped: %s",
                    self.path,
                    type(record).__name__,
                    record.instance_id,
                    exc,
                )
                self.dropped += 1
                self._count_error()
            self._settled([record])
        return None

    def _settled(self, records: Iterable[ArchiveRecord]) -> None:
        with self._buffer_lock:
            for record in records:
                if isinstance(record, ClosureRecord):
                    self._unsaved_closures[record.instance_id] -= 1
                    if self._unsaved_closures[record.instance_id] <= 0:
                        del self._unsaved_closures[record.instance_id]

    def _commit(self, records: list[ArchiveRecord]) -> None:
        """One transaction; raises the driver's error (or ``StoreUnavailable``)."""
        rows = _Rows()
        seen: set[str] = set()
        for record in records:
            key = record_key(record)
            if key not in seen:
                seen.add(key)
                rows.add(record)
        con = self._connection()
        seq = self._seq
        try:
            con.begin()
            for table, batch in (
                ("transitions", rows.transitions),
                ("login_failures", rows.failures),
                ("trade_outcomes", rows.outcomes),
                ("audits", rows.audits),
            ):
                if not batch:
                    continue
                # Leave out the ids already archived (a retried batch, a redelivered
                # stream entry), then append the rest in order: the plain appender is
                # the fastest path measured (benchmarks/archive.py) and, unlike an
                # upsert, keeps the batch's order for ``seq``.
                present = con.execute(
                    f"SELECT record_id FROM {table} "  # noqa: S608
                    "WHERE record_id IN (SELECT unnest(?::VARCHAR[]))",
                    [[row[0] for row in batch]],
                ).fetchall()
                if present:
                    known = {row[0] for row in present}
                    batch = [row for row in batch if row[0] not in known]
                appender = con.appender(table)
                appender.append_rows([(*row, self._seq + i) for i, row in enumerate(batch, 1)])
                appender.flush()
                self._seq += len(batch)
            if rows.closures:
                # The first closure of an instance wins, as in the in-memory archive.
                con.executemany(
                    f"INSERT OR IGNORE INTO instances ({_INSTANCE_COLUMNS}) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows.closures,
                )
            con.commit()
        except BaseException as exc:
            self._seq = seq
            try:
                con.rollback()
            except self._duckdb.Error:
                log.debug("rollback failed", exc_info=True)
            if isinstance(exc, Exception) and _is_transient(exc, self._duckdb):
                self._disconnect()
            raise

    @contextlib.contextmanager
    def _holding(self) -> Iterator[None]:
        """One operation on the file; the outermost lets go of it when it ends."""
        with self._db_lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                self._let_go()

    def _let_go(self) -> None:
        # Called with the db lock held. Closing the last connection checkpoints the
        # WAL into the file, so a reader that opens it next sees every commit.
        if self._depth == 0 and not self.keep_open:
            self._disconnect()

    def _open(self) -> _duckdb.DuckDBPyConnection:
        """Connect, waiting up to ``lock_timeout`` while another process holds the file."""
        import tenacity

        duckdb = self._duckdb
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: _held_elsewhere(exc, duckdb)),
            stop=tenacity.stop_after_delay(self.lock_timeout),
            # A flush holds the file for tens of milliseconds: ask often, not in step
            # with another waiter.
            wait=tenacity.wait_random_exponential(multiplier=0.005, max=0.1),
            reraise=True,
        )
        try:
            con: _duckdb.DuckDBPyConnection = retrying(
                duckdb.connect, self.path, read_only=self.read_only
            )
        except duckdb.Error as exc:
            raise StoreUnavailable(backend="archive", instance_id=None, detail=str(exc)) from exc
        return con

    def _connection(self) -> _duckdb.DuckDBPyConnection:
        """The open connection, opening (and migrating) the file when needed."""
        if self._con is not None:
            return self._con
        con = self._open()
        try:
            # Times come back as UTC whatever the host's zone, like the records hold them.
            con.execute("SET TimeZone = 'UTC'")
            if self.read_only:
                self._file_version = _version(con, self.path)
                self._con = con
                return con
            if not self._migrated:
                _migrate(con, self.path)
                self._migrated = True
            # Read at every open: another process may have written since.
            row = con.execute(_MAX_SEQ).fetchone()
        except BaseException:
            con.close()
            raise
        self._seq = int(row[0]) if row is not None and row[0] is not None else 0
        self._con = con
        return con

    def _disconnect(self) -> None:
        # Dropping the connection releases the file lock and lets the next attempt
        # reopen it (another process may have let go, a full disk may have room).
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()
            except self._duckdb.Error:
                log.debug("closing the archive connection failed", exc_info=True)

    def _count_error(self) -> None:
        if self._metrics is not None:
            try:
                self._metrics.error("archive", None)
            except Exception:
                log.exception("the metrics backend failed to count an archive error")


def _migrate(con: _duckdb.DuckDBPyConnection, path: str) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    current = _version(con, path)
    for version, statements in _MIGRATIONS:
        if version <= current:
            continue
        con.begin()
        try:
            for statement in statements:
                con.execute(statement)
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
            con.commit()
        except BaseException:
            con.rollback()
            raise


def _version(con: _duckdb.DuckDBPyConnection, path: str) -> int:
    """The file's schema version; a file newer than this library is refused."""
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()
    if row is None or not row[0]:
        return 0
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    current = int(row[0]) if row is not None else 0
    if current > SCHEMA_VERSION:
        raise StoreUnavailable(
            backend="archive",
            instance_id=None,
            detail=f"{path} has schema version {current}, newer than this library's "
            f"{SCHEMA_VERSION}; upgrade mt5lifecycle to read or write it",
        )
    return current
