"""Fleet: many instances on one timer heap (SPEC section 10)."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import pytest

from mt5lifecycle import Credentials, Fleet, InvalidTransition, Policy, Reason, State
from mt5lifecycle.builtin.memory import MemoryStateStore
from mt5lifecycle.errors import Unrecoverable
from mt5lifecycle.testing import FakeClock, memory_backends, run_for

CREDS = Credentials(1001, "Srv", "pw")


def fleet_of(n: int, policy: Policy | None = None) -> tuple[Fleet, FakeClock]:
    clock = FakeClock()
    b = memory_backends(clock=clock)
    for i in range(n):
        b.credentials.put(f"i{i}", CREDS)
    return Fleet(b, policy), clock


def test_add_starts_and_run_due_logs_everyone_in() -> None:
    fleet, clock = fleet_of(50)
    for i in range(50):
        fleet.add(f"i{i}")
    assert len(fleet) == 50 and "i7" in fleet
    assert fleet["i7"].state is State.CONNECTING
    assert fleet.next_due == clock.now()
    fleet.run_due()
    assert all(fleet[i].state is State.CONNECTED for i in fleet)
    assert fleet.next_due == clock.now() + 60  # the connection checks


def test_adding_twice_is_refused_and_unknown_ids_raise_key_error() -> None:
    fleet, _ = fleet_of(1)
    fleet.add("i0")
    with pytest.raises(InvalidTransition, match="already in this fleet"):
        fleet.add("i0")
    with pytest.raises(KeyError, match="nope"):
        fleet["nope"]


def test_each_instance_follows_its_own_timeline() -> None:
    fleet, clock = fleet_of(3)
    broker = fleet.backends.broker
    broker.fail_logins("i0", Reason.AUTH_FAILED)  # type: ignore[attr-defined]
    broker.fail_logins("i1", Reason.AUTH_FAILED, times=2)  # type: ignore[attr-defined]
    for i in range(3):
        fleet.add(f"i{i}")
    t0 = clock.now()
    run_for(fleet, clock, 200)
    assert [t - t0 for t in broker.login_times("i0")] == [0, 5, 15, 45, 105]  # type: ignore[attr-defined]
    assert [t - t0 for t in broker.login_times("i1")] == [0, 5, 15]  # type: ignore[attr-defined]
    assert fleet["i0"].state is State.FAILED
    assert fleet["i1"].state is State.CONNECTED
    assert fleet["i2"].state is State.CONNECTED


def test_the_connection_check_turns_a_dropped_terminal_into_connection_lost() -> None:
    fleet, clock = fleet_of(2)
    fleet.add("i0")
    fleet.add("i1")
    fleet.run_due()
    fleet.backends.broker.drop_connection("i1")  # type: ignore[attr-defined]
    clock.advance(60)
    fleet.run_due()
    assert fleet["i0"].state is State.CONNECTED
    assert fleet["i1"].state is State.CONNECTING


def test_an_event_sent_to_a_member_reschedules_it() -> None:
    fleet, clock = fleet_of(1)
    fleet.add("i0")
    fleet.run_due()
    fleet["i0"].terminal_failed()
    assert fleet.next_due == clock.now() + 30
    fleet["i0"].disable()
    assert fleet.next_due is None


def test_run_plays_the_timeline_on_a_fake_clock_and_stops_when_idle() -> None:
    fleet, clock = fleet_of(2, Policy(connection_check_interval=3600))
    fleet.backends.broker.fail_logins("i0", Reason.AUTH_FAILED)  # type: ignore[attr-defined]
    fleet.add("i0")
    fleet.add("i1")
    t0 = clock.now()
    fleet.run(until=t0 + 7200)
    assert fleet["i0"].state is State.FAILED
    assert fleet["i1"].state is State.CONNECTED
    assert clock.now() >= t0 + 7200


def test_arun_and_wait_connected() -> None:
    fleet, clock = fleet_of(2)
    fleet.backends.broker.fail_logins("i0", Reason.AUTH_FAILED, times=2)  # type: ignore[attr-defined]

    async def scenario() -> None:
        fleet.add("i0")
        fleet.add("i1")
        snap = await fleet.wait_connected("i0", timeout=60)
        assert snap.status is State.CONNECTED
        assert clock.now() - 1767225600.0 == 15

    asyncio.run(scenario())


def test_wait_connected_raises_at_once_on_a_dead_account() -> None:
    fleet, clock = fleet_of(1)
    fleet.backends.broker.ban_account("i0")  # type: ignore[attr-defined]

    async def scenario() -> None:
        fleet.add("i0")
        with pytest.raises(Unrecoverable, match="INACTIVE") as caught:
            await fleet.wait_connected("i0", timeout=3600)
        assert caught.value.reason is Reason.ACCOUNT_BANNED
        assert clock.now() == 1767225600.0  # no timeout waited out

    asyncio.run(scenario())


def test_wait_connected_times_out_on_the_fleets_clock() -> None:
    fleet, clock = fleet_of(1)
    fleet.backends.broker.fail_logins("i0", Reason.NETWORK)  # type: ignore[attr-defined]

    async def scenario() -> None:
        fleet.add("i0")
        with pytest.raises(TimeoutError):
            await fleet.wait_connected("i0", timeout=25)
        assert clock.now() - 1767225600.0 == pytest.approx(25)

    asyncio.run(scenario())


def test_wait_connected_while_arun_drives() -> None:
    fleet, clock = fleet_of(1)
    fleet.backends.broker.fail_logins("i0", Reason.AUTH_FAILED, times=1)  # type: ignore[attr-defined]

    async def scenario() -> None:
        fleet.add("i0")
        runner = asyncio.create_task(fleet.arun(until=clock.now() + 3600))
        snap = await fleet.wait_connected("i0", timeout=60)
        assert snap.status is State.CONNECTED
        fleet.stop()
        await runner

    asyncio.run(scenario())


def test_a_worker_pool_drives_many_due_instances_and_groups_their_commits() -> None:
    from mt5lifecycle.runtime._group_commit import GroupCommitStore

    clock = FakeClock()
    backends = memory_backends(clock=clock)
    batches: list[int] = []

    class Counting(MemoryStateStore):
        def commit_many(self, items: Any) -> list[int | Exception]:
            items = list(items)
            batches.append(len(items))
            return super().commit_many(items)

    backends = attrs.evolve(backends, state=Counting(clock))
    for i in range(400):
        backends.credentials.put(f"i{i}", CREDS)
    fleet = Fleet(backends)
    store = fleet.backends.state
    assert isinstance(store, GroupCommitStore)
    broker = fleet.backends.broker
    for i in range(0, 400, 2):
        broker.fail_logins(f"i{i}", Reason.AUTH_FAILED, times=1)  # type: ignore[attr-defined]
    for i in range(400):
        fleet.add(f"i{i}")
    batches.clear()
    run_for(fleet, clock, 30)
    assert all(fleet[i].state is State.CONNECTED for i in fleet)
    for i in range(0, 400, 2):
        t0 = 1767225600.0
        assert [t - t0 for t in broker.login_times(f"i{i}")] == [0, 5]  # type: ignore[attr-defined]
    # Every write of the pool's threads went through the group commit (how many share
    # a round trip depends on how they overlap: test_group_commit.py pins that).
    assert sum(batches) >= 600
    fleet.close()


def test_send_waits_for_the_worker_driving_the_instance() -> None:
    from mt5lifecycle import Lifecycle

    fleet, _ = fleet_of(1)
    fleet.add("i0")
    fleet.run_due()
    fleet.send("i0", Lifecycle.disable)
    assert fleet["i0"].state is State.INACTIVE
    assert fleet.next_due is None


def test_workers_must_be_a_positive_count() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="workers"):
        Fleet(memory_backends(clock=clock), workers=0)


def test_a_single_worker_fleet_keeps_the_store_as_given() -> None:
    b = memory_backends()
    assert Fleet(b, workers=1).backends.state is b.state


def test_an_operators_reset_from_another_process_is_taken_in_and_acted_on() -> None:
    from mt5lifecycle import Lifecycle
    from mt5lifecycle.testing import FakeBroker

    fleet, clock = fleet_of(2)
    broker = fleet.backends.broker
    assert isinstance(broker, FakeBroker)
    broker.fail_logins("i0", Reason.AUTH_FAILED, times=5)
    fleet.add("i0")
    fleet.add("i1")
    run_for(fleet, clock, 200)
    # The broker unlocked the account: the operator tries the same credentials again.
    before = (fleet["i0"].state, broker.is_up("i0"))
    assert before == (State.FAILED, False)
    # the CLI, in its own process, with its own view of the same stores
    operator = Fleet(fleet.backends, workers=1)
    Lifecycle("i0", operator.backends).reset(force=True)
    Lifecycle("i1", operator.backends).disable()
    run_for(fleet, clock, 61)
    # i0 started again and logged in; the worker stopped i1's terminal
    assert (fleet["i0"].state, broker.is_up("i0")) == (State.CONNECTED, True)
    assert (fleet["i1"].state, broker.is_up("i1")) == (State.INACTIVE, False)


class CountingReads(MemoryStateStore):
    """Records the ids each ``load_many`` reads whole."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.loaded: list[list[str]] = []

    def load_many(self, instance_ids: Any) -> dict[str, Any]:
        ids = list(instance_ids)
        self.loaded.append(ids)
        return super().load_many(ids)


def test_the_read_back_loads_whole_only_the_members_another_process_changed() -> None:
    from mt5lifecycle import Lifecycle

    clock = FakeClock()
    store = CountingReads(clock)
    b = attrs.evolve(memory_backends(clock=clock), state=store)
    ids = [f"i{n}" for n in range(20)]
    for i in ids:
        b.credentials.put(i, CREDS)
    fleet = Fleet(b, workers=1)
    fleet.add_many(ids)
    run_for(fleet, clock, 1)
    assert all(fleet[i].state is State.CONNECTED for i in ids)
    Lifecycle("i3", b).disable()  # the operator's process
    store.delete("i5")  # gone from the store under the fleet
    store.loaded.clear()

    run_for(fleet, clock, 61)

    assert store.loaded == [["i3", "i5"]]
    assert fleet["i3"].state is State.INACTIVE
    assert fleet["i3"].snapshot() == store.load("i3").snapshot  # type: ignore[union-attr]
    assert all(fleet[i].state is State.CONNECTED for i in ids if i not in ("i3", "i5"))


def test_run_without_until_drives_until_stop() -> None:
    import threading

    fleet, clock = fleet_of(1)
    fleet.add("i0")

    def stop_soon() -> None:
        while clock.now() < 1767225600.0 + 3600:
            pass
        fleet.stop()

    stopper = threading.Thread(target=stop_soon)
    stopper.start()
    fleet.run()  # a fake clock: the hour passes in jumps
    stopper.join()
    assert fleet["i0"].state is State.CONNECTED


def test_add_many_restores_a_fleet_with_batched_reads() -> None:
    fleet, _clock = fleet_of(100)
    ids = [f"i{n}" for n in range(100)]
    fleet.add_many(ids[:50])
    fleet.run_due()
    fleet.close()
    restarted = Fleet(fleet.backends)  # same stores: a process restart
    reads: list[int] = []
    inner = restarted.backends.state
    original = inner.load_many

    def counting(instance_ids: object) -> object:
        listed = list(instance_ids)  # type: ignore[call-overload]
        reads.append(len(listed))
        return original(listed)

    inner.load_many = counting  # type: ignore[method-assign,assignment]
    restarted.add_many(ids)
    assert reads == [100]
    assert all(restarted[i].state is State.CONNECTED for i in ids[:50])
    assert all(restarted[i].state is State.CONNECTING for i in ids[50:])
    with pytest.raises(InvalidTransition, match="already in this fleet"):
        restarted.add_many(["i0"])
    restarted.close()
