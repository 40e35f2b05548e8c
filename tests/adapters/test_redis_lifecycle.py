"""The flows of SPEC section 4 on a real Redis, read back as an operator would.

Each test drives a ``Lifecycle`` whose state store is a ``RedisStateStore`` (the
rest is the testing kit: fake clock, fake broker), then reads the keys with a plain
client and compares their names and values to the table of SPEC section 5.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import redis

from mt5lifecycle import (
    Backends,
    Credentials,
    CredentialsRejected,
    InvalidTransition,
    Lifecycle,
    Reason,
    State,
)
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.builtin.memory import MemoryArchive
from mt5lifecycle.testing import (
    FakeBroker,
    FakeClock,
    RecordingNotifier,
    memory_backends,
    run_for,
)
from tests.conftest import Switch

SPEC_KEYS = (
    "status",
    "connection_state",
    "login_attempt_count",
    "last_login_attempt",
    "login_failure_reason",
    "last_failure_reason",
)
ID = "acct-1"


@attrs.frozen
class World:
    backends: Backends
    clock: FakeClock
    broker: FakeBroker
    raw: redis.Redis
    prefix: str

    def spec_keys(self) -> dict[str, str]:
        """The SPEC's keys of the instance that exist, with their values."""
        values = {s: self.raw.get(f"{self.prefix}:{ID}:{s}") for s in SPEC_KEYS}
        return {s: v for s, v in values.items() if isinstance(v, str)}

    def all_keys(self) -> set[str]:
        return set(self.raw.scan_iter(match=f"{self.prefix}:*", count=1000))

    def own(self, suffix: str) -> str | None:
        value = self.raw.get(f"{self.prefix}:{ID}:{suffix}")
        assert value is None or isinstance(value, str)
        return value

    def iso(self, at: float) -> str:
        return datetime.fromtimestamp(at, tz=UTC).isoformat()


@pytest.fixture
def world() -> Iterator[World]:
    raw = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    raw.ping()
    prefix = f"mt5l-flow-{uuid.uuid4().hex}"
    kit = memory_backends()
    clock, broker = kit.clock, kit.broker
    assert isinstance(clock, FakeClock)
    assert isinstance(broker, FakeBroker)
    client = redis.Redis(host="127.0.0.1", port=6379)
    backends = attrs.evolve(kit, state=RedisStateStore(client, prefix=prefix))
    backends.credentials.put(ID, Credentials(12345678, "Demo-Server", "s3cret-pass"))
    yield World(backends, clock, broker, raw, prefix)
    leftovers = list(raw.scan_iter(match=f"{prefix}*", count=1000))
    if leftovers:
        raw.delete(*leftovers)
    raw.close()
    client.close()


def started(world: World) -> Lifecycle:
    lifecycle = Lifecycle(ID, world.backends)
    lifecycle.start()
    return lifecycle


def connected(world: World) -> Lifecycle:
    lifecycle = started(world)
    run_for(lifecycle, world.clock, 1)
    assert lifecycle.state is State.CONNECTED
    return lifecycle


def assert_store_matches(world: World, lifecycle: Lifecycle) -> None:
    stored = world.backends.state.load(ID)
    assert stored is not None
    assert stored.snapshot == lifecycle.snapshot()


def test_start_logs_in_and_is_connected(world: World) -> None:
    t0 = world.clock.now()

    lifecycle = connected(world)

    assert world.spec_keys() == {
        "status": "CONNECTED",
        "connection_state": "CONNECTED",
        "login_attempt_count": "0",
        "last_login_attempt": world.iso(t0),
    }
    assert world.own("ever_logged_in") == "1"
    assert world.own("restart_count") == "0"
    # The account the terminal said it logged in to, as <login>@<server>.
    assert world.own("account") == "12345678@Demo-Server"
    assert world.own("forced_try") == "0"
    assert world.own("version") is not None
    assert world.own("login_lock") is None
    assert_store_matches(world, lifecycle)


def test_start_without_credentials_is_failed_credentials_missing(world: World) -> None:
    world.backends.credentials.delete(ID)

    lifecycle = started(world)

    assert lifecycle.state is State.FAILED
    assert world.spec_keys()["status"] == "FAILED"
    assert world.spec_keys()["last_failure_reason"] == "CREDENTIALS_MISSING"
    assert_store_matches(world, lifecycle)


def test_auth_failures_retry_then_recover(world: World) -> None:
    world.broker.fail_logins(ID, Reason.AUTH_FAILED, times=2)
    t0 = world.clock.now()
    lifecycle = started(world)

    run_for(lifecycle, world.clock, 1)

    assert world.spec_keys() == {
        "status": "CONNECTING",
        "connection_state": "DISCONNECTED",
        "login_attempt_count": "1",
        "last_login_attempt": world.iso(t0),
        "login_failure_reason": "AUTH_FAILED",
    }
    assert world.own("due") == "LOGIN"
    assert world.own("next_due") == repr(t0 + 5.0)
    assert_store_matches(world, lifecycle)

    run_for(lifecycle, world.clock, 60)

    assert lifecycle.state is State.CONNECTED
    assert world.spec_keys() == {
        "status": "CONNECTED",
        "connection_state": "CONNECTED",
        "login_attempt_count": "0",
        "last_login_attempt": world.iso(t0 + 15),
    }
    assert world.own("failed_since_success") == "0"
    assert_store_matches(world, lifecycle)


def test_five_auth_failures_end_failed_login_attempts_exhausted(world: World) -> None:
    world.broker.fail_logins(ID, Reason.AUTH_FAILED)
    t0 = world.clock.now()
    lifecycle = started(world)

    run_for(lifecycle, world.clock, 300)

    assert lifecycle.state is State.FAILED
    assert world.spec_keys() == {
        "status": "FAILED",
        "connection_state": "FAILED",
        "login_attempt_count": "5",
        "last_login_attempt": world.iso(t0 + 105),
        "login_failure_reason": "AUTH_FAILED",
        "last_failure_reason": "LOGIN_ATTEMPTS_EXHAUSTED",
    }
    assert world.own("due") is None
    assert world.own("next_due") is None
    assert world.own("terminal_stopped") == "1"
    assert_store_matches(world, lifecycle)


def test_a_reset_with_the_same_credentials_is_refused_and_a_forced_one_tries_once(
    world: World,
) -> None:
    world.broker.fail_logins(ID, Reason.AUTH_FAILED, times=5)
    lifecycle = started(world)
    run_for(lifecycle, world.clock, 300)
    assert world.spec_keys()["status"] == "FAILED"
    before = {k: world.raw.get(k) for k in world.all_keys()}

    # Known-bad credentials are not tried again (SPEC section 15): nothing is written.
    with pytest.raises(CredentialsRejected):
        lifecycle.reset()
    assert {k: world.raw.get(k) for k in world.all_keys()} == before

    lifecycle.reset(force=True)

    assert world.own("forced_try") == "1"  # the one more try, remembered across a crash
    assert world.spec_keys()["status"] == "CONNECTING"
    run_for(lifecycle, world.clock, 1)
    assert lifecycle.state is State.CONNECTED
    keys = world.spec_keys()
    assert keys["status"] == "CONNECTED"
    assert keys["login_attempt_count"] == "0"
    assert "login_failure_reason" not in keys
    assert keys["last_failure_reason"] == "LOGIN_ATTEMPTS_EXHAUSTED"
    assert world.own("forced_try") == "0"
    assert world.own("restart_count") == "0"
    assert_store_matches(world, lifecycle)


def test_network_loss_reconnects_by_itself(world: World) -> None:
    lifecycle = connected(world)
    world.broker.drop_connection(ID)

    lifecycle.connection_lost()

    assert world.spec_keys()["status"] == "CONNECTING"
    assert world.spec_keys()["connection_state"] == "DISCONNECTED"
    assert world.own("due") == "RECONNECT_CHECK"
    assert world.own("next_due") == repr(world.clock.now() + 10.0)
    assert_store_matches(world, lifecycle)

    world.broker.restore_connection(ID)
    run_for(lifecycle, world.clock, 11)

    assert lifecycle.state is State.CONNECTED
    assert world.spec_keys()["connection_state"] == "CONNECTED"
    assert world.own("due") == "CHECK"  # the next connection check
    assert_store_matches(world, lifecycle)


def test_terminal_crash_restarts_and_logs_in(world: World) -> None:
    lifecycle = connected(world)
    world.broker.crash_terminal(ID)

    lifecycle.terminal_failed()

    keys = world.spec_keys()
    assert keys["status"] == "FAILED"
    assert keys["last_failure_reason"] == "TERMINAL"
    assert world.own("due") == "RESTART"
    assert world.own("next_due") == repr(world.clock.now() + 30.0)
    assert_store_matches(world, lifecycle)

    run_for(lifecycle, world.clock, 31)

    assert lifecycle.state is State.CONNECTED
    assert world.broker.restarts(ID) >= 1
    assert world.spec_keys()["status"] == "CONNECTED"
    assert world.own("restart_count") == "0"
    assert world.own("login_lock") is None
    assert_store_matches(world, lifecycle)


def test_account_closed_then_confirmed_deletes_every_key(world: World) -> None:
    lifecycle = connected(world)
    world.broker.close_account(ID)

    lifecycle.account_closed()

    keys = world.spec_keys()
    assert keys["status"] == "ACCOUNT_CLOSED"
    assert keys["connection_state"] == "DISCONNECTED"
    assert keys["last_failure_reason"] == "ACCOUNT_CLOSED"
    assert_store_matches(world, lifecycle)

    lifecycle.confirm_closure()

    assert world.all_keys() == set()
    assert world.backends.state.load(ID) is None
    assert list(world.backends.state.ids()) == []
    assert world.backends.credentials.get(ID) is None


def test_ban_makes_it_inactive(world: World) -> None:
    lifecycle = connected(world)
    world.broker.ban_account(ID)

    lifecycle.account_banned()

    keys = world.spec_keys()
    assert keys["status"] == "INACTIVE"
    assert keys["last_failure_reason"] == "ACCOUNT_BANNED"
    assert_store_matches(world, lifecycle)


def test_disable_makes_it_inactive_manual(world: World) -> None:
    lifecycle = connected(world)

    lifecycle.disable()

    keys = world.spec_keys()
    assert keys["status"] == "INACTIVE"
    assert keys["last_failure_reason"] == "MANUAL"
    assert world.own("terminal_stopped") == "1"
    assert_store_matches(world, lifecycle)


def test_a_new_lifecycle_resumes_from_redis(world: World) -> None:
    world.broker.fail_logins(ID, Reason.AUTH_FAILED, times=1)
    first = started(world)
    run_for(first, world.clock, 1)
    stored = first.snapshot()

    second = Lifecycle(ID, world.backends)
    second.start()

    assert second.snapshot() == stored
    run_for(second, world.clock, 10)
    assert second.state is State.CONNECTED
    assert world.spec_keys()["status"] == "CONNECTED"


def test_a_stale_lifecycle_is_fenced_and_decides_again(world: World) -> None:
    first = connected(world)
    second = Lifecycle(ID, world.backends)
    second.start()
    second.terminal_failed()
    version = world.own("version")
    assert version is not None

    # ``first`` still believes CONNECTED: its write is refused, it reloads, and the
    # event is decided again on FAILED instead of being merged over it.
    first.disable()

    assert first.state is State.INACTIVE
    assert world.spec_keys()["last_failure_reason"] == "MANUAL"
    assert world.own("due") is None
    assert world.own("version") == str(int(version) + 1)
    assert_store_matches(world, first)


def test_a_stale_lifecycle_is_refused_what_the_new_state_refuses(world: World) -> None:
    first = connected(world)
    second = Lifecycle(ID, world.backends)
    second.start()
    second.disable()

    with pytest.raises(InvalidTransition):
        first.account_banned()

    assert first.state is State.INACTIVE
    assert world.spec_keys()["last_failure_reason"] == "MANUAL"


def test_a_closing_plan_is_in_redis_before_its_first_ticket_is_touched(world: World) -> None:
    lifecycle = connected(world)
    world.broker.open_position(ID, 501, "EURUSD", 0.3)
    world.broker.pending_order(ID, 502, "GBPUSD")
    store = world.backends.state
    assert isinstance(store, RedisStateStore)
    written: list[tuple[Any, Any]] = []
    original = store.commit

    def reading_back(*args: Any, **kwargs: Any) -> int:
        version = original(*args, **kwargs)
        written.append((world.own("due"), world.own("tickets")))
        return version

    store.commit = reading_back  # type: ignore[method-assign]
    world.broker.close_account(ID)
    lifecycle.account_closed()
    del store.commit

    plans = [json.loads(t) if t is not None else None for _, t in written]
    assert [due for due, _ in written] == ["CLOSE_TRADES", "SETTLE_TRADE", "SETTLE_TRADE", None]
    assert plans == [
        None,
        [
            {"kind": "position", "ticket": 501, "symbol": "EURUSD", "volume": 0.3},
            {"kind": "order", "ticket": 502, "symbol": "GBPUSD", "volume": 0.0},
        ],
        [{"kind": "order", "ticket": 502, "symbol": "GBPUSD", "volume": 0.0}],
        None,
    ]
    # The outcomes travelled through the outbox to the archive, and left it empty.
    archive = world.backends.archive
    assert isinstance(archive, MemoryArchive)
    assert [r.ticket for r in archive.trade_outcomes] == [501, 502]
    assert world.raw.exists(f"{world.prefix}:{ID}:records") == 0
    assert_store_matches(world, lifecycle)


def test_a_notification_waits_in_redis_until_it_is_delivered(world: World) -> None:
    notifier = world.backends.notifier
    assert isinstance(notifier, RecordingNotifier)
    switch = Switch(notifier)
    backends = attrs.evolve(world.backends, notifier=switch)
    switch.down = True
    world.broker.fail_logins(ID, Reason.AUTH_FAILED, times=1)
    lifecycle = Lifecycle(ID, backends)
    lifecycle.start()
    # The failed login, then the one that recovers: its LOGIN_RECOVERED is written
    # with it, and cannot be handed over while the notifier is down.
    run_for(lifecycle, world.clock, 10)
    assert lifecycle.state is State.CONNECTED

    key = f"{world.prefix}:{ID}:notifications"
    entries: Any = world.raw.lrange(key, 0, -1)  # str: the client decodes
    assert len(entries) == 1
    head, _, body = entries[0].partition(" ")
    assert json.loads(body)["kind"] == "LOGIN_RECOVERED"
    assert "s3cret-pass" not in entries[0]
    stored = world.backends.state.load(ID)
    assert stored is not None and stored.pending == 1
    assert notifier.notifications == []

    switch.down = False
    run_for(lifecycle, world.clock, 60)

    assert world.raw.exists(key) == 0
    assert [n.id for n in notifier.notifications] == [head]
    stored = world.backends.state.load(ID)
    assert stored is not None and stored.pending == 0
