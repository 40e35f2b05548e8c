"""A Lifecycle whose credentials live in the real PostgreSQL (127.0.0.1:5432).

The in-memory backends of the testing kit, with the credential store replaced by
``PostgresCredentialStore``: the lifecycle's view of SPEC section 6 end to end. The
module creates its own database and drops it at the end.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import attrs
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from mt5lifecycle import (
    AlertKind,
    Backends,
    Credentials,
    Lifecycle,
    Policy,
    Reason,
    State,
    StoreUnavailable,
)
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PASSWORD = f"E2E-Secret-{uuid.uuid4().hex}"
CREDS = Credentials(login=51234567, server="MetaQuotes-Demo", password=PASSWORD)
ID = "acct-1"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"mt5l_test_{uuid.uuid4().hex}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def conninfo(database: str) -> str:
    return f"host=127.0.0.1 port=5432 user=postgres dbname={database}"


@pytest.fixture
def key() -> str:
    return PostgresCredentialStore.generate_key()


@pytest.fixture
def pool(conninfo: str) -> Iterator[ConnectionPool[psycopg.Connection[tuple[object, ...]]]]:
    # One connection, so a test can take it away to make PostgreSQL unavailable to
    # the store. Real time: the store waits `timeout` (0.2 s) before giving up.
    with ConnectionPool(
        conninfo, min_size=1, max_size=1, timeout=0.2, kwargs={"autocommit": True}, open=True
    ) as p:
        yield p


@pytest.fixture
def store(
    pool: ConnectionPool[psycopg.Connection[tuple[object, ...]]], key: str
) -> Iterator[PostgresCredentialStore]:
    with PostgresCredentialStore(pool, keys=key, schema=f"s_{uuid.uuid4().hex[:16]}") as s:
        s.migrate()
        yield s


@pytest.fixture
def backends(store: PostgresCredentialStore) -> Backends:
    return attrs.evolve(memory_backends(), credentials=store)


def _broker(backends: Backends) -> FakeBroker:
    assert isinstance(backends.broker, FakeBroker)
    return backends.broker


def _state(lc: Lifecycle) -> State | None:
    # A call, so that mypy does not narrow the property across the events in between.
    return lc.state


def _clock(backends: Backends) -> FakeClock:
    assert isinstance(backends.clock, FakeClock)
    return backends.clock


def _notifier(backends: Backends) -> RecordingNotifier:
    assert isinstance(backends.notifier, RecordingNotifier)
    return backends.notifier


def test_a_start_with_stored_credentials_connects(
    backends: Backends, store: PostgresCredentialStore
) -> None:
    store.put(ID, CREDS)
    lc = Lifecycle(ID, backends)
    lc.start()
    assert _state(lc) is State.CONNECTING
    lc.run_due()
    assert _state(lc) is State.CONNECTED
    assert len(_broker(backends).login_times(ID)) == 1


def test_a_start_without_stored_credentials_fails_credentials_missing(backends: Backends) -> None:
    lc = Lifecycle(ID, backends)
    lc.start()
    snap = lc.snapshot()
    assert snap is not None
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.CREDENTIALS_MISSING
    assert _broker(backends).login_times(ID) == []


def test_credentials_no_key_opens_are_never_used_to_log_in(
    backends: Backends, conninfo: str, store: PostgresCredentialStore
) -> None:
    with PostgresCredentialStore(
        conninfo, keys=PostgresCredentialStore.generate_key(), schema=store.schema
    ) as other:
        other.put(ID, CREDS)
    lc = Lifecycle(ID, backends)
    lc.start()
    snap = lc.snapshot()
    assert snap is not None
    assert snap.status is State.FAILED
    assert snap.last_failure_reason is Reason.CREDENTIALS_MISSING
    assert _broker(backends).login_times(ID) == []


def test_postgresql_unavailable_during_a_login_is_transient(
    backends: Backends,
    store: PostgresCredentialStore,
    pool: ConnectionPool[psycopg.Connection[tuple[object, ...]]],
) -> None:
    store.put(ID, CREDS)
    lc = Lifecycle(ID, backends)
    lc.start()
    assert _state(lc) is State.CONNECTING

    held = pool.getconn()  # the store's only connection: PostgreSQL is out of reach
    try:
        with pytest.raises(StoreUnavailable) as info:
            lc.run_due()
        assert info.value.backend == "postgresql"
        assert PASSWORD not in str(info.value)
    finally:
        pool.putconn(held)

    snap = lc.snapshot()
    assert snap is not None
    assert snap.status is State.CONNECTING
    assert snap.login_attempt_count == 0
    assert snap.login_failure_reason is None
    assert _broker(backends).login_times(ID) == []
    assert [n.kind for n in _notifier(backends).notifications] == []

    due = lc.next_due
    assert due is not None
    _clock(backends).advance(due - backends.clock.now())
    lc.run_due()
    assert _state(lc) is State.CONNECTED
    assert len(_broker(backends).login_times(ID)) == 1


def test_postgresql_unavailable_many_times_never_exhausts_the_attempts(
    backends: Backends,
    store: PostgresCredentialStore,
    pool: ConnectionPool[psycopg.Connection[tuple[object, ...]]],
) -> None:
    # Real time: each try waits the pool timeout (0.2 s), so keep the count small.
    policy = Policy(max_login_attempts=2)
    store.put(ID, CREDS)
    lc = Lifecycle(ID, backends, policy)
    lc.start()
    held = pool.getconn()
    try:
        for _ in range(policy.max_login_attempts + 1):
            with pytest.raises(StoreUnavailable):
                lc.run_due()
            due = lc.next_due
            assert due is not None
            _clock(backends).advance(due - backends.clock.now())
    finally:
        pool.putconn(held)
    snap = lc.snapshot()
    assert snap is not None
    assert snap.status is State.CONNECTING
    assert snap.login_attempt_count == 0
    lc.run_due()
    assert _state(lc) is State.CONNECTED


def test_confirm_closure_deletes_the_row(
    backends: Backends, store: PostgresCredentialStore, conninfo: str
) -> None:
    store.put(ID, CREDS)
    store.put("acct-2", CREDS)
    lc = Lifecycle(ID, backends)
    lc.start()
    lc.run_due()
    assert _state(lc) is State.CONNECTED
    _broker(backends).close_account(ID)
    lc.account_closed()
    lc.run_due()
    assert _state(lc) is State.ACCOUNT_CLOSED
    assert store.get(ID) == CREDS  # a closure alone never deletes credentials

    lc.confirm_closure()
    assert _state(lc) is State.INACTIVE
    assert store.get(ID) is None
    assert store.get("acct-2") == CREDS
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            sql.SQL("SELECT instance_id FROM {}").format(
                sql.Identifier(store.schema, "credentials")
            )
        ).fetchall()
    assert rows == [("acct-2",)]
    assert AlertKind.CREDENTIALS_DELETED in [n.kind for n in _notifier(backends).notifications]


def test_the_password_never_reaches_the_logs_or_notifications(
    caplog: pytest.LogCaptureFixture,
    backends: Backends,
    store: PostgresCredentialStore,
    pool: ConnectionPool[psycopg.Connection[tuple[object, ...]]],
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("psycopg", "psycopg.pool", "mt5lifecycle"):
        caplog.set_level(logging.DEBUG, logger=name)
    store.put(ID, CREDS)
    broker = _broker(backends)
    broker.fail_logins(ID, Reason.AUTH_FAILED, times=2)
    lc = Lifecycle(ID, backends)
    lc.start()
    held = pool.getconn()
    try:
        with pytest.raises(StoreUnavailable) as info:
            lc.run_due()
    finally:
        pool.putconn(held)
    for _ in range(4):
        due = lc.next_due
        assert due is not None
        _clock(backends).advance(due - backends.clock.now())
        lc.run_due()
    assert _state(lc) is State.CONNECTED
    notes = _notifier(backends).notifications
    assert notes
    text = "\n".join(
        [
            caplog.text,
            *(repr(r.args) for r in caplog.records),
            *(f"{n.kind} {n.reason} {n.message}" for n in notes),
            repr(lc.snapshot()),
            repr(lc),
            str(info.value),
        ]
    )
    assert PASSWORD not in text
