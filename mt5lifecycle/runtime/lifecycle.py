"""``Lifecycle``: carries one instance's decisions out through the ports.

The machine (``core/machine.py``) decides; this module observes and acts, in an order
chosen for crash safety:

1. observe what the due step needs (the credentials, the broker's answer), under the
   per-instance login lock when it logs in or restarts;
2. ask the table (``decide``), and store what it decided, its notifications and its
   archive records included, in one atomic write checked against the version read,
   so a stale writer is refused instead of merged;
3. only then tell the world: the relay hands the notifications and records over, the
   metrics count, the terminal is told what to do.

A process that dies before 2 has changed nothing, and the next owner repeats the
step; one that dies after 2 finds the pending work (``due``) and the undelivered
entries in the store. Every wait is a due time: nothing here sleeps.

The driver API (what a ``Fleet``, or a host's own loop, uses): ``start``,
``pending``, ``step``, ``run_due``, ``hold``, ``next_due``, ``refresh``, ``fence``,
``version``, ``deleted`` and ``on_change``. Nothing outside this module touches the
rest.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any, Final

from ..builtin.metrics import NullMetrics
from ..core.answers import LOGIN_REASONS, Account, LoginResult
from ..core.credentials import Credentials
from ..core.health import Health, Uptime
from ..core.ids import check_instance_id
from ..core.machine import (
    Command,
    Decision,
    Facts,
    Refusal,
    decide,
    needs_operator,
    refusal,
    refused_action,
)
from ..core.policy import Policy
from ..core.records import ClosureRecord
from ..core.snapshot import Snapshot, utc
from ..core.states import Due, Reason, State, TerminalStatus
from ..errors import (
    ConcurrentUpdate,
    CredentialsRejected,
    CredentialsUndecryptable,
    InvalidTransition,
    LockLost,
    StoreUnavailable,
)
from ..ports import LockToken, Stored
from ._closing import list_tickets, settle
from ._context import Context
from .backends import Backends

__all__ = ["Lifecycle"]

log = logging.getLogger("mt5lifecycle")

_MAX_STEPS = 64
"""Due steps one ``run_due`` call takes at most; each one moves time or state on."""

_STALE = (ConcurrentUpdate, LockLost)
# A takeover races at most the previous driver's last writes in flight.
_FENCE_TRIES: Final = 3
_OPERATOR_STEPS = frozenset({Due.CLOSE_TRADES, Due.SETTLE_TRADE, Due.CLEANUP, Due.PURGE})
"""Steps that follow an event at once, while the terminal still answers: closing a
closed account's trades, and a confirmed closure's cleanup."""


class _Unread:
    """``start()`` reads the stored state itself."""


_UNREAD: Final = _Unread()


class Lifecycle:
    """The login and connection lifecycle of one MetaTrader 5 instance.

    Not thread-safe: one caller drives an instance at a time (a ``Fleet`` does).
    ``context`` is for a ``Fleet``, whose instances share one (the ports' capabilities,
    the relay, the per-process login bound); a lone ``Lifecycle`` makes its own, whose
    relay hands each transition's notifications and records over right after the write
    and tries a failed one again when ``run_due`` finds it due.
    """

    __slots__ = (
        "_ctx",
        "_hold_until",
        "_identity",
        "_last_check",
        "_loaded",
        "_own_relay",
        "_snap",
        "_started",
        "_uptime",
        "_version",
        "deleted",
        "instance_id",
        "on_change",
    )

    def __init__(
        self,
        instance_id: str,
        backends: Backends,
        policy: Policy | None = None,
        *,
        context: Context | None = None,
    ) -> None:
        self.instance_id = check_instance_id(instance_id)
        self._own_relay = context is None
        if context is None:
            context = Context(backends, policy if policy is not None else _DEFAULT_POLICY)
        elif context.backends is not backends:
            raise ValueError("context must be made from the same backends")
        self._ctx = context
        self._snap: Snapshot | None = None
        self._version = 0
        self._loaded = False
        self._started = False
        self.deleted = False
        """The closure was confirmed and the live state is gone: every event is refused."""
        self._hold_until: float | None = None
        self._last_check: float | None = None
        self._identity: bool | None = None
        self._uptime: Uptime | None = None
        self.on_change: Callable[[Lifecycle], None] | None = None
        """Called after every change of ``next_due`` (a ``Fleet`` reschedules on it)."""

    def __repr__(self) -> str:
        state = self._snap.status.value if self._snap is not None else None
        return f"<Lifecycle {self.instance_id!r} {state}>"

    @property
    def backends(self) -> Backends:
        return self._ctx.backends

    @property
    def policy(self) -> Policy:
        return self._ctx.policy

    # --- reading ---------------------------------------------------------------

    @property
    def state(self) -> State | None:
        """The stored state; ``None`` before anything is stored for the id."""
        self._ensure_loaded()
        return self._snap.status if self._snap is not None else None

    def snapshot(self) -> Snapshot | None:
        """The whole stored record, as last read or written by this object."""
        self._ensure_loaded()
        return self._snap

    @property
    def version(self) -> int:
        """The stored version this object last read or wrote (0: nothing stored)."""
        return self._version

    @property
    def needs_operator(self) -> bool:
        """Whether the instance is in a state it cannot leave by itself (the table's word)."""
        return needs_operator(self._snap, deleted=self.deleted)

    @property
    def next_due(self) -> float | None:
        """When ``run_due`` next has something to do, on the clock port."""
        snap = self._snap
        due = None
        if snap is not None and not self.deleted and snap.due is not None:
            due = snap.next_due
        hold = self._hold_until
        if due is not None and hold is not None and hold > due:
            due = hold
        if self._own_relay:
            # A lone Lifecycle tries its undelivered notifications again when due; a
            # Fleet's relay is the fleet's to schedule.
            retry = self._ctx.relay.next_due
            if retry is not None and (due is None or retry < due):
                due = retry
        return due

    def health(self) -> Health:
        """Connected, identity verified, age of the last check, reason, uptime (SPEC 15)."""
        now = self.backends.clock.now()
        snap = self._snap
        connected = snap is not None and snap.status is State.CONNECTED and not self.deleted
        uptime = self._uptime.fractions(now) if self._uptime is not None else (0.0, 0.0, 0.0)
        age = None if self._last_check is None else max(0.0, now - self._last_check)
        recent = age is not None and age <= 2 * self.policy.connection_check_interval
        healthy = connected and self._identity is not False and recent
        return Health(
            instance_id=self.instance_id,
            healthy=healthy,
            connected=connected,
            identity_verified=self._identity,
            last_check_age=age,
            reason=None if healthy or snap is None else _unhealthy(snap, connected, recent),
            uptime_5m=uptime[0],
            uptime_1h=uptime[1],
            uptime_1d=uptime[2],
        )

    # --- starting and running --------------------------------------------------

    def start(self, *, stored: Stored | _Unread | None = _UNREAD) -> None:
        """Start a new instance, or resume the one the state store holds.

        A new instance with credentials goes ``CONNECTING`` with its login due now
        (the next ``run_due`` logs in); without credentials it is ``FAILED``
        (``CREDENTIALS_MISSING``). A stored one carries on where it was. ``stored`` is
        for a driver that read many instances at once (``load_many``).
        """
        if self._started:
            self._refuse("start", Facts())
        if isinstance(stored, _Unread):
            stored = self.backends.state.load(self.instance_id)
        if stored is None:
            credentials = self._credentials()
            facts = self._facts(
                has_credentials=credentials is not None,
                known_bad=self._known_bad(credentials),
                closure_confirmed=self._confirmed_in_archive(),
            )
            self._loaded = True
            self._apply("start", facts)
        else:
            self._take(stored)
            snap = stored.snapshot
            # A resumed instance is new to this process's metrics: without this, an
            # exhausted or banned instance would have no series after a restart, and
            # its alert would fall silent.
            self._guarded(
                "metrics",
                self.backends.metrics.transition,
                self.instance_id,
                None,
                snap.status,
                snap.last_failure_reason,
            )
            self._apply("resumed", _NO_FACTS)
        self._started = True
        self._notify_change()
        self._hand_over()

    def pending(self, now: float) -> Due | None:
        """What is due at ``now``, or ``None`` (nothing, or held off until later)."""
        hold = self._hold_until
        if hold is not None:
            if hold > now:
                return None
            self._hold_until = None
        snap = self._snap
        if snap is None or self.deleted or snap.due is None or snap.next_due is None:
            return None
        return snap.due if snap.next_due <= now else None

    def step(self, now: float) -> bool:
        """Carry out what is due at ``now``; ``False`` when nothing was.

        Raises ``StoreUnavailable`` when a backend is down: nothing was changed, and
        the instance is held off for ``policy.transient_retry_delay``.
        """
        held = self._hold_until
        due = self.pending(now)
        if due is None:
            return False
        lag = self._ctx.lag
        if lag is not None and self._snap is not None and self._snap.next_due is not None:
            # Late against what was meant: a hold (a backend down, no free slot) is a
            # wait on purpose, not lateness.
            meant = self._snap.next_due if held is None else max(held, self._snap.next_due)
            self._guarded("metrics", lag.lag, now - meant)
        try:
            _STEPS[due](self, now)
        except _STALE:
            self._reload()
        except StoreUnavailable as exc:
            self._hold_off(exc, now)
            raise
        return True

    def run_due(self) -> float | None:
        """Do what is due at the clock's now; return the next due time or ``None``.

        Raises ``StoreUnavailable`` when a backend is down: nothing was changed, and
        the instance waits ``policy.transient_retry_delay`` before trying again.
        """
        clock = self.backends.clock
        try:
            for _ in range(_MAX_STEPS):
                if not self.step(clock.now()):
                    break
        finally:
            self._hand_over()
        return self.next_due

    def hold(self, until: float) -> None:
        """Do nothing before ``until`` (a backend is down, another worker holds the lock,
        no login slot is free). Not stored: a hold is this process's, not the instance's."""
        self._hold_until = until
        self._notify_change()

    # --- events ----------------------------------------------------------------

    def connection_lost(self) -> None:
        """The terminal lost its broker connection (``CONNECTED`` only)."""
        self._event("connection_lost", _NO_FACTS)

    def terminal_failed(self) -> None:
        """The terminal crashed or stopped answering."""
        self._event("terminal_failed", _NO_FACTS)

    def account_closed(self) -> None:
        """The broker closed the account: close its trades, never log in again."""
        self._event("account_closed", _NO_FACTS)

    def account_banned(self) -> None:
        """The broker suspended or banned the account."""
        self._event("account_banned", _NO_FACTS)

    # --- operator actions ------------------------------------------------------

    def reset(self, *, force: bool = False, by: str | None = None) -> None:
        """Clear the counters and log in again, from ``FAILED`` or ``INACTIVE``.

        Credentials that exhausted their attempts and have not changed since are
        refused (``CredentialsRejected``); ``force=True`` tries them once more (one
        login, not another round). ``by`` names the operator: the action is archived
        (``AuditRecord``), refused or not.
        """
        if not isinstance(force, bool):
            raise TypeError(f"force must be a bool, not {force!r}")
        self._ensure_loaded()
        known_bad = False
        snap = self._snap
        if snap is not None and snap.status in (State.FAILED, State.INACTIVE):
            known_bad = self._known_bad(self._credentials())
        self._event("reset", self._facts(known_bad=known_bad, force=force, actor=by))

    def disable(self, *, by: str | None = None) -> None:
        """Take the instance out of service (``INACTIVE``, ``MANUAL``)."""
        self._event("disable", self._facts(actor=by))

    def confirm_closure(self, *, by: str | None = None) -> None:
        """Confirm an ``ACCOUNT_CLOSED`` account: delete its credentials and state.

        Running it again after a crash mid-way finishes the cleanup.
        """
        self._event("confirm_closure", self._facts(actor=by))

    # --- deciding and storing --------------------------------------------------

    def _event(self, event: str, facts: Facts) -> None:
        self._ensure_loaded()
        try:
            try:
                self._apply(event, facts)
            except _STALE:
                # Another writer moved the instance on: decide again on what it wrote.
                self._reload()
                self._apply(event, facts)
        except (InvalidTransition, CredentialsRejected) as exc:
            if facts.actor is not None:
                detail = exc.detail if isinstance(exc, InvalidTransition) else str(exc)
                self._audit_refusal(event, facts.actor, detail)
            raise
        clock = self.backends.clock
        # Closing a closed account's trades and a confirmed closure's cleanup follow at
        # once, while the terminal still answers. They were stored as due first, so a
        # crash here leaves them to whoever resumes the instance.
        for _ in range(_MAX_STEPS):
            snap = self._snap
            if snap is None or self.deleted or snap.due not in _OPERATOR_STEPS:
                break
            if not self.step(clock.now()):
                break
        # An event is one instance's: its notifications go now, a Fleet's pass or not.
        self._ctx.relay.deliver()

    def _facts(self, **kwargs: Any) -> Facts:
        if self.policy.backoff_jitter or self.policy.start_spread:
            kwargs.setdefault("rand", random.random())  # noqa: S311 - jitter, not secrecy
        elif not kwargs:
            return _NO_FACTS
        return Facts(**kwargs)

    def _refuse(self, event: str, facts: Facts) -> None:
        kind, detail = refusal(self._snap, event, facts, deleted=self.deleted)
        if kind is Refusal.CREDENTIALS_REJECTED:
            raise CredentialsRejected(instance_id=self.instance_id)
        state = self._state_name()
        if kind is Refusal.CLOSURE_CONFIRMED:
            state = State.INACTIVE.value
        raise InvalidTransition(
            instance_id=self.instance_id, event=event, state=state, detail=detail
        )

    def _apply(
        self,
        event: str,
        facts: Facts,
        *,
        lock: LockToken | None = None,
        credentials: Credentials | None = None,
    ) -> Decision:
        """Decide ``event`` and carry the decision out; raise if the table refuses it."""
        now = self.backends.clock.now()
        decision = decide(
            self.instance_id, self._snap, event, self.policy, now, facts, deleted=self.deleted
        )
        if decision is None:
            self._refuse(event, facts)
            raise AssertionError("unreachable")  # pragma: no cover
        if Command.REJECT_CREDENTIALS in decision.commands and credentials is not None:
            self._reject(credentials)
        if decision.changed:
            self._store(decision, lock)
        elif lock is not None and lock.release_on_commit:
            self._release(lock)
        self._publish(decision, facts)
        self._carry_out(decision, lock)
        return decision

    def _store(self, decision: Decision, lock: LockToken | None) -> None:
        relay = self._ctx.relay
        entries = relay.kept((*decision.notifications, *decision.records))
        state = self.backends.state
        if relay.stores:
            version = state.commit(
                self.instance_id,
                decision.snapshot,  # type: ignore[arg-type]
                expected_version=self._version,
                lock=lock,
                outbox=entries,  # type: ignore[call-arg]
            )
        else:
            if decision.snapshot is None:
                state.delete(self.instance_id)
                version = 0
            else:
                version = state.commit(
                    self.instance_id,
                    decision.snapshot,
                    expected_version=self._version,
                    lock=lock,
                )
        self._version = version
        before = self._snap
        if decision.snapshot is None:
            self.deleted = True
            self._version = 0
        else:
            self._snap = decision.snapshot
        relay.stored(self.instance_id, entries)
        self._observe(before, decision.snapshot)
        self._notify_change()

    def _publish(self, decision: Decision, facts: Facts) -> None:
        """Log and count what was decided (the relay carries notifications and records)."""
        instance_id = self.instance_id
        source = decision.source
        if decision.records and log.isEnabledFor(logging.INFO):
            log.info(
                "instance %s: %s -> %s on %s (%s)",
                instance_id,
                "new" if source == "NEW" else source,
                decision.dest,
                decision.event,
                decision.reason.value if decision.reason is not None else "-",
            )
        result = facts.result
        failed = decision.event == "login_failed" and result is not None
        if failed and result is not None and result.reason is not None:
            snap = decision.snapshot
            log.warning(
                "instance %s: login failed (%s, code %s): %s; %d authentication failures "
                "in a row; %s -> %s",
                instance_id,
                result.reason.value,
                result.code,
                result.message,
                snap.login_attempt_count if snap is not None else 0,
                source,
                decision.dest,
            )
        metrics = self.backends.metrics
        if isinstance(metrics, NullMetrics) or not decision.changed:
            return
        new = decision.snapshot
        if failed and result is not None:
            self._guarded(
                "metrics",
                metrics.login,
                instance_id,
                result.reason,
                new.login_attempt_count if new is not None else 0,
            )
        elif decision.event == "login_succeeded":
            self._guarded("metrics", metrics.login, instance_id, None, 0)
        before = None if source == "NEW" else _state_of(source)
        after = None if new is None else new.status
        if before != after or decision.records:
            self._guarded(
                "metrics", metrics.transition, instance_id, before, after, decision.reason
            )
        if decision.event == "restart_due" and Command.RESTART_TERMINAL in decision.commands:
            self._guarded("metrics", metrics.restart, instance_id, new.restart_count if new else 0)
        for notification in decision.notifications:
            self._guarded("metrics", metrics.alert, notification)

    def _carry_out(self, decision: Decision, lock: LockToken | None) -> None:
        if lock is not None and lock.release_on_commit:
            lock = None  # given back by the commit
        for command in decision.commands:
            if not self._command(command, lock):
                return

    def _command(self, command: Command, lock: LockToken | None) -> bool:
        """Tell the terminal (or the credential store); ``False`` when the terminal did
        not come up, which is itself an event."""
        broker = self.backends.broker
        if command is Command.STOP_TERMINAL:
            try:
                broker.stop(self.instance_id)
            except Exception:
                log.exception("instance %s: stopping the terminal failed", self.instance_id)
        elif command is Command.RESTART_TERMINAL:
            try:
                broker.restart(self.instance_id)
            except Exception as exc:
                log.warning(
                    "instance %s: the terminal did not come up (%s)",
                    self.instance_id,
                    type(exc).__name__,
                )
                self._apply("terminal_failed", self._facts(), lock=lock)
                return False
        elif command is Command.FORGIVE_CREDENTIALS:
            rejections = self._ctx.rejections
            if rejections is not None:
                self._guarded("credentials", rejections.forgive, self.instance_id)
        return True

    # --- due steps -------------------------------------------------------------

    def _login(self, now: float) -> None:
        lock = self._lock(now)
        if lock is None:
            return
        released = False
        try:
            released = self._login_locked(lock, now)
        finally:
            if not released:
                self._release(lock)

    def _login_locked(self, lock: LockToken, now: float) -> bool:
        """Log in under ``lock``; True when the lock was given back by the result's write."""
        credentials = self._credentials()
        server_down = self._server_down(credentials)
        facts = self._facts(
            has_credentials=credentials is not None,
            known_bad=self._known_bad(credentials),
            server_down=server_down,
        )
        decision = self._apply("login_due", facts, lock=lock)
        if Command.LOG_IN not in decision.commands or credentials is None:
            return False
        slot = self._admit(credentials.server, now)
        if slot is None:
            return False
        try:
            expected = Account(credentials.login, credentials.server)
            login_at = self.backends.clock.now()
            result = self._log_in(credentials)
            account = result.account
            if result.ok and account is None:
                account = self._terminal_account()
            outage = self._report(credentials.server, result.reason, login_at, ok=result.ok)
            if result.ok:
                # A login that says who is logged in is a connection check of its own:
                # a fresh login is healthy now, not after the first check falls due.
                self._last_check = self.backends.clock.now()
                self._identity = None if account is None else account.matches(expected)
            facts = self._facts(
                result=result,
                login_at=login_at,
                account=account,
                expected=expected,
                server_down=outage[0],
                outage_accounts=outage[1],
                server_recovered=outage[2],
            )
            # The result's write gives the lock back: one round trip, not two.
            releasing = LockToken(lock.instance_id, lock.token, release_on_commit=True)
            event = "login_succeeded" if result.ok else "login_failed"
            self._apply(event, facts, lock=releasing, credentials=credentials)
            return True
        finally:
            self._give_back(credentials.server, slot)

    def _log_in(self, credentials: Credentials) -> LoginResult:
        snap = self._snap
        assert snap is not None
        try:
            result = self.backends.broker.login(
                self.instance_id, credentials, logged_in_before=snap.ever_logged_in
            )
        except Exception as exc:
            # A login that raised may have reached the broker or not: never count it
            # as a password try.
            return LoginResult.failure(
                Reason.NETWORK, None, f"the login call raised {type(exc).__name__}"
            )
        if not isinstance(result, LoginResult) or (
            not result.ok and result.reason not in LOGIN_REASONS
        ):
            return LoginResult.failure(
                Reason.NETWORK, None, f"the broker answered {type(result).__name__}, not a result"
            )
        return result

    def _check(self, now: float) -> None:
        self._checked("connection_checked", now)

    def _reconnect_check(self, now: float) -> None:
        self._checked("reconnect_checked", now)

    def _checked(self, event: str, now: float) -> None:
        status = self._terminal_status()
        account = self._terminal_account() if status is TerminalStatus.CONNECTED else None
        outage = (False, 0, False)
        snap = self._snap
        server = snap.account.server if snap is not None and snap.account is not None else None
        if status is TerminalStatus.DISCONNECTED and server is not None:
            outage = self._report(server, Reason.NETWORK, now, ok=False)
        elif (
            status is TerminalStatus.CONNECTED
            and server is not None
            and _server_key(server) in self._ctx.down
        ):
            # Reconnected by itself on a server taken as down: the server is back.
            outage = self._report(server, None, now, ok=True)
        self._last_check = now
        expected = snap.account if snap is not None else None
        self._identity = None if account is None or expected is None else account.matches(expected)
        self._apply(
            event,
            self._facts(
                terminal=status,
                account=account,
                expected=snap.account if snap is not None else None,
                server_down=outage[0],
                outage_accounts=outage[1],
                server_recovered=outage[2],
            ),
        )

    def _restart(self, now: float) -> None:
        lock = self._lock(now)
        if lock is None:
            return
        try:
            credentials = self._credentials()
            facts = self._facts(
                has_credentials=credentials is not None,
                known_bad=self._known_bad(credentials),
                server_down=self._server_down(credentials),
            )
            self._apply("restart_due", facts, lock=lock)
        finally:
            self._release(lock)

    def _close_trades(self, now: float) -> None:
        tickets = list_tickets(self.backends.broker, self.instance_id)
        self._apply("trades_listed", self._facts(tickets=tickets))

    def _settle_trade(self, now: float) -> None:
        snap = self._snap
        assert snap is not None and snap.tickets
        backends = self.backends
        outcome = settle(
            backends.broker, self.instance_id, snap.tickets[0], self.policy, backends.clock.now
        )
        log.info(
            "instance %s: %s %s %s (retcode %s)",
            self.instance_id,
            outcome.kind,
            outcome.ticket,
            outcome.outcome.value,
            outcome.retcode,
        )
        self._apply("trade_settled", self._facts(outcome=outcome))

    def _cleanup(self, now: float) -> None:
        backends = self.backends
        snap = self._snap
        assert snap is not None
        backends.credentials.delete(self.instance_id)
        final = Snapshot(
            status=State.ACCOUNT_CLOSED,
            connection_state=snap.connection_state,
            login_attempt_count=snap.login_attempt_count,
            last_login_attempt=snap.last_login_attempt,
            login_failure_reason=snap.login_failure_reason,
            last_failure_reason=snap.last_failure_reason,
            restart_count=snap.restart_count,
            ever_logged_in=snap.ever_logged_in,
            account=snap.account,
        )
        # Durable before the live state goes: from then on only the archive remembers
        # that this id must never start again. An archive that cannot take it raises
        # StoreUnavailable here, and the cleanup is tried again.
        backends.archive.confirm(
            ClosureRecord(instance_id=self.instance_id, at=utc(now), final=final)
        )
        self._apply("credentials_deleted", _NO_FACTS)

    def _purge(self, now: float) -> None:
        relay = self._ctx.relay
        relay.deliver()
        if relay.pending(self.instance_id):
            # The closure's last notifications are still on their way (a notifier that
            # is down): they live in the instance's outbox, which must outlast them.
            self.hold(now + self.policy.transient_retry_delay)
            return
        self._apply("purged", _NO_FACTS)
        log.info("instance %s: closure confirmed, credentials and state deleted", self.instance_id)

    # --- taking in what another process stored ---------------------------------

    def refresh(self, stored: Stored | None) -> None:
        """Take in what another process stored: an operator's reset or disable.

        The operator's process has no terminal, so the terminal follows the stored
        state here: stopped when the stored state says so, started again when a reset
        cleared the stop. Nothing is written.
        """
        if stored is not None and stored.version == self._version:
            return
        old = self._snap
        self._take(stored)
        new = self._snap
        if stored is None or old is None or new is None:
            return
        if old.terminal_stopped != new.terminal_stopped:
            log.info(
                "instance %s: changed elsewhere (%s -> %s); the terminal follows",
                self.instance_id,
                old.status.value,
                new.status.value,
            )
            self._command(
                Command.STOP_TERMINAL if new.terminal_stopped else Command.RESTART_TERMINAL, None
            )

    def fence(self) -> None:
        """Take the instance over from a previous driver.

        Storing the same snapshot again bumps the version, so a write the previous
        driver still had in flight (a worker that lost its lease while paused) is
        refused as stale instead of landing after the takeover. A write of the previous
        driver that landed between our read and the fence is taken in and fenced over
        (it was made before the takeover); ``ConcurrentUpdate`` only if that keeps
        happening.
        """
        for attempt in range(_FENCE_TRIES):
            snap = self._snap
            if snap is None or self.deleted:
                return
            try:
                self._version = self.backends.state.commit(
                    self.instance_id, snap, expected_version=self._version
                )
                return
            except ConcurrentUpdate:
                if attempt == _FENCE_TRIES - 1:
                    raise
                self._reload()

    # --- helpers ---------------------------------------------------------------

    def _lock(self, now: float) -> LockToken | None:
        lock = self.backends.state.acquire_lock(self.instance_id, self.policy.lock_ttl)
        if lock is None:
            # Another worker is logging this account in: never two logins at once.
            self.hold(now + min(self.policy.transient_retry_delay, self.policy.lock_ttl))
            self._reload()
        return lock

    def _admit(self, server: str, now: float) -> str | None:
        """A login slot (this process's and the server's), or ``None`` after a hold.

        A login that waits for a slot is neither a failure nor an attempt: nothing is
        stored, and it asks again after ``admission_retry_delay`` (spread a little, so
        that the waiters do not all ask at the same instant).
        """
        ctx = self._ctx
        if ctx.logins is not None and not ctx.logins.acquire(blocking=False):
            self._wait_for_slot(now)
            return None
        slots, limit = ctx.slots, self.policy.max_concurrent_logins_per_server
        if slots is None or limit is None:
            return ""
        token = slots.acquire_slot(_server_key(server), limit, self.policy.lock_ttl)
        if token is None:
            if ctx.logins is not None:
                ctx.logins.release()
            self._wait_for_slot(now)
        return token

    def _wait_for_slot(self, now: float) -> None:
        delay = self.policy.admission_retry_delay
        self.hold(now + delay * (0.5 + random.random()))  # noqa: S311 - spreading, not secrecy

    def _give_back(self, server: str, token: str) -> None:
        ctx = self._ctx
        if ctx.logins is not None:
            ctx.logins.release()
        if token and ctx.slots is not None:
            self._guarded("state", ctx.slots.release_slot, _server_key(server), token)

    def _server_down(self, credentials: Credentials | None) -> bool:
        """Whether this instance's server is down and someone else probes it now."""
        outages = self._ctx.outages
        if outages is None or credentials is None:
            return False
        server = _server_key(credentials.server)
        down = outages.is_down(server)
        self._show_server(server, down)
        if not down:
            return False
        # One login per interval finds out whether the server is back.
        now = self.backends.clock.now()
        return not outages.probe(server, now, self.policy.server_probe_interval)

    def _show_server(self, server: str, down: bool) -> None:
        ctx = self._ctx
        if down:
            ctx.down.add(server)
        else:
            ctx.down.discard(server)
        shown = ctx.server_metrics
        if shown is not None:
            self._guarded("metrics", shown.server, server, down)

    def _report(
        self, server: str, reason: Reason | None, now: float, *, ok: bool
    ) -> tuple[bool, int, bool]:
        """Tell the shared outage record what this login or check found.

        Answers (server down, accounts that failed together when this one took it
        down, this success ended an outage).
        """
        outages = self._ctx.outages
        if outages is None:
            return False, 0, False
        key = _server_key(server)
        try:
            if ok or reason not in (Reason.NETWORK, Reason.TERMINAL):
                # The broker answered (a wrong password is an answer too): its server
                # is up, whatever was thought of it.
                recovered = outages.mark_up(key)
                if recovered or key in self._ctx.down:
                    self._show_server(key, False)
                return False, 0, recovered
            policy = self.policy
            failed = outages.report_failure(key, self.instance_id, now, policy.server_outage_window)
            if failed < policy.server_outage_threshold:
                return outages.is_down(key), 0, False
            took_down = outages.mark_down(key)
            self._show_server(key, True)
            return True, failed if took_down else 0, False
        except StoreUnavailable as exc:
            log.warning(
                "instance %s: could not record the server's outage: %s", self.instance_id, exc
            )
            return False, 0, False

    def _known_bad(self, credentials: Credentials | None) -> bool:
        rejections = self._ctx.rejections
        if rejections is None or credentials is None:
            return False
        return rejections.rejected(self.instance_id, credentials)

    def _reject(self, credentials: Credentials) -> None:
        rejections = self._ctx.rejections
        if rejections is not None:
            self._guarded("credentials", rejections.reject, self.instance_id, credentials)

    def _terminal_status(self) -> TerminalStatus:
        try:
            status = self.backends.broker.status(self.instance_id)
        except Exception as exc:
            log.warning(
                "instance %s: the terminal did not answer (%s)",
                self.instance_id,
                type(exc).__name__,
            )
            return TerminalStatus.DOWN
        return status if isinstance(status, TerminalStatus) else TerminalStatus.DOWN

    def _terminal_account(self) -> Account | None:
        accounts = self._ctx.accounts
        if accounts is None:
            return None
        try:
            account = accounts.account(self.instance_id)
        except Exception as exc:
            log.warning(
                "instance %s: the terminal did not say who is logged in (%s)",
                self.instance_id,
                type(exc).__name__,
            )
            return None
        return account if isinstance(account, Account) else None

    def _credentials(self) -> Credentials | None:
        try:
            return self.backends.credentials.get(self.instance_id)
        except CredentialsUndecryptable:
            # Unusable is missing: logging in with a guess is never an option.
            log.error("instance %s: stored credentials do not decrypt", self.instance_id)
            return None

    def _confirmed_in_archive(self) -> bool:
        try:
            return self.backends.archive.is_confirmed(self.instance_id)
        except Exception as exc:
            # The archive never blocks the lifecycle. A confirmed closure also deleted
            # the credentials, so an id wrongly let through goes FAILED
            # (CREDENTIALS_MISSING), never in: one line, not a traceback.
            log.warning(
                "instance %s: the archive could not say whether its closure was confirmed "
                "(%s: %s); going on: its credentials decide",
                self.instance_id,
                type(exc).__name__,
                exc,
            )
            self._guarded("metrics", self.backends.metrics.error, "archive", self.instance_id)
            return False

    def _audit_refusal(self, event: str, actor: str, detail: str) -> None:
        record = refused_action(
            self.instance_id,
            self._snap,
            event,
            actor,
            detail,
            self.backends.clock.now(),
            deleted=self.deleted,
        )
        archive = self.backends.archive
        # Nothing is stored for a refusal, so there is no outbox to carry it: written
        # straight to the archive, and made durable.
        self._guarded("archive", archive.write, [record])
        self._guarded("archive", archive.flush)

    def _hold_off(self, exc: StoreUnavailable, now: float) -> None:
        """A backend is down: nothing changed; try this instance again a little later."""
        self.hold(now + self.policy.transient_retry_delay)
        self._guarded("metrics", self.backends.metrics.error, exc.backend, self.instance_id)
        log.warning("instance %s: %s; trying again later", self.instance_id, exc)

    def _guarded(self, component: str, call: Callable[..., object], *args: Any) -> None:
        # The transition is stored: a metrics backend (or a mark on the credentials)
        # that fails must not undo it or stop the rest.
        try:
            call(*args)
        except Exception:
            log.exception("instance %s: the %s failed", self.instance_id, component)
            if component != "metrics":
                try:
                    self.backends.metrics.error(component, self.instance_id)
                except Exception:
                    log.exception("instance %s: the metrics failed", self.instance_id)

    def _release(self, lock: LockToken) -> None:
        try:
            self.backends.state.release_lock(lock)
        except StoreUnavailable:
            # The lock expires by itself: its TTL is the safety net for this case.
            log.warning("instance %s: could not release the login lock", self.instance_id)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._reload()

    def _reload(self) -> None:
        self._take(self.backends.state.load(self.instance_id))

    def _take(self, stored: Stored | None) -> None:
        self._loaded = True
        before = self._snap
        if stored is None:
            if before is not None and not self.deleted:
                # Deleted under us (a closure confirmed elsewhere): final.
                self.deleted = True
                self._notify_change()
            self._version = 0
            return
        self._snap = stored.snapshot
        self._version = stored.version
        expectation = self._ctx.expectation
        if expectation is not None and (
            before is None or before.account != stored.snapshot.account
        ):
            # Taken over without a login of its own: the broker learns from the live state
            # whom the terminal must be logged in to before anything is traded on it.
            self._guarded(
                "broker", expectation.expect_account, self.instance_id, stored.snapshot.account
            )
        if stored.pending:
            # Entries another process stored and did not hand over (it died, or it was
            # an operator's command): this driver hands them over now.
            self._ctx.relay.recover([self.instance_id])
        self._observe(before, stored.snapshot)
        self._notify_change()

    def _observe(self, before: Snapshot | None, after: Snapshot | None) -> None:
        """Keep the uptime: connected from now on, or not."""
        now = self.backends.clock.now()
        connected = after is not None and after.status is State.CONNECTED
        if self._uptime is None:
            self._uptime = Uptime(now, connected)
        elif (before is not None and before.status is State.CONNECTED) != connected:
            self._uptime.observe(now, connected)

    def _hand_over(self) -> None:
        """A lone Lifecycle hands its notifications and records over at once; a Fleet's
        are handed over at the end of its pass, so that those of one kind due together
        go out as one message."""
        if self._own_relay:
            self._ctx.relay.deliver()

    def _notify_change(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def _state_name(self) -> str | None:
        return self._snap.status.value if self._snap is not None else None


_DEFAULT_POLICY = Policy()
_NO_FACTS = Facts()

_STEPS: dict[Due, Callable[[Lifecycle, float], None]] = {
    Due.LOGIN: Lifecycle._login,
    Due.CHECK: Lifecycle._check,
    Due.RECONNECT_CHECK: Lifecycle._reconnect_check,
    Due.RESTART: Lifecycle._restart,
    Due.CLOSE_TRADES: Lifecycle._close_trades,
    Due.SETTLE_TRADE: Lifecycle._settle_trade,
    Due.CLEANUP: Lifecycle._cleanup,
    Due.PURGE: Lifecycle._purge,
}


def _state_of(name: str) -> State | None:
    return State(name) if name in State.__members__ else State.INACTIVE


def _server_key(server: str) -> str:
    # The terminal's server list ignores case and spacing; so does the outage record.
    return server.strip().casefold()


def _unhealthy(snap: Snapshot, connected: bool, recent: bool) -> Reason | None:
    if not connected:
        return snap.last_failure_reason or snap.login_failure_reason or Reason.NETWORK
    if not recent:
        return Reason.NETWORK
    return Reason.TERMINAL
