"""Lifecycle beyond the table: resuming, backend faults, logging, stale writers."""

from __future__ import annotations

import logging

import attrs
import pytest

from mt5lifecycle import (
    ConnectionState,
    InvalidTransition,
    Lifecycle,
    Policy,
    Reason,
    State,
    StoreUnavailable,
)
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.errors import ConcurrentUpdate
from mt5lifecycle.testing import memory_backends, run_for

from ..conftest import CREDS, World


def test_state_is_none_before_start(world: World) -> None:
    assert world.lc.state is None
    assert world.lc.snapshot() is None
    assert world.lc.next_due is None
    assert world.lc.run_due() is None


def test_run_due_returns_the_next_due_time(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=1)
    world.started()
    assert world.lc.run_due() == world.clock.now() + 5


def test_snapshot_fields_match_the_spec(world: World) -> None:
    world.connected()
    snap = world.lc.snapshot()
    assert snap is not None
    for name in (
        "status",
        "connection_state",
        "login_attempt_count",
        "last_login_attempt",
        "login_failure_reason",
        "last_failure_reason",
        "restart_count",
        "next_due",
    ):
        assert hasattr(snap, name)
    assert snap.last_login_attempt is not None
    assert snap.last_login_attempt.tzinfo is not None
    assert snap.last_login_attempt.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("where", ["connecting", "connected", "failed", "inactive", "closed"])
def test_a_new_lifecycle_resumes_the_stored_state(world: World, where: str) -> None:
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=1)
    world.started()
    world.run(0)  # one failure: CONNECTING, retry at +5
    if where == "connected":
        world.run(5)
    elif where == "failed":
        world.lc.terminal_failed()
    elif where == "inactive":
        world.lc.disable()
    elif where == "closed":
        world.lc.account_closed()
    before = world.lc.snapshot()
    resumed = Lifecycle(world.id, world.backends)
    assert resumed.state is (before.status if before else None)
    resumed.start()
    if where == "connected":
        # A resumed CONNECTED instance is checked at once rather than trusted.
        assert before is not None
        assert resumed.snapshot() == attrs.evolve(before, next_due=world.clock.now())
    else:
        assert resumed.snapshot() == before
    if where == "connecting":
        assert resumed.next_due == before.next_due  # type: ignore[union-attr]
        world.clock.advance(5)
        resumed.run_due()
        assert resumed.state is State.CONNECTED
        assert world.logins() == [0, 5]
    elif where == "connected":
        # checked at once: a dropped terminal is connection_lost
        world.broker.drop_connection(world.id)
        resumed.run_due()
        assert resumed.state is State.CONNECTING
    elif where == "failed":
        world.clock.advance(30)
        resumed.run_due()
        assert resumed.state is State.CONNECTED
    else:
        run_for(resumed, world.clock, 1000)
        assert resumed.state is before.status  # type: ignore[union-attr]


def test_an_operator_acts_on_a_stored_instance_without_starting_it(world: World) -> None:
    world.started()
    world.run(0)
    world.broker.fail_restarts(world.id, times=3)
    world.lc.terminal_failed()
    world.run(1000)
    operator = Lifecycle(world.id, world.backends)
    operator.reset()
    assert operator.state is State.CONNECTING


def test_a_store_outage_changes_nothing_and_is_not_a_login_attempt() -> None:
    world = World(switched=("credentials",))
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=1)
    world.started()
    world.switches["credentials"].down = True
    with pytest.raises(StoreUnavailable):
        world.lc.run_due()
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.status is State.CONNECTING and snap.login_attempt_count == 0
    assert world.logins() == []
    assert world.lc.next_due == world.clock.now() + Policy().transient_retry_delay
    world.switches["credentials"].down = False
    world.run(10)
    assert world.logins() == [10]


def test_a_state_store_outage_refuses_the_event_and_changes_nothing() -> None:
    world = World(switched=("state",))
    world.connected()
    before = world.lc.snapshot()
    world.switches["state"].down = True
    with pytest.raises(StoreUnavailable):
        world.lc.disable()
    assert world.lc.snapshot() == before
    assert world.broker.is_up(world.id)


def test_a_stale_writer_is_refused_and_reloads(world: World) -> None:
    world.connected()
    other = Lifecycle(world.id, world.backends)
    other.disable()
    # this object's view is stale: its event is decided again on what was written
    with pytest.raises(InvalidTransition):
        world.lc.connection_lost()
    assert world.lc.state is State.INACTIVE
    snap = world.lc.snapshot()
    assert snap is not None
    with pytest.raises(ConcurrentUpdate):
        world.backends.state.commit(world.id, snap, expected_version=1)


def test_a_failing_notifier_archive_or_metrics_never_undoes_a_transition() -> None:
    world = World(switched=("notifier", "archive", "metrics"))
    for switch in world.switches.values():
        switch.down = True
        switch.fault = RuntimeError
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=3)
    world.store_credentials()
    world.lc.start()
    world.run(100)
    assert world.lc.state is State.CONNECTED


def test_logs_every_transition_and_failed_login_without_the_password(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED, times=2)
    world.started()
    world.run(100)
    world.lc.account_closed()
    world.lc.confirm_closure()
    records = [r for r in caplog.records if r.name.startswith("mt5lifecycle")]
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("CONNECTING -> CONNECTED" in m for m in infos)
    assert sum("login failed" in m for m in warnings) == 2
    assert all(world.id in m for m in infos + warnings)
    assert CREDS.password not in caplog.text
    assert not logging.getLogger("mt5lifecycle").handlers


def test_the_password_reaches_no_notification_or_archive_record(world: World) -> None:
    world.broker.fail_logins(world.id, Reason.AUTH_FAILED)
    world.started()
    world.run(1000)
    world.lc.reset(force=True)
    world.lc.account_closed()
    world.lc.confirm_closure()
    texts = [repr(n) for n in world.notifier.notifications]
    texts += [repr(r) for r in world.archive.transitions + world.archive.login_failures]
    texts += [repr(world.archive.closures)]
    assert all(CREDS.password not in t for t in texts)


def test_confirm_closure_interrupted_is_finished_by_running_it_again() -> None:
    world = World(switched=("archive",))
    world.connected()
    world.lc.account_closed()
    archive = world.switches["archive"]
    archive.only = {"confirm"}
    archive.down = True
    with pytest.raises(StoreUnavailable):
        world.lc.confirm_closure()
    assert world.backends.credentials.get(world.id) is None
    again = Lifecycle(world.id, world.backends)
    assert again.state is State.INACTIVE
    archive.down = False
    again.confirm_closure()
    assert world.backends.state.load(world.id) is None
    assert len(world.archive.closures) == 1
    assert world.kinds().count("CREDENTIALS_DELETED") == 1
    with pytest.raises(InvalidTransition, match="closure was confirmed"):
        again.confirm_closure()
    with pytest.raises(InvalidTransition):
        Lifecycle(world.id, world.backends).start()


def test_bad_constructor_arguments_raise_type_errors() -> None:
    with pytest.raises(TypeError, match="backends"):
        Lifecycle("a", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policy"):
        Lifecycle("a", memory_backends(), policy={"max_login_attempts": 3})  # type: ignore[arg-type]


def test_a_broker_that_raises_on_login_counts_as_network_not_a_password_try(world: World) -> None:
    def boom(*a: object, **k: object) -> object:
        raise TimeoutError("result expired")

    world.broker.login = boom  # type: ignore[method-assign,assignment]
    world.started()
    world.run(0)
    snap = world.lc.snapshot()
    assert snap is not None
    assert snap.login_attempt_count == 0
    assert snap.login_failure_reason is Reason.NETWORK


def test_connection_state_follows_the_status(world: World) -> None:
    world.connected()
    assert world.lc.snapshot().connection_state is ConnectionState.CONNECTED  # type: ignore[union-attr]
    world.lc.terminal_failed()
    assert world.lc.snapshot().connection_state is ConnectionState.FAILED  # type: ignore[union-attr]


def test_snapshot_is_a_frozen_value() -> None:
    s = Snapshot(status=State.CONNECTED)
    with pytest.raises(AttributeError):
        s.status = State.FAILED  # type: ignore[misc]
