"""Per broker server, on the real Redis: login slots and outages (SPEC section 15).

Every process sharing the store sees the same slots and the same outage record, so
the guarantees are about separate clients racing: each racer here is a thread with
a client of its own, started together at a barrier.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from mt5lifecycle.adapters.redis import RedisStateStore
from tests.adapters.test_redis_store import HOST, PORT, client, dead_client, prefix, raw, store

__all__ = ["client", "prefix", "raw", "store"]

SERVER = "Broker-Demo"
T = TypeVar("T")
RACERS = 8


@pytest.fixture
def stores(prefix: str) -> Iterator[list[RedisStateStore]]:
    """One store per racer, each on a client (and connections) of its own."""
    clients = [redis.Redis(host=HOST, port=PORT) for _ in range(RACERS)]
    yield [RedisStateStore(c, prefix=prefix) for c in clients]
    for c in clients:
        c.close()


def race(stores: list[RedisStateStore], task: Callable[[RedisStateStore], T]) -> list[T]:
    """Run ``task`` once per store, all released at the same instant; its answers."""
    barrier = threading.Barrier(len(stores))
    answers: list[Any] = [None] * len(stores)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            answers[n] = task(stores[n])
        except BaseException as exc:  # reported by the caller, after the join
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return answers


def wait_out(raw: redis.Redis, key: str) -> None:
    """Real time, unavoidably: the expiry is Redis's own clock, which no fake clock
    reaches. Sleep just past the remaining TTL that Redis reports."""
    remaining = raw.pttl(key)
    assert isinstance(remaining, int)
    time.sleep(max(remaining, 0) / 1000 + 0.02)


# --- login slots ----------------------------------------------------------------------


def test_slots_are_counted_up_to_the_limit_and_given_back(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    tokens = [store.acquire_slot(SERVER, 3, 30.0) for _ in range(4)]

    assert tokens[3] is None
    held = [t for t in tokens if t is not None]
    assert len(set(held)) == 3
    key = f"{prefix}:server:{{{SERVER}}}:slots"
    assert raw.zcard(key) == 3
    assert 29_000 < raw.pttl(key) <= 30_000
    # Another server has slots of its own.
    assert store.acquire_slot("Other-Server", 1, 30.0) is not None

    store.release_slot(SERVER, held[0])
    store.release_slot(SERVER, held[0])  # twice: a no-op
    store.release_slot(SERVER, "never-taken")
    store.release_slot("Other-Server", held[1])  # not that server's: nothing freed there

    assert store.acquire_slot(SERVER, 3, 30.0) is not None
    assert store.acquire_slot(SERVER, 3, 30.0) is None
    # A larger limit (another process's policy) admits more; a smaller one none.
    assert store.acquire_slot(SERVER, 4, 30.0) is not None
    assert store.acquire_slot(SERVER, 2, 30.0) is None


def test_slots_never_exceed_the_limit_under_concurrent_acquirers(
    stores: list[RedisStateStore], raw: redis.Redis, prefix: str
) -> None:
    limit, guard = 3, threading.Lock()
    holding, peak, refused, taken = [0], [0], [0], [0]

    def churn(store: RedisStateStore) -> None:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            token = store.acquire_slot(SERVER, limit, 30.0)
            if token is None:
                with guard:
                    refused[0] += 1
                continue
            with guard:
                holding[0] += 1
                taken[0] += 1
                peak[0] = max(peak[0], holding[0])
            with guard:
                holding[0] -= 1
            store.release_slot(SERVER, token)

    race(stores, churn)

    assert peak[0] <= limit
    assert taken[0] > limit and refused[0] > 0  # the racers did collide
    assert raw.zcard(f"{prefix}:server:{{{SERVER}}}:slots") == 0


def test_exactly_the_limit_is_admitted_when_all_ask_at_once(
    stores: list[RedisStateStore],
) -> None:
    for _ in range(10):
        tokens = race(stores, lambda s: s.acquire_slot(SERVER, 3, 30.0))
        held = [t for t in tokens if t is not None]
        assert len(held) == 3
        for token in held:
            stores[0].release_slot(SERVER, token)


def test_a_slot_expires_after_its_ttl_in_redis_s_clock(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    # A holder that died never gives its slot back: Redis's clock frees it.
    assert store.acquire_slot(SERVER, 1, 0.05) is not None
    assert store.acquire_slot(SERVER, 1, 30.0) is None

    wait_out(raw, f"{prefix}:server:{{{SERVER}}}:slots")

    assert store.acquire_slot(SERVER, 1, 30.0) is not None


def test_a_short_slot_does_not_cut_a_longer_one_short(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    key = f"{prefix}:server:{{{SERVER}}}:slots"
    assert store.acquire_slot(SERVER, 2, 30.0) is not None
    short = store.acquire_slot(SERVER, 2, 0.05)
    assert short is not None
    assert raw.pttl(key) > 29_000

    # Real time, unavoidably, just past the short one's expiry: its score, in
    # milliseconds of Redis's TIME. The long one holds on.
    seconds, micros = raw.time()
    score = raw.zscore(key, short)
    assert score is not None
    time.sleep(max(score - (seconds * 1000 + micros // 1000), 0) / 1000 + 0.02)

    assert store.acquire_slot(SERVER, 2, 30.0) is not None  # the short one's place
    assert store.acquire_slot(SERVER, 2, 30.0) is None
    assert raw.zcard(key) == 2


@pytest.mark.parametrize(
    ("limit", "ttl", "error"),
    [
        (0, 30.0, ValueError),
        (-1, 30.0, ValueError),
        (True, 30.0, ValueError),
        (1.5, 30.0, ValueError),
        ("2", 30.0, ValueError),
        (2, 0, ValueError),
        (2, float("nan"), ValueError),
        (2, "30", TypeError),
    ],
)
def test_a_bad_limit_or_ttl_is_refused_before_any_io(limit: Any, ttl: Any, error: type) -> None:
    store = RedisStateStore(dead_client())
    with pytest.raises(error):
        store.acquire_slot(SERVER, limit, ttl)


# --- outages --------------------------------------------------------------------------


def test_report_failure_counts_distinct_accounts_within_the_window(
    store: RedisStateStore, raw: redis.Redis, prefix: str
) -> None:
    t0 = 1767225600.0

    assert store.report_failure(SERVER, "acct-1", t0, 60.0) == 1
    assert store.report_failure(SERVER, "acct-1", t0 + 1, 60.0) == 1  # the same account
    assert store.report_failure(SERVER, "acct-2", t0 + 2, 60.0) == 2
    assert store.report_failure("Other-Server", "acct-3", t0 + 2, 60.0) == 1
    assert store.report_failure(SERVER, "acct-3", t0 + 30, 60.0) == 3
    # acct-1 last failed at t0 + 1 and acct-2 at t0 + 2: at t0 + 61.5 only acct-1
    # is out of the window; acct-1 failing again counts anew.
    assert store.report_failure(SERVER, "acct-4", t0 + 61.5, 60.0) == 3
    assert store.report_failure(SERVER, "acct-1", t0 + 62, 60.0) == 3
    assert store.report_failure(SERVER, "acct-5", t0 + 200, 60.0) == 1
    # The record forgets itself once nobody failed for a while.
    assert 0 < raw.pttl(f"{prefix}:server:{{{SERVER}}}:failures") <= 120_000


def test_report_failure_from_many_processes_counts_each_account_once(
    stores: list[RedisStateStore],
) -> None:
    t0 = 1767225600.0
    counts = race(
        stores,
        lambda s: [s.report_failure(SERVER, f"acct-{n}", t0 + n, 60.0) for n in range(20)],
    )
    assert stores[0].report_failure(SERVER, "acct-0", t0 + 21, 60.0) == 20
    assert all(c == sorted(c) for c in counts)  # each racer sees the count only grow


@pytest.mark.parametrize(
    ("now", "window", "error"),
    [(0.0, 0, ValueError), (0.0, -1.0, ValueError), (0.0, "60", TypeError)],
)
def test_a_bad_window_is_refused_before_any_io(now: float, window: Any, error: type) -> None:
    store = RedisStateStore(dead_client())
    with pytest.raises(error):
        store.report_failure(SERVER, "acct-1", now, window)


def test_exactly_one_racer_takes_a_server_down_and_one_brings_it_back(
    stores: list[RedisStateStore],
) -> None:
    for _ in range(15):
        downs = race(stores, lambda s: s.mark_down(SERVER))
        assert downs.count(True) == 1
        assert all(s.is_down(SERVER) for s in stores)
        ups = race(stores, lambda s: s.mark_up(SERVER))
        assert ups.count(True) == 1
        assert not any(s.is_down(SERVER) for s in stores)


def test_marking_up_forgets_the_failures_and_the_probe(store: RedisStateStore) -> None:
    t0 = 1767225600.0
    for n in range(3):
        store.report_failure(SERVER, f"acct-{n}", t0, 60.0)
    # Not down yet: marking it up changes nothing (nor forgets the failures).
    assert store.mark_up(SERVER) is False
    assert store.report_failure(SERVER, "acct-3", t0, 60.0) == 4
    assert store.mark_down(SERVER) is True
    assert store.mark_down(SERVER) is False
    assert store.is_down(SERVER) is True
    assert store.is_down("Other-Server") is False
    assert store.probe(SERVER, t0, 30.0) is True

    assert store.mark_up(SERVER) is True

    assert store.is_down(SERVER) is False
    assert store.report_failure(SERVER, "acct-0", t0 + 1, 60.0) == 1
    assert store.probe(SERVER, t0 + 1, 30.0) is True  # a new outage probes at once


def test_probe_admits_one_caller_per_ttl_of_the_callers_clock(
    stores: list[RedisStateStore],
) -> None:
    # The callers' clock, not Redis's: a fake clock's readings far in the past work.
    t0 = 1000.0
    store = stores[0]
    store.mark_down(SERVER)

    admitted = race(stores, lambda s: s.probe(SERVER, t0, 30.0))

    assert admitted.count(True) == 1
    assert store.probe(SERVER, t0 + 29.9, 30.0) is False
    assert store.probe(SERVER, t0 - 5, 30.0) is False  # a caller whose clock is behind
    assert race(stores, lambda s: s.probe(SERVER, t0 + 30, 30.0)).count(True) == 1
    assert store.probe(SERVER, t0 + 59.5, 30.0) is False
    assert store.probe(SERVER, t0 + 75.25, 30.0) is True
    assert store.probe(SERVER, t0 + 75.25, 30.0) is False
    assert stores[1].probe("Other-Server", t0 + 75.25, 30.0) is True


def test_a_probe_holds_with_the_readings_of_a_real_clock(store: RedisStateStore) -> None:
    # Seconds since the epoch with a fraction: the comparison must not round them away.
    now = 1767225600.125
    assert store.probe(SERVER, now, 0.5) is True
    assert store.probe(SERVER, now + 0.499, 0.5) is False
    assert store.probe(SERVER, now + 0.5, 0.5) is True


# --- server names ---------------------------------------------------------------------

SAFE_KEY = re.compile(r"[^{}]+:server:\{[A-Za-z0-9._%-]+\}:(slots|failures|down|probe)")
ODD = [
    "Broker Demo",
    "Broker:Demo",
    "{Broker}",
    "Broker}{x",
    "a*b?[c]",
    "Брокер-Демо",
    "50%",
    "%25",
    "€",
    " AC",
    "\x00\n\t",
    "x" * 300,
]


@pytest.mark.parametrize("name", ODD, ids=repr)
def test_an_odd_server_name_is_escaped_into_one_safe_slot(
    store: RedisStateStore, raw: redis.Redis, prefix: str, name: str
) -> None:
    assert store.report_failure(name, "acct-1", 0.0, 60.0) == 1
    assert store.mark_down(name) is True
    assert store.probe(name, 0.0, 30.0) is True
    assert store.acquire_slot(name, 1, 30.0) is not None

    keys = set(raw.scan_iter(match=f"{prefix}:server:*"))
    assert len(keys) == 4
    assert all(SAFE_KEY.fullmatch(key) for key in keys), keys
    # One hash tag for the four: one slot on a cluster, where mark_up's script
    # touches three of them at once.
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert store.is_down(name) is True
    assert store.mark_up(name) is True
    assert store.is_down(name) is False


def test_names_that_differ_never_share_keys(store: RedisStateStore) -> None:
    # "€" is U+20AC: escaped by code point it would read as " AC" escaped.
    downs = [store.mark_down(name) for name in ODD]
    assert downs == [True] * len(ODD)
    assert store.is_down("Broker-Demo") is False
    assert store.is_down("broker demo") is False  # the store does not fold case


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.text(min_size=1), second=st.text(min_size=1))
@example(first="€", second=" AC")  # U+20AC against "%20" + "AC"
@example(first="ā", second="\x101")  # U+0101 against "%10" + "1"
@example(first="\udc80", second="%ED%B2%80")  # a lone surrogate, and its escape
def test_escaping_is_one_to_one(store: RedisStateStore, first: str, second: str) -> None:
    key, other = store._server(first, "down"), store._server(second, "down")
    assert SAFE_KEY.fullmatch(key)
    assert (key == other) == (first == second)


@pytest.mark.parametrize("bad", ["", None, 5, b"Broker"])
def test_a_bad_server_name_is_refused_before_any_io(bad: Any) -> None:
    store = RedisStateStore(dead_client())
    calls: list[Callable[[], object]] = [
        lambda: store.acquire_slot(bad, 1, 30.0),
        lambda: store.release_slot(bad, "t"),
        lambda: store.report_failure(bad, "acct-1", 0.0, 60.0),
        lambda: store.mark_down(bad),
        lambda: store.mark_up(bad),
        lambda: store.is_down(bad),
        lambda: store.probe(bad, 0.0, 30.0),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="broker server name"):
            call()
