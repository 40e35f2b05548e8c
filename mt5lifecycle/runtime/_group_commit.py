"""Group commit: the writes of instances that are due together share round trips.

A ``Fleet`` drives due instances from a pool of worker threads. Each ``Lifecycle``
commits synchronously, as if alone; this wrapper queues the commits that arrive
while one is on the wire and sends them together through the store's
``commit_many`` (one pipeline), the way databases group their log flushes. No commit
waits for a timer: the first to arrive goes at once, and whoever arrives during its
round trip goes in the next one.

Each item is still checked and written on its own (its version, its lock), so a
stale item is refused without touching the others.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from ..core.snapshot import Snapshot
from ..ports import LockToken, StateStore, Stored

__all__ = ["BatchingStateStore", "GroupCommitStore"]

PendingCommit = tuple[str, Snapshot, int, "LockToken | None"]


@runtime_checkable
class BatchingStateStore(StateStore, Protocol):
    """A state store that can send many instances' commits in one round trip."""

    def commit_many(self, items: Iterable[PendingCommit]) -> list[int | Exception]:
        """Each item's new version or the exception ``commit`` would have raised."""
        ...


class _Pending:
    __slots__ = ("done", "item", "outcome")

    def __init__(self, item: PendingCommit) -> None:
        self.item = item
        self.done = False
        self.outcome: int | BaseException = 0


class GroupCommitStore:
    """A ``StateStore`` whose concurrent commits share ``commit_many`` round trips."""

    def __init__(self, inner: BatchingStateStore, *, max_batch: int = 1000) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.inner = inner
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False
        self.batches = 0
        """Round trips sent so far (for benchmarks and metrics)."""
        self.commits = 0

    def commit(
        self,
        instance_id: str,
        snapshot: Snapshot,
        *,
        expected_version: int,
        lock: LockToken | None = None,
    ) -> int:
        mine = _Pending((instance_id, snapshot, expected_version, lock))
        cond = self._cond
        with cond:
            self._queue.append(mine)
            while self._leading and not mine.done:
                cond.wait()
            if not mine.done:
                self._leading = True
        if not mine.done:
            self._lead(mine)
        outcome = mine.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _lead(self, mine: _Pending) -> None:
        cond = self._cond
        try:
            while not mine.done:
                with cond:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: len(batch)]
                outcomes: Sequence[int | BaseException]
                try:
                    outcomes = self.inner.commit_many([p.item for p in batch])
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                with cond:
                    for pending, outcome in zip(batch, outcomes, strict=True):
                        pending.outcome = outcome
                        pending.done = True
                    self.batches += 1
                    self.commits += len(batch)
                    cond.notify_all()
        finally:
            with cond:
                # Hand over: a waiter whose commit is still queued leads the next trip.
                self._leading = False
                cond.notify_all()

    # The rest is the inner store's.

    def load(self, instance_id: str) -> Stored | None:
        return self.inner.load(instance_id)

    def load_many(self, instance_ids: Iterable[str]) -> dict[str, Stored]:
        return self.inner.load_many(instance_ids)

    def ids(self) -> Iterator[str]:
        return self.inner.ids()

    def delete(self, instance_id: str) -> None:
        self.inner.delete(instance_id)

    def acquire_lock(self, instance_id: str, ttl: float) -> LockToken | None:
        return self.inner.acquire_lock(instance_id, ttl)

    def release_lock(self, lock: LockToken) -> None:
        self.inner.release_lock(lock)

    def __repr__(self) -> str:
        return f"GroupCommitStore({self.inner!r})"
