"""A fleet's pass over the instances due together (batch.py).

Each test runs with one worker (the terminals asked on the calling thread) and with
eight (asked on the pool): the outcome must not depend on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import pytest

from mt5lifecycle import Credentials, Fleet, Lifecycle, Policy, Reason, State
from mt5lifecycle.builtin.memory import MemoryArchive, MemoryCredentialStore, MemoryStateStore
from mt5lifecycle.errors import ConcurrentUpdate, StoreUnavailable
from mt5lifecycle.ports import LockToken
from mt5lifecycle.testing import FakeBroker, FakeClock, memory_backends, run_for

CREDS = Credentials(1001, "Srv", "pw")
POLICY = Policy()
IDS = [f"i{n}" for n in range(40)]


class CountingStore(MemoryStateStore):
    """Counts the writes by kind, and can fail the next ``commit_many``."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.batches: list[int] = []
        self.singles = 0
        self.outages = 0

    def commit(self, instance_id: str, snapshot: Any, **kwargs: Any) -> int:
        self.singles += 1
        return super().commit(instance_id, snapshot, **kwargs)

    def commit_many(self, items: Iterable[Any]) -> list[int | Exception]:
        items = list(items)
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable(backend="redis", instance_id=None, detail="connection lost")
        self.batches.append(len(items))
        return [
            self._one(instance_id, snapshot, version, lock)
            for instance_id, snapshot, version, lock in items
        ]

    def _one(
        self, instance_id: str, snapshot: Any, version: int, lock: LockToken | None
    ) -> int | Exception:
        try:
            return super().commit(instance_id, snapshot, expected_version=version, lock=lock)
        except Exception as exc:
            return exc


class Sending:
    """``start_commit_many`` as Redis answers it: written when sent, answered when read.

    A mixin for a ``CountingStore``: the locks asked ahead are taken first, then the
    writes made; an outage of its ``commit_many`` comes out when the answers are
    read, as a connection lost after the send would. ``log`` has each send and each
    read of the writes' answers; ``ahead`` the number of locks asked with each send.
    """

    log: list[tuple[str, int]]
    ahead: list[int]

    def start_commit_many(
        self, items: Iterable[Any], lock_first: Any = (), ttl: float = 0.0
    ) -> Any:
        batch = list(items)
        log = self.__dict__.setdefault("log", [])
        self.__dict__.setdefault("ahead", []).append(len(lock_first))
        log.append(("send", len(batch)))
        acquire = self.acquire_many  # type: ignore[attr-defined]
        locks = acquire(list(lock_first), ttl) if lock_first else []
        try:
            answers: Any = self.commit_many(batch)  # type: ignore[attr-defined]
        except StoreUnavailable as exc:
            answers = exc

        class Sent:
            def locks(self) -> Any:
                return locks

            def __call__(self) -> list[int | Exception]:
                log.append(("answer", len(batch)))
                if isinstance(answers, Exception):
                    raise answers
                return list(answers)

        return Sent()


class SendingStore(Sending, CountingStore):
    pass


class FlakyCredentials(MemoryCredentialStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def get(self, instance_id: str) -> Credentials | None:
        if self.down:
            raise StoreUnavailable(backend="postgres", instance_id=instance_id, detail="down")
        return super().get(instance_id)


@pytest.fixture(params=[1, 8], ids=["one worker", "eight workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def fleet_of(workers: int) -> tuple[Fleet, FakeClock, CountingStore, FakeBroker]:
    clock = FakeClock()
    store = CountingStore(clock)
    backends = attrs.evolve(
        memory_backends(clock=clock), state=store, credentials=FlakyCredentials()
    )
    for instance_id in IDS:
        backends.credentials.put(instance_id, CREDS)
    fleet = Fleet(backends, POLICY, workers=workers)
    for instance_id in IDS:
        fleet.add(instance_id)
    store.batches.clear()
    store.singles = 0
    broker = backends.broker
    assert isinstance(broker, FakeBroker)
    return fleet, clock, store, broker


def states(fleet: Fleet) -> set[State | None]:
    return {fleet[i].state for i in fleet}


def test_the_logins_due_together_are_written_together(workers: int) -> None:
    fleet, _, store, broker = fleet_of(workers)

    fleet.run_due()

    assert states(fleet) == {State.CONNECTED}
    assert sum(store.batches) == len(IDS)
    assert store.singles == 0
    assert all(len(broker.login_times(i)) == 1 for i in IDS)
    assert all(broker.max_concurrent_logins(i) == 1 for i in IDS)
    # Every lock went back with its login's result.
    assert all(fleet.backends.state.acquire_lock(i, 1.0) is not None for i in IDS)
    fleet.close()


def test_connection_checks_write_only_what_changed(workers: int) -> None:
    fleet, clock, store, broker = fleet_of(workers)
    fleet.run_due()
    broker.drop_connection("i3")
    broker.crash_terminal("i5")
    store.batches.clear()

    clock.advance(POLICY.connection_check_interval)
    fleet.run_due()

    assert fleet["i3"].snapshot().status is State.CONNECTING  # type: ignore[union-attr]
    assert fleet["i5"].state is State.FAILED
    assert store.batches == [1, 1] or store.batches == [2]
    assert {fleet[i].state for i in IDS if i not in ("i3", "i5")} == {State.CONNECTED}
    fleet.close()


def test_a_reconnect_check_whose_terminal_is_back_writes_no_login(workers: int) -> None:
    fleet, clock, _, broker = fleet_of(workers)
    fleet.run_due()
    for instance_id in IDS:
        fleet[instance_id].connection_lost()
    for instance_id in IDS[::2]:
        broker.drop_connection(instance_id)  # these stay down: they need a login

    clock.advance(POLICY.network_retry_delay)
    fleet.run_due()

    assert states(fleet) == {State.CONNECTED}
    assert all(len(broker.login_times(i)) == 1 for i in IDS[1::2])
    assert all(len(broker.login_times(i)) == 2 for i in IDS[::2])
    fleet.close()


def test_a_login_whose_lock_another_worker_holds_waits_for_it(workers: int) -> None:
    fleet, clock, store, broker = fleet_of(workers)
    held = store.acquire_lock("i7", POLICY.lock_ttl)
    assert held is not None

    fleet.run_due()

    waiting = fleet["i7"].snapshot()
    assert waiting is not None and waiting.status is State.CONNECTING
    assert broker.login_times("i7") == []
    store.release_lock(held)
    run_for(fleet, clock, POLICY.transient_retry_delay + 1)
    assert fleet["i7"].state is State.CONNECTED
    fleet.close()


def test_an_instance_changed_elsewhere_is_reloaded_not_overwritten(workers: int) -> None:
    fleet, _, store, _ = fleet_of(workers)
    # An operator's process disables i4 while the fleet has its older version.
    operator = Lifecycle("i4", fleet.backends, POLICY)
    operator.disable()

    fleet.run_due()

    assert fleet["i4"].state is State.INACTIVE
    assert fleet["i4"].snapshot() == store.load("i4").snapshot  # type: ignore[union-attr]
    assert store.acquire_lock("i4", 1.0) is not None  # its lock was given back
    fleet.close()


def test_a_store_outage_mid_batch_changes_nothing_and_is_retried(workers: int) -> None:
    fleet, clock, store, broker = fleet_of(workers)
    store.outages = 10**6  # every batch of the pass

    fleet.run_due()

    assert states(fleet) == {State.CONNECTING}
    assert all(store.load(i).snapshot.status is State.CONNECTING for i in IDS)  # type: ignore[union-attr]
    assert all(store.acquire_lock(i, 0.001) is not None for i in IDS)  # locks given back
    store.outages = 0
    clock.advance(1.0)
    run_for(fleet, clock, POLICY.transient_retry_delay + 1)
    assert states(fleet) == {State.CONNECTED}
    # A login that may or may not have been stored is a login the broker saw: the
    # retry is a second one, never two at once.
    assert all(broker.max_concurrent_logins(i) == 1 for i in IDS)
    fleet.close()


def test_a_credential_store_outage_holds_the_logins_off(workers: int) -> None:
    fleet, clock, store, broker = fleet_of(workers)
    credentials = fleet.backends.credentials
    assert isinstance(credentials, FlakyCredentials)
    credentials.down = True

    fleet.run_due()

    assert states(fleet) == {State.CONNECTING}
    assert all(broker.login_times(i) == [] for i in IDS)
    assert all(store.acquire_lock(i, 0.001) is not None for i in IDS)
    credentials.down = False
    clock.advance(1.0)
    run_for(fleet, clock, POLICY.transient_retry_delay + 1)
    assert states(fleet) == {State.CONNECTED}
    fleet.close()


def test_credentials_gone_before_the_login_fail_it_and_free_the_lock(workers: int) -> None:
    fleet, _, store, broker = fleet_of(workers)
    fleet.backends.credentials.delete("i2")

    fleet.run_due()

    snapshot = fleet["i2"].snapshot()
    assert snapshot is not None
    assert snapshot.status is State.FAILED
    assert snapshot.last_failure_reason is Reason.CREDENTIALS_MISSING
    assert broker.login_times("i2") == []
    assert store.acquire_lock("i2", 1.0) is not None
    fleet.close()


def test_failed_logins_in_a_batch_follow_the_backoff(workers: int) -> None:
    fleet, clock, _, broker = fleet_of(workers)
    for instance_id in IDS[:10]:
        broker.fail_logins(instance_id, Reason.AUTH_FAILED, times=2)

    run_for(fleet, clock, 60)

    assert states(fleet) == {State.CONNECTED}
    t0 = broker.login_times("i0")[0]
    for instance_id in IDS[:10]:
        times = [t - t0 for t in broker.login_times(instance_id)]
        assert times == [0, 5, 15]
    fleet.close()


def test_add_many_writes_the_new_instances_start_together(workers: int) -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    backends = attrs.evolve(memory_backends(clock=clock), state=store)
    for instance_id in IDS:
        backends.credentials.put(instance_id, CREDS)
    Lifecycle("i0", backends, POLICY).start()  # one already stored: it resumes
    store.singles = 0
    fleet = Fleet(backends, POLICY, workers=workers)

    fleet.add_many(IDS)

    assert store.batches == [len(IDS) - 1]
    assert store.singles == 0
    assert states(fleet) == {State.CONNECTING}
    assert fleet.next_due == clock.now()
    fleet.run_due()
    assert states(fleet) == {State.CONNECTED}
    fleet.close()


class SlowBroker(FakeBroker):
    """A broker whose every login takes ``seconds`` of the fake clock."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        super().__init__(clock)
        self.seconds = seconds

    def login(self, instance_id: str, credentials: Any, *, logged_in_before: bool) -> Any:
        result = super().login(instance_id, credentials, logged_in_before=logged_in_before)
        self.clock.advance(self.seconds)  # type: ignore[attr-defined]
        return result


def slow_fleet(workers: int, seconds: float, n: int) -> tuple[Fleet, FakeClock, SlowBroker]:
    clock = FakeClock()
    broker = SlowBroker(clock, seconds)
    backends = memory_backends(broker=broker, clock=clock)
    for instance_id in IDS[:n]:
        backends.credentials.put(instance_id, CREDS)
    fleet = Fleet(backends, POLICY, workers=workers)
    fleet.add_many(IDS[:n])
    return fleet, clock, broker


# The slow broker advances the one fake clock from every worker thread, so that
# logins running side by side would add up their durations: these run on one worker.


def test_a_slow_broker_never_logs_in_under_an_old_lock() -> None:
    # Wrong passwords and 45 s per login: a lock taken for a whole slice at once
    # would expire under the later logins, their results would be refused, and the
    # attempts never counted. Each login must start under a young lock.
    # Twelve instances: chunks of three for one worker, so a slice holds several.
    fleet, clock, broker = slow_fleet(1, 45.0, 12)
    for instance_id in IDS[:12]:
        broker.fail_logins(instance_id, Reason.AUTH_FAILED)

    run_for(fleet, clock, 12 * 45 * POLICY.max_login_attempts + 600)

    for instance_id in IDS[:12]:
        snapshot = fleet[instance_id].snapshot()
        assert snapshot is not None
        assert snapshot.status is State.FAILED
        assert snapshot.last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED
        assert len(broker.login_times(instance_id)) == POLICY.max_login_attempts
        assert broker.max_concurrent_logins(instance_id) == 1
    fleet.close()


def test_a_transition_is_decided_at_the_time_its_login_ended() -> None:
    fleet, clock, broker = slow_fleet(1, 10.0, 12)
    for instance_id in IDS[:12]:
        broker.fail_logins(instance_id, Reason.AUTH_FAILED, times=1)

    run_for(fleet, clock, 600)

    # The backoff runs from when the failed login ended, as Lifecycle._apply reads
    # the clock after the broker's answer, not from when the pass began.
    backoff = POLICY.login_backoff[0]
    archive = fleet.backends.archive
    assert isinstance(archive, MemoryArchive)
    for instance_id in IDS[:12]:
        first, second = broker.login_times(instance_id)
        assert second >= first + 10.0 + backoff
        failed = [r for r in archive.history(instance_id) if r.event == "login_failed"]
        assert [r.at.timestamp() for r in failed] == [first + 10.0]
        assert fleet[instance_id].state is State.CONNECTED
    fleet.close()


def test_add_many_answers_in_the_order_asked() -> None:
    clock = FakeClock()
    backends = memory_backends(clock=clock)
    for instance_id in ("a", "b", "c"):
        backends.credentials.put(instance_id, CREDS)
    Lifecycle("c", backends, POLICY).start()
    fleet = Fleet(backends, POLICY, workers=1)

    added = fleet.add_many(["a", "b", "c"])

    assert [lifecycle.instance_id for lifecycle in added] == ["a", "b", "c"]


def test_a_failing_batch_leaves_no_instance_busy(
    workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    fleet, clock, store, _ = fleet_of(workers)

    class Broken(Exception):
        pass

    def broken(ids: Any, ttl: float) -> Any:
        raise Broken

    store.acquire_many = broken  # type: ignore[method-assign,assignment]
    fleet.run_due()

    assert "a batch of due steps failed" in caplog.text or "batched pass failed" in caplog.text
    assert fleet.send("i1", lambda lifecycle: lifecycle.state) is State.CONNECTING
    del store.acquire_many
    run_for(fleet, clock, 1)
    assert states(fleet) == {State.CONNECTED}
    fleet.close()


class TimedBroker(FakeBroker):
    """A broker whose logins take the given seconds of the fake clock, per instance."""

    def __init__(self, clock: FakeClock, seconds: dict[str, float]) -> None:
        super().__init__(clock)
        self.seconds = seconds
        self.asked: dict[str, int] = {}

    def login(self, instance_id: str, credentials: Any, *, logged_in_before: bool) -> Any:
        result = super().login(instance_id, credentials, logged_in_before=logged_in_before)
        self.clock.advance(self.seconds.get(instance_id, 0.0))  # type: ignore[attr-defined]
        return result

    def status(self, instance_id: str) -> Any:
        self.asked[instance_id] = self.asked.get(instance_id, 0) + 1
        return super().status(instance_id)


def timed_fleet(seconds: dict[str, float]) -> tuple[Fleet, FakeClock, TimedBroker]:
    clock = FakeClock()
    broker = TimedBroker(clock, seconds)
    backends = memory_backends(broker=broker, clock=clock)
    for instance_id in IDS[:12]:
        backends.credentials.put(instance_id, CREDS)
    fleet = Fleet(backends, POLICY, workers=1)
    fleet.add_many(IDS[:12])
    return fleet, clock, broker


def test_slow_logins_in_one_slice_are_each_stored_under_a_live_lock() -> None:
    # Both logins are shorter than the lock's TTL: one by one they are fine, and so
    # must they be in a slice, whose locks were all taken before the first of them.
    fleet, _, broker = timed_fleet({"i0": 59.0, "i1": 62.0})
    for instance_id in ("i0", "i1"):
        broker.fail_logins(instance_id, Reason.AUTH_FAILED, times=1)

    fleet.run_due()

    for instance_id in ("i0", "i1"):
        snapshot = fleet[instance_id].snapshot()
        assert snapshot is not None
        assert snapshot.login_attempt_count == 1  # the failure was stored, not lost
        assert broker.login_times(instance_id) == broker.login_times(instance_id)[:1]
        assert broker.max_concurrent_logins(instance_id) == 1
    fleet.close()


def test_a_reconnect_check_whose_terminal_is_down_asks_it_once_then_logs_in() -> None:
    fleet, clock, broker = timed_fleet({})
    fleet.run_due()
    for instance_id in IDS[:12]:
        fleet[instance_id].connection_lost()
        broker.drop_connection(instance_id)
    broker.asked.clear()

    clock.advance(POLICY.network_retry_delay)
    fleet.run_due()

    assert states(fleet) == {State.CONNECTED}
    assert broker.asked == {i: 1 for i in IDS[:12]}
    assert all(len(broker.login_times(i)) == 2 for i in IDS[:12])
    fleet.close()


def many_due(n: int, store: CountingStore, workers: int) -> tuple[Fleet, FakeClock]:
    clock = FakeClock()
    store._clock = clock
    backends = attrs.evolve(memory_backends(clock=clock), state=store)
    ids = [f"m{i}" for i in range(n)]
    for instance_id in ids:
        backends.credentials.put(instance_id, CREDS)
    fleet = Fleet(backends, POLICY, workers=workers)
    fleet.add_many(ids)
    return fleet, clock


THREE_SLICES = [
    ("send", 100),
    ("send", 100),
    ("answer", 100),
    ("send", 50),
    ("answer", 100),
    ("answer", 50),
]
"""250 instances' writes: three slices, each answered after the next was sent."""


def test_each_slice_is_answered_once_after_the_next_is_sent() -> None:
    store = SendingStore(FakeClock())
    fleet, _ = many_due(250, store, workers=1)
    # add_many: the starts of three slices, each answered after the next was sent
    assert store.log == THREE_SLICES
    store.log.clear()

    fleet.run_due()  # 250 logins: chunks of 62 (a quarter per worker) and the 2 left

    assert states(fleet) == {State.CONNECTED}
    assert store.log == [("send", 62), ("answer", 62)] * 4 + [("send", 2), ("answer", 2)]
    store.log.clear()
    big, _ = many_due(1000, SendingStore(FakeClock()), workers=1)
    log = big.backends.state.log  # type: ignore[attr-defined]
    log.clear()
    big.run_due()  # four chunks of 250: slices of 100, 100 and 50 each
    assert log == THREE_SLICES * 4
    # Each slice's writes went with the next slice's locks asked ahead of them.
    assert big.backends.state.ahead[-12:] == [100, 50, 0] * 4  # type: ignore[attr-defined]
    assert states(big) == {State.CONNECTED}


def test_a_store_outage_read_with_the_answers_holds_the_slice_off(workers: int) -> None:
    store = SendingStore(FakeClock())
    fleet, clock = many_due(250, store, workers)
    store.outages = 1

    fleet.run_due()

    sends = [n for kind, n in store.log if kind == "send"]
    answers = [n for kind, n in store.log if kind == "answer"]
    assert sorted(sends) == sorted(answers)  # every send read once, the lost one too
    connecting = [i for i in fleet if fleet[i].state is State.CONNECTING]
    assert 0 < len(connecting) < 250
    run_for(fleet, clock, POLICY.transient_retry_delay + 1)
    assert states(fleet) == {State.CONNECTED}
    fleet.close()


def test_a_slice_that_fails_leaves_the_rest_of_its_chunk_to_go_on() -> None:
    store = SendingStore(FakeClock())
    fleet, clock = many_due(1000, store, workers=1)
    store.log.clear()
    store.ahead.clear()
    original = store.start_commit_many
    calls = 0

    def second_fails(items: Any, lock_first: Any = (), ttl: float = 0.0) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a bug in a store")
        return original(items, lock_first, ttl)

    store.start_commit_many = second_fails  # type: ignore[method-assign]
    fleet.run_due()

    # The second slice of the first chunk fails: the third asks for its own locks,
    # and the first is answered after the third is sent.
    assert store.log[:4] == [("send", 100), ("send", 50), ("answer", 100), ("answer", 50)]
    assert store.ahead[:2] == [100, 0]
    assert len([1 for kind, _ in store.log if kind == "send"]) == len(
        [1 for kind, _ in store.log if kind == "answer"]
    )
    assert sum(fleet[i].state is State.CONNECTED for i in fleet) == 900
    lock = store.acquire_lock("m100", 1.0)  # given back when its slice failed
    assert lock is not None
    store.release_lock(lock)
    del store.start_commit_many
    run_for(fleet, clock, 1)
    assert states(fleet) == {State.CONNECTED}


@pytest.fixture(params=[False, True], ids=["written at once", "answered later"])
def sending(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_add_many_stops_at_an_id_that_cannot_start(workers: int, sending: bool) -> None:
    clock = FakeClock()

    class Refusing(CountingStore):
        def commit_many(self, items: Iterable[Any]) -> list[int | Exception]:
            items = list(items)
            out = super().commit_many(items)
            return [
                ConcurrentUpdate(instance_id="i5", expected_version=0, found_version=1)
                if item[0] == "i5"
                else answer
                for item, answer in zip(items, out, strict=True)
            ]

    kind = type("SendingRefusing", (Sending, Refusing), {}) if sending else Refusing
    backends = attrs.evolve(memory_backends(clock=clock), state=kind(clock))
    for instance_id in IDS:
        backends.credentials.put(instance_id, CREDS)
    Lifecycle("i7", backends, POLICY).start()  # stored: it resumes
    fleet = Fleet(backends, POLICY, workers=workers)

    with pytest.raises(ConcurrentUpdate):
        fleet.add_many(IDS[:10])

    assert sorted(fleet) == ["i0", "i1", "i2", "i3", "i4"]
    fleet.close()


def test_add_many_after_a_failed_write_leaves_no_member_behind(workers: int, sending: bool) -> None:
    clock = FakeClock()

    class Failing(CountingStore):
        broken = True

        def commit_many(self, items: Iterable[Any]) -> list[int | Exception]:
            if self.broken:
                self.broken = False
                raise RuntimeError("a bug in a store")
            return super().commit_many(items)

    kind = type("SendingFailing", (Sending, Failing), {}) if sending else Failing
    backends = attrs.evolve(memory_backends(clock=clock), state=kind(clock))
    for instance_id in ("a0", "a1", "a2"):
        backends.credentials.put(instance_id, CREDS)
    Lifecycle("a1", backends, POLICY).start()  # stored: it resumes
    fleet = Fleet(backends, POLICY, workers=workers)

    with pytest.raises(RuntimeError):
        fleet.add_many(["a0", "a1", "a2"])

    assert list(fleet) == []  # a1 comes after a0, which could not start
    added = fleet.add_many(["a0", "a1", "a2"])
    assert [lifecycle.instance_id for lifecycle in added] == ["a0", "a1", "a2"]
    fleet.run_due()
    assert states(fleet) == {State.CONNECTED}
    fleet.close()
