"""In-memory backends: the state store, credential store and archive of one process.

They keep the ports' contracts exactly (versions, fencing, lock expiry, idempotent
deletes), so a flow that passes here passes on Redis, PostgreSQL and DuckDB: only
durability and sharing between processes differ.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

from ..core.credentials import Credentials, fingerprint
from ..core.ids import check_instance_id
from ..core.records import (
    ArchiveRecord,
    AuditRecord,
    ClosureRecord,
    LoginFailureRecord,
    Notification,
    TradeOutcomeRecord,
    TransitionRecord,
    record_key,
)
from ..core.snapshot import Snapshot, utc
from ..errors import ConcurrentUpdate, LockLost
from ..ports import Clock, Commit, Entry, LockToken, Outbox, SetAside, Stored
from .clock import SystemClock

__all__ = [
    "MemoryArchive",
    "MemoryCredentialStore",
    "MemoryLeases",
    "MemoryStateStore",
    "NullArchive",
]


class MemoryStateStore:
    """Live state in a dict; locks and login slots expire on the given clock.

    Besides the ``StateStore`` port it keeps each instance's outbox (``OutboxStore``),
    the per-server login slots (``LoginSlots``) and what is known of broker server
    outages (``ServerOutages``), so one process gets every guarantee the Redis store
    gives many.
    """

    __slots__ = (
        "_aside",
        "_clock",
        "_down",
        "_failures",
        "_guard",
        "_locks",
        "_outbox",
        "_probes",
        "_rows",
        "_slots",
    )

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rows: dict[str, Stored] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        # Only instances with something waiting have an entry: an idle one costs nothing.
        self._outbox: dict[str, list[Entry]] = {}
        self._aside: dict[str, list[SetAside]] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._failures: dict[str, dict[str, float]] = {}
        self._down: set[str] = set()
        self._probes: dict[str, float] = {}
        # A Fleet drives instances from a worker pool: compare-and-set must be atomic.
        self._guard = threading.Lock()

    def load(self, instance_id: str) -> Stored | None:
        return self._rows.get(check_instance_id(instance_id))

    def load_many(self, instance_ids: Iterable[str]) -> dict[str, Stored]:
        return dict(self._found(instance_ids))

    def versions(self, instance_ids: Sequence[str]) -> dict[str, int]:
        return {i: stored.version for i, stored in self._found(instance_ids)}

    def _found(self, instance_ids: Iterable[str]) -> Iterator[tuple[str, Stored]]:
        """Each stored id with its row, the ids checked; absent ones left out."""
        rows = self._rows
        for instance_id in instance_ids:
            stored = rows.get(check_instance_id(instance_id))
            if stored is not None:
                yield instance_id, stored

    def ids(self) -> Iterator[str]:
        return iter(list(self._rows))

    def commit(
        self,
        instance_id: str,
        snapshot: Snapshot | None,
        *,
        expected_version: int,
        lock: LockToken | None = None,
        outbox: Sequence[Entry] = (),
    ) -> int:
        check_instance_id(instance_id)
        with self._guard:
            current = self._rows.get(instance_id)
            found = current.version if current is not None else 0
            if found != expected_version:
                raise ConcurrentUpdate(
                    instance_id=instance_id,
                    expected_version=expected_version,
                    found_version=found if current is not None else None,
                )
            if lock is not None and not self._holds(lock):
                raise LockLost(instance_id=instance_id)
            version = found + 1
            if outbox:
                self._outbox.setdefault(instance_id, []).extend(outbox)
            if snapshot is None:
                self._rows.pop(instance_id, None)
                self._locks.pop(instance_id, None)
                return version
            waiting = len(self._outbox.get(instance_id, ()))
            self._rows[instance_id] = Stored(snapshot, version, waiting)
            if lock is not None and lock.release_on_commit:
                del self._locks[instance_id]
            return version

    def commit_many(self, items: Sequence[Commit]) -> list[int | Exception]:
        """Each item committed as ``commit`` would; its version or its error."""
        out: list[int | Exception] = []
        for item in items:
            try:
                out.append(
                    self.commit(
                        item.instance_id,
                        item.snapshot,
                        expected_version=item.expected_version,
                        lock=item.lock,
                        outbox=item.outbox,
                    )
                )
            except (ConcurrentUpdate, LockLost) as exc:
                out.append(exc)
        return out

    def delete(self, instance_id: str) -> None:
        check_instance_id(instance_id)
        with self._guard:
            self._rows.pop(instance_id, None)
            self._locks.pop(instance_id, None)
            self._outbox.pop(instance_id, None)
            self._aside.pop(instance_id, None)

    # -- the login lock ----------------------------------------------------------------

    def acquire_lock(self, instance_id: str, ttl: float) -> LockToken | None:
        check_instance_id(instance_id)
        now = self._clock.now()
        with self._guard:
            held = self._locks.get(instance_id)
            if held is not None and held[1] > now:
                return None
            token = os.urandom(16).hex()
            self._locks[instance_id] = (token, now + ttl)
            return LockToken(instance_id, token)

    def release_lock(self, lock: LockToken) -> None:
        with self._guard:
            if self._holds(lock):
                del self._locks[lock.instance_id]

    def _holds(self, lock: LockToken) -> bool:
        held = self._locks.get(lock.instance_id)
        return held is not None and held[0] == lock.token and held[1] > self._clock.now()

    # -- the outbox --------------------------------------------------------------------

    def outbox(self, instance_ids: Sequence[str]) -> dict[str, Outbox]:
        found: dict[str, Outbox] = {}
        with self._guard:
            for instance_id in instance_ids:
                entries = self._outbox.get(check_instance_id(instance_id))
                if entries:
                    found[instance_id] = _split(entries)
        return found

    def acknowledge(self, delivered: Mapping[str, Sequence[str]]) -> None:
        with self._guard:
            for instance_id, ids in delivered.items():
                entries = self._outbox.get(instance_id)
                if not entries:
                    continue
                done = set(ids)
                entries[:] = [e for e in entries if _entry_id(e) not in done]
                self._settle_outbox(instance_id)

    def set_aside(
        self, instance_id: str, notification_id: str, error: str, *, at: float | None = None
    ) -> None:
        with self._guard:
            entries = self._outbox.get(check_instance_id(instance_id), [])
            for index, entry in enumerate(entries):
                if isinstance(entry, Notification) and entry.id == notification_id:
                    del entries[index]
                    self._aside.setdefault(instance_id, []).append(
                        SetAside(entry, error, utc(self._clock.now() if at is None else at))
                    )
                    break
            self._settle_outbox(instance_id)

    def set_aside_notifications(self, instance_ids: Iterable[str] | None = None) -> list[SetAside]:
        with self._guard:
            wanted = (
                self._aside
                if instance_ids is None
                else {check_instance_id(i): self._aside.get(i, []) for i in instance_ids}
            )
            return [item for items in wanted.values() for item in items]

    def redeliver(self, instance_id: str, notification_ids: Sequence[str] | None = None) -> int:
        with self._guard:
            aside = self._aside.get(check_instance_id(instance_id), [])
            chosen = [
                item
                for item in aside
                if notification_ids is None or item.notification.id in notification_ids
            ]
            if not chosen:
                return 0
            aside[:] = [item for item in aside if item not in chosen]
            if not aside:
                self._aside.pop(instance_id, None)
            self._outbox.setdefault(instance_id, []).extend(i.notification for i in chosen)
            # A change of the instance: its version moves, so its driver reads it back.
            stored = self._rows.get(instance_id)
            if stored is not None:
                self._rows[instance_id] = Stored(stored.snapshot, stored.version + 1)
            self._settle_outbox(instance_id)
            return len(chosen)

    def _settle_outbox(self, instance_id: str) -> None:
        """Keep ``Stored.pending`` true, and forget an outbox that is empty."""
        entries = self._outbox.get(instance_id)
        waiting = len(entries) if entries else 0
        if not waiting:
            self._outbox.pop(instance_id, None)
        stored = self._rows.get(instance_id)
        if stored is not None and stored.pending != waiting:
            self._rows[instance_id] = Stored(stored.snapshot, stored.version, waiting)

    # -- login slots per broker server ---------------------------------------------------

    def acquire_slot(self, server: str, limit: int, ttl: float) -> str | None:
        now = self._clock.now()
        with self._guard:
            held = self._slots.setdefault(server, {})
            for token in [t for t, until in held.items() if until <= now]:
                del held[token]
            if len(held) >= limit:
                return None
            token = os.urandom(8).hex()
            held[token] = now + ttl
            return token

    def release_slot(self, server: str, token: str) -> None:
        with self._guard:
            held = self._slots.get(server)
            if held is not None:
                held.pop(token, None)
                if not held:
                    del self._slots[server]

    # -- broker server outages -----------------------------------------------------------

    def report_failure(self, server: str, instance_id: str, now: float, window: float) -> int:
        with self._guard:
            failed = self._failures.setdefault(server, {})
            failed[instance_id] = now
            for other in [i for i, at in failed.items() if at <= now - window]:
                del failed[other]
            return len(failed)

    def mark_down(self, server: str) -> bool:
        with self._guard:
            if server in self._down:
                return False
            self._down.add(server)
            return True

    def mark_up(self, server: str) -> bool:
        with self._guard:
            if server not in self._down:
                return False
            self._down.discard(server)
            self._failures.pop(server, None)
            self._probes.pop(server, None)
            return True

    def is_down(self, server: str) -> bool:
        return server in self._down

    def probe(self, server: str, now: float, ttl: float) -> bool:
        with self._guard:
            if self._probes.get(server, 0.0) > now:
                return False
            self._probes[server] = now + ttl
            return True

    def __repr__(self) -> str:
        return f"MemoryStateStore({len(self._rows)} instances)"


def _entry_id(entry: Entry) -> str:
    return entry.id if isinstance(entry, Notification) else record_key(entry)


def _split(entries: Sequence[Entry]) -> Outbox:
    return Outbox(
        notifications=tuple(e for e in entries if isinstance(e, Notification)),
        records=tuple(e for e in entries if not isinstance(e, Notification)),
    )


class MemoryLeases:
    """Leases in a dict, expiring on the given clock: several fleets in one process."""

    __slots__ = ("_clock", "_guard", "_held")

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._held: dict[str, tuple[str, float]] = {}
        self._guard = threading.Lock()

    def acquire(self, instance_ids: Sequence[str], owner: str, ttl: float) -> list[str]:
        now = self._clock.now()
        out = []
        with self._guard:
            for instance_id in instance_ids:
                held = self._held.get(check_instance_id(instance_id))
                if held is None or held[1] <= now or held[0] == owner:
                    self._held[instance_id] = (owner, now + ttl)
                    out.append(instance_id)
        return out

    def release(self, instance_ids: Sequence[str], owner: str) -> None:
        with self._guard:
            for instance_id in instance_ids:
                held = self._held.get(instance_id)
                if held is not None and held[0] == owner:
                    del self._held[instance_id]

    def owner(self, instance_id: str) -> str | None:
        """Who holds the lease now, if anyone (for tests and status pages)."""
        held = self._held.get(instance_id)
        return held[0] if held is not None and held[1] > self._clock.now() else None


class MemoryCredentialStore:
    """Credentials in a dict. For tests and demos: nothing here is encrypted.

    It remembers credentials that exhausted their attempts by a keyed fingerprint
    (``Rejections``), as the PostgreSQL store does; ``fingerprint_key`` defaults to a
    random key of this process.
    """

    __slots__ = ("_key", "_rejected", "_rows")

    def __init__(self, *, fingerprint_key: bytes | None = None) -> None:
        self._rows: dict[str, Credentials] = {}
        self._rejected: dict[str, bytes] = {}
        self._key = fingerprint_key if fingerprint_key is not None else os.urandom(32)

    def put(self, instance_id: str, credentials: Credentials) -> None:
        check_instance_id(instance_id)
        if not isinstance(credentials, Credentials):
            raise TypeError(
                f"credentials for {instance_id!r} must be a Credentials value, "
                f"not {type(credentials).__name__}"
            )
        self._rows[instance_id] = credentials
        if not self.rejected(instance_id, credentials):
            # Replacing the credentials clears their mark; the very same ones keep it.
            self._rejected.pop(instance_id, None)

    def get(self, instance_id: str) -> Credentials | None:
        return self._rows.get(check_instance_id(instance_id))

    def delete(self, instance_id: str) -> None:
        self._rows.pop(check_instance_id(instance_id), None)
        self._rejected.pop(instance_id, None)

    def reject(self, instance_id: str, credentials: Credentials) -> None:
        self._rejected[check_instance_id(instance_id)] = fingerprint(credentials, self._key)

    def rejected(self, instance_id: str, credentials: Credentials) -> bool:
        mark = self._rejected.get(check_instance_id(instance_id))
        return mark is not None and hmac.compare_digest(mark, fingerprint(credentials, self._key))

    def forgive(self, instance_id: str) -> None:
        self._rejected.pop(check_instance_id(instance_id), None)

    def __repr__(self) -> str:
        return f"MemoryCredentialStore({len(self._rows)} instances)"


class NullArchive:
    """Keeps nothing: the default archive, so a long-running fleet does not grow.

    It cannot remember confirmed closures; use a real archive where an id must never
    start again once its closure was confirmed.
    """

    __slots__ = ()

    def write(self, records: Sequence[ArchiveRecord]) -> None:
        pass

    def confirm(self, record: ClosureRecord) -> None:
        pass

    def is_confirmed(self, instance_id: str) -> bool:
        return False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryArchive:
    """Every record in lists, for tests and investigation in a notebook."""

    def __init__(self) -> None:
        self.transitions: list[TransitionRecord] = []
        self.login_failures: list[LoginFailureRecord] = []
        self.trade_outcomes: list[TradeOutcomeRecord] = []
        self.closures: dict[str, ClosureRecord] = {}
        self.audits: list[AuditRecord] = []
        self._seen: set[str] = set()

    def write(self, records: Sequence[ArchiveRecord]) -> None:
        for record in records:
            if isinstance(record, ClosureRecord):
                # One per instance: a closure confirmed again after a crash lands once.
                self.closures.setdefault(record.instance_id, record)
                continue
            if record.record_id in self._seen:
                continue
            self._seen.add(record.record_id)
            if isinstance(record, TransitionRecord):
                self.transitions.append(record)
            elif isinstance(record, LoginFailureRecord):
                self.login_failures.append(record)
            elif isinstance(record, AuditRecord):
                self.audits.append(record)
            else:
                self.trade_outcomes.append(record)

    def confirm(self, record: ClosureRecord) -> None:
        self.write([record])

    def store(self, records: Sequence[ArchiveRecord]) -> None:
        """``write``: nothing here is ever only in a buffer."""
        self.write(records)

    def is_confirmed(self, instance_id: str) -> bool:
        return instance_id in self.closures

    def history(self, instance_id: str) -> list[TransitionRecord]:
        return [r for r in self.transitions if r.instance_id == instance_id]

    def failures(self, instance_id: str) -> list[LoginFailureRecord]:
        return [r for r in self.login_failures if r.instance_id == instance_id]

    def outcomes(self, instance_id: str) -> list[TradeOutcomeRecord]:
        return [r for r in self.trade_outcomes if r.instance_id == instance_id]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
