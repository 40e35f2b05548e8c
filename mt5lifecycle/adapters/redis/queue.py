"""Many worker processes, one DuckDB archive: a Redis stream and one archiver.

DuckDB lets one process write a file at a time, so workers never open it. Each
worker's ``RedisStreamArchive`` appends its records to a Redis stream; one
``Archiver`` process reads the stream through a consumer group, commits each batch
to its ``DuckDBArchive`` in one transaction, and acknowledges (and deletes) the
entries only after the commit. The delivery is at least once: an archiver killed
between its commit and its acknowledgement reads the same entries again when it
restarts (its own pending entries first, then those of dead consumers through
XAUTOCLAIM). The archive dedupes every insert on the record's id, so each record
lands exactly once.

``is_confirmed`` cannot wait for the archiver, which may lag: a closure also adds
the instance id to a Redis set (``<stream>:confirmed``) in the same MULTI/EXEC as
its stream entry, so the set never says less than the stream. The archiver seeds
the set from the DuckDB file when it starts, so closures archived before the
stream existed (or a set lost with its Redis) are known again. The set holds one
short id per confirmed closure and is never trimmed: a closed id must stay refused.

On a Redis Cluster, put the stream name in a hash tag (``"{mt5lifecycle:archive}"``)
so that the stream, the confirmed set and the dead-letter stream share a slot, as
MULTI/EXEC requires.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ...builtin.clock import SystemClock
from ...core.ids import check_instance_id
from ...core.records import (
    ArchiveRecord,
    ClosureRecord,
    LoginFailureRecord,
    TradeOutcomeRecord,
    TransitionRecord,
)
from ...errors import StoreUnavailable
from ...ports import Clock, Metrics
from .._archive_codec import decode_many, encode_many

if TYPE_CHECKING:
    import redis

    from ..duckdb import DuckDBArchive

__all__ = ["DEFAULT_STREAM", "Archiver", "RedisStreamArchive"]

log = logging.getLogger("mt5lifecycle.archive")

DEFAULT_STREAM: Final = "mt5lifecycle:archive"
_RECORDS: Final = "records"
_FORMAT: Final = "v"
_FORMAT_VERSION: Final = "1"
_RECORD_TYPES: Final = (TransitionRecord, LoginFailureRecord, TradeOutcomeRecord, ClosureRecord)


def _confirmed_key(stream: str) -> str:
    return f"{stream}:confirmed"


def _dead_key(stream: str) -> str:
    return f"{stream}:dead"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Counter:
    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics

    def error(self) -> None:
        if self._metrics is not None:
            try:
                self._metrics.error("archive", None)
            except Exception:
                log.exception("the metrics backend failed to count an archive error")


class RedisStreamArchive:
    """The ``Archive`` port of a worker process: records go to a Redis stream.

    ``write`` never raises for a Redis fault: the entry is kept in a bounded local
    buffer (``max_buffer`` entries, one per ``write`` call; past it the oldest entry
    without a closure is dropped, logged and counted) and sent with the next write
    or ``flush()``. After a failure, writes wait ``retry_interval`` seconds on the
    clock before trying Redis again, so a Redis outage costs a transition at most one
    client timeout per interval; give the client a short ``socket_timeout``.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str = DEFAULT_STREAM,
        max_buffer: int = 10_000,
        retry_interval: float = 1.0,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream must be a non-empty string, not {stream!r}")
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise ValueError(f"max_buffer must be a positive int, not {max_buffer!r}")
        import redis as _redis  # lazily: mt5lifecycle imports without the driver

        self._redis: Any = _redis
        self._client = client
        self.stream = stream
        self.confirmed_key = _confirmed_key(stream)
        self.max_buffer = max_buffer
        self.retry_interval = float(retry_interval)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._errors = _Counter(metrics)
        # (JSON payload, instance ids of its closures, number of records)
        self._buffer: collections.deque[tuple[str, tuple[str, ...], int]] = collections.deque()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._retry_at = float("-inf")
        self.dropped = 0
        """Records dropped because the buffer was full while Redis failed."""

    def __repr__(self) -> str:
        return f"RedisStreamArchive(stream={self.stream!r}, pending={self.pending})"

    @property
    def pending(self) -> int:
        """Records written but not yet in the stream."""
        return sum(count for _, _, count in self._buffer)

    def write(self, records: Sequence[ArchiveRecord]) -> None:
        for record in records:
            if not isinstance(record, _RECORD_TYPES):
                raise TypeError(f"not an archive record: {type(record).__name__}")
        if not records:
            return
        closures = tuple(r.instance_id for r in records if isinstance(r, ClosureRecord))
        entry = (encode_many(records), closures, len(records))
        with self._lock:
            self._buffer.append(entry)
            self._enforce_bound()
        if self._clock.now() >= self._retry_at:
            self._send()

    def is_confirmed(self, instance_id: str) -> bool:
        check_instance_id(instance_id)
        with self._lock:
            if any(instance_id in closures for _, closures, _ in self._buffer):
                return True
        try:
            return bool(self._client.sismember(self.confirmed_key, instance_id))
        except self._redis.RedisError as exc:
            raise StoreUnavailable(
                backend="archive", instance_id=instance_id, detail=str(exc)
            ) from exc

    def confirm(self, record: ClosureRecord) -> None:
        """Send a confirmed closure now; ``StoreUnavailable`` if Redis did not take it.

        The closure's id joins the confirmed set in the same transaction as its entry,
        so once this returns, every worker's ``is_confirmed`` says so.
        """
        if not isinstance(record, ClosureRecord):
            raise TypeError(f"not a closure record: {type(record).__name__}")
        self.write([record])
        self._send()
        with self._lock:
            waiting = any(record.instance_id in closures for _, closures, _ in self._buffer)
        if waiting:
            raise StoreUnavailable(
                backend="archive",
                instance_id=record.instance_id,
                detail=f"the closure could not be sent to the stream {self.stream!r}",
            )

    def flush(self) -> None:
        """Send every buffered entry now; a Redis fault is logged and counted."""
        self._send()

    def close(self) -> None:
        self._send()
        if self._buffer:
            log.error(
                "archive stream %s closed with %d record(s) that could not be sent; they are lost",
                self.stream,
                self.pending,
            )
            self._errors.error()

    def _enforce_bound(self) -> None:
        excess = len(self._buffer) - self.max_buffer
        if excess <= 0:
            return
        kept = []
        dropped = 0
        while excess > 0 and self._buffer:
            entry = self._buffer.popleft()
            if entry[1]:
                # A lost closure would let a closed account start again: never drop it.
                kept.append(entry)
            else:
                dropped += entry[2]
                excess -= 1
        self._buffer.extendleft(reversed(kept))
        if dropped:
            self.dropped += dropped
            log.error(
                "archive stream %s: buffer full while Redis fails; dropped the %d oldest record(s)",
                self.stream,
                dropped,
            )
            self._errors.error()

    def _send(self) -> None:
        with self._send_lock:
            with self._lock:
                entries = list(self._buffer)
            if not entries:
                return
            pipe = self._client.pipeline(transaction=True)
            for payload, closures, _ in entries:
                if closures:
                    pipe.sadd(self.confirmed_key, *closures)
                pipe.xadd(self.stream, {_FORMAT: _FORMAT_VERSION, _RECORDS: payload})
            try:
                pipe.execute()
            except self._redis.RedisError as exc:
                self._retry_at = self._clock.now() + self.retry_interval
                log.error(
                    "archive stream %s unavailable, %d record(s) kept for the next write: %s",
                    self.stream,
                    sum(count for _, _, count in entries),
                    exc,
                )
                self._errors.error()
                return
            self._retry_at = float("-inf")
            with self._lock:
                # Only this thread removes entries, and new ones are appended on the
                # right; the bound may have dropped some of ours meanwhile, so remove
                # by identity rather than by count.
                sent = {id(entry) for entry in entries}
                self._buffer = collections.deque(e for e in self._buffer if id(e) not in sent)


class Archiver:
    """The one process that writes the DuckDB file, fed by the stream.

    Run one per archive file (DuckDB's one-writer rule) with a stable ``consumer``
    name (the host name by default): a restarted archiver then finds its own
    unacknowledged entries at once. Entries left pending by a consumer of another
    name are claimed once they have been idle ``claim_idle`` seconds. An entry that
    cannot be decoded is moved to ``<stream>:dead`` with the error, logged and
    counted, so that it never blocks the stream.
    """

    def __init__(
        self,
        client: redis.Redis,
        archive: DuckDBArchive,
        *,
        stream: str = DEFAULT_STREAM,
        group: str = "archiver",
        consumer: str | None = None,
        batch_size: int = 1000,
        block: float = 1.0,
        claim_idle: float = 60.0,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        if not block >= 0 or not claim_idle >= 0:
            raise ValueError("block and claim_idle must be non-negative numbers of seconds")
        import redis as _redis  # lazily: mt5lifecycle imports without the driver

        self._redis: Any = _redis
        self._client = client
        self.archive = archive
        self.stream = stream
        self.group = group
        self.consumer = consumer if consumer is not None else socket.gethostname()
        self.batch_size = batch_size
        self.block = block
        self.claim_idle = claim_idle
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._errors = _Counter(metrics)
        self._own_pending = True
        self._claim_cursor = "0-0"
        self._claim_at = float("-inf")
        self._ready = False
        self._seeded = False
        self.records = 0
        """Records committed by this archiver (a redelivered one counts again)."""
        self.entries = 0
        """Stream entries acknowledged by this archiver."""

    def __repr__(self) -> str:
        return f"Archiver(stream={self.stream!r}, group={self.group!r}, consumer={self.consumer!r})"

    def setup(self) -> None:
        """Create the consumer group, then seed the confirmed set from the archive.

        A seed that fails (the file unreadable) is logged, counted and tried again on
        the next batch; entries are still read, and their commit fails on its own.
        """
        if not self._ready:
            try:
                self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except self._redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._ready = True
        if self._seeded:
            return
        try:
            closed = [account.instance_id for account in self.archive.closed_accounts()]
        except StoreUnavailable as exc:
            log.error("archiver on %s cannot read the closed accounts yet: %s", self.stream, exc)
            self._errors.error()
            return
        for start in range(0, len(closed), 1000):
            self._client.sadd(_confirmed_key(self.stream), *closed[start : start + 1000])
        self._seeded = True

    def run_once(self, *, block: float | None = None) -> int:
        """Archive one batch and return how many entries it acknowledged.

        Its own pending entries come first (after a restart or a failed commit),
        then entries of dead consumers, then new ones (waiting up to ``block``
        seconds). A commit that fails raises ``StoreUnavailable`` and acknowledges
        nothing: the entries stay pending and are read again on the next call.
        """
        if not self._seeded:
            self.setup()
        if self._own_pending:
            entries = self._read("0", block=None)
            if entries:
                return self._archive(entries)
            self._own_pending = False
        now = self._clock.now()
        if now >= self._claim_at:
            entries = self._claim()
            if entries:
                return self._archive(entries)
        wait = self.block if block is None else block
        return self._archive(self._read(">", block=wait))

    def run(self, stop: threading.Event | None = None) -> None:
        """Archive until ``stop`` is set; faults are logged, counted and retried."""
        stop = stop if stop is not None else threading.Event()
        while not stop.is_set():
            try:
                self.run_once()
            except (StoreUnavailable, self._redis.RedisError) as exc:
                log.error("archiver on %s failed, retrying: %s", self.stream, exc)
                self._errors.error()
                stop.wait(max(self.block, 0.1))

    def _read(self, start: str, *, block: float | None) -> list[tuple[Any, Any]]:
        reply: Any = self._client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: start},
            count=self.batch_size,
            block=None if block is None else max(1, int(block * 1000)),
        )
        if not reply:
            return []
        # RESP2 answers a list of [stream, entries]; RESP3 a dict of stream -> entries.
        streams = reply.items() if isinstance(reply, dict) else reply
        out: list[tuple[Any, Any]] = []
        for _, entries in streams:
            out.extend(entries)
        return out

    def _claim(self) -> list[tuple[Any, Any]]:
        reply: Any = self._client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=int(self.claim_idle * 1000),
            start_id=self._claim_cursor,
            count=self.batch_size,
        )
        cursor, entries = _text(reply[0]), list(reply[1])
        self._claim_cursor = cursor
        if cursor == "0-0":
            # A full pass is done: look again once another claim_idle has passed.
            self._claim_at = self._clock.now() + max(self.claim_idle, self.block)
        return entries

    def _archive(self, entries: list[tuple[Any, Any]]) -> int:
        if not entries:
            return 0
        ids: list[Any] = []
        dead: list[tuple[Any, dict[Any, Any]]] = []
        records: list[ArchiveRecord] = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if fields is None:
                continue  # deleted from the stream while pending: nothing to archive
            payload = fields.get(_RECORDS, fields.get(_RECORDS.encode()))
            try:
                if payload is None:
                    raise ValueError("the entry has no records field")
                records.extend(decode_many(payload))
            except ValueError as exc:
                log.error(
                    "archive stream %s: entry %s cannot be decoded, moved to %s: %s",
                    self.stream,
                    _text(entry_id),
                    _dead_key(self.stream),
                    exc,
                )
                self._errors.error()
                dead.append(
                    (
                        entry_id,
                        {
                            "id": _text(entry_id),
                            "error": str(exc)[:500],
                            "payload": _text(payload)[:100_000],
                        },
                    )
                )
        if records:
            try:
                self.archive.store(records)
            except StoreUnavailable:
                self._own_pending = True
                raise
        pipe = self._client.pipeline(transaction=True)
        for _, fields in dead:
            pipe.xadd(_dead_key(self.stream), fields)
        pipe.xack(self.stream, self.group, *ids)
        # Acknowledged entries are deleted so that the stream stays as short as the
        # archiver's lag; one consumer group reads it, so nobody else needs them.
        pipe.xdel(self.stream, *ids)
        try:
            pipe.execute()
        except self._redis.RedisError:
            # Committed but not acknowledged: they come back, and land once.
            self._own_pending = True
            raise
        self.records += len(records)
        self.entries += len(ids)
        return len(ids)
