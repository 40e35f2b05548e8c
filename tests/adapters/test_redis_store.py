"""RedisStateStore against the real Redis on 127.0.0.1:6379 (SPEC section 5).

Every test works under its own uuid prefix and removes its keys afterwards; a
missing server fails the tests (``ping`` in the fixture), it never skips them. The
outbox has its own module (``test_redis_outbox.py``), and so have the per-server keys
(``test_redis_servers.py``); both use this module's fixtures.
"""

from __future__ import annotations

import json
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
from mt5lifecycle.core.answers import Account, Ticket
from mt5lifecycle.core.snapshot import Snapshot, utc
from mt5lifecycle.core.states import ConnectionState, Due, Reason, State
from mt5lifecycle.errors import (
    ConcurrentUpdate,
    CorruptState,
    InvalidInstanceId,
    LockLost,
    StoreUnavailable,
)
from mt5lifecycle.ports import (
    BatchingStateStore,
    Commit,
    LockToken,
    LoginSlots,
    OutboxStore,
    ServerOutages,
    StateStore,
    Stored,
    VersionReader,
)

HOST, PORT = "127.0.0.1", 6379

SPEC_KEYS = (
    "status",
    "connection_state",
    "login_attempt_count",
    "last_login_attempt",
    "login_failure_reason",
    "last_failure_reason",
)
OWN_FIELDS = (
    "restart_count",
    "next_due",
    "due",
    "network_retry_count",
    "ever_logged_in",
    "failed_since_success",
    "terminal_stopped",
    "account",
    "tickets",
    "forced_try",
)
FIELD_KEYS = (*SPEC_KEYS, *OWN_FIELDS)
"""One string key per ``Snapshot`` field, in the order of the scripts' KEYS."""
OWN_KEYS = (
    *OWN_FIELDS,
    "version",
    "last_commit",
    "login_lock",
    "notifications",
    "records",
    "set_aside",
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


def tickets_text(tickets: tuple[Ticket, ...]) -> str:
    """The JSON the schema stores for a closing plan, as a plain client reads it."""
    return json.dumps(
        [{"kind": t.kind, "ticket": t.ticket, "symbol": t.symbol, "volume": t.volume}
         for t in tickets],
        separators=(",", ":"),
    )  # fmt: skip


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
        "forced_try": "1" if snapshot.forced_try else "0",
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
    if snapshot.account is not None:
        values["account"] = f"{snapshot.account.login}@{snapshot.account.server}"
    if snapshot.tickets is not None:
        values["tickets"] = tickets_text(snapshot.tickets)
    return values


def dump(raw: redis.Redis, prefix: str, instance_id: str) -> dict[str, str]:
    """Every string key of one instance, by suffix, as a plain client reads it."""
    head = f"{prefix}:{instance_id}:"
    out: dict[str, str] = {}
    for key in raw.scan_iter(match=f"{prefix}:*", count=1000):
        value = raw.get(key) if raw.type(key) == "string" else None
        if key.startswith(head) and isinstance(value, str):
            out[key[len(head) :]] = value
    return out


# Any text a broker may call its server or a symbol: the codecs must not care.
names = st.text(min_size=1, max_size=40)
accounts = st.builds(Account, st.integers(0, 2**63), names)
tickets = st.builds(
    Ticket,
    kind=st.sampled_from(["position", "order"]),
    ticket=st.integers(0, 2**64),
    symbol=st.text(max_size=40),
    volume=st.floats(allow_nan=False, allow_infinity=False),
)

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
    account=st.none() | accounts,
    tickets=st.none() | st.lists(tickets, max_size=4).map(tuple),
    forced_try=st.booleans(),
)

ACCOUNT = Account(5550001, "Broker-Demo")
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
    account=ACCOUNT,
)
PLAN = (
    Ticket(kind="position", ticket=90001, symbol="EURUSD", volume=0.5),
    Ticket(kind="order", ticket=90002, symbol="XAUUSD.m", volume=0.0),
)
CLOSING = Snapshot(
    status=State.ACCOUNT_CLOSED,
    last_failure_reason=Reason.ACCOUNT_CLOSED,
    ever_logged_in=True,
    next_due=1767225700.0,
    due=Due.SETTLE_TRADE,
    account=ACCOUNT,
    tickets=PLAN,
)

FULL = attrs.evolve(EXAMPLE, tickets=PLAN, forced_try=True)
"""Every optional field set: a key for each."""


def commit_call(
    store: RedisStateStore,
    instance_id: str,
    snapshot: Snapshot | None,
    version: int,
    lock: LockToken | None = None,
    outbox: tuple[Any, ...] = (),
) -> Callable[[], int]:
    """One commit as the script receives it, to be sent as often as wanted: what
    redis-py does when it retries a command whose reply was lost. Each send runs the
    script again with the very same commit id."""
    call = store._commit_call(Commit(instance_id, snapshot, version, lock, outbox))
    return lambda: store._committed(call, store._commit(keys=call.keys, args=call.args))


# --- the key schema -----------------------------------------------------------------


def test_it_is_every_port_it_says_it_is(store: RedisStateStore) -> None:
    for port in (
        StateStore,
        BatchingStateStore,
        OutboxStore,
        LoginSlots,
        ServerOutages,
        VersionReader,
    ):
        assert isinstance(store, port), port
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
        "account": "5550001@Broker-Demo",
        "forced_try": "0",
        "version": "1",
        "last_commit": raw.get(f"{prefix}:acct-1:last_commit"),
    }
    assert raw.get(f"{prefix}:acct-1:status") == "CONNECTING"
    assert store.key("acct-1", "status") == f"{prefix}:acct-1:status"
    assert store.load("acct-1") == Stored(EXAMPLE, 1)


def test_a_closing_plan_is_stored_as_json_an_operator_can_read(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", CLOSING, expected_version=0)

    stored = raw.get(f"{prefix}:acct-1:tickets")
    assert isinstance(stored, str)
    assert json.loads(stored) == [
        {"kind": "position", "ticket": 90001, "symbol": "EURUSD", "volume": 0.5},
        {"kind": "order", "ticket": 90002, "symbol": "XAUUSD.m", "volume": 0.0},
    ]
    assert raw.get(f"{prefix}:acct-1:account") == "5550001@Broker-Demo"
    assert store.load("acct-1") == Stored(CLOSING, 1)

    # An empty plan (everything settled) is not "not listed yet".
    settled = attrs.evolve(CLOSING, tickets=())
    store.commit("acct-1", settled, expected_version=1)
    assert raw.get(f"{prefix}:acct-1:tickets") == "[]"
    assert store.load("acct-1") == Stored(settled, 2)


@pytest.mark.parametrize(
    "account",
    [
        Account(0, "x"),
        Account(12, "a@b@c"),  # the login is digits: the first @ ends it
        Account(7, "Брокер-Демо 2"),
        Account(2**63, "line\nbreak"),
        Account(9, "@"),
    ],
    ids=repr,
)
def test_any_server_name_round_trips_in_an_account(
    store: RedisStateStore, account: Account
) -> None:
    snapshot = Snapshot(status=State.CONNECTED, account=account)
    store.commit("acct-1", snapshot, expected_version=0)
    assert store.load("acct-1") == Stored(snapshot, 1)


def test_forced_try_is_a_flag(store: RedisStateStore, raw: redis.Redis, prefix: str) -> None:
    forced = Snapshot(status=State.CONNECTING, forced_try=True, due=Due.LOGIN, next_due=1.0)
    store.commit("acct-1", forced, expected_version=0)
    assert raw.get(f"{prefix}:acct-1:forced_try") == "1"
    assert store.load("acct-1") == Stored(forced, 1)


def test_absent_optionals_are_absent_keys(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", CLOSING, expected_version=0)
    store.commit("acct-1", EXAMPLE, expected_version=1)
    cleared = Snapshot(status=State.CONNECTED, connection_state=ConnectionState.CONNECTED)

    store.commit("acct-1", cleared, expected_version=2)

    stored = dump(raw, prefix, "acct-1")
    for suffix in (
        "last_login_attempt",
        "login_failure_reason",
        "last_failure_reason",
        "next_due",
        "due",
        "account",
        "tickets",
    ):
        assert raw.exists(f"{prefix}:acct-1:{suffix}") == 0
        assert suffix not in stored
    assert store.load("acct-1") == Stored(cleared, 3)


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
        assert store.load_many([instance_id]) == {instance_id: Stored(second, 2)}
    finally:
        store.delete(instance_id)


def test_cluster_mode_wraps_the_id_in_a_hash_tag(
    client: redis.Redis, raw: redis.Redis, prefix: str
) -> None:
    from tests.adapters.test_redis_outbox import notification, transition

    store = RedisStateStore(client, prefix=prefix, cluster=True)
    first, second = notification("acct-1"), notification("acct-1")

    store.commit("acct-1", FULL, expected_version=0, outbox=[first, second, transition("acct-1")])
    store.set_aside("acct-1", first.id, "refused")
    lock = store.acquire_lock("acct-1", 5.0)

    assert lock is not None
    keys = set(raw.scan_iter(match=f"{prefix}:*"))
    # Every key of the instance, its outbox and set-aside list included.
    assert keys == {f"{prefix}:{{acct-1}}:{suffix}" for suffix in KEY_SUFFIXES}
    assert raw.get(f"{prefix}:{{acct-1}}:status") == "CONNECTING"
    assert store.load("acct-1") == Stored(FULL, 1, pending=2)
    assert list(store.ids()) == ["acct-1"]
    assert store.load_many(["acct-1"]) == {"acct-1": Stored(FULL, 1, pending=2)}
    assert [s.notification for s in store.set_aside_notifications()] == [first]
    # The other form's keys are not this store's.
    assert RedisStateStore(client, prefix=prefix).load("acct-1") is None
    assert list(RedisStateStore(client, prefix=prefix).ids()) == []
    store.delete("acct-1")
    assert list(raw.scan_iter(match=f"{prefix}:*")) == []


def test_a_client_that_decodes_responses_reads_the_same(raw: redis.Redis, prefix: str) -> None:
    from tests.adapters.test_redis_outbox import notification

    store = RedisStateStore(raw, prefix=prefix)
    note = notification("acct-1")

    store.commit("acct-1", CLOSING, expected_version=0, outbox=[note])

    assert store.load("acct-1") == Stored(CLOSING, 1, pending=1)
    assert list(store.ids()) == ["acct-1"]
    assert store.outbox(["acct-1"])["acct-1"].notifications == (note,)


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


def test_key_names_only_the_store_s_fields(store: RedisStateStore, prefix: str) -> None:
    assert store.key("acct-1", "notifications") == f"{prefix}:acct-1:notifications"
    with pytest.raises(ValueError, match="unknown field 'bogus'"):
        store.key("acct-1", "bogus")


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


def whole(raw: redis.Redis, prefix: str, instance_id: str) -> dict[str, str]:
    """The instance's field keys, without the version, commit id and lock."""
    stored = dump(raw, prefix, instance_id)
    return {k: v for k, v in stored.items() if k not in ("version", "last_commit", "login_lock")}


def test_every_commit_sends_every_field(store: RedisStateStore) -> None:
    # A whole snapshot each time, never a change against what the store believes is
    # there: a write can never be laid over a state it did not build on.
    call = store._commit_call(Commit("acct-1", Snapshot(status=State.CONNECTED), 7))
    assert [key.rsplit(":", 1)[1] for key in call.keys[5:]] == list(FIELD_KEYS)


@pytest.mark.parametrize("many", ["commit", "commit_many"])
def test_a_commit_over_a_state_written_anew_leaves_its_own_snapshot_whole(
    client: redis.Redis, store: RedisStateStore, raw: redis.Redis, prefix: str, many: str
) -> None:
    # Another writer deletes the instance and writes it anew up to the same version
    # number: the version cannot tell the two states apart, and the write that lands
    # must leave exactly its own snapshot, not a mix with the other's fields.
    store.commit("acct-1", EXAMPLE, expected_version=0)
    other = RedisStateStore(client, prefix=prefix)
    other.delete("acct-1")
    assert (
        other.commit("acct-1", Snapshot(status=State.INACTIVE, restart_count=9), expected_version=0)
        == 1
    )
    changed = attrs.evolve(EXAMPLE, login_attempt_count=3)

    if many == "commit_many":
        assert store.commit_many([Commit("acct-1", changed, 1)]) == [2]
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
    send = commit_call(store, "acct-1", EXAMPLE, 0)

    assert send() == send() == 1
    # A different write from the same stale version is still refused.
    with pytest.raises(ConcurrentUpdate):
        store.commit("acct-1", EXAMPLE, expected_version=0)
    # And the retry of a write that another has since built on is refused too.
    assert store.commit("acct-1", EXAMPLE, expected_version=1) == 2
    with pytest.raises(ConcurrentUpdate):
        send()


def test_a_retried_commit_that_released_its_lock_is_still_its_own(
    store: RedisStateStore,
) -> None:
    # A login's result gives the lock back in the same write; when its reply is lost
    # and the client sends it again, the lock is gone, yet the write is this one.
    lock = store.acquire_lock("acct-1", 5.0)
    assert lock is not None
    send = commit_call(store, "acct-1", EXAMPLE, 0, attrs.evolve(lock, release_on_commit=True))

    assert send() == send() == 1
    assert store.acquire_lock("acct-1", 5.0) is not None


def test_delete_removes_every_key_and_is_idempotent(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    from tests.adapters.test_redis_outbox import notification, transition

    note = notification("acct-1")
    store.commit("acct-1", FULL, expected_version=0, outbox=[note, transition("acct-1")])
    store.set_aside("acct-1", note.id, "refused")
    store.commit("acct-1", FULL, expected_version=1, outbox=[notification("acct-1")])
    store.commit("acct-2", EXAMPLE, expected_version=0, outbox=[notification("acct-2")])
    assert store.acquire_lock("acct-1", 5.0) is not None
    assert {k.rsplit(":", 1)[1] for k in raw.scan_iter(match=f"{prefix}:acct-1:*")} == set(
        KEY_SUFFIXES
    )

    store.delete("acct-1")
    store.delete("acct-1")

    assert list(raw.scan_iter(match=f"{prefix}:acct-1:*")) == []
    assert store.load("acct-1") is None
    assert store.outbox(["acct-1"]) == {}
    assert store.set_aside_notifications(["acct-1"]) == []
    assert store.load("acct-2") == Stored(EXAMPLE, 1, pending=1)
    assert store.acquire_lock("acct-1", 5.0) is not None


def bad_ticket(**changes: Any) -> Ticket:
    """A ticket as a buggy caller could make one (attrs checks no types)."""
    return attrs.evolve(PLAN[0], **changes)


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
        ({"forced_try": None}, TypeError),
        ({"account": "5550001@Broker-Demo"}, TypeError),
        ({"account": Account(-1, "Broker-Demo")}, ValueError),
        ({"account": Account(True, "Broker-Demo")}, ValueError),
        ({"account": Account(5550001, "")}, ValueError),
        ({"tickets": list(PLAN)}, TypeError),
        ({"tickets": (PLAN[0], "90002")}, TypeError),
        ({"tickets": (bad_ticket(kind="deal"),)}, ValueError),
        ({"tickets": (bad_ticket(ticket="90001"),)}, ValueError),
        ({"tickets": (bad_ticket(volume=float("nan")),)}, ValueError),
        ({"tickets": (bad_ticket(symbol=None),)}, ValueError),
    ],
)
def test_a_malformed_snapshot_is_refused_before_any_io(
    snapshot_changes: dict[str, Any], error: type[Exception]
) -> None:
    # Each of these would be written as a value the store itself refuses to read.
    store = RedisStateStore(dead_client())
    fields = {"status": State.CONNECTING, **snapshot_changes}
    bad = Snapshot(**fields)

    with pytest.raises(error):
        store.commit("acct-1", bad, expected_version=0)
    with pytest.raises(error):
        store.commit_many([Commit("acct-1", EXAMPLE, 0), Commit("acct-2", bad, 0)])


@pytest.mark.parametrize("expected_version", [-1, True, 1.0, "1"])
def test_a_bad_expected_version_is_refused(expected_version: Any) -> None:
    store = RedisStateStore(dead_client())
    with pytest.raises(ValueError, match="expected_version"):
        store.commit("acct-1", EXAMPLE, expected_version=expected_version)
    with pytest.raises(ValueError, match="expected_version"):
        store.commit_many([Commit("acct-1", EXAMPLE, expected_version)])


@pytest.mark.parametrize(
    ("lock", "error"),
    [
        ("token", TypeError),
        (LockToken("acct-1", ""), ValueError),
        (LockToken("acct-2", "token"), ValueError),
    ],
)
def test_a_bad_lock_is_refused_before_any_io(lock: Any, error: type[Exception]) -> None:
    store = RedisStateStore(dead_client())
    with pytest.raises(error):
        store.commit("acct-1", EXAMPLE, expected_version=0, lock=lock)


def test_a_bad_snapshot_type_is_refused(store: RedisStateStore) -> None:
    with pytest.raises(TypeError, match="Snapshot"):
        store.commit("acct-1", {"status": "CONNECTED"}, expected_version=0)  # type: ignore[arg-type]
    assert store.load("acct-1") is None


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
    ("account", "5550001"),
    ("account", "@Broker-Demo"),
    ("account", "5550001@"),
    ("account", "-5@Broker-Demo"),
    ("account", "x5@Broker-Demo"),
    ("account", "٣@Broker-Demo"),
    ("tickets", "not json"),
    ("tickets", "null"),
    ("tickets", "{}"),
    ("tickets", '"abc"'),
    ("tickets", "[1]"),
    ("tickets", '[{"kind":"deal","ticket":1,"symbol":"X","volume":1}]'),
    ("tickets", '[{"kind":"position","ticket":true,"symbol":"X","volume":1}]'),
    ("tickets", '[{"kind":"position","ticket":1.5,"symbol":"X","volume":1}]'),
    ("tickets", '[{"kind":"position","ticket":1,"symbol":7,"volume":1}]'),
    ("tickets", '[{"kind":"position","ticket":1,"symbol":"X","volume":"1"}]'),
    ("tickets", '[{"kind":"position","ticket":1,"symbol":"X","volume":NaN}]'),
    ("tickets", '[{"kind":"position","ticket":1,"symbol":"X"}]'),
    ("forced_try", "yes"),
    ("forced_try", ""),
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


@pytest.mark.parametrize("suffix", [*FIELD_KEYS, "version"])
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


# --- instance ids -------------------------------------------------------------------

BAD_IDS = ["", "a:b", "{a}", "-a", ".a", "a b", "x" * 129, "é", "a*", 5, None]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_invalid_id_is_refused_before_any_io(bad: Any) -> None:
    # The client points at nothing: any I/O would raise StoreUnavailable instead.
    store = RedisStateStore(dead_client())
    calls: list[Callable[[], object]] = [
        lambda: store.load(bad),
        lambda: store.load_many(["ok", bad]),
        lambda: store.versions(["ok", bad]),
        lambda: store.commit(bad, EXAMPLE, expected_version=0),
        lambda: store.commit(bad, None, expected_version=1),
        lambda: store.commit_many([Commit("ok", EXAMPLE, 0), Commit(bad, EXAMPLE, 0)]),
        lambda: store.delete(bad),
        lambda: store.acquire_lock(bad, 1.0),
        lambda: store.release_lock(LockToken(bad, "t")),
        lambda: store.key(bad, "status"),
        lambda: store.outbox(["ok", bad]),
        lambda: store.acknowledge({"ok": ["n1"], bad: ["n2"]}),
        lambda: store.set_aside(bad, "n1", "refused"),
        lambda: store.set_aside_notifications(["ok", bad]),
        lambda: store.redeliver(bad),
        lambda: store.redeliver(bad, []),
        lambda: store.report_failure("Broker-Demo", bad, 0.0, 60.0),
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
    raw.rpush(f"{prefix}:acct-outbox-only:notifications", "x")
    raw.set(f"{prefix}:server:{{Broker-Demo}}:down", "1")

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
    results = store.commit_many([Commit(i, EXAMPLE, 0) for i in ids[::2]])
    assert results == [1] * 1250

    found = store.load_many([*ids, *ids[:10]])

    assert set(found) == set(ids[::2])
    assert all(stored == Stored(EXAMPLE, 1) for stored in found.values())
    assert store.load_many([]) == {}


@pytest.mark.parametrize("suffix", ["due", "version", "account"])
def test_load_many_names_a_key_of_the_wrong_type_in_any_batch(
    store: RedisStateStore, raw: redis.Redis, prefix: str, suffix: str
) -> None:
    ids = [f"acct-{n}" for n in range(1250)]
    assert store.commit_many([Commit(i, EXAMPLE, 0) for i in ids[:1150]]) == [1] * 1150
    key = f"{prefix}:acct-1170:{suffix}"  # an instance with nothing else stored
    raw.rpush(key, "x")

    with pytest.raises(CorruptState) as corrupt:
        store.load_many(ids)

    assert corrupt.value.key == key
    assert corrupt.value.value == RedisType("list")
    found = store.load_many([i for i in ids if i != "acct-1170"])
    assert set(found) == set(ids[:1150])


def test_commit_many_of_new_instances_still_checks_each_version_s_type(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    raw.hset(f"{prefix}:acct-2:version", "v", "1")

    results = store.commit_many([Commit(f"acct-{n}", EXAMPLE, 0) for n in range(4)])

    assert results[0] == results[1] == results[3] == 1
    assert isinstance(results[2], CorruptState)
    assert results[2].key == f"{prefix}:acct-2:version"
    assert raw.exists(f"{prefix}:acct-2:status") == 0


def test_versions_reads_each_stored_version_and_leaves_out_the_rest(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    ids = [f"acct-{n}" for n in range(1200)]
    assert store.commit_many([Commit(i, EXAMPLE, 0) for i in ids[:1100]]) == [1] * 1100
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


def test_commit_many_answers_per_item(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    lock = store.acquire_lock("acct-3", 5.0)
    assert lock is not None
    held = store.acquire_lock("acct-5", 5.0)
    assert held is not None
    store.acquire_lock("acct-4", 5.0)
    stale_lock = LockToken("acct-4", "not-the-holder")

    results = store.commit_many(
        [
            Commit("acct-1", EXAMPLE, 1),
            Commit("acct-1", EXAMPLE, 1),
            Commit("acct-2", EXAMPLE, 0),
            Commit("acct-3", EXAMPLE, 0, lock),
            Commit("acct-4", EXAMPLE, 0, stale_lock),
            Commit("acct-5", CLOSING, 0, attrs.evolve(held, release_on_commit=True)),
        ]
    )

    assert results[0] == 2
    assert isinstance(results[1], ConcurrentUpdate)
    assert results[1].found_version == 2
    assert results[2:4] == [1, 1]
    assert isinstance(results[4], LockLost)
    assert results[5] == 1
    assert store.load("acct-4") is None
    assert raw.get(f"{prefix}:acct-3:login_lock") == lock.token  # kept: not asked to give back
    assert raw.exists(f"{prefix}:acct-5:login_lock") == 0  # given back by its write
    assert store.load_many(["acct-1", "acct-5"]) == {
        "acct-1": Stored(EXAMPLE, 2),
        "acct-5": Stored(CLOSING, 1),
    }
    assert store.commit_many([]) == []


def test_commit_many_names_a_corrupt_key_per_item(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    store.commit("acct-1", EXAMPLE, expected_version=0)
    raw.set(f"{prefix}:acct-1:version", "one")

    results = store.commit_many([Commit("acct-1", EXAMPLE, 1), Commit("acct-2", EXAMPLE, 0)])

    assert isinstance(results[0], CorruptState)
    assert results[0].key == f"{prefix}:acct-1:version"
    assert results[1] == 1


def test_commit_many_refuses_bad_input_before_sending(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    with pytest.raises(InvalidInstanceId):
        store.commit_many([Commit("acct-1", EXAMPLE, 0), Commit("bad id", EXAMPLE, 0)])
    with pytest.raises(TypeError, match="Snapshot"):
        store.commit_many([Commit("acct-1", EXAMPLE, 0), Commit("acct-2", object(), 0)])  # type: ignore[arg-type]

    assert list(raw.scan_iter(match=f"{prefix}*")) == []
    assert store.commit_many([Commit("acct-1", EXAMPLE, 0)]) == [1]


def test_commit_many_and_load_many_load_a_lost_script_again(
    store: RedisStateStore, client: redis.Redis
) -> None:
    store.commit_many([Commit("warm", EXAMPLE, 0)])
    client.script_flush()
    assert store.commit_many([Commit("acct-1", EXAMPLE, 0), Commit("acct-2", EXAMPLE, 0)]) == [1, 1]
    client.script_flush()
    assert store.load_many(["acct-1", "acct-2"]) == {
        "acct-1": Stored(EXAMPLE, 1),
        "acct-2": Stored(EXAMPLE, 1),
    }
    client.script_flush()
    assert store.commit("acct-1", EXAMPLE, expected_version=1) == 2
    client.script_flush()
    assert store.load("acct-1") == Stored(EXAMPLE, 2)


def test_a_lost_script_that_cannot_be_loaded_again_raises_and_leaves_the_pool_whole(
    store: RedisStateStore, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.commit_many([Commit("warm", EXAMPLE, 0)])
    client.script_flush()  # the scripts sent next come back NOSCRIPT

    def busy(script: Any) -> str:
        raise redis.ResponseError("BUSY Redis is busy running a script")

    monkeypatch.setattr(client, "script_load", busy)
    with pytest.raises(redis.ResponseError, match="BUSY"):
        store.commit_many([Commit("acct-1", EXAMPLE, 0)])
    monkeypatch.undo()

    # Private, but the point: no connection is left checked out, none with answers.
    assert not client.connection_pool._in_use_connections
    assert store.load("acct-1") is None  # a NOSCRIPT call did not run
    assert store.commit("acct-1", EXAMPLE, expected_version=0) == 1


def test_a_pooled_connection_the_server_dropped_is_opened_again(
    raw: redis.Redis, prefix: str
) -> None:
    name = f"mt5l-{uuid.uuid4().hex[:12]}"
    client = redis.Redis(host=HOST, port=PORT, client_name=name)
    store = RedisStateStore(client, prefix=prefix)
    assert store.commit("acct-1", EXAMPLE, expected_version=0) == 1  # a pooled connection

    def drop() -> None:
        for entry in raw.client_list():
            if entry["name"] == name:
                raw.client_kill_filter(_id=entry["id"])

    drop()
    assert store.commit_many([Commit("acct-1", EXAMPLE, 1)]) == [2]
    drop()
    assert store.load_many(["acct-1"]) == {"acct-1": Stored(EXAMPLE, 2)}
    drop()
    assert store.commit("acct-1", EXAMPLE, expected_version=2) == 3
    client.close()


@pytest.mark.parametrize("pool", ["one connection", "blocking pool", "small pool"])
def test_any_kind_of_client_pool_does_the_batches(raw: redis.Redis, prefix: str, pool: str) -> None:
    if pool == "one connection":
        client = redis.Redis(host=HOST, port=PORT, single_connection_client=True)
    elif pool == "blocking pool":
        blocking = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            host=HOST, port=PORT, max_connections=1
        )
        client = redis.Redis(connection_pool=blocking)
    else:
        client = redis.Redis(host=HOST, port=PORT, max_connections=2)
    store = RedisStateStore(client, prefix=prefix)
    ids = [f"acct-{n}" for n in range(1100)]

    assert store.commit_many([Commit(i, EXAMPLE, 0) for i in ids]) == [1] * 1100
    assert len(store.load_many(ids)) == 1100
    assert store.outbox(ids) == {}
    client.close()


# --- Redis unreachable --------------------------------------------------------------


def test_an_unreachable_redis_is_store_unavailable_everywhere() -> None:
    store = RedisStateStore(dead_client(), prefix="never-written")
    calls: list[Callable[[], object]] = [
        lambda: store.load("acct-1"),
        lambda: store.load_many(["acct-1"]),
        lambda: store.versions(["acct-1"]),
        lambda: list(store.ids()),
        lambda: store.commit("acct-1", EXAMPLE, expected_version=0),
        lambda: store.commit("acct-1", None, expected_version=1),
        lambda: store.commit_many([Commit("acct-1", EXAMPLE, 0)]),
        lambda: store.delete("acct-1"),
        lambda: store.acquire_lock("acct-1", 1.0),
        lambda: store.release_lock(LockToken("acct-1", "t")),
        lambda: store.outbox(["acct-1"]),
        lambda: store.acknowledge({"acct-1": ["n1"]}),
        lambda: store.set_aside("acct-1", "n1", "refused"),
        lambda: store.set_aside_notifications(["acct-1"]),
        lambda: store.set_aside_notifications(),
        lambda: store.redeliver("acct-1"),
        lambda: store.acquire_slot("Broker-Demo", 2, 30.0),
        lambda: store.release_slot("Broker-Demo", "t"),
        lambda: store.report_failure("Broker-Demo", "acct-1", 0.0, 60.0),
        lambda: store.mark_down("Broker-Demo"),
        lambda: store.mark_up("Broker-Demo"),
        lambda: store.is_down("Broker-Demo"),
        lambda: store.probe("Broker-Demo", 0.0, 30.0),
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


def test_a_login_s_round_trips_are_the_lock_the_server_s_flag_and_its_result(
    client: redis.Redis, prefix: str
) -> None:
    from mt5lifecycle import Credentials, Lifecycle
    from mt5lifecycle.testing import memory_backends

    store = RedisStateStore(client, prefix=prefix)
    backends = attrs.evolve(memory_backends(), state=store)
    backends.credentials.put("acct-1", Credentials(1, "Srv", "pw"))
    backends.credentials.put("warm-1", Credentials(2, "Srv", "pw"))
    warm = Lifecycle("warm-1", backends)  # every script loaded: no SCRIPT LOAD counted
    warm.start()
    warm.run_due()
    lifecycle = Lifecycle("acct-1", backends)
    lifecycle.start()
    scripts = {
        store._acquire.sha: "take the lock",
        store._up.sha: "the server is up",
        store._commit.sha: "the result, the lock given back",
    }
    sent: list[str] = []
    original: Any = client.execute_command

    def counting(*args: object, **options: object) -> object:
        name = str(args[0])
        sent.append(scripts.get(str(args[1]), name) if name == "EVALSHA" else name)
        return original(*args, **options)

    client.execute_command = counting  # type: ignore[method-assign]
    try:
        lifecycle.run_due()
    finally:
        del client.execute_command
    assert lifecycle.state is State.CONNECTED
    # The store is also the fleet's shared outage record (SPEC section 15): a login
    # asks whether its server is down first and says the server answered after.
    assert sent == [
        "take the lock",
        "EXISTS",
        "the server is up",
        "the result, the lock given back",
    ]
