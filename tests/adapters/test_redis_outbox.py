"""The outbox of RedisStateStore against the real Redis (SPEC section 14).

A transition's notifications and archive records are part of its atomic write: they
land with the state or not at all, once even when the client sends the write again,
and they wait in two lists of the instance (``<base>:notifications``,
``<base>:records``, entries ``"<id> <JSON>"``) until they are acknowledged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import count
from typing import Any

import attrs
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt5lifecycle.adapters._archive_codec import encode_entry, entry_id
from mt5lifecycle.adapters.redis import RedisStateStore, RedisType
from mt5lifecycle.core.records import (
    ArchiveRecord,
    AuditRecord,
    ClosureRecord,
    LoginFailureRecord,
    Notification,
    Outcome,
    TradeOutcomeRecord,
    TransitionRecord,
)
from mt5lifecycle.core.states import AlertKind, Reason, State
from mt5lifecycle.errors import ConcurrentUpdate, CorruptState, LockLost
from mt5lifecycle.ports import Commit, Entry, LockToken, Outbox, SetAside, Stored
from tests.adapters.test_redis_store import (
    CLOSING,
    EXAMPLE,
    client,
    commit_call,
    prefix,
    raw,
    store,
)

__all__ = ["client", "notification", "prefix", "raw", "store", "transition"]

AT = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
_numbers = count()


def notification(instance_id: str, kind: AlertKind = AlertKind.LOGIN_FAILURE) -> Notification:
    return Notification(
        kind=kind,
        instance_id=instance_id,
        reason=Reason.AUTH_FAILED,
        message=f"login {next(_numbers)} refused: Invalid account",
        at=AT,
    )


def transition(instance_id: str) -> TransitionRecord:
    return TransitionRecord(
        instance_id=instance_id,
        at=AT,
        event="login_failed",
        source=State.CONNECTING,
        dest=State.CONNECTING,
        reason=Reason.AUTH_FAILED,
    )


def lists(raw: redis.Redis, prefix: str, instance_id: str) -> tuple[list[str], list[str]]:
    """The two outbox lists as a plain client reads them."""
    base = f"{prefix}:{instance_id}"
    notes: Any = raw.lrange(f"{base}:notifications", 0, -1)
    records: Any = raw.lrange(f"{base}:records", 0, -1)
    return notes, records


def ids(entries: tuple[Entry, ...] | list[Entry]) -> list[str]:
    return [entry_id(e) for e in entries]


# --- written with the state ---------------------------------------------------------


def test_a_commit_s_entries_are_written_with_it_in_order(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    first, second = notification("acct-1"), notification("acct-1", AlertKind.LOGIN_RECOVERED)
    record, failure = (
        transition("acct-1"),
        LoginFailureRecord(
            instance_id="acct-1", at=AT, attempt=1, reason=Reason.AUTH_FAILED, code=-6, message="no"
        ),
    )

    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[first, record, second, failure])

    notes, records = lists(raw, prefix, "acct-1")
    assert notes == [encode_entry(first), encode_entry(second)]
    assert records == [encode_entry(record), encode_entry(failure)]
    # What an operator reads: the id, a space, the JSON.
    head, _, body = notes[0].partition(" ")
    assert head == first.id
    assert json.loads(body)["type"] == "notification"
    assert json.loads(body)["message"] == first.message
    assert store.load("acct-1") == Stored(EXAMPLE, 1, pending=4)
    assert store.outbox(["acct-1", "acct-2"]) == {
        "acct-1": Outbox(notifications=(first, second), records=(record, failure))
    }

    later = notification("acct-1")
    store.commit("acct-1", EXAMPLE, expected_version=1, outbox=[later])
    assert store.outbox(["acct-1"])["acct-1"].notifications == (first, second, later)
    assert store.load("acct-1") == Stored(EXAMPLE, 2, pending=5)


def test_a_commit_without_entries_leaves_the_outbox_as_it_was(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    note = notification("acct-1")
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[note])

    store.commit("acct-1", CLOSING, expected_version=1)

    assert store.load("acct-1") == Stored(CLOSING, 2, pending=1)
    assert lists(raw, prefix, "acct-1") == ([encode_entry(note)], [])
    assert raw.exists(f"{prefix}:acct-1:records") == 0  # no empty list is ever made


def test_every_kind_of_record_travels(store: RedisStateStore) -> None:
    records: list[ArchiveRecord] = [
        transition("acct-1"),
        LoginFailureRecord(
            instance_id="acct-1", at=AT, attempt=2, reason=Reason.NETWORK, code=None, message=""
        ),
        TradeOutcomeRecord(
            instance_id="acct-1",
            at=AT,
            kind="position",
            ticket=90001,
            symbol="EURUSD",
            volume=0.5,
            outcome=Outcome.CLOSED,
            retcode=10009,
        ),
        ClosureRecord(instance_id="acct-1", at=AT, final=CLOSING),
        AuditRecord(
            instance_id="acct-1",
            at=AT,
            actor="ops",
            action="confirm_closure",
            source=State.ACCOUNT_CLOSED,
            dest=None,
            outcome="done",
        ),
    ]

    store.commit("acct-1", CLOSING, expected_version=0, outbox=records)

    assert store.outbox(["acct-1"]) == {"acct-1": Outbox(records=tuple(records))}


message_text = st.text(max_size=200)
notifications = st.builds(
    Notification,
    kind=st.sampled_from(AlertKind),
    instance_id=st.just("acct-1"),
    reason=st.none() | st.sampled_from(Reason),
    message=message_text,
    at=st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC)),
)
records = st.builds(
    TransitionRecord,
    instance_id=st.just("acct-1"),
    at=st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC)),
    event=st.text(max_size=40),
    source=st.none() | st.sampled_from(State),
    dest=st.sampled_from(State),
    reason=st.none() | st.sampled_from(Reason),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(notifications | records, max_size=4), min_size=1, max_size=4))
def test_any_entries_come_back_as_they_were_in_the_order_they_were_written(
    client: redis.Redis, prefix: str, batches: list[list[Entry]]
) -> None:
    store = RedisStateStore(client, prefix=f"{prefix}:{uuid.uuid4().hex}")
    for version, batch in enumerate(batches):
        store.commit("acct-1", EXAMPLE, expected_version=version, outbox=batch)

    written = [e for batch in batches for e in batch]
    notes = tuple(e for e in written if isinstance(e, Notification))
    others = tuple(e for e in written if not isinstance(e, Notification))
    assert store.outbox(["acct-1"]) == ({"acct-1": Outbox(notes, others)} if written else {})
    stored = store.load("acct-1")
    assert stored is not None
    assert stored.pending == len(written)
    store.delete("acct-1")


# --- once, and only with a write that lands -------------------------------------------


def test_a_retried_commit_appends_its_entries_once(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    # The reply of the first send was lost and the client sent the script again (the
    # ``last_commit`` path): the state is this write's, and so are its entries, once.
    note, record = notification("acct-1"), transition("acct-1")
    send = commit_call(store, "acct-1", EXAMPLE, 0, outbox=(note, record))

    assert send() == 1
    assert send() == 1
    assert send() == 1

    assert lists(raw, prefix, "acct-1") == ([encode_entry(note)], [encode_entry(record)])
    assert store.load("acct-1") == Stored(EXAMPLE, 1, pending=2)


def test_a_retried_commit_that_gave_its_lock_back_appends_its_entries_once(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    lock = store.acquire_lock("acct-1", 30.0)
    assert lock is not None
    note = notification("acct-1")
    send = commit_call(
        store, "acct-1", CLOSING, 1, attrs.evolve(lock, release_on_commit=True), (note,)
    )

    assert send() == send() == 2

    assert lists(raw, prefix, "acct-1") == ([encode_entry(note)], [])
    assert raw.exists(f"{prefix}:acct-1:login_lock") == 0


def test_a_retried_deletion_appends_its_entries_once(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", CLOSING, expected_version=0)
    closure = ClosureRecord(instance_id="acct-1", at=AT, final=CLOSING)
    send = commit_call(store, "acct-1", None, 1, outbox=(closure,))

    assert send() == send() == 2

    assert lists(raw, prefix, "acct-1") == ([], [encode_entry(closure)])
    assert store.load("acct-1") is None


def test_a_deletion_of_nothing_still_writes_its_entries(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    # From version 0 nothing was there to delete: this is no retry of a deletion, and
    # what it has to tell must not be lost.
    note = notification("acct-1")

    assert store.commit("acct-1", None, expected_version=0, outbox=[note]) == 1

    assert lists(raw, prefix, "acct-1") == ([encode_entry(note)], [])


def test_a_stale_commit_leaves_no_entries(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[notification("acct-1")])
    store.commit("acct-1", EXAMPLE, expected_version=1)
    before = lists(raw, prefix, "acct-1")

    with pytest.raises(ConcurrentUpdate):
        store.commit(
            "acct-1",
            CLOSING,
            expected_version=1,
            outbox=[notification("acct-1"), transition("acct-1")],
        )
    with pytest.raises(ConcurrentUpdate):
        store.commit("acct-1", None, expected_version=7, outbox=[transition("acct-1")])
    with pytest.raises(ConcurrentUpdate):
        store.commit("acct-2", EXAMPLE, expected_version=3, outbox=[notification("acct-2")])

    assert lists(raw, prefix, "acct-1") == before
    assert lists(raw, prefix, "acct-2") == ([], [])
    assert store.load("acct-1") == Stored(EXAMPLE, 2, pending=1)


def test_a_commit_whose_lock_was_lost_leaves_no_entries(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    lock = store.acquire_lock("acct-1", 30.0)
    assert lock is not None
    store.release_lock(lock)
    assert store.acquire_lock("acct-1", 30.0) is not None  # another's now

    with pytest.raises(LockLost):
        store.commit(
            "acct-1", EXAMPLE, expected_version=0, lock=lock, outbox=[transition("acct-1")]
        )

    assert lists(raw, prefix, "acct-1") == ([], [])
    assert store.load("acct-1") is None


def test_commit_many_writes_each_item_s_entries_with_it_and_none_of_the_refused(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    store.acquire_lock("acct-3", 30.0)
    landed = {f"acct-{n}": notification(f"acct-{n}") for n in (1, 2, 4)}

    results = store.commit_many(
        [
            Commit("acct-1", CLOSING, 1, outbox=(landed["acct-1"],)),
            Commit("acct-2", EXAMPLE, 0, outbox=(landed["acct-2"], transition("acct-2"))),
            Commit(
                "acct-3",
                EXAMPLE,
                0,
                LockToken("acct-3", "not-the-holder"),
                (notification("acct-3"),),
            ),
            Commit("acct-4", EXAMPLE, 0, outbox=(landed["acct-4"],)),
            Commit("acct-1", EXAMPLE, 1, outbox=(notification("acct-1"),)),
        ]
    )

    assert results[:2] == [2, 1]
    assert isinstance(results[2], LockLost)
    assert results[3] == 1
    assert isinstance(results[4], ConcurrentUpdate)
    found = store.outbox(["acct-1", "acct-2", "acct-3", "acct-4"])
    assert set(found) == {"acct-1", "acct-2", "acct-4"}
    for instance_id, note in landed.items():
        assert found[instance_id].notifications == (note,)
    assert len(found["acct-2"].records) == 1
    assert lists(raw, prefix, "acct-3") == ([], [])


def test_an_entry_that_cannot_be_encoded_is_refused_before_any_io(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    with pytest.raises(ValueError, match="archive"):
        store.commit("acct-1", EXAMPLE, expected_version=0, outbox=["not an entry"])  # type: ignore[list-item]
    naive = attrs.evolve(notification("acct-1"), at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone"):
        store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[naive])
    assert list(raw.scan_iter(match=f"{prefix}*")) == []


# --- a purged instance: no state, the outbox kept -------------------------------------


def test_deleting_the_state_keeps_the_outbox_until_it_is_handed_over(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    note = notification("acct-1", AlertKind.ACCOUNT_CLOSED)
    store.commit("acct-1", CLOSING, expected_version=0, outbox=[note])
    lock = store.acquire_lock("acct-1", 30.0)
    assert lock is not None
    aside = notification("acct-1")
    store.commit("acct-1", CLOSING, expected_version=1, lock=lock, outbox=[aside])
    store.set_aside("acct-1", aside.id, "refused")
    closure = ClosureRecord(instance_id="acct-1", at=AT, final=CLOSING)

    assert store.commit("acct-1", None, expected_version=2, lock=lock, outbox=[closure]) == 3

    left = {key.rsplit(":", 1)[1] for key in raw.scan_iter(match=f"{prefix}:acct-1:*")}
    assert left == {"notifications", "records", "set_aside"}  # the lock went with the state
    assert store.load("acct-1") is None
    assert store.load_many(["acct-1"]) == {}
    assert list(store.ids()) == []
    assert store.versions(["acct-1"]) == {}
    assert store.outbox(["acct-1"]) == {"acct-1": Outbox((note,), (closure,))}
    assert [s.notification for s in store.set_aside_notifications(["acct-1"])] == [aside]

    # Handed over, it is gone too; a new start of the id begins from nothing.
    store.acknowledge({"acct-1": [note.id, entry_id(closure)]})
    assert store.outbox(["acct-1"]) == {}
    assert store.commit("acct-1", EXAMPLE, expected_version=0) == 1
    assert store.load("acct-1") == Stored(EXAMPLE, 1)


def test_a_stale_writer_cannot_bring_a_purged_state_back(store: RedisStateStore) -> None:
    store.commit("acct-1", CLOSING, expected_version=0)
    store.commit("acct-1", None, expected_version=1, outbox=[notification("acct-1")])

    with pytest.raises(ConcurrentUpdate):
        store.commit("acct-1", CLOSING, expected_version=1)
    assert store.load("acct-1") is None


def test_a_deletion_under_a_lost_lock_is_refused(store: RedisStateStore) -> None:
    store.commit("acct-1", CLOSING, expected_version=0)
    lock = store.acquire_lock("acct-1", 30.0)
    assert lock is not None
    store.release_lock(lock)

    with pytest.raises(LockLost):
        store.commit("acct-1", None, expected_version=1, lock=lock, outbox=[transition("acct-1")])
    assert store.load("acct-1") == Stored(CLOSING, 1)
    assert store.outbox(["acct-1"]) == {}


# --- acknowledge ----------------------------------------------------------------------


def test_acknowledge_drops_only_the_heads_handed_over_in_order(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    a, b, c = (notification("acct-1") for _ in range(3))
    r1, r2 = transition("acct-1"), transition("acct-1")
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[a, b, c, r1, r2])

    # c was handed over, b not (yet): c stays behind b; an id not there is skipped.
    store.acknowledge({"acct-1": [a.id, c.id, r1.record_id, "gone-already"]})

    assert store.outbox(["acct-1"]) == {"acct-1": Outbox((b, c), (r2,))}
    assert store.load("acct-1") == Stored(EXAMPLE, 1, pending=3)
    store.acknowledge({"acct-1": [b.id, c.id, r2.record_id]})
    assert store.outbox(["acct-1"]) == {}
    assert lists(raw, prefix, "acct-1") == ([], [])
    assert store.load("acct-1") == Stored(EXAMPLE, 1)
    store.acknowledge({"acct-1": [a.id]})  # twice (another process did it): nothing
    store.acknowledge({})


def test_acknowledge_takes_many_instances_across_batches(store: RedisStateStore) -> None:
    notes = {f"acct-{n}": notification(f"acct-{n}") for n in range(1100)}
    assert (
        store.commit_many(
            [Commit(i, EXAMPLE, 0, outbox=(note, notification(i))) for i, note in notes.items()]
        )
        == [1] * 1100
    )

    store.acknowledge({i: [note.id] for i, note in notes.items()})

    left = store.outbox(list(notes))
    assert set(left) == set(notes)
    for instance_id, note in notes.items():
        (second,) = left[instance_id].notifications
        assert second != note


def test_a_closure_record_is_acknowledged_by_its_key(store: RedisStateStore) -> None:
    closure = ClosureRecord(instance_id="acct-1", at=AT, final=CLOSING)
    store.commit("acct-1", None, expected_version=0, outbox=[closure])
    store.acknowledge({"acct-1": ["closure:acct-1"]})
    assert store.outbox(["acct-1"]) == {}


# --- set aside, and back ----------------------------------------------------------------


def test_a_set_aside_notification_waits_for_an_operator_and_comes_back(
    store: RedisStateStore,
) -> None:
    a, b, c = (notification("acct-1") for _ in range(3))
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[a, b, c, transition("acct-1")])

    store.set_aside("acct-1", b.id, "SMTP 550: mailbox unavailable")
    store.set_aside("acct-1", c.id, "x" * 5000, at=1_767_225_600.0)  # the caller's clock
    store.set_aside("acct-1", "no-such-id", "nothing to move")

    assert store.outbox(["acct-1"])["acct-1"].notifications == (a,)
    assert store.load("acct-1") == Stored(EXAMPLE, 1, pending=2)
    aside = store.set_aside_notifications(["acct-1"])
    assert [s.notification for s in aside] == [b, c]
    assert aside[0].error == "SMTP 550: mailbox unavailable"
    assert aside[1].error == "x" * 1000  # bounded
    assert all(isinstance(s, SetAside) and s.at.tzinfo is not None for s in aside)
    assert aside[1].at == datetime(2026, 1, 1, tzinfo=UTC)

    assert store.redeliver("acct-1", [c.id]) == 1
    assert store.outbox(["acct-1"])["acct-1"].notifications == (a, c)
    assert [s.notification for s in store.set_aside_notifications(["acct-1"])] == [b]
    assert store.redeliver("acct-1", []) == 0  # none chosen is not all
    assert store.redeliver("acct-1", ["no-such-id"]) == 0
    assert store.redeliver("acct-1") == 1
    assert store.outbox(["acct-1"])["acct-1"].notifications == (a, c, b)
    assert store.set_aside_notifications(["acct-1"]) == []
    assert store.redeliver("acct-1") == 0
    # Each redelivery that moved something moved the version (see below), no other.
    assert store.load("acct-1") == Stored(EXAMPLE, 3, pending=4)


def test_a_redelivery_moves_the_version_so_the_driver_reads_the_instance_back(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    note = notification("acct-1")
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[note])
    store.set_aside("acct-1", note.id, "refused")
    last_commit = raw.get(f"{prefix}:acct-1:last_commit")

    assert store.redeliver("acct-1") == 1

    assert store.versions(["acct-1"]) == {"acct-1": 2}
    assert raw.get(f"{prefix}:acct-1:last_commit") == last_commit
    assert store.load("acct-1") == Stored(EXAMPLE, 2, pending=1)
    # A writer still at the old version is fenced, reloads, and goes on.
    with pytest.raises(ConcurrentUpdate) as fenced:
        store.commit("acct-1", CLOSING, expected_version=1)
    assert fenced.value.found_version == 2
    assert store.commit("acct-1", CLOSING, expected_version=2) == 3


def test_a_redelivery_to_a_purged_instance_makes_no_version(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    note = notification("acct-1", AlertKind.ACCOUNT_CLOSED)
    store.commit("acct-1", CLOSING, expected_version=0, outbox=[note])
    store.set_aside("acct-1", note.id, "refused")
    store.commit("acct-1", None, expected_version=1)

    assert store.redeliver("acct-1") == 1

    assert raw.exists(f"{prefix}:acct-1:version") == 0
    assert store.load("acct-1") is None
    assert store.outbox(["acct-1"]) == {"acct-1": Outbox((note,))}


@pytest.mark.parametrize("version", ["two", "-1", "2.0"])
def test_a_redelivery_names_a_corrupt_version_and_moves_nothing(
    store: RedisStateStore, raw: redis.Redis, prefix: str, version: str
) -> None:
    note = notification("acct-1")
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[note])
    store.set_aside("acct-1", note.id, "refused")
    raw.set(f"{prefix}:acct-1:version", version)

    with pytest.raises(CorruptState) as corrupt:
        store.redeliver("acct-1")

    assert corrupt.value.key == f"{prefix}:acct-1:version"
    assert corrupt.value.value == version
    assert "fencing version" in str(corrupt.value)
    assert raw.llen(f"{prefix}:acct-1:set_aside") == 1
    raw.delete(f"{prefix}:acct-1:version")
    raw.rpush(f"{prefix}:acct-1:version", "2")
    with pytest.raises(CorruptState) as wrong:
        store.redeliver("acct-1")
    assert wrong.value.value == RedisType("list")
    assert raw.llen(f"{prefix}:acct-1:set_aside") == 1


def test_a_record_is_never_set_aside(store: RedisStateStore) -> None:
    record = transition("acct-1")
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[record])

    store.set_aside("acct-1", record.record_id, "refused")

    assert store.outbox(["acct-1"]) == {"acct-1": Outbox(records=(record,))}
    assert store.set_aside_notifications(["acct-1"]) == []


def test_set_aside_notifications_lists_every_instance_s_and_only_this_store_s(
    client: redis.Redis, store: RedisStateStore, prefix: str
) -> None:
    aside = {}
    for n in range(30):
        instance_id = f"acct-{n}"
        note = notification(instance_id)
        store.commit(instance_id, EXAMPLE, expected_version=0, outbox=[note])
        if n % 3 == 0:
            store.set_aside(instance_id, note.id, f"refused {n}")
            aside[note.id] = (note, f"refused {n}")
    other = RedisStateStore(client, prefix=f"{prefix}x")
    foreign = notification("acct-0")
    other.commit("acct-0", EXAMPLE, expected_version=0, outbox=[foreign])
    other.set_aside("acct-0", foreign.id, "not ours")
    # Keys that match the pattern and are still another store's: a nested prefix, and
    # the other cluster form under the same prefix.
    for neighbour in (
        RedisStateStore(client, prefix=f"{prefix}:nested"),
        RedisStateStore(client, prefix=prefix, cluster=True),
    ):
        theirs = notification("acct-1")
        neighbour.commit("acct-1", EXAMPLE, expected_version=0, outbox=[theirs])
        neighbour.set_aside("acct-1", theirs.id, "not ours either")

    found = store.set_aside_notifications()

    assert {s.notification.id: (s.notification, s.error) for s in found} == aside
    assert [s.notification for s in store.set_aside_notifications(["acct-3", "acct-4"])] == [
        aside_note for aside_note, _ in aside.values() if aside_note.instance_id == "acct-3"
    ]
    assert store.set_aside_notifications([]) == []
    assert [s.notification for s in other.set_aside_notifications()] == [foreign]


# --- corrupt and foreign values --------------------------------------------------------

CORRUPT_ENTRIES = [
    "no space at all",
    "n1 not json",
    "n1 [1, 2]",
    'n1 {"type": "notification"}',
    'n1 {"type": "bogus", "instance_id": "acct-1"}',
]


@pytest.mark.parametrize("lane", ["notifications", "records"])
@pytest.mark.parametrize("entry", CORRUPT_ENTRIES)
def test_a_corrupt_entry_raises_corrupt_state_naming_its_list(
    store: RedisStateStore, raw: redis.Redis, prefix: str, lane: str, entry: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[notification("acct-1")])
    key = f"{prefix}:acct-1:{lane}"
    raw.rpush(key, entry)

    with pytest.raises(CorruptState) as corrupt:
        store.outbox(["acct-2", "acct-1"])

    assert corrupt.value.key == key
    assert corrupt.value.instance_id == "acct-1"
    assert key in str(corrupt.value)


def test_an_entry_whose_head_is_not_its_own_id_is_corrupt(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    # Its acknowledgement would never match: it would block its list for ever.
    note = notification("acct-1")
    _, _, body = encode_entry(note).partition(" ")
    raw.rpush(f"{prefix}:acct-1:notifications", "someone-else " + body)

    with pytest.raises(CorruptState) as corrupt:
        store.outbox(["acct-1"])
    assert corrupt.value.key == f"{prefix}:acct-1:notifications"


def test_an_entry_naming_a_hostile_instance_id_is_corrupt(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    note = notification("acct-1")
    forged = encode_entry(note).replace('"instance_id":"acct-1"', '"instance_id":"../../etc"')
    raw.rpush(f"{prefix}:acct-1:notifications", forged)

    with pytest.raises(CorruptState) as corrupt:
        store.outbox(["acct-1"])
    assert corrupt.value.key == f"{prefix}:acct-1:notifications"


def test_undecodable_entry_bytes_are_corrupt(
    store: RedisStateStore, client: redis.Redis, prefix: str
) -> None:
    client.rpush(f"{prefix}:acct-1:records", b"\xff\xfe {}")
    with pytest.raises(CorruptState) as corrupt:
        store.outbox(["acct-1"])
    assert corrupt.value.key == f"{prefix}:acct-1:records"


@pytest.mark.parametrize("item", ["not json", '{"entry": "n1 {}"}', '{"error": "e", "at": "x"}'])
def test_a_corrupt_set_aside_item_is_corrupt_state_and_redeliver_moves_nothing(
    store: RedisStateStore, raw: redis.Redis, prefix: str, item: str
) -> None:
    good = notification("acct-1")
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[good])
    store.set_aside("acct-1", good.id, "refused")
    key = f"{prefix}:acct-1:set_aside"
    raw.rpush(key, item)

    with pytest.raises(CorruptState) as listed:
        store.set_aside_notifications(["acct-1"])
    assert listed.value.key == key
    with pytest.raises(CorruptState):
        store.set_aside_notifications()
    if item != '{"entry": "n1 {}"}':  # that one is only corrupt once decoded
        with pytest.raises(CorruptState) as moved:
            store.redeliver("acct-1")
        assert moved.value.key == key
        # Nothing was moved: the good one still waits where it was.
        assert raw.llen(key) == 2
        assert store.outbox(["acct-1"]) == {}


Call = Callable[[RedisStateStore], object]
LIST_CALLS: dict[str, list[tuple[str, Call]]] = {
    "notifications": [
        ("load", lambda s: s.load("acct-1")),
        ("load_many", lambda s: s.load_many(["acct-1"])),
        ("outbox", lambda s: s.outbox(["acct-1"])),
        (
            "commit with a notification",
            lambda s: s.commit(
                "acct-1", EXAMPLE, expected_version=1, outbox=[notification("acct-1")]
            ),
        ),
        ("acknowledge", lambda s: s.acknowledge({"acct-1": ["n1"]})),
        ("set_aside", lambda s: s.set_aside("acct-1", "n1", "refused")),
        ("redeliver", lambda s: s.redeliver("acct-1")),
    ],
    "records": [
        ("load", lambda s: s.load("acct-1")),
        ("outbox", lambda s: s.outbox(["acct-1"])),
        (
            "commit with a record",
            lambda s: s.commit(
                "acct-1", EXAMPLE, expected_version=1, outbox=[transition("acct-1")]
            ),
        ),
        (
            "commit_many with a record",
            lambda s: _raised(
                s.commit_many([Commit("acct-1", None, 1, outbox=(transition("acct-1"),))])[0]
            ),
        ),
        ("acknowledge", lambda s: s.acknowledge({"acct-1": ["r1"]})),
    ],
    "set_aside": [
        ("set_aside_notifications", lambda s: s.set_aside_notifications(["acct-1"])),
        ("set_aside_notifications()", lambda s: s.set_aside_notifications()),
        ("set_aside", lambda s: s.set_aside("acct-1", "n1", "refused")),
        ("redeliver", lambda s: s.redeliver("acct-1")),
    ],
}


def _raised(result: object) -> object:
    if isinstance(result, Exception):
        raise result
    return result


@pytest.mark.parametrize(
    ("lane", "name", "call"),
    [(lane, name, call) for lane, calls in LIST_CALLS.items() for name, call in calls],
    ids=[f"{lane}-{name}" for lane, calls in LIST_CALLS.items() for name, _ in calls],
)
@pytest.mark.parametrize("foreign", ["string", "hash"])
def test_an_outbox_key_of_the_wrong_type_is_corrupt_state_naming_it_and_nothing_changes(
    store: RedisStateStore,
    raw: redis.Redis,
    prefix: str,
    lane: str,
    name: str,
    call: Call,
    foreign: str,
) -> None:
    note = notification("acct-1")
    store.commit("acct-1", EXAMPLE, expected_version=0, outbox=[note, transition("acct-1")])
    key = f"{prefix}:acct-1:{lane}"
    raw.delete(key)
    if foreign == "string":
        raw.set(key, "CONNECTED")
    else:
        raw.hset(key, "n1", "x")
    before = {k: raw.dump(k) for k in raw.scan_iter(match=f"{prefix}:*")}

    with pytest.raises(CorruptState) as corrupt:
        call(store)

    assert corrupt.value.key == key
    assert corrupt.value.value == RedisType(foreign)
    assert "a list" in str(corrupt.value)
    assert {k: raw.dump(k) for k in raw.scan_iter(match=f"{prefix}:*")} == before
