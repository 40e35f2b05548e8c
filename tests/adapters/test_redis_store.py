"""RedisStateStore against the real Redis on 127.0.0.1:6379 (SPEC section 5).

Every test works under its own uuid prefix and removes its keys afterwards; a
missing server fails the tests (``ping`` in the fixture), it never skips them.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from mt5lifecycle.adapters.redis import KEY_SUFFIXES, RedisStateStore, RedisType
from mt5lifecycle.core.snapshot import Snapshot, utc
from mt5lifecycle.core.states import ConnectionState, Due, Reason, State
from mt5lifecycle.errors import (
    ConcurrentUpdate,
    CorruptState,
    InvalidInstanceId,
    LockLost,
    StoreUnavailable,
)
from mt5lifecycle.ports import LockToken, StateStore, Stored

HOST, PORT = "127.0.0.1", 6379

SPEC_KEYS = (
    "status",
    "connection_state",
    "login_attempt_count",
    "last_login_attempt",
    "login_failure_reason",
    "last_failure_reason",
)
OWN_KEYS = (
    "restart_count",
    "next_due",
    "due",
    "network_retry_count",
    "ever_logged_in",
    "failed_since_success",
    "terminal_stopped",
    "version",
    "last_commit",
    "login_lock",
)


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain client, as an operator's redis-cli would read the keys."""
    client = redis.Redis(host=HOST, port=PORT, decode_responses=True)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis(host=HOST, port=PORT)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def prefix(raw: redis.Redis) -> Iterator[str]:
    name = f"mt5l-test-{uuid.uuid4().hex}"
    yield name
    leftovers = list(raw.scan_iter(match=f"{name}*", count=1000))
    if leftovers:
        raw.delete(*leftovers)


@pytest.fixture
def store(client: redis.Redis, prefix: str) -> RedisStateStore:
    return RedisStateStore(client, prefix=prefix)


def dead_client() -> redis.Redis:
    """A client pointed at a port where nothing listens, failing at once."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    return redis.Redis(
        host=HOST,
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


def spec_values(snapshot: Snapshot) -> dict[str, str]:
    """The raw strings SPEC section 5 (and the library's own keys) say are stored."""
    values = {
        "status": snapshot.status.value,
        "connection_state": snapshot.connection_state.value,
        "login_attempt_count": str(snapshot.login_attempt_count),
        "restart_count": str(snapshot.restart_count),
        "network_retry_count": str(snapshot.network_retry_count),
        "ever_logged_in": "1" if snapshot.ever_logged_in else "0",
        "failed_since_success": "1" if snapshot.failed_since_success else "0",
        "terminal_stopped": "1" if snapshot.terminal_stopped else "0",
    }
    if snapshot.last_login_attempt is not None:
        values["last_login_attempt"] = snapshot.last_login_attempt.astimezone(UTC).isoformat()
    if snapshot.login_failure_reason is not None:
        values["login_failure_reason"] = snapshot.login_failure_reason.value
    if snapshot.last_failure_reason is not None:
        values["last_failure_reason"] = snapshot.last_failure_reason.value
    if snapshot.next_due is not None:
        values["next_due"] = repr(snapshot.next_due)
    if snapshot.due is not None:
        values["due"] = snapshot.due.value
    return values


def dump(raw: redis.Redis, prefix: str, instance_id: str) -> dict[str, str]:
    """Every key of one instance, by suffix, as a plain client reads it."""
    head = f"{prefix}:{instance_id}:"
    out: dict[str, str] = {}
    for key in raw.scan_iter(match=f"{prefix}:*", count=1000):
        value = raw.get(key) if raw.type(key) == "string" else None
        if key.startswith(head) and isinstance(value, str):
            out[key[len(head) :]] = value
    return out


snapshots = st.builds(
    Snapshot,
    status=st.sampled_from(State),
    connection_state=st.sampled_from(ConnectionState),
    login_attempt_count=st.integers(0, 10**9),
    last_login_attempt=st.none()
    | st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30))]),
    ),
    login_failure_reason=st.none() | st.sampled_from(Reason),
    last_failure_reason=st.none() | st.sampled_from(Reason),
    restart_count=st.integers(0, 10**9),
    next_due=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    due=st.none() | st.sampled_from(Due),
    network_retry_count=st.integers(0, 10**9),
    ever_logged_in=st.booleans(),
    failed_since_success=st.booleans(),
    terminal_stopped=st.booleans(),
)

EXAMPLE = Snapshot(
    status=State.CONNECTING,
    connection_state=ConnectionState.DISCONNECTED,
    login_attempt_count=2,
    last_login_attempt=utc(1767225605.25),
    login_failure_reason=Reason.AUTH_FAILED,
    last_failure_reason=Reason.NETWORK,
    restart_count=1,
    next_due=1767225615.25,
    due=Due.LOGIN,
    network_retry_count=3,
    ever_logged_in=True,
    failed_since_success=True,
    terminal_stopped=False,
)


# --- the key schema -----------------------------------------------------------------


def test_it_is_a_state_store(store: RedisStateStore) -> None:
    assert isinstance(store, StateStore)
    assert (*SPEC_KEYS, *OWN_KEYS) == KEY_SUFFIXES


def test_nothing_stored_loads_as_none(store: RedisStateStore) -> None:
    assert store.load("acct-1") is None
    assert store.load_many(["acct-1", "acct-2"]) == {}
    assert list(store.ids()) == []


def test_keys_and_values_are_the_spec_s(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    version = store.commit("acct-1", EXAMPLE, expected_version=0)

    assert version == 1
    assert dump(raw, prefix, "acct-1") == {
        "status": "CONNECTING",
        "connection_state": "DISCONNECTED",
        "login_attempt_count": "2",
        "last_login_attempt": "2026-01-01T00:00:05.250000+00:00",
        "login_failure_reason": "AUTH_FAILED",
        "last_failure_reason": "NETWORK",
        "restart_count": "1",
        "next_due": "1767225615.25",
        "due": "LOGIN",
        "network_retry_count": "3",
        "ever_logged_in": "1",
        "failed_since_success": "1",
        "terminal_stopped": "0",
        "version": "1",
        "last_commit": raw.get(f"{prefix}:acct-1:last_commit"),
    }
    assert raw.get(f"{prefix}:acct-1:status") == "CONNECTING"
    assert store.key("acct-1", "status") == f"{prefix}:acct-1:status"
    assert store.load("acct-1") == Stored(EXAMPLE, 1)


def test_absent_optionals_are_absent_keys(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    cleared = Snapshot(status=State.CONNECTED, connection_state=ConnectionState.CONNECTED)

    store.commit("acct-1", cleared, expected_version=1)

    stored = dump(raw, prefix, "acct-1")
    for suffix in ("last_login_attempt", "login_failure_reason", "last_failure_reason"):
        assert raw.exists(f"{prefix}:acct-1:{suffix}") == 0
        assert suffix not in stored
    assert "next_due" not in stored
    assert "due" not in stored
    assert store.load("acct-1") == Stored(cleared, 2)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(first=snapshots, second=snapshots)
def test_every_snapshot_round_trips_with_the_spec_s_values(
    store: RedisStateStore, raw: redis.Redis, prefix: str, first: Snapshot, second: Snapshot
) -> None:
    instance_id = uuid.uuid4().hex
    try:
        store.commit(instance_id, first, expected_version=0)
        store.commit(instance_id, second, expected_version=1)

        stored = dump(raw, prefix, instance_id)
        commit_id = stored.pop("last_commit")
        assert len(commit_id) >= 17  # a per-process random prefix and a counter
        assert stored == {**spec_values(second), "version": "2"}
        loaded = store.load(instance_id)
        assert loaded == Stored(second, 2)
        assert loaded is not None
        when = loaded.snapshot.last_login_attempt
        assert when is None or when.tzinfo is UTC
    finally:
        store.delete(instance_id)


def test_cluster_mode_wraps_the_id_in_a_hash_tag(
    client: redis.Redis, raw: redis.Redis, prefix: str
) -> None:
    store = RedisStateStore(client, prefix=prefix, cluster=True)

    store.commit("acct-1", EXAMPLE, expected_version=0)
    lock = store.acquire_lock("acct-1", 5.0)

    assert lock is not None
    keys = set(raw.scan_iter(match=f"{prefix}:*"))
    assert keys == {f"{prefix}:{{acct-1}}:{suffix}" for suffix in KEY_SUFFIXES}
    assert raw.get(f"{prefix}:{{acct-1}}:status") == "CONNECTING"
    assert store.load("acct-1") == Stored(EXAMPLE, 1)
    assert list(store.ids()) == ["acct-1"]
    assert store.load_many(["acct-1"]) == {"acct-1": Stored(EXAMPLE, 1)}
    # The other form's keys are not this store's.
    assert RedisStateStore(client, prefix=prefix).load("acct-1") is None
    assert list(RedisStateStore(client, prefix=prefix).ids()) == []
    store.delete("acct-1")
    assert list(raw.scan_iter(match=f"{prefix}:*")) == []


def test_a_client_that_decodes_responses_reads_the_same(raw: redis.Redis, prefix: str) -> None:
    store = RedisStateStore(raw, prefix=prefix)

    store.commit("acct-1", EXAMPLE, expected_version=0)

    assert store.load("acct-1") == Stored(EXAMPLE, 1)
    assert list(store.ids()) == ["acct-1"]


def test_repr_names_the_prefix_and_never_the_client(client: redis.Redis, prefix: str) -> None:
    store = RedisStateStore(client, prefix=prefix, cluster=True)
    assert repr(store) == f"RedisStateStore(prefix={prefix!r}, cluster=True)"


def test_a_cluster_client_needs_cluster_mode() -> None:
    # An unconnected RedisCluster: the check needs its type, never a cluster.
    cluster_client = object.__new__(redis.RedisCluster)
    with pytest.raises(ValueError, match="cluster=True"):
        RedisStateStore(cluster_client)


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "a b", 5])
def test_a_bad_prefix_is_refused(client: redis.Redis, bad: Any) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisStateStore(client, prefix=bad)


# --- fencing ------------------------------------------------------------------------


def test_versions_count_the_commits(store: RedisStateStore) -> None:
    assert store.commit("acct-1", EXAMPLE, expected_version=0) == 1
    assert store.commit("acct-1", EXAMPLE, expected_version=1) == 2
    assert store.load("acct-1") == Stored(EXAMPLE, 2)


def test_a_stale_writer_is_refused_and_writes_nothing(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    store.commit("acct-1", EXAMPLE, expected_version=1)
    before = dump(raw, prefix, "acct-1")
    stale = Snapshot(status=State.FAILED, last_failure_reason=Reason.TERMINAL)

    with pytest.raises(ConcurrentUpdate) as refused:
        store.commit("acct-1", stale, expected_version=1)

    assert refused.value.expected_version == 1
    assert refused.value.found_version == 2
    assert refused.value.instance_id == "acct-1"
    assert dump(raw, prefix, "acct-1") == before


def test_a_writer_that_thinks_something_is_stored_is_refused_on_nothing(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    with pytest.raises(ConcurrentUpdate) as refused:
        store.commit("acct-1", EXAMPLE, expected_version=3)

    assert refused.value.found_version is None
    assert dump(raw, prefix, "acct-1") == {}


def test_a_deleted_instance_is_not_brought_back_by_a_stale_writer(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    store.delete("acct-1")

    with pytest.raises(ConcurrentUpdate):
        store.commit("acct-1", EXAMPLE, expected_version=1)

    assert dump(raw, prefix, "acct-1") == {}


def sent_fields(
    store: RedisStateStore, instance_id: str, snapshot: Snapshot, version: int
) -> set[str]:
    """The field keys a commit of ``snapshot`` would send, by suffix."""
    call = store._commit_call(instance_id, snapshot, version, None)
    return {key.rsplit(":", 1)[1] for key in call.keys[3:]}


def whole(raw: redis.Redis, prefix: str, instance_id: str) -> dict[str, str]:
    """The instance's field keys, without the version, commit id and lock."""
    stored = dump(raw, prefix, instance_id)
    return {k: v for k, v in stored.items() if k not in ("version", "last_commit", "login_lock")}


def test_a_commit_from_a_known_state_sends_only_what_changed(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    assert sent_fields(store, "acct-1", EXAMPLE, 0) == set(SPEC_KEYS + OWN_KEYS[:7])
    store.commit("acct-1", EXAMPLE, expected_version=0)
    changed = attrs.evolve(EXAMPLE, login_attempt_count=3, next_due=None)

    assert sent_fields(store, "acct-1", changed, 1) == {"login_attempt_count", "next_due"}
    # From a version it does not know the store writes every field.
    assert len(sent_fields(store, "acct-1", changed, 7)) == 13
    store.commit("acct-1", changed, expected_version=1)

    assert whole(raw, prefix, "acct-1") == spec_values(changed)
    assert store.load("acct-1") == Stored(changed, 2)


def test_a_store_builds_on_what_it_loaded(
    client: redis.Redis, store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    restarted = RedisStateStore(client, prefix=prefix)
    changed = attrs.evolve(EXAMPLE, status=State.CONNECTED, due=None)
    assert len(sent_fields(restarted, "acct-1", changed, 1)) == 13

    assert restarted.load("acct-1") == Stored(EXAMPLE, 1)
    assert sent_fields(restarted, "acct-1", changed, 1) == {"status", "due"}
    assert restarted.commit("acct-1", changed, expected_version=1) == 2
    assert whole(raw, prefix, "acct-1") == spec_values(changed)


@pytest.mark.parametrize("many", ["commit", "commit_many", "start_commit_many"])
def test_a_change_is_never_laid_over_a_state_it_did_not_build_on(
    client: redis.Redis, store: RedisStateStore, raw: redis.Redis, prefix: str, many: str
) -> None:
    # Another writer deletes the instance and writes it anew up to the same version
    # number: the version alone cannot tell the two states apart, so a change to the
    # first must not be applied to the second. The store then writes every field.
    store.commit("acct-1", EXAMPLE, expected_version=0)
    other = RedisStateStore(client, prefix=prefix)
    other.delete("acct-1")
    assert (
        other.commit("acct-1", Snapshot(status=State.INACTIVE, restart_count=9), expected_version=0)
        == 1
    )
    changed = attrs.evolve(EXAMPLE, login_attempt_count=3)
    assert sent_fields(store, "acct-1", changed, 1) == {"login_attempt_count"}

    if many == "commit_many":
        assert store.commit_many([("acct-1", changed, 1, None)]) == [2]
    elif many == "start_commit_many":
        assert store.start_commit_many([("acct-1", changed, 1, None)])() == [2]
    else:
        assert store.commit("acct-1", changed, expected_version=1) == 2

    assert whole(raw, prefix, "acct-1") == spec_values(changed)
    assert store.load("acct-1") == Stored(changed, 2)


def test_an_unchanged_value_of_another_type_is_still_checked(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)  # restart_count=1
    before = dump(raw, prefix, "acct-1")

    with pytest.raises(ValueError, match="restart_count"):
        store.commit("acct-1", attrs.evolve(EXAMPLE, restart_count=True), expected_version=1)

    assert dump(raw, prefix, "acct-1") == before


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(snapshots, st.booleans()), min_size=1, max_size=8))
def test_two_stores_taking_turns_always_leave_the_last_snapshot_whole(
    client: redis.Redis, raw: redis.Redis, prefix: str, steps: list[tuple[Snapshot, bool]]
) -> None:
    stores = (RedisStateStore(client, prefix=prefix), RedisStateStore(client, prefix=prefix))
    instance_id = uuid.uuid4().hex
    versions = [0, 0]
    try:
        for snapshot, second in steps:
            writer = int(second)
            try:
                versions[writer] = stores[writer].commit(
                    instance_id, snapshot, expected_version=versions[writer]
                )
            except ConcurrentUpdate:
                stored = stores[writer].load(instance_id)
                assert stored is not None
                versions[writer] = stores[writer].commit(
                    instance_id, snapshot, expected_version=stored.version
                )
            assert whole(raw, prefix, instance_id) == spec_values(snapshot)
    finally:
        stores[0].delete(instance_id)


def test_a_commit_retried_by_the_client_is_recognised_as_its_own(
    store: RedisStateStore,
) -> None:
    # What redis-py does after a timeout whose command had in fact run: it sends the
    # very same EVALSHA again. The script must answer as the first try did.
    call = store._commit_call("acct-1", EXAMPLE, 0, None)
    first = store._committed(call, store._commit(keys=call.keys, args=call.args))
    again = store._committed(call, store._commit(keys=call.keys, args=call.args))

    assert first == again == 1
    # A different write from the same stale version is still refused.
    with pytest.raises(ConcurrentUpdate):
        store.commit("acct-1", EXAMPLE, expected_version=0)


def test_a_retried_commit_that_released_its_lock_is_still_its_own(
    store: RedisStateStore,
) -> None:
    # A login's result gives the lock back in the same write; when its reply is lost
    # and the client sends it again, the lock is gone, yet the write is this one.
    lock = store.acquire_lock("acct-1", 5.0)
    assert lock is not None
    call = store._commit_call("acct-1", EXAMPLE, 0, attrs.evolve(lock, release_on_commit=True))
    first = store._committed(call, store._commit(keys=call.keys, args=call.args))
    again = store._committed(call, store._commit(keys=call.keys, args=call.args))

    assert first == again == 1
    assert store.acquire_lock("acct-1", 5.0) is not None


def test_delete_removes_every_key_and_is_idempotent(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    store.commit("acct-2", EXAMPLE, expected_version=0)
    assert store.acquire_lock("acct-1", 5.0) is not None

    store.delete("acct-1")
    store.delete("acct-1")

    assert [k for k in raw.scan_iter(match=f"{prefix}:acct-1:*")] == []
    assert store.load("acct-1") is None
    assert store.load("acct-2") == Stored(EXAMPLE, 1)
    assert store.acquire_lock("acct-1", 5.0) is not None


@pytest.mark.parametrize(
    ("snapshot_changes", "error"),
    [
        ({"status": "CONNECTED"}, TypeError),
        ({"login_attempt_count": -1}, ValueError),
        ({"restart_count": True}, ValueError),
        ({"last_login_attempt": datetime(2026, 1, 1)}, ValueError),
        ({"next_due": float("nan")}, ValueError),
        ({"ever_logged_in": 1}, TypeError),
        ({"due": "LOGIN"}, TypeError),
    ],
)
def test_a_malformed_snapshot_is_refused_before_any_io(
    snapshot_changes: dict[str, Any], error: type[Exception]
) -> None:
    store = RedisStateStore(dead_client())
    fields = {"status": State.CONNECTING, **snapshot_changes}
    bad = Snapshot(**fields)

    with pytest.raises(error):
        store.commit("acct-1", bad, expected_version=0)
    with pytest.raises(error):
        store.commit_many([("acct-1", bad, 0, None)])


@pytest.mark.parametrize("expected_version", [-1, True, 1.0, "1"])
def test_a_bad_expected_version_is_refused(expected_version: Any) -> None:
    store = RedisStateStore(dead_client())
    with pytest.raises(ValueError, match="expected_version"):
        store.commit("acct-1", EXAMPLE, expected_version=expected_version)


# --- instance ids -------------------------------------------------------------------

BAD_IDS = ["", "a:b", "{a}", "-a", ".a", "a b", "x" * 129, "é", "a*", 5, None]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_invalid_id_is_refused_before_any_io(bad: Any) -> None:
    # The client points at nothing: any I/O would raise StoreUnavailable instead.
    store = RedisStateStore(dead_client())
    calls: list[Callable[[], object]] = [
        lambda: store.load(bad),
        lambda: store.load_many(["ok", bad]),
        lambda: store.commit(bad, EXAMPLE, expected_version=0),
        lambda: store.commit_many([("ok", EXAMPLE, 0, None), (bad, EXAMPLE, 0, None)]),
        lambda: store.delete(bad),
        lambda: store.acquire_lock(bad, 1.0),
        lambda: store.release_lock(LockToken(bad, "t")),
        lambda: store.key(bad, "status"),
    ]
    for call in calls:
        with pytest.raises(InvalidInstanceId):
            call()


def test_the_longest_valid_id_works(store: RedisStateStore) -> None:
    longest = "A" + "b.-_9" * 25 + "zz"
    assert len(longest) == 128
    store.commit(longest, EXAMPLE, expected_version=0)
    assert store.load(longest) == Stored(EXAMPLE, 1)
    assert list(store.ids()) == [longest]


# --- ids and many -------------------------------------------------------------------


def test_ids_lists_every_instance_once_and_skips_foreign_keys(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    for n in range(25):
        store.commit(f"acct-{n}", EXAMPLE, expected_version=0)
    raw.set(f"{prefix}:nested:acct-x:status", "CONNECTED")
    raw.set(f"{prefix}:{{acct-y}}:status", "CONNECTED")
    raw.set(f"{prefix}x:acct-z:status", "CONNECTED")
    raw.set(f"{prefix}:acct-lock-only:login_lock", "t")

    assert sorted(store.ids()) == sorted(f"acct-{n}" for n in range(25))


def test_ids_escapes_glob_characters_in_the_prefix(client: redis.Redis, prefix: str) -> None:
    starred = RedisStateStore(client, prefix=f"{prefix}*[a]?")
    plain = RedisStateStore(client, prefix=f"{prefix}Xa")

    plain.commit("acct-1", EXAMPLE, expected_version=0)
    starred.commit("acct-2", EXAMPLE, expected_version=0)

    assert list(starred.ids()) == ["acct-2"]
    assert list(plain.ids()) == ["acct-1"]


def test_load_many_crosses_batches_and_leaves_absent_ids_out(store: RedisStateStore) -> None:
    ids = [f"acct-{n}" for n in range(2500)]
    results = store.commit_many([(i, EXAMPLE, 0, None) for i in ids[::2]])
    assert results == [1] * 1250

    found = store.load_many([*ids, *ids[:10]])

    assert set(found) == set(ids[::2])
    assert all(stored == Stored(EXAMPLE, 1) for stored in found.values())
    assert store.load_many([]) == {}


@pytest.mark.parametrize("suffix", ["due", "version"])
def test_load_many_names_a_key_of_the_wrong_type_in_any_group(
    store: RedisStateStore, raw: redis.Redis, prefix: str, suffix: str
) -> None:
    ids = [f"acct-{n}" for n in range(250)]
    assert store.commit_many([(i, EXAMPLE, 0, None) for i in ids[:150]]) == [1] * 150
    key = f"{prefix}:acct-170:{suffix}"  # an instance with nothing else stored
    raw.rpush(key, "x")

    with pytest.raises(CorruptState) as corrupt:
        store.load_many(ids)

    assert corrupt.value.key == key
    assert corrupt.value.value == RedisType("list")
    found = store.load_many([i for i in ids if i != "acct-170"])
    assert set(found) == set(ids[:150])


def test_commit_many_of_new_instances_still_checks_each_version_s_type(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    raw.hset(f"{prefix}:acct-2:version", "v", "1")

    results = store.commit_many([(f"acct-{n}", EXAMPLE, 0, None) for n in range(4)])

    assert results[0] == results[1] == results[3] == 1
    assert isinstance(results[2], CorruptState)
    assert results[2].key == f"{prefix}:acct-2:version"
    assert raw.exists(f"{prefix}:acct-2:status") == 0


def test_versions_reads_each_stored_version_and_leaves_out_the_rest(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    ids = [f"acct-{n}" for n in range(1200)]
    assert store.commit_many([(i, EXAMPLE, 0, None) for i in ids[:1100]]) == [1] * 1100
    assert store.commit("acct-1", EXAMPLE, expected_version=1) == 2
    raw.set(f"{prefix}:acct-2:version", "two")  # corrupt: a whole read names it
    raw.delete(f"{prefix}:acct-3:version")
    raw.rpush(f"{prefix}:acct-3:version", "1")  # another type

    versions = store.versions(ids)

    assert versions["acct-1"] == 2
    assert "acct-2" not in versions and "acct-3" not in versions
    assert set(versions) == set(ids[:1100]) - {"acct-2", "acct-3"}
    assert all(versions[i] == 1 for i in ids[4:1100])
    assert store.versions([]) == {}
    with pytest.raises(InvalidInstanceId):
        store.versions(["acct-1", "bad id"])


def test_commit_many_answers_per_item(store: RedisStateStore) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    lock = store.acquire_lock("acct-3", 5.0)
    assert lock is not None
    stale_lock = LockToken("acct-4", "not-the-holder")
    store.acquire_lock("acct-4", 5.0)

    results = store.commit_many(
        [
            ("acct-1", EXAMPLE, 1, None),
            ("acct-1", EXAMPLE, 1, None),
            ("acct-2", EXAMPLE, 0, None),
            ("acct-3", EXAMPLE, 0, lock),
            ("acct-4", EXAMPLE, 0, stale_lock),
        ]
    )

    assert results[0] == 2
    assert isinstance(results[1], ConcurrentUpdate)
    assert results[2] == 1
    assert results[3] == 1
    assert isinstance(results[4], LockLost)
    assert store.load("acct-4") is None
    assert store.commit_many([]) == []


def test_start_commit_many_answers_later_what_commit_many_answers(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    held = store.acquire_lock("acct-3", 5.0)
    assert held is not None
    lock = attrs.evolve(held, release_on_commit=True)
    store.acquire_lock("acct-4", 5.0)
    first = store.start_commit_many(
        [
            ("acct-1", EXAMPLE, 1, None),
            ("acct-1", EXAMPLE, 1, None),
            ("acct-2", EXAMPLE, 0, None),
            ("acct-3", EXAMPLE, 0, lock),
            ("acct-4", EXAMPLE, 0, LockToken("acct-4", "not-the-holder")),
        ]
    )
    # A second batch in flight at once: on a connection of its own.
    second = store.start_commit_many([(f"other-{n}", EXAMPLE, 0, None) for n in range(150)])

    assert second() == [1] * 150
    results = first()

    assert results[0] == 2
    assert isinstance(results[1], ConcurrentUpdate)
    assert results[2:4] == [1, 1]
    assert isinstance(results[4], LockLost)
    assert raw.exists(f"{prefix}:acct-3:login_lock") == 0  # given back by its write
    assert store.load("acct-4") is None
    assert store.load_many(["acct-1", "other-149"]) == {
        "acct-1": Stored(EXAMPLE, 2),
        "other-149": Stored(EXAMPLE, 1),
    }
    assert store.start_commit_many([])() == []


@pytest.mark.parametrize("locks_first", [True, False], ids=["locks read first", "writes first"])
def test_locks_asked_ahead_of_the_writes_are_answered_as_acquire_many_answers(
    store: RedisStateStore, raw: redis.Redis, prefix: str, locks_first: bool
) -> None:
    held = store.acquire_lock("next-1", 30.0)
    assert held is not None
    raw.rpush(f"{prefix}:next-2:login_lock", "x")
    ahead = [f"next-{n}" for n in range(150)]

    sent = store.start_commit_many([("acct-1", EXAMPLE, 0, None)], ahead, 30.0)
    if locks_first:
        locks = sent.locks()
        assert sent() == [1]
    else:
        assert sent() == [1]
        locks = sent.locks()

    assert locks[1] is None  # another holds it
    assert isinstance(locks[2], CorruptState)
    assert locks[2].key == f"{prefix}:next-2:login_lock"
    taken = [lock for lock in locks if isinstance(lock, LockToken)]
    assert [lock.instance_id for lock in taken] == [ahead[0], *ahead[3:]]
    assert raw.get(f"{prefix}:next-0:login_lock") == taken[0].token
    assert 29_000 < raw.pttl(f"{prefix}:next-0:login_lock") <= 30_000
    assert sent.locks() is locks  # read once
    assert store.load("acct-1") == Stored(EXAMPLE, 1)


def test_a_pooled_connection_the_server_dropped_is_opened_again(
    raw: redis.Redis, prefix: str
) -> None:
    name = f"mt5l-{uuid.uuid4().hex[:12]}"
    client = redis.Redis(host=HOST, port=PORT, client_name=name)
    store = RedisStateStore(client, prefix=prefix)
    assert store.commit("acct-1", EXAMPLE, expected_version=0) == 1  # a pooled connection
    for entry in raw.client_list():
        if entry["name"] == name:
            raw.client_kill_filter(_id=entry["id"])

    sent = store.start_commit_many([("acct-1", EXAMPLE, 1, None)], ["next-0"], 5.0)

    assert sent() == [2]
    assert [type(lock) for lock in sent.locks()] == [LockToken]
    client.close()


def test_a_lost_script_that_cannot_be_loaded_again_drops_the_connection(
    store: RedisStateStore, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.commit_many([("warm", EXAMPLE, 0, None)])
    client.script_flush()  # the scripts sent next come back NOSCRIPT

    def busy(script: Any) -> str:
        raise redis.ResponseError("BUSY Redis is busy running a script")

    monkeypatch.setattr(client, "script_load", busy)
    sent = store.start_commit_many([("acct-1", EXAMPLE, 0, None)], ["next-0"], 5.0)

    with pytest.raises(redis.ResponseError, match="BUSY"):
        sent.locks()
    # The writes' answers were never read: they are in doubt, not misread as locks.
    with pytest.raises(StoreUnavailable):
        sent()
    assert [type(lock) for lock in sent.locks()] == [StoreUnavailable]
    monkeypatch.undo()
    # Private, but the point: no connection is left checked out, none with answers.
    assert not client.connection_pool._in_use_connections
    assert store.commit("acct-1", EXAMPLE, expected_version=0) == 1


def test_locks_asked_ahead_on_a_lost_connection_are_unavailable(
    raw: redis.Redis, prefix: str
) -> None:
    client = redis.Redis(host=HOST, port=PORT, socket_timeout=0.1, retry=Retry(NoBackoff(), 0))
    store = RedisStateStore(client, prefix=prefix)
    raw.client_pause(5000, all=False)
    try:
        sent = store.start_commit_many([("acct-1", EXAMPLE, 0, None)], ["next-0", "next-1"], 30.0)
        locks = sent.locks()
        with pytest.raises(StoreUnavailable):
            sent()
    finally:
        raw.client_unpause()
    assert [type(lock) for lock in locks] == [StoreUnavailable, StoreUnavailable]
    assert store.commit("acct-2", EXAMPLE, expected_version=0) == 1  # the pool goes on
    client.close()


@pytest.mark.parametrize("pool", ["one connection", "blocking pool", "small pool"])
def test_a_client_that_cannot_lend_a_connection_has_it_all_done_at_once(
    raw: redis.Redis, prefix: str, pool: str
) -> None:
    if pool == "one connection":
        client = redis.Redis(host=HOST, port=PORT, single_connection_client=True)
    elif pool == "blocking pool":
        blocking = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            host=HOST, port=PORT, max_connections=2
        )
        client = redis.Redis(connection_pool=blocking)
    else:
        client = redis.Redis(host=HOST, port=PORT, max_connections=8)
    store = RedisStateStore(client, prefix=prefix)

    sent = store.start_commit_many([("acct-1", EXAMPLE, 0, None)], ["next-0"], 30.0)

    assert raw.get(f"{prefix}:acct-1:version") == "1"  # before the answers are read
    assert raw.exists(f"{prefix}:next-0:login_lock") == 1
    assert sent() == [1]
    assert [lock.instance_id for lock in sent.locks() if isinstance(lock, LockToken)] == ["next-0"]
    client.close()


def test_start_commit_many_refuses_bad_input_before_sending(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    with pytest.raises(InvalidInstanceId):
        store.start_commit_many([("acct-1", EXAMPLE, 0, None), ("bad id", EXAMPLE, 0, None)])
    with pytest.raises(TypeError, match="Snapshot"):
        store.start_commit_many([("acct-1", EXAMPLE, 0, None), ("acct-2", object(), 0, None)])  # type: ignore[list-item]

    assert list(raw.scan_iter(match=f"{prefix}*")) == []
    assert store.commit_many([("acct-1", EXAMPLE, 0, None)]) == [1]  # the pool is whole


def test_start_commit_many_loads_a_lost_script_again(
    store: RedisStateStore, client: redis.Redis
) -> None:
    store.commit_many([("warm", EXAMPLE, 0, None)])
    client.script_flush()

    sent = store.start_commit_many([("acct-1", EXAMPLE, 0, None)], ["next-0"], 5.0)
    assert sent() == [1]
    assert [type(lock) for lock in sent.locks()] == [LockToken]
    assert store.load("acct-1") == Stored(EXAMPLE, 1)


def test_answers_that_do_not_come_are_store_unavailable_and_the_connection_is_dropped(
    raw: redis.Redis, prefix: str
) -> None:
    client = redis.Redis(host=HOST, port=PORT, socket_timeout=0.1, retry=Retry(NoBackoff(), 0))
    store = RedisStateStore(client, prefix=prefix)
    assert store.commit("acct-1", EXAMPLE, expected_version=0) == 1
    changed = attrs.evolve(EXAMPLE, login_attempt_count=4)
    raw.client_pause(5000, all=False)  # scripts wait, unanswered
    try:
        answers = store.start_commit_many([("acct-1", changed, 1, None)])
        with pytest.raises(StoreUnavailable):
            answers()
    finally:
        raw.client_unpause()
    # The write may have landed after all (here it does, once Redis goes on): the
    # writer reloads. The connection that missed its answer is never read again.
    stored = store.load("acct-1")
    assert stored is not None
    assert store.commit("acct-1", stored.snapshot, expected_version=stored.version) == (
        stored.version + 1
    )
    client.close()


def test_commit_many_names_a_corrupt_key_per_item(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    raw.set(f"{prefix}:acct-1:version", "one")

    results = store.commit_many([("acct-1", EXAMPLE, 1, None), ("acct-2", EXAMPLE, 0, None)])

    assert isinstance(results[0], CorruptState)
    assert results[0].key == f"{prefix}:acct-1:version"
    assert results[1] == 1


# --- the login lock -----------------------------------------------------------------


def test_a_held_lock_blocks_a_second_acquire(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    first = store.acquire_lock("acct-1", 30.0)

    assert first is not None
    assert first.instance_id == "acct-1"
    assert raw.get(f"{prefix}:acct-1:login_lock") == first.token
    assert 29_000 < raw.pttl(f"{prefix}:acct-1:login_lock") <= 30_000
    assert store.acquire_lock("acct-1", 30.0) is None
    assert store.acquire_lock("acct-2", 30.0) is not None

    store.release_lock(first)

    assert raw.exists(f"{prefix}:acct-1:login_lock") == 0
    second = store.acquire_lock("acct-1", 30.0)
    assert second is not None
    assert second.token != first.token


@pytest.mark.parametrize("cluster", [False, True], ids=["plain", "cluster keys"])
def test_acquire_many_takes_each_free_lock_once(
    client: redis.Redis, raw: redis.Redis, prefix: str, cluster: bool
) -> None:
    store = RedisStateStore(client, prefix=prefix, cluster=cluster)
    held = store.acquire_lock("acct-2", 30.0)
    assert held is not None
    ids = [f"acct-{n}" for n in range(250)] + ["acct-1"]  # acct-1 asked twice

    locks = store.acquire_many(ids, 30.0)

    assert locks[2] is None
    assert locks[-1] is None  # the first acct-1 took it
    taken = [lock for lock in locks if isinstance(lock, LockToken)]
    assert [lock.instance_id for lock in taken] == [i for i in ids[:250] if i != "acct-2"]
    assert len({lock.token for lock in taken}) == len(taken)
    for lock in taken[:3]:
        key = store.key(lock.instance_id, "login_lock")
        assert raw.get(key) == lock.token
        assert 29_000 < raw.pttl(key) <= 30_000
    # Each is a lock like any other: it guards a commit and is released.
    assert store.commit("acct-0", EXAMPLE, expected_version=0, lock=taken[0]) == 1
    store.release_lock(taken[0])
    assert store.acquire_lock("acct-0", 1.0) is not None
    assert store.acquire_many([], 1.0) == []


def test_acquire_many_names_a_lock_of_the_wrong_type_and_takes_the_others(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    raw.sadd(f"{prefix}:acct-1:login_lock", "token")

    first, second = store.acquire_many(["acct-1", "acct-2"], 1.0)

    assert isinstance(first, CorruptState)
    assert first.key == f"{prefix}:acct-1:login_lock"
    assert isinstance(second, LockToken)


@pytest.mark.parametrize(
    ("ids", "ttl", "error"),
    [(["ok", "not ok"], 1.0, InvalidInstanceId), (["ok"], 0, ValueError), (["ok"], "1", TypeError)],
)
def test_acquire_many_refuses_bad_input_before_any_io(
    store: RedisStateStore, raw: redis.Redis, prefix: str, ids: list[str], ttl: Any, error: type
) -> None:
    with pytest.raises(error):
        store.acquire_many(ids, ttl)
    assert raw.exists(f"{prefix}:ok:login_lock") == 0


def test_a_commit_under_the_lock_needs_the_lock(store: RedisStateStore) -> None:
    lock = store.acquire_lock("acct-1", 30.0)
    assert lock is not None

    assert store.commit("acct-1", EXAMPLE, expected_version=0, lock=lock) == 1
    store.release_lock(lock)

    with pytest.raises(LockLost) as lost:
        store.commit("acct-1", EXAMPLE, expected_version=1, lock=lock)
    assert lost.value.instance_id == "acct-1"
    assert store.load("acct-1") == Stored(EXAMPLE, 1)


def test_a_lock_of_another_instance_cannot_guard_a_write(store: RedisStateStore) -> None:
    lock = store.acquire_lock("acct-2", 30.0)
    assert lock is not None
    with pytest.raises(ValueError, match="acct-2"):
        store.commit("acct-1", EXAMPLE, expected_version=0, lock=lock)
    assert store.load("acct-1") is None


def test_an_expired_lock_taken_by_another_fences_its_former_holder(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    old = store.acquire_lock("acct-1", 0.05)
    assert old is not None
    # Real time, unavoidably: the expiry is Redis's own clock (PX 50 ms), which no
    # fake clock reaches. Sleep just past the remaining TTL that Redis reports.
    time.sleep(raw.pttl(f"{prefix}:acct-1:login_lock") / 1000 + 0.02)
    new = store.acquire_lock("acct-1", 30.0)
    assert new is not None
    before = dump(raw, prefix, "acct-1")

    with pytest.raises(LockLost):
        store.commit("acct-1", Snapshot(status=State.FAILED), expected_version=1, lock=old)
    store.release_lock(old)

    assert dump(raw, prefix, "acct-1") == before
    assert raw.get(f"{prefix}:acct-1:login_lock") == new.token
    assert store.commit("acct-1", EXAMPLE, expected_version=1, lock=new) == 2


def test_an_expired_lock_nobody_took_still_fences(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    old = store.acquire_lock("acct-1", 0.05)
    assert old is not None
    # Real time for Redis's own expiry, as above.
    time.sleep(raw.pttl(f"{prefix}:acct-1:login_lock") / 1000 + 0.02)

    with pytest.raises(LockLost):
        store.commit("acct-1", EXAMPLE, expected_version=0, lock=old)
    assert store.load("acct-1") is None


@pytest.mark.parametrize("ttl", [0, -1.0, float("inf"), float("nan")])
def test_a_bad_ttl_is_refused(store: RedisStateStore, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        store.acquire_lock("acct-1", ttl)


def test_a_tiny_ttl_is_at_least_a_millisecond(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    lock = store.acquire_lock("acct-1", 0.0001)
    assert lock is not None
    # PX 0 would be refused by Redis; the store rounds up to 1 ms.
    assert raw.pttl(f"{prefix}:acct-1:login_lock") in (-2, 0, 1)


# --- corrupt values -----------------------------------------------------------------

CORRUPT = [
    ("status", "BOGUS"),
    ("status", "connected"),
    ("status", ""),
    ("connection_state", "UP"),
    ("connection_state", "CONNECTING"),
    ("login_attempt_count", "-1"),
    ("login_attempt_count", "1.5"),
    ("login_attempt_count", " 5"),
    ("login_attempt_count", "1_000"),
    ("login_attempt_count", "٣"),
    ("last_login_attempt", "yesterday"),
    ("last_login_attempt", "2026-01-01T00:00:05"),
    ("last_login_attempt", "2026-01-01T02:00:05+02:00"),
    ("last_login_attempt", "1767225605.25"),
    ("login_failure_reason", "WRONG_PASSWORD"),
    ("login_failure_reason", ""),
    ("last_failure_reason", "auth_failed"),
    ("restart_count", "three"),
    ("next_due", "nan"),
    ("next_due", "inf"),
    ("next_due", "1_0"),
    ("next_due", "soon"),
    ("due", "SOON"),
    ("network_retry_count", "-3"),
    ("ever_logged_in", "true"),
    ("failed_since_success", "2"),
    ("terminal_stopped", ""),
    ("version", "v1"),
    ("version", "-1"),
    ("version", "1.0"),
]


@pytest.mark.parametrize(("suffix", "value"), CORRUPT)
def test_a_corrupt_value_raises_corrupt_state_naming_the_key(
    store: RedisStateStore, raw: redis.Redis, prefix: str, suffix: str, value: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    key = f"{prefix}:acct-1:{suffix}"
    raw.set(key, value)

    with pytest.raises(CorruptState) as corrupt:
        store.load("acct-1")
    assert corrupt.value.key == key
    assert corrupt.value.value == value
    assert corrupt.value.instance_id == "acct-1"
    assert key in str(corrupt.value)

    with pytest.raises(CorruptState) as again:
        store.load_many(["acct-2", "acct-1"])
    assert again.value.key == key


def test_undecodable_bytes_are_corrupt(
    store: RedisStateStore, client: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    client.set(f"{prefix}:acct-1:due", b"\xff\xfe")

    with pytest.raises(CorruptState) as corrupt:
        store.load("acct-1")
    assert corrupt.value.key == f"{prefix}:acct-1:due"


@pytest.mark.parametrize("suffix", [*KEY_SUFFIXES[:13], "version"])
def test_a_key_of_the_wrong_type_raises_corrupt_state_naming_it(
    store: RedisStateStore, raw: redis.Redis, prefix: str, suffix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    key = f"{prefix}:acct-1:{suffix}"
    raw.delete(key)
    raw.rpush(key, "CONNECTED")

    with pytest.raises(CorruptState) as corrupt:
        store.load("acct-1")
    assert corrupt.value.key == key
    assert corrupt.value.value == RedisType("list")
    assert "a Redis list" in str(corrupt.value)


def test_a_version_of_the_wrong_type_refuses_the_commit(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    key = f"{prefix}:acct-1:version"
    raw.hset(key, "v", "1")

    with pytest.raises(CorruptState) as corrupt:
        store.commit("acct-1", EXAMPLE, expected_version=0)
    assert corrupt.value.key == key
    assert raw.exists(f"{prefix}:acct-1:status") == 0


def test_a_corrupt_version_refuses_the_commit(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    raw.set(f"{prefix}:acct-1:version", "seven")
    before = dump(raw, prefix, "acct-1")

    with pytest.raises(CorruptState) as corrupt:
        store.commit("acct-1", Snapshot(status=State.FAILED), expected_version=1)
    assert corrupt.value.key == f"{prefix}:acct-1:version"
    assert dump(raw, prefix, "acct-1") == before


def test_a_lock_of_the_wrong_type_is_corrupt(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    key = f"{prefix}:acct-1:login_lock"
    raw.sadd(key, "token")

    for call in (
        lambda: store.acquire_lock("acct-1", 1.0),
        lambda: store.release_lock(LockToken("acct-1", "token")),
        lambda: store.commit(
            "acct-1", EXAMPLE, expected_version=0, lock=LockToken("acct-1", "token")
        ),
    ):
        with pytest.raises(CorruptState) as corrupt:
            call()
        assert corrupt.value.key == key
    assert raw.exists(f"{prefix}:acct-1:status") == 0


@pytest.mark.parametrize("suffix", ["connection_state", "login_attempt_count"])
def test_a_missing_spec_key_is_corrupt(
    store: RedisStateStore, raw: redis.Redis, prefix: str, suffix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    raw.delete(f"{prefix}:acct-1:{suffix}")

    with pytest.raises(CorruptState) as corrupt:
        store.load("acct-1")
    assert corrupt.value.key == f"{prefix}:acct-1:{suffix}"


def test_keys_without_a_status_are_corrupt_not_absent(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    raw.delete(f"{prefix}:acct-1:status")

    with pytest.raises(CorruptState) as corrupt:
        store.load("acct-1")
    assert corrupt.value.key == f"{prefix}:acct-1:status"


def test_a_lock_alone_is_nothing_stored(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    assert store.acquire_lock("acct-1", 5.0) is not None
    assert store.load("acct-1") is None


def test_the_spec_keys_alone_load_with_the_library_s_defaults(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    # What a host's own tool (or the design notes' system) writes: the SPEC's keys only.
    raw.mset(
        {
            f"{prefix}:acct-1:status": "FAILED",
            f"{prefix}:acct-1:connection_state": "FAILED",
            f"{prefix}:acct-1:login_attempt_count": "5",
            f"{prefix}:acct-1:last_login_attempt": "2026-01-01T00:01:45+00:00",
            f"{prefix}:acct-1:login_failure_reason": "AUTH_FAILED",
            f"{prefix}:acct-1:last_failure_reason": "LOGIN_ATTEMPTS_EXHAUSTED",
        }
    )

    assert store.load("acct-1") == Stored(
        Snapshot(
            status=State.FAILED,
            connection_state=ConnectionState.FAILED,
            login_attempt_count=5,
            last_login_attempt=utc(1767225705.0),
            login_failure_reason=Reason.AUTH_FAILED,
            last_failure_reason=Reason.LOGIN_ATTEMPTS_EXHAUSTED,
        ),
        0,
    )
    assert store.commit("acct-1", EXAMPLE, expected_version=0) == 1


# --- Redis unreachable --------------------------------------------------------------


def test_an_unreachable_redis_is_store_unavailable_everywhere() -> None:
    store = RedisStateStore(dead_client(), prefix="never-written")
    calls: list[Callable[[], object]] = [
        lambda: store.load("acct-1"),
        lambda: store.load_many(["acct-1"]),
        lambda: list(store.ids()),
        lambda: store.commit("acct-1", EXAMPLE, expected_version=0),
        lambda: store.commit_many([("acct-1", EXAMPLE, 0, None)]),
        lambda: store.delete("acct-1"),
        lambda: store.acquire_lock("acct-1", 1.0),
        lambda: store.acquire_many(["acct-1"], 1.0),
        lambda: store.release_lock(LockToken("acct-1", "t")),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as unavailable:
            call()
        assert unavailable.value.backend == "redis"
        assert "redis unavailable" in str(unavailable.value)
        assert isinstance(unavailable.value.__cause__, redis.ConnectionError)
    with pytest.raises(StoreUnavailable) as one:
        store.load("acct-1")
    assert one.value.instance_id == "acct-1"


def test_a_commit_can_release_the_lock_it_was_guarded_by_in_the_same_write(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    lock = store.acquire_lock("acct-1", 30.0)
    assert lock is not None
    snapshot = Snapshot(status=State.CONNECTED)
    store.commit(
        "acct-1", snapshot, expected_version=0, lock=attrs.evolve(lock, release_on_commit=True)
    )
    assert raw.exists(f"{prefix}:acct-1:login_lock") == 0
    assert store.acquire_lock("acct-1", 30.0) is not None


def test_a_login_costs_two_round_trips_the_lock_and_its_result(
    client: redis.Redis, prefix: str
) -> None:
    from mt5lifecycle import Credentials, Lifecycle
    from mt5lifecycle.testing import memory_backends

    store = RedisStateStore(client, prefix=prefix)
    backends = attrs.evolve(memory_backends(), state=store)
    backends.credentials.put("acct-1", Credentials(1, "Srv", "pw"))
    lifecycle = Lifecycle("acct-1", backends)
    lifecycle.start()
    sent: list[str] = []
    original: Any = client.execute_command

    def counting(*args: object, **options: object) -> object:
        sent.append(str(args[0]))
        return original(*args, **options)

    client.execute_command = counting  # type: ignore[method-assign]
    try:
        lifecycle.run_due()
    finally:
        del client.execute_command
    assert lifecycle.state is State.CONNECTED
    assert len(sent) == 2, sent  # take the lock; store the result and give the lock back
