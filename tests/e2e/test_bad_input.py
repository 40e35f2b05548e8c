"""Bad input through every public entry point, on the real backends, with hypothesis.

Each bad value gets a typed error naming what was wrong (or, for a terminal's
answer, a safe classified outcome), and changes nothing: the Redis keys under the
prefix, the PostgreSQL rows and the archive read the same before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from mt5lifecycle import (
    CorruptState,
    Credentials,
    Fleet,
    InvalidInstanceId,
    Lifecycle,
    LifecycleError,
    Policy,
    State,
)
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.mt5 import MT5Broker
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.adapters.prometheus import PrometheusMetrics
from mt5lifecycle.adapters.redis import KEY_SUFFIXES, RedisStateStore
from mt5lifecycle.core.records import LOGIN_REASONS
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5

from .conftest import CREDS, LOGIN, PASSWORD, SERVER, World

SHARED = settings(
    max_examples=60,
    deadline=None,
    # The fixtures are the real servers, shared by every example on purpose: the
    # point is that no example leaves a trace in them.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

bad_ids = st.one_of(
    st.text(max_size=200).filter(lambda s: _VALID_ID.fullmatch(s) is None),
    st.sampled_from(["", " ", "a b", "-a", ".a", "a/b", "a:b", "a*", "{a}", "a\n", "é", "a" * 129]),
    st.integers(),
    st.none(),
    st.binary(max_size=10),
    st.lists(st.text(max_size=3), max_size=2),
)


def everything(world: World) -> tuple[list[str], int, int]:
    """What the backends hold: Redis keys, credential rows, archived transitions."""
    with psycopg.connect(world.conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('mt5lifecycle.credentials')").fetchone()
        rows = 0
        if exists is not None and exists[0] is not None:
            found = conn.execute("SELECT count(*) FROM mt5lifecycle.credentials").fetchone()
            rows = int(found[0]) if found is not None else 0
    world.archive.is_confirmed("probe")  # opens (and creates) the archive file
    transitions = world.sql("SELECT count(*) FROM transitions")[0][0]
    return world.keys(), rows, int(transitions)


# --- instance ids -------------------------------------------------------------------------


@SHARED
@given(bad=bad_ids)
def test_bad_instance_ids_are_refused_before_any_io(world: World, bad: Any) -> None:
    before = everything(world)
    calls: list[tuple[str, Any]] = [
        ("Lifecycle", lambda: Lifecycle(bad, world.backends)),
        ("Fleet.add", lambda: Fleet(world.backends).add(bad)),
        ("state.load", lambda: world.state.load(bad)),
        ("state.delete", lambda: world.state.delete(bad)),
        ("state.acquire_lock", lambda: world.state.acquire_lock(bad, 1.0)),
        (
            "state.commit",
            lambda: world.state.commit(bad, Snapshot(status=State.CONNECTING), expected_version=0),
        ),
        ("credentials.put", lambda: world.credentials.put(bad, CREDS)),
        ("credentials.get", lambda: world.credentials.get(bad)),
        ("credentials.delete", lambda: world.credentials.delete(bad)),
        ("archive.is_confirmed", lambda: world.archive.is_confirmed(bad)),
        ("metrics.transition", lambda: world.metrics.transition(bad, None, State.FAILED, None)),
        ("broker.login", lambda: world.broker.login(bad, CREDS, logged_in_before=False)),
        ("broker.status", lambda: world.broker.status(bad)),
    ]
    for name, call in calls:
        with pytest.raises(InvalidInstanceId):
            call()
        assert name
    assert everything(world) == before
    assert world.terminals == {}, "no terminal was asked for"


# --- policies ----------------------------------------------------------------------------

_COUNTS = ["max_login_attempts", "max_network_retries", "max_restarts", "max_requote_retries"]
_DELAYS = ["network_retry_delay", "lock_ttl", "transient_retry_delay", "connection_check_interval"]
_SCHEDULES = ["login_backoff", "restart_backoff"]
not_a_number = st.one_of(st.none(), st.text(max_size=5), st.booleans(), st.lists(st.integers()))
bad_policy = st.one_of(
    st.tuples(st.sampled_from(_COUNTS), st.one_of(st.integers(max_value=-1), not_a_number)),
    st.tuples(
        st.sampled_from(_DELAYS),
        st.one_of(
            st.floats(max_value=-1e-9),
            st.sampled_from([math.nan, math.inf, -math.inf]),
            st.none(),
            st.text(max_size=5),
            st.booleans(),
        ),
    ),
    st.tuples(
        st.sampled_from(_SCHEDULES),
        st.one_of(
            st.just(()),
            st.lists(st.floats(max_value=-1e-9), min_size=1, max_size=3),
            st.lists(st.sampled_from([math.nan, math.inf]), min_size=1, max_size=3),
            st.text(min_size=1, max_size=5),
            st.booleans(),
            st.none(),
        ),
    ),
    st.tuples(
        st.just("backoff_jitter"),
        st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), st.just(math.nan)),
    ),
)


@SHARED
@given(bad=bad_policy)
def test_bad_policies_name_the_field(world: World, bad: tuple[str, Any]) -> None:
    field, value = bad
    before = everything(world)
    with pytest.raises(ValueError, match=field):
        Policy(**{field: value})
    with pytest.raises(TypeError):
        Lifecycle("acc-1", world.backends, {field: value})  # type: ignore[arg-type]
    assert everything(world) == before


# --- credentials -------------------------------------------------------------------------

bad_credentials = st.one_of(
    st.fixed_dictionaries(
        {
            "login": st.one_of(
                st.integers(max_value=0),
                st.booleans(),
                st.floats(),
                st.none(),
                st.text(max_size=6).filter(lambda s: not (s.isascii() and s.isdigit())),
                st.sampled_from(["١٢٣", "0", "-5", " 5", "5 "]),
            ),
            "server": st.just(SERVER),
            "password": st.just(PASSWORD),
        }
    ),
    st.fixed_dictionaries(
        {
            "login": st.just(LOGIN),
            "server": st.one_of(st.sampled_from(["", "   ", "a\x00b"]), st.none(), st.integers()),
            "password": st.just(PASSWORD),
        }
    ),
    st.fixed_dictionaries(
        {
            "login": st.just(LOGIN),
            "server": st.just(SERVER),
            "password": st.one_of(
                st.just(""),
                st.just(PASSWORD + "\x00"),
                st.none(),
                st.binary(min_size=1, max_size=8),
                st.integers(),
            ),
        }
    ),
)


@SHARED
@given(bad=bad_credentials)
def test_bad_credentials_are_refused(world: World, bad: dict[str, Any]) -> None:
    before = everything(world)
    with pytest.raises(ValueError, match=r"Credentials\.(login|server|password)") as caught:
        Credentials(**bad)
    assert PASSWORD not in str(caught.value)
    with pytest.raises(TypeError):
        world.credentials.put("acc-1", bad)  # type: ignore[arg-type]
    assert everything(world) == before


def test_unstorable_credentials_are_refused_by_postgres(world: World) -> None:
    before = everything(world)
    for bad in (
        Credentials(LOGIN, SERVER, "lone-\udc80-surrogate"),
        Credentials(LOGIN, "lone-\udc80", PASSWORD),
        Credentials(2**63, SERVER, PASSWORD),
    ):
        with pytest.raises(ValueError, match=r"login|server|password|Unicode") as caught:
            world.credentials.put("acc-1", bad)
        assert PASSWORD not in str(caught.value)
    assert everything(world) == before


# --- corrupt Redis values ---------------------------------------------------------------

ID = "corrupt-1"
_FIELD_KEYS = [s for s in KEY_SUFFIXES if s not in ("last_commit", "login_lock")]
garbage = st.one_of(
    st.sampled_from(["garbage", "", " ", "CONNECTED ", "connected", "-1", "1.5", "nan", "None"]),
    st.binary(min_size=1, max_size=8).filter(lambda b: not b.isascii()),
    st.text(min_size=1, max_size=12),
)


def _corrupt(world: World, action: str) -> CorruptState:
    """Run one entry point on a fresh Lifecycle (a new process); return its CorruptState."""
    lc = Lifecycle(ID, world.backends)
    try:
        if action == "state":
            _ = lc.state
        else:
            getattr(lc, action)()
            world.clock.advance(60)
            lc.run_due()  # the lock is read when the login is due
    except CorruptState as exc:
        return exc
    raise AssertionError(f"{action} did not raise CorruptState")


@pytest.fixture
def stored(world: World) -> World:
    lc = world.lifecycle(ID)
    lc.start()
    world.play(lc, 1)
    world.terminal(ID).drop_connection()
    lc.connection_lost()  # CONNECTING: every library key is present, a due time too
    return world


@SHARED
@given(field=st.sampled_from(_FIELD_KEYS), value=garbage)
def test_a_corrupt_value_is_named_never_guessed(stored: World, field: str, value: Any) -> None:
    world = stored
    key = f"{world.prefix}:{ID}:{field}"
    client = world.client
    original = client.get(key)
    before = {k: client.get(k) for k in world.keys()}  # noqa: SIM118
    client.set(key, value)
    try:
        try:
            _ = Lifecycle(ID, world.backends).state
        except CorruptState:
            pass
        else:
            return  # a legal value of that key (e.g. "1.5" for next_due): no corruption
        for action in ("state", "start", "disable", "reset"):
            caught = _corrupt(world, action)
            assert caught.key == key
            assert key in str(caught)
        after = {k: client.get(k) for k in world.keys()}  # noqa: SIM118
        assert after == {**before, key: value if isinstance(value, bytes) else value.encode()}
    finally:
        if original is None:
            client.delete(key)
        else:
            client.set(key, original)
    assert {k: client.get(k) for k in world.keys()}  # noqa: SIM118 == before


@pytest.mark.parametrize("field", _FIELD_KEYS)
def test_bytes_that_are_not_text_are_corrupt_in_every_key(stored: World, field: str) -> None:
    world = stored
    key = f"{world.prefix}:{ID}:{field}"
    before = {k: world.client.get(k) for k in world.keys()}  # noqa: SIM118
    world.client.set(key, b"\xff\xfe")
    for action in ("state", "start", "disable", "reset"):
        assert _corrupt(world, action).key == key
    assert {k: world.client.get(k) for k in world.keys()} == {**before, key: b"\xff\xfe"}  # noqa: SIM118


_LISTS = ("notifications", "records", "set_aside")
"""The outbox's keys: lists, where the others are strings."""


@pytest.mark.parametrize("field", [*_FIELD_KEYS, "login_lock"])
def test_a_key_of_the_wrong_redis_type_is_named(stored: World, field: str) -> None:
    world = stored
    key = f"{world.prefix}:{ID}:{field}"
    client = world.client
    client.delete(key)
    if field in _LISTS:
        client.set(key, "x")
    else:
        client.rpush(key, "x")
    assert _corrupt(world, "start").key == key
    assert client.type(key) == (b"string" if field in _LISTS else b"list"), "left as found"


def test_an_infinite_due_time_is_corrupt(stored: World) -> None:
    stored.client.set(f"{stored.prefix}:{ID}:next_due", "1e999")
    with pytest.raises(CorruptState):
        _ = Lifecycle(ID, stored.backends).state


# --- terminal answers of the wrong shape -----------------------------------------------

_FUNCTIONS = [
    "initialize",
    "login",
    "last_error",
    "terminal_info",
    "account_info",
    "positions_get",
    "orders_get",
    "symbol_info",
    "symbol_info_tick",
    "order_send",
    "shutdown",
]


class _Raises:
    def __init__(self, error: BaseException) -> None:
        self.error = error


wrong_answers: st.SearchStrategy[object] = st.one_of(
    st.sampled_from([None, "", "yes", 0, -1, 3.5, (), (1,), ("a", "b", "c"), [None], {}]),
    st.sampled_from(
        [
            _Raises(RuntimeError("boom")),
            _Raises(TimeoutError("result expired")),
            _Raises(ConnectionError("EOF")),
            # A transport that echoes its arguments: only login calls are given the
            # password, so only they can echo it (see Hostile).
            _Raises(ValueError(PASSWORD)),
        ]
    ),
)


class Hostile(FakeMetaTrader5):
    """A terminal one of whose functions answers ``answer`` instead of its own shape."""

    def __init__(self, function: str, answer: Any, **kwargs: Any) -> None:
        self._function = function
        self._answer = answer
        super().__init__(**kwargs)

    def __getattribute__(self, name: str) -> Any:
        if name != "_function" and name == object.__getattribute__(self, "_function"):
            answer = object.__getattribute__(self, "_answer")

            def hostile(*args: Any, **kwargs: Any) -> Any:
                if isinstance(answer, _Raises):
                    if PASSWORD in str(answer.error) and name not in ("initialize", "login"):
                        raise RuntimeError("an echo of arguments that hold no password")
                    raise answer.error
                return answer

            return hostile
        return object.__getattribute__(self, name)


@SHARED
@given(function=st.sampled_from(_FUNCTIONS), answer=wrong_answers, n=st.integers(0, 10**6))
def test_wrong_terminal_answers_end_in_a_safe_outcome(
    world: World, function: str, answer: Any, n: int
) -> None:
    iid = f"hostile-{n}-{len(world.terminals)}"
    mt5 = Hostile(function, answer, data_path=world.directory / iid, clock=world.clock)
    mt5.add_account(LOGIN, PASSWORD, SERVER)
    mt5.open_position(7001, "EURUSD", 1.0)
    mt5.pending_order(8001, "EURUSD")
    world.terminals[iid] = mt5
    lc = world.lifecycle(iid)
    lc.start()
    for _ in range(3):
        with contextlib.suppress(LifecycleError):
            world.play(lc, 120)
    snap = lc.snapshot()
    assert snap is not None
    assert world.state.load(iid) is not None, "the stored state still reads"
    assert snap.login_attempt_count <= 5
    assert snap.login_failure_reason is None or snap.login_failure_reason in LOGIN_REASONS
    if lc.state is State.INACTIVE:
        return
    if lc.state is not State.ACCOUNT_CLOSED:
        lc.account_closed()
    assert lc.snapshot() is not None
    assert world.redis(iid)["status"] == "ACCOUNT_CLOSED"
    outcomes = world.sql(
        "SELECT ticket, outcome FROM trade_outcomes WHERE instance_id = ? ORDER BY ticket", iid
    )
    assert {t for t, _ in outcomes} <= {7001, 8001}
    assert len(outcomes) == len({t for t, _ in outcomes}), "one outcome each at most"
    lc.confirm_closure()
    assert world.redis(iid) == {}


# --- constructors and operator calls -----------------------------------------------------


def test_bad_constructor_arguments_are_typed_errors(world: World, pg_key: str) -> None:
    before = everything(world)
    with pytest.raises(TypeError, match="Backends"):
        Lifecycle("acc-1", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Backends"):
        Fleet(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Policy"):
        Fleet(world.backends, "fast")  # type: ignore[arg-type]
    for prefix in ("", "a{b}", "a b"):
        with pytest.raises(ValueError, match="prefix"):
            RedisStateStore(world.client, prefix=prefix)
    with pytest.raises(ValueError, match="batch_size"):
        DuckDBArchive(world.directory / "other.duckdb", batch_size=0, background=False)
    with pytest.raises(TypeError, match="per_instance"):
        PrometheusMetrics(CollectorRegistry(), per_instance="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="login_timeout_ms"):
        MT5Broker({}, login_timeout_ms=0)
    secret_key = pg_key[:-4] + "!!!!"
    with pytest.raises(ValueError, match=r"keys\[0\]") as caught:
        PostgresCredentialStore(world.conninfo, keys=[secret_key])
    assert secret_key not in str(caught.value), "a key is never echoed"
    assert everything(world) == before


def test_a_bad_wait_is_refused(world: World) -> None:
    fleet = Fleet(world.backends)
    fleet.add("acc-1")  # no credentials: FAILED at once
    for timeout in (-1, math.nan, "soon", True):
        with pytest.raises(ValueError, match="timeout"):
            asyncio.run(fleet.wait_connected("acc-1", timeout))  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="not in this fleet"):
        fleet["nobody"]
