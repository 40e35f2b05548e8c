"""The relay: a transition's notifications and records reach the notifier and the
archive after the write, at least once, in order per instance, retried with backoff,
and set aside when they keep failing, without ever holding up a transition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from mt5lifecycle import AlertKind, Credentials, Fleet, Lifecycle, Policy, Reason, State
from mt5lifecycle.builtin.memory import MemoryArchive, MemoryStateStore
from mt5lifecycle.core.records import Notification
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends, run_for

from ..conftest import CREDS, T0


class Flaky(RecordingNotifier):
    """Fails its first ``failures`` calls, then records like RecordingNotifier."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def notify(self, notification: Notification) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("smtp server down")
        super().notify(notification)


class Grouping(RecordingNotifier):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[AlertKind]] = []

    def notify_many(self, notifications: Sequence[Notification]) -> None:
        self.batches.append([n.kind for n in notifications])
        for notification in notifications:
            self.notify(notification)


def _lone(notifier: Any, policy: Policy | None = None) -> tuple[Lifecycle, Any]:
    clock = FakeClock(T0)
    backends = attrs.evolve(memory_backends(clock=clock), notifier=notifier)
    backends.credentials.put("a", CREDS)
    return Lifecycle("a", backends, policy), backends


def test_a_failing_notifier_holds_up_nothing_and_gets_its_notification_later() -> None:
    notifier = Flaky(failures=3)
    lc, backends = _lone(notifier)
    broker = backends.broker
    assert isinstance(broker, FakeBroker)
    broker.fail_logins("a", Reason.AUTH_FAILED)
    lc.start()
    run_for(lc, backends.clock, 200)
    # The transitions were stored at once, whatever the notifier did.
    snap = lc.snapshot()
    assert snap is not None and snap.last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED
    # Every notification arrived, in order, once, after the retries.
    assert notifier.kinds("a") == [AlertKind.REPEATED_LOGIN_FAILURE, AlertKind.LOGIN_FAILURE]
    ids = [n.id for n in notifier.notifications]
    assert len(set(ids)) == len(ids)
    assert notifier.calls == 3 + 2
    # ... and nothing is left in the outbox.
    assert backends.state.outbox(["a"]) == {}


def test_a_notification_that_keeps_failing_is_set_aside_and_the_next_ones_go_on() -> None:
    notifier = Flaky(failures=10**6)
    policy = Policy(max_delivery_attempts=3, delivery_backoff=1.0, delivery_backoff_max=4.0)
    lc, backends = _lone(notifier, policy)
    lc.start()
    backends.credentials.delete("a")
    lc.run_due()
    lc.disable()
    run_for(lc, backends.clock, 100)
    store = backends.state
    assert isinstance(store, MemoryStateStore)
    aside = store.set_aside_notifications()
    assert [s.notification.kind for s in aside] == [AlertKind.LOGIN_FAILURE]
    assert "smtp server down" in aside[0].error
    assert notifier.calls == 3
    notifier.failures = 0
    assert store.redeliver("a") == 1
    again = Lifecycle("a", backends, policy)
    again.start()  # reading it back finds the outbox and hands it over
    assert notifier.kinds("a") == [AlertKind.LOGIN_FAILURE]
    assert store.set_aside_notifications() == []


def test_notifications_of_one_kind_due_together_go_in_one_message() -> None:
    clock = FakeClock(T0)
    notifier = Grouping()
    backends = attrs.evolve(memory_backends(clock=clock), notifier=notifier)
    broker = backends.broker
    assert isinstance(broker, FakeBroker)
    for n in range(20):
        backends.credentials.put(f"i{n}", attrs.evolve(CREDS, login=5550000 + n))
    fleet = Fleet(backends, workers=1)
    fleet.add_many(f"i{n}" for n in range(20))
    run_for(fleet, clock, 1)
    for n in range(20):
        broker.close_account(f"i{n}")
    # The account closures are found at the next check and the login after it.
    run_for(fleet, clock, 300)
    closed = [b for b in notifier.batches if AlertKind.ACCOUNT_CLOSED in b]
    assert sum(len(b) for b in closed) == 20
    assert len(closed) < 20
    assert all(fleet[f"i{n}"].state is State.ACCOUNT_CLOSED for n in range(20))


def test_archive_records_wait_in_the_outbox_while_the_archive_is_down() -> None:
    class Down(MemoryArchive):
        down = True

        def store(self, records: Sequence[Any]) -> None:
            if self.down:
                raise ConnectionError("archive unreachable")
            super().store(records)

    archive = Down()
    clock = FakeClock(T0)
    backends = attrs.evolve(memory_backends(clock=clock), archive=archive)
    backends.credentials.put("a", CREDS)
    lc = Lifecycle("a", backends)
    lc.start()
    run_for(lc, clock, 30)
    assert lc.state is State.CONNECTED
    store = backends.state
    assert isinstance(store, MemoryStateStore)
    outbox = store.outbox(["a"])["a"]
    assert [getattr(r, "event", None) for r in outbox.records] == ["start", "login_succeeded"]
    archive.down = False
    run_for(lc, clock, 600)
    assert [r.event for r in archive.history("a")] == ["start", "login_succeeded"]
    assert store.outbox(["a"]) == {}


@pytest.mark.parametrize("workers", [1, 8])
def test_a_fleet_hands_over_what_a_dead_worker_left_in_the_outbox(workers: int) -> None:
    clock = FakeClock(T0)
    backends = memory_backends(clock=clock)
    notifier = backends.notifier
    assert isinstance(notifier, RecordingNotifier)
    backends.credentials.put("a", Credentials(5550001, "Srv", "pw"))
    # A worker decided and stored a transition, then died before handing it over.
    store = backends.state
    assert isinstance(store, MemoryStateStore)
    lone = Lifecycle("a", attrs.evolve(backends, notifier=Flaky(failures=10**6)))
    backends.credentials.delete("a")
    lone.start()
    assert store.outbox(["a"])["a"].notifications
    fleet = Fleet(backends, workers=workers)
    fleet.add("a")
    run_for(fleet, clock, 1)
    assert notifier.kinds("a") == [AlertKind.LOGIN_FAILURE]
    assert store.outbox(["a"]) == {}


class Webhook(RecordingNotifier):
    """Fails as an HTTP client does: quoting the URL, whose path is the secret."""

    def notify(self, notification: Notification) -> None:
        raise ConnectionError("POST https://hooks.example.com/T000/B000/s3cr3t-t0ken failed")


def test_a_set_aside_error_keeps_no_url_secret_in_the_store_or_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = Policy(max_delivery_attempts=2, delivery_backoff=1.0, delivery_backoff_max=1.0)
    lc, backends = _lone(Webhook(), policy)
    caplog.set_level("DEBUG")
    lc.start()
    backends.credentials.delete("a")
    lc.run_due()
    run_for(lc, backends.clock, 100)
    store = backends.state
    assert isinstance(store, MemoryStateStore)
    (aside,) = store.set_aside_notifications()
    assert aside.error == "ConnectionError: POST https://... failed"
    assert "s3cr3t" not in caplog.text
