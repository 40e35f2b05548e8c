"""A fleet that protects its accounts (SPEC section 15): known-bad credentials are
never tried again, logins are admitted within bounds, a broker server outage is one
event and costs no account its counts, and health is reported."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mt5lifecycle import (
    AlertKind,
    Credentials,
    CredentialsRejected,
    Fleet,
    InvalidTransition,
    Lifecycle,
    Policy,
    Reason,
    State,
)
from mt5lifecycle.builtin.memory import MemoryStateStore
from mt5lifecycle.core.health import FleetHealth, Health
from mt5lifecycle.core.records import LoginResult
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends, run_for

T0 = 1767225600.0


class PasswordBroker(FakeBroker):
    """A FakeBroker that takes one password and remembers every one it was sent."""

    def __init__(self, clock: FakeClock, good: str) -> None:
        super().__init__(clock)
        self.good = good
        self.sent: list[str] = []

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        self.sent.append(credentials.password)
        if credentials.password != self.good:
            super().login(instance_id, credentials, logged_in_before=logged_in_before)
            return LoginResult.failure(Reason.AUTH_FAILED, -6, "Terminal: Authorization failed")
        return super().login(instance_id, credentials, logged_in_before=logged_in_before)


class KnownBadCredentials(RuleBasedStateMachine):
    """Random losses of the live state, replacements and resets: credentials that
    exhausted their attempts are never sent again until they are replaced (or an
    operator forces one more try, which sends them exactly once)."""

    @initialize()
    def setup(self) -> None:
        self.clock = FakeClock(T0)
        self.broker = PasswordBroker(self.clock, good="right")
        self.backends = memory_backends(broker=self.broker, clock=self.clock)
        self.policy = Policy(max_login_attempts=3, login_backoff=(1.0,))
        self.password = "wrong-1"
        self.backends.credentials.put("k", Credentials(5550001, "Srv", self.password))
        self.lc = Lifecycle("k", self.backends, self.policy)
        self.lc.start()
        self.exhausted: set[str] = set()
        self.allowed: Counter[str] = Counter()

    def _settle(self) -> None:
        known, before = set(self.exhausted), len(self.broker.sent)
        run_for(self.lc, self.clock, 600)
        for password in self.broker.sent[before:]:
            if password in known:
                assert self.allowed[password] > 0, f"{password} sent again after exhaustion"
                self.allowed[password] -= 1
        snap = self.lc.snapshot()
        if (
            snap is not None
            and snap.status is State.FAILED
            and snap.last_failure_reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED
        ):
            self.exhausted.add(self.password)

    @rule()
    def time_passes(self) -> None:
        self._settle()

    @rule()
    def the_live_state_is_lost(self) -> None:
        # Redis restarted without persistence, a failover to a lagging replica: the
        # instance starts again from nothing.
        self.backends = attrs.evolve(self.backends, state=MemoryStateStore(self.clock))
        self.lc = Lifecycle("k", self.backends, self.policy)
        self.lc.start()
        self._settle()

    @rule(good=st.booleans())
    def the_credentials_are_replaced(self, good: bool) -> None:
        self.password = "right" if good else f"wrong-{len(self.exhausted) + 2}"
        self.backends.credentials.put("k", Credentials(5550001, "Srv", self.password))
        try:
            self.lc.reset(by="op")
        except InvalidTransition:
            return
        self._settle()

    @rule(force=st.booleans())
    def an_operator_resets(self, force: bool) -> None:
        try:
            self.lc.reset(force=force, by="op")
        except CredentialsRejected:
            assert not force and self.password in self.exhausted
            return
        except InvalidTransition:
            return
        if force and self.password in self.exhausted:
            self.allowed[self.password] += 1
        self._settle()

    @invariant()
    def a_forced_try_is_one_login(self) -> None:
        assert all(count in (0, 1) for count in self.allowed.values()), self.allowed


KnownBadCredentials.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
test_known_bad_credentials_are_never_sent_again = KnownBadCredentials.TestCase


def _fleet(count: int, servers: int, policy: Policy, **kw: Any) -> tuple[Fleet, FakeClock]:
    clock = FakeClock(T0)
    backends = memory_backends(clock=clock)
    for n in range(count):
        backends.credentials.put(f"i{n}", Credentials(5550000 + n, f"srv-{n % servers}", "pw"))
    fleet = Fleet(backends, policy, **kw)
    fleet.add_many(f"i{n}" for n in range(count))
    return fleet, clock


def test_an_outage_of_one_server_is_one_event_and_costs_no_account_its_counts() -> None:
    policy = Policy(server_probe_interval=30.0, connection_check_interval=60.0)
    fleet, clock = _fleet(1000, 3, policy)
    broker = fleet.backends.broker
    notifier = fleet.backends.notifier
    assert isinstance(broker, FakeBroker) and isinstance(notifier, RecordingNotifier)
    run_for(fleet, clock, 1)
    assert all(fleet[i].state is State.CONNECTED for i in fleet)
    broker.server_down("srv-1")
    run_for(fleet, clock, 600)
    down = [n for n in notifier.notifications if n.kind is AlertKind.BROKER_SERVER_DOWN]
    assert len(down) == 1 and "srv-1" in down[0].message
    affected = [i for i in fleet if int(i[1:]) % 3 == 1]
    others = [i for i in fleet if int(i[1:]) % 3 != 1]
    # The other servers' accounts never noticed.
    assert all(fleet[i].state is State.CONNECTED for i in others)
    assert all(len(broker.login_times(i)) == 1 for i in others)
    # The down server's accounts wait: no restart used up, no attempt counted.
    for i in affected:
        snap = fleet[i].snapshot()
        assert snap is not None
        assert snap.restart_count == 0 and snap.login_attempt_count == 0, (i, snap)
        assert snap.status in (State.CONNECTING, State.FAILED, State.CONNECTED)
    # Waiting is cheap: one probe per interval, not a login per account.
    logins_while_down = sum(len(broker.login_times(i)) - 1 for i in affected)
    assert logins_while_down < len(affected) / 2
    broker.server_up("srv-1")
    run_for(fleet, clock, 600)
    recovered = [n for n in notifier.notifications if n.kind is AlertKind.BROKER_SERVER_RECOVERED]
    assert len(recovered) == 1
    assert all(fleet[i].state is State.CONNECTED for i in fleet)
    fleet.close()


def test_logins_wait_for_a_free_slot_and_never_exceed_the_per_server_bound() -> None:
    policy = Policy(max_concurrent_logins_per_server=3, admission_retry_delay=0.5)
    fleet, clock = _fleet(60, 2, policy, workers=8)
    run_for(fleet, clock, 120)
    broker = fleet.backends.broker
    assert isinstance(broker, FakeBroker)
    assert all(fleet[i].state is State.CONNECTED for i in fleet)
    assert broker.max_concurrent_logins_on("srv-0") <= 3
    assert broker.max_concurrent_logins_on("srv-1") <= 3
    fleet.close()


def test_first_logins_are_spread_after_a_start() -> None:
    policy = Policy(start_spread=20.0)
    fleet, clock = _fleet(200, 1, policy)
    run_for(fleet, clock, 25)
    broker = fleet.backends.broker
    assert isinstance(broker, FakeBroker)
    firsts = sorted(broker.login_times(f"i{n}")[0] - T0 for n in range(200))
    assert firsts[0] < 2 and firsts[-1] > 15, "spread over the window"
    assert max(Counter(int(t) for t in firsts).values()) < 40, "never all at once"
    assert all(fleet[i].state is State.CONNECTED for i in fleet)


def test_health_reports_connection_identity_check_age_and_uptime() -> None:
    policy = Policy(connection_check_interval=60.0)
    fleet, clock = _fleet(3, 1, policy)
    broker = fleet.backends.broker
    assert isinstance(broker, FakeBroker)
    run_for(fleet, clock, 1)
    # A fresh login is a check of its own: healthy at once, not after the first check.
    fresh = fleet.health("i0")
    assert isinstance(fresh, Health)
    assert fresh.healthy and fresh.identity_verified and fresh.last_check_age is not None
    run_for(fleet, clock, 60)
    health = fleet.health("i0")
    assert isinstance(health, Health)
    assert health.connected and health.healthy and health.identity_verified
    assert health.last_check_age is not None and health.last_check_age < 60
    assert health.uptime_5m == pytest.approx(1.0)
    broker.cross_wire("i1", 999, "srv-0")
    broker.drop_connection("i2")
    run_for(fleet, clock, 60)
    wired = fleet.health("i1")
    assert isinstance(wired, Health)
    assert not wired.healthy and wired.reason is Reason.TERMINAL
    run_for(fleet, clock, 240)
    report = fleet.health()
    assert isinstance(report, FleetHealth)
    assert report.instances == 3
    assert 0 < report.uptime_5m < 1
    assert {h.instance_id for h in report.unhealthy} <= {"i1", "i2"}
    fleet.close()
