"""In-memory backends: the state store, credential store and archive of one process.

They keep the ports' contracts exactly (versions, fencing, lock expiry, idempotent
deletes), so a flow that passes here passes on Redis, PostgreSQL and DuckDB: only
durability and sharing between processes differ.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence

from ..core.credentials import Credentials
from ..core.ids import check_instance_id
from ..core.records import (
    ArchiveRecord,
    AuditRecord,
    ClosureRecord,
    LoginFailureRecord,
    TradeOutcomeRecord,
    TransitionRecord,
)
from ..core.snapshot import Snapshot
from ..errors import ConcurrentUpdate, LockLost
from ..ports import Clock, LockToken, Stored
from .clock import SystemClock

__all__ = [
    "MemoryArchive",
    "MemoryCredentialStore",
    "MemoryLeases",
    "MemoryStateStore",
    "NullArchive",
]


class MemoryStateStore:
    """Live state in a dict; locks expire on the given clock."""

    __slots__ = ("_clock", "_guard", "_locks", "_rows")

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rows: dict[str, Stored] = {}
        self._locks: dict[str, tuple[str, float]] = {}
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
        snapshot: Snapshot,
        *,
        expected_version: int,
        lock: LockToken | None = None,
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
            self._rows[instance_id] = Stored(snapshot, version)
            if lock is not None and lock.release_on_commit:
                del self._locks[instance_id]
            return version

    def commit_many(
        self, items: Iterable[tuple[str, Snapshot, int, LockToken | None]]
    ) -> list[int | Exception]:
        """Each item committed as ``commit`` would; its version or its error."""
        out: list[int | Exception] = []
        for instance_id, snapshot, expected_version, lock in items:
            try:
                out.append(
                    self.commit(instance_id, snapshot, expected_version=expected_version, lock=lock)
                )
            except (ConcurrentUpdate, LockLost) as exc:
                out.append(exc)
        return out

    def delete(self, instance_id: str) -> None:
        check_instance_id(instance_id)
        with self._guard:
            self._rows.pop(instance_id, None)
            self._locks.pop(instance_id, None)

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

    def acquire_many(
        self, instance_ids: Sequence[str], ttl: float
    ) -> list[LockToken | Exception | None]:
        """``acquire_lock`` for each id, in order."""
        return [self.acquire_lock(instance_id, ttl) for instance_id in instance_ids]

    def release_lock(self, lock: LockToken) -> None:
        with self._guard:
            if self._holds(lock):
                del self._locks[lock.instance_id]

    def _holds(self, lock: LockToken) -> bool:
        held = self._locks.get(lock.instance_id)
        return held is not None and held[0] == lock.token and held[1] > self._clock.now()

    def __repr__(self) -> str:
        return f"MemoryStateStore({len(self._rows)} instances)"


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
    """Credentials in a dict. For tests and demos: nothing here is encrypted."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[str, Credentials] = {}

    def put(self, instance_id: str, credentials: Credentials) -> None:
        check_instance_id(instance_id)
        if not isinstance(credentials, Credentials):
            raise TypeError(
                f"credentials for {instance_id!r} must be a Credentials value, "
                f"not {type(credentials).__name__}"
            )
        self._rows[instance_id] = credentials

    def get(self, instance_id: str) -> Credentials | None:
        return self._rows.get(check_instance_id(instance_id))

    def delete(self, instance_id: str) -> None:
        self._rows.pop(check_instance_id(instance_id), None)

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
