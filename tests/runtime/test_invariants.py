"""The machine's invariants under random event sequences and random broker scripts.

A ``hypothesis`` stateful test drives one instance with every event, operator action
and broker behaviour the kit can script, on random policies, jumping the fake clock
from due time to due time, and checks after every step:

- the attempt count never passes the maximum (nor the network retry and restart
  counts theirs);
- no login ever happens outside ``CONNECTING`` (so never in ``ACCOUNT_CLOSED``,
  ``INACTIVE`` or ``FAILED`` after exhaustion);
- retries follow the policy's timeline exactly;
- credentials disappear only after ``confirm_closure``;
- a closed account never comes back;
- every refused event leaves the state, the archive and the alerts as they were.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from mt5lifecycle import (
    Credentials,
    CredentialsRejected,
    InvalidTransition,
    Lifecycle,
    Policy,
    Reason,
    State,
)
from mt5lifecycle.builtin.memory import MemoryArchive
from mt5lifecycle.core.records import LoginResult
from mt5lifecycle.core.states import Due
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends

ID = "acc-1"
CREDS = Credentials(login=777, server="Srv", password="pw-secret")


class WatchedBroker(FakeBroker):
    """A fake broker that checks, at every login call, that the instance may log in."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.backends: Any = None
        self.violations: list[str] = []

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        stored = self.backends.state.load(instance_id)
        if stored is None or stored.snapshot.status is not State.CONNECTING:
            self.violations.append(f"login while {stored and stored.snapshot.status}")
        elif stored.snapshot.next_due is not None and stored.snapshot.next_due > self.clock.now():
            self.violations.append("login before its due time")
        return super().login(instance_id, credentials, logged_in_before=logged_in_before)


policies = st.builds(
    Policy,
    max_login_attempts=st.integers(1, 6),
    login_backoff=st.lists(st.integers(0, 120), min_size=1, max_size=5),
    repeated_failure_threshold=st.integers(1, 5),
    network_retry_delay=st.integers(0, 30),
    max_network_retries=st.integers(0, 4),
    max_restarts=st.integers(0, 3),
    restart_backoff=st.lists(st.integers(0, 120), min_size=1, max_size=3),
    connection_check_interval=st.integers(1, 120),
)

LOGIN_REASONS = [
    Reason.AUTH_FAILED,
    Reason.NETWORK,
    Reason.TERMINAL,
    Reason.ACCOUNT_CLOSED,
    Reason.ACCOUNT_BANNED,
]


class LifecycleMachine(RuleBasedStateMachine):
    @initialize(policy=policies, with_credentials=st.sampled_from([True, True, True, False]))
    def setup(self, policy: Policy, with_credentials: bool) -> None:
        self.policy = policy
        self.clock = FakeClock()
        self.broker = WatchedBroker(self.clock)
        self.backends = memory_backends(broker=self.broker, clock=self.clock)
        self.broker.backends = self.backends
        if with_credentials:
            self.backends.credentials.put(ID, CREDS)
        self.had_credentials = with_credentials
        self.lc = Lifecycle(ID, self.backends, policy)
        self.lc.start()
        self.confirmed = False
        self.ever_closed = False
        self.exhausted_logins: int | None = None

    # --- the world changes -------------------------------------------------
    # One rule with a weighted choice: hypothesis picks rules uniformly, and an
    # account that is closed or banned in the first steps ends the interesting part
    # of a run, so the terminal's everyday trouble is drawn far more often.

    @rule(
        change=st.sampled_from(
            ["auth"] * 6
            + ["network"] * 3
            + ["terminal", "drop", "drop", "reconnect", "reconnect", "crash", "restarts_fail"]
            + ["lift_ban", "close", "ban"]
        ),
        times=st.none() | st.integers(1, 8),
    )
    def the_broker_changes(self, change: str, times: int | None) -> None:
        broker = self.broker
        if change == "auth":
            broker.fail_logins(ID, Reason.AUTH_FAILED, times)
        elif change == "network":
            broker.fail_logins(ID, Reason.NETWORK, times)
        elif change == "terminal":
            broker.fail_logins(ID, Reason.TERMINAL, times)
        elif change == "drop":
            broker.drop_connection(ID)
        elif change == "reconnect":
            broker.restore_connection(ID)
        elif change == "crash":
            broker.crash_terminal(ID)
        elif change == "restarts_fail":
            broker.fail_restarts(ID, times)
        elif change == "lift_ban":
            broker.lift_ban(ID)
        elif change == "close":
            broker.close_account(ID)
        else:
            broker.ban_account(ID)

    @rule(
        ticket=st.integers(1, 50),
        volume=st.sampled_from([0.01, 0.1, 0.5, 1.0]),
        code=st.sampled_from([10009, 10010, 10004, 10021, 10006, 10018, 10028, 10029, 10031]),
    )
    def position_opens(self, ticket: int, volume: float, code: int) -> None:
        self.broker.open_position(ID, ticket, "EURUSD", volume, close_retcode=code)

    # --- time passes ---------------------------------------------------------

    @rule(seconds=st.integers(0, 400))
    def time_passes(self, seconds: int) -> None:
        end = self.clock.now() + seconds
        self.lc.run_due()
        while (due := self.lc.next_due) is not None and due <= end:
            self.clock.advance_to(due)
            self._check_step()
            self.lc.run_due()
        self.clock.advance_to(end)

    @rule()
    def next_due_comes(self) -> None:
        due = self.lc.next_due
        if due is not None:
            self.clock.advance_to(due)
        self.lc.run_due()

    @rule()
    def until_nothing_more_happens_for_a_while(self) -> None:
        # Several due times in a row: long enough to reach exhaustion or recovery.
        for _ in range(12):
            self.next_due_comes()

    # --- events and operator actions -----------------------------------------

    @rule(
        event=st.sampled_from(
            ["connection_lost"] * 2
            + ["terminal_failed"] * 2
            + ["reset"] * 4
            + ["reset_with_force"] * 2
            + ["account_closed", "account_banned", "disable", "confirm_closure"]
        )
    )
    def event(self, event: str) -> None:
        before = (
            self.backends.state.load(ID),
            self.lc.snapshot(),
            len(self.notifier.notifications),
            len(self.archive.transitions),
            len(self.broker.login_times(ID)),
        )
        try:
            if event == "reset_with_force":
                self.lc.reset(force=True)
            else:
                getattr(self.lc, event)()
        except (InvalidTransition, CredentialsRejected) as refused:
            if isinstance(refused, InvalidTransition):
                assert refused.event == event.removesuffix("_with_force")  # noqa: PT017
            after = (
                self.backends.state.load(ID),
                self.lc.snapshot(),
                len(self.notifier.notifications),
                len(self.archive.transitions),
                len(self.broker.login_times(ID)),
            )
            assert after == before, f"refused {event} changed something"
            return
        if event == "confirm_closure":
            self.confirmed = True
        if event.startswith("reset"):
            self.exhausted_logins = None

    # --- invariants ------------------------------------------------------------

    @property
    def notifier(self) -> RecordingNotifier:
        n = self.backends.notifier
        assert isinstance(n, RecordingNotifier)
        return n

    @property
    def archive(self) -> MemoryArchive:
        a = self.backends.archive
        assert isinstance(a, MemoryArchive)
        return a

    def _check_step(self) -> None:
        assert not self.broker.violations, self.broker.violations

    @invariant()
    def counts_stay_within_the_policy(self) -> None:
        snap = self.lc.snapshot()
        if snap is None:
            return
        assert 0 <= snap.login_attempt_count <= self.policy.max_login_attempts
        assert 0 <= snap.network_retry_count <= self.policy.max_network_retries
        assert 0 <= snap.restart_count <= self.policy.max_restarts

    @invariant()
    def logins_happen_only_in_connecting_and_when_due(self) -> None:
        assert not self.broker.violations, self.broker.violations

    @invariant()
    def no_login_after_exhaustion_until_reset(self) -> None:
        snap = self.lc.snapshot()
        logins = len(self.broker.login_times(ID))
        if snap is not None and snap.status is State.FAILED and snap.due is not Due.RESTART:
            if self.exhausted_logins is None:
                self.exhausted_logins = logins
            assert logins == self.exhausted_logins
        else:
            self.exhausted_logins = None

    @invariant()
    def retries_follow_the_policys_timeline(self) -> None:
        snap = self.lc.snapshot()
        if (
            snap is not None
            and snap.status is State.CONNECTING
            and snap.due is Due.LOGIN
            and snap.login_failure_reason is Reason.AUTH_FAILED
            and snap.login_attempt_count > 0
        ):
            assert snap.last_login_attempt is not None
            expected = snap.last_login_attempt.timestamp() + self.policy.login_delay(
                snap.login_attempt_count
            )
            assert snap.next_due == expected

    @invariant()
    def credentials_disappear_only_after_confirm_closure(self) -> None:
        present = self.backends.credentials.get(ID) is not None
        if self.had_credentials:
            assert present != self.confirmed

    @invariant()
    def a_closed_account_never_comes_back(self) -> None:
        state = self.lc.state
        if state is State.ACCOUNT_CLOSED:
            self.ever_closed = True
        if self.ever_closed:
            assert state in (State.ACCOUNT_CLOSED, State.INACTIVE)
            if state is State.INACTIVE:
                assert self.confirmed
        if self.confirmed:
            assert self.backends.state.load(ID) is None
            assert self.archive.is_confirmed(ID)


LifecycleMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lifecycle_invariants = LifecycleMachine.TestCase
