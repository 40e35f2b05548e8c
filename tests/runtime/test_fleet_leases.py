"""Several fleets over one state store: leases, takeover, fencing, hand-back."""

from __future__ import annotations

import pytest

from mt5lifecycle import Backends, Credentials, Fleet, InvalidTransition, Reason, State
from mt5lifecycle.builtin.memory import MemoryLeases
from mt5lifecycle.errors import ConcurrentUpdate, LeaseHeld
from mt5lifecycle.testing import FakeClock, memory_backends, run_for

IDS = [f"i{n}" for n in range(30)]


def two_fleets(ttl: float = 30.0) -> tuple[Fleet, Fleet, Backends, MemoryLeases, FakeClock]:
    clock = FakeClock()
    backends = memory_backends(clock=clock)
    for instance_id in IDS:
        backends.credentials.put(instance_id, Credentials(1, "Srv", "pw"))
    leases = MemoryLeases(clock)
    a = Fleet(backends, workers=1, leases=leases, owner="a", lease_ttl=ttl)
    b = Fleet(backends, workers=1, leases=leases, owner="b", lease_ttl=ttl)
    return a, b, backends, leases, clock


def test_each_instance_is_adopted_by_exactly_one_worker() -> None:
    a, b, _, leases, _ = two_fleets()
    got_a = a.adopt(IDS, limit=20)
    got_b = b.adopt(IDS, limit=20)
    assert len(got_a) == 20
    assert len(got_b) == 10
    assert set(got_a).isdisjoint(got_b)
    assert all(leases.owner(i) == ("a" if i in got_a else "b") for i in IDS)


def test_adding_an_instance_another_worker_holds_is_refused() -> None:
    a, b, _, _, _ = two_fleets()
    a.add("i0")
    with pytest.raises(LeaseHeld, match="another worker") as held:
        b.add("i0")
    assert held.value.instance_id == "i0"
    assert not isinstance(held.value, InvalidTransition)


def test_a_dead_workers_instances_are_taken_over_after_the_lease_expires() -> None:
    a, b, backends, leases, clock = two_fleets(ttl=30)
    backends.broker.fail_logins("i3", Reason.AUTH_FAILED)  # type: ignore[attr-defined]
    a.adopt(IDS)
    a.run_due()  # a logs everyone in (i3 fails once), then dies without a word
    assert b.adopt(IDS) == []
    clock.advance(31)
    taken = b.adopt(IDS)
    assert sorted(taken) == sorted(IDS)
    run_for(b, clock, 300)
    assert b["i0"].state is State.CONNECTED
    assert b["i3"].state is State.FAILED
    assert all(leases.owner(i) == "b" for i in IDS)


def test_a_takeover_fences_the_previous_drivers_late_writes() -> None:
    a, b, backends, _, clock = two_fleets(ttl=30)
    a.adopt(["i0"])
    a.run_due()
    stale = a["i0"]
    clock.advance(31)
    b.adopt(["i0"])
    # a was paused, not dead: its late write must be refused, never merged
    with pytest.raises(ConcurrentUpdate):
        backends.state.commit("i0", stale.snapshot(), expected_version=stale._version)  # type: ignore[arg-type]
    stale.terminal_failed()  # decided again on what b wrote: it is still CONNECTED
    assert backends.state.load("i0").snapshot.status is State.FAILED  # type: ignore[union-attr]


def test_a_worker_that_lost_its_lease_stops_driving_the_instance() -> None:
    a, b, _, _, clock = two_fleets(ttl=30)
    a.adopt(["i0"])
    a.run_due()
    clock.advance(31)
    b.adopt(["i0"])
    a.run_due()  # renewal finds the lease gone
    assert "i0" not in a
    assert "i0" in b


def test_a_graceful_close_hands_the_leases_back_at_once() -> None:
    a, b, _, leases, _ = two_fleets()
    a.adopt(IDS)
    a.close()
    assert all(leases.owner(i) is None for i in IDS)
    assert sorted(b.adopt(IDS)) == sorted(IDS)


def test_renewal_keeps_the_leases_of_a_live_worker() -> None:
    a, b, _, _, clock = two_fleets(ttl=30)
    a.adopt(IDS)
    run_for(a, clock, 300)  # far past the ttl: renewed every ttl/3
    assert b.adopt(IDS) == []
    assert len(a) == len(IDS)


def test_adopt_needs_leases() -> None:
    fleet = Fleet(memory_backends())
    with pytest.raises(TypeError, match="leases"):
        fleet.adopt(["x"])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"lease_ttl": 0}, ValueError),
        ({"lease_ttl": "15"}, ValueError),
        ({"owner": ""}, ValueError),
        ({"leases": object()}, TypeError),
    ],
)
def test_bad_lease_settings_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Fleet(memory_backends(), **kwargs)  # type: ignore[arg-type]


def test_add_many_hands_back_the_leases_of_what_it_could_not_start() -> None:
    from mt5lifecycle.core.records import ClosureRecord
    from mt5lifecycle.core.snapshot import Snapshot, utc

    a, _, backends, leases, clock = two_fleets()
    closed = ClosureRecord(
        instance_id="i1", at=utc(clock.now()), final=Snapshot(status=State.ACCOUNT_CLOSED)
    )
    backends.archive.confirm(closed)
    with pytest.raises(InvalidTransition, match="closure was confirmed"):
        a.add_many(["i0", "i1", "i2"])
    assert "i0" in a and leases.owner("i0") == "a"
    assert "i1" not in a and leases.owner("i1") is None
    assert "i2" not in a and leases.owner("i2") is None


def test_add_refuses_an_unhashable_id_as_an_invalid_id() -> None:
    from mt5lifecycle import InvalidInstanceId

    a, _, _, _, _ = two_fleets()
    with pytest.raises(InvalidInstanceId):
        a.add([])  # type: ignore[arg-type]
