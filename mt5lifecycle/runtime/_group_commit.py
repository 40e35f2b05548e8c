"""Group commit: the writes of instances that are due together share round trips.

A ``Fleet`` drives due instances from a pool of worker threads. Each ``Lifecycle``
commits synchronously, as if alone; this wrapper queues the commits that arrive
while one is on the wire and sends them together through the store's
``commit_many`` (one pipeline), the way databases group their log flushes. No commit
waits for a timer: the first to arrive goes at once, and whoever arrives during its
round trip goes in the next one.

It changes how writes travel, never what is written: each item is still checked and
written on its own (its version, its lock, its outbox), so a stale item is refused
without touching the others, and everything else is the inner store's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ..core.snapshot import Snapshot
from ..ports import BatchingStateStore, Commit, Entry, LockToken

__all__ = ["GroupCommitStore"]


class _Pending:
    __slots__ = ("done", "item", "outcome")

    def __init__(self, item: Commit) -> None:
        self.item = item
        self.done = False
        self.outcome: int | BaseException = 0


class GroupCommitStore:
    """A state store whose concurrent commits share ``commit_many`` round trips.

    Every other method, and every optional capability (an outbox, login slots, ...),
    is the inner store's, so a check for a capability sees the inner store's answer.
    """

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
        snapshot: Snapshot | None,
        *,
        expected_version: int,
        lock: LockToken | None = None,
        outbox: Sequence[Entry] = (),
    ) -> int:
        mine = _Pending(Commit(instance_id, snapshot, expected_version, lock, outbox))
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

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class does not define: the inner store's methods.
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"GroupCommitStore({self.inner!r})"
