"""GroupCommitStore: concurrent commits share one commit_many, each decided alone."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from mt5lifecycle import State
from mt5lifecycle.builtin.memory import MemoryStateStore
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.errors import (
    ConcurrentUpdate,
    LockLost,
)
from mt5lifecycle.ports import Commit
from mt5lifecycle.runtime._group_commit import GroupCommitStore
from mt5lifecycle.testing import FakeClock

SNAP = Snapshot(status=State.CONNECTING)


class Gated(MemoryStateStore):
    """commit_many holds its first call until told, so that others queue behind it."""

    def __init__(self) -> None:
        super().__init__(FakeClock())
        self.calls: list[int] = []
        self.first = threading.Event()
        self.go = threading.Event()

    def commit_many(self, items: Sequence[Commit]) -> list[int | Exception]:
        self.calls.append(len(items))
        if len(self.calls) == 1:
            self.first.set()
            assert self.go.wait(5)
        return super().commit_many(items)


def test_commits_that_arrive_during_a_round_trip_share_the_next_one() -> None:
    inner = Gated()
    store = GroupCommitStore(inner)
    versions: dict[str, int] = {}

    def commit(instance_id: str) -> None:
        versions[instance_id] = store.commit(instance_id, SNAP, expected_version=0)

    leader = threading.Thread(target=commit, args=("a",))
    leader.start()
    assert inner.first.wait(5)
    others = [threading.Thread(target=commit, args=(f"b{i}",)) for i in range(20)]
    for thread in others:
        thread.start()
    # Everyone is queued behind the leader's round trip (the queue is the store's own).
    while len(store._queue) < 20:
        threading.Event().wait(0.001)
    inner.go.set()
    for thread in (leader, *others):
        thread.join(5)
    assert inner.calls == [1, 20]
    assert set(versions.values()) == {1}
    assert store.batches == 2 and store.commits == 21


def test_a_stale_item_is_refused_alone() -> None:
    inner = MemoryStateStore(FakeClock())
    store = GroupCommitStore(inner)
    store.commit("a", SNAP, expected_version=0)
    with pytest.raises(ConcurrentUpdate):
        store.commit("a", SNAP, expected_version=0)
    assert store.commit("b", SNAP, expected_version=0) == 1


def test_everything_else_is_the_inner_stores() -> None:
    inner = MemoryStateStore(FakeClock())
    store = GroupCommitStore(inner)
    lock = store.acquire_lock("a", 10)
    assert lock is not None
    with pytest.raises(LockLost):
        store.commit("a", SNAP, expected_version=0, lock=type(lock)("a", "not-mine"))
    assert store.outbox(["a"]) == {}
    assert "MemoryStateStore" in repr(store)
