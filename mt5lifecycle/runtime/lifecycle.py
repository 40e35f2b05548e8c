"""``Lifecycle``: drives one instance through the ports.

The machine (``machine.py``) decides; this module does the I/O around each decision,
in an order chosen for crash safety:

1. read what the decision needs (credentials, the broker's answer), under the
   per-instance login lock when it logs in or restarts;
2. store the decided snapshot in one atomic write checked against the version read,
   so a stale writer is refused instead of merged;
3. only then tell the world: log, archive, metrics, alerts, terminal commands.

A process that dies between 1 and 2 has changed nothing, and the next owner repeats
the step; one that dies after 2 finds the pending work (``due``) in the store. Every
wait is a due time: nothing here sleeps.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ..builtin.memory import NullArchive
from ..builtin.metrics import NullMetrics
from ..core.closing import close_all
from ..core.credentials import Credentials
from ..core.ids import check_instance_id
from ..core.machine import CLOSURE_CONFIRMED, Command, Decision, Facts, decide, machine_state
from ..core.policy import Policy
from ..core.records import (
    LOGIN_REASONS,
    ArchiveRecord,
    AuditRecord,
    ClosureRecord,
    LoginFailureRecord,
    LoginResult,
    Notification,
    TradeOutcomeRecord,
    TransitionRecord,
)
from ..core.snapshot import Snapshot, replace, utc
from ..core.states import AlertKind, Due, Reason, State, TerminalStatus
from ..errors import (
    ConcurrentUpdate,
    CredentialsUndecryptable,
    InvalidTransition,
    LockLost,
    StoreUnavailable,
)
from ..ports import LockToken, Stored
from .backends import Backends

__all__ = ["Lifecycle"]

log = logging.getLogger("mt5lifecycle")

_MAX_STEPS = 64
"""Due actions one ``run_due`` call takes at most; each one moves time or state on."""

_STORE_FAULTS = (StoreUnavailable,)
_STALE = (ConcurrentUpdate, LockLost)


class Lifecycle:
    """The login and connection lifecycle of one MetaTrader 5 instance.

    Not thread-safe: one caller drives an instance at a time (a ``Fleet`` does).
    """

    __slots__ = (
        "_check_at",
        "_gone",
        "_hold_until",
        "_loaded",
        "_on_change",
        "_snap",
        "_started",
        "_version",
        "backends",
        "instance_id",
        "policy",
    )

    def __init__(self, instance_id: str, backends: Backends, policy: Policy | None = None) -> None:
        self.instance_id = check_instance_id(instance_id)
        if not isinstance(backends, Backends):
            raise TypeError(f"backends must be a Backends value, not {type(backends).__name__}")
        if policy is None:
            policy = _DEFAULT_POLICY
        elif not isinstance(policy, Policy):
            raise TypeError(f"policy must be a Policy value, not {type(policy).__name__}")
        self.backends = backends
        self.policy = policy
        self._snap: Snapshot | None = None
        self._version = 0
        self._loaded = False
        self._started = False
        self._gone = False
        self._check_at: float | None = None
        self._hold_until: float | None = None
        self._on_change: Callable[[Lifecycle], None] | None = None

    def __repr__(self) -> str:
        state = self._snap.status.value if self._snap is not None else None
        return f"<Lifecycle {self.instance_id!r} {state}>"

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
    def next_due(self) -> float | None:
        """When ``run_due`` next has something to do, on the clock port."""
        snap = self._snap
        if snap is None or self._gone:
            return None
        due = snap.next_due if snap.due is not None else None
        check = self._check_at
        if check is not None and (due is None or check < due):
            due = check
        hold = self._hold_until
        if due is not None and hold is not None and hold > due:
            due = hold
        return due

    # --- starting and running --------------------------------------------------

    def start(self) -> None:
        """Start a new instance, or resume the one the state store holds.

        A new instance with credentials goes ``CONNECTING`` with its login due now
        (the next ``run_due`` logs in); without credentials it is ``FAILED``
        (``CREDENTIALS_MISSING``). A stored one carries on where it was.
        """
        if self._started:
            raise InvalidTransition(
                instance_id=self.instance_id,
                event="start",
                state=self._state_name(),
                detail="this Lifecycle is already started",
            )
        self._start(self.backends.state.load(self.instance_id))

    def _start(self, stored: Stored | None) -> None:
        """``start`` on a stored state already read (a fleet restores in batches)."""
        facts = self._resume(stored)
        if facts is not None:
            self._apply("start", facts)
        self._begin()

    def _resume(self, stored: Stored | None) -> Facts | None:
        """Take in the stored state; the facts of the ``start`` due when there is none.

        The first half of ``_start``: a fleet starting many new instances writes their
        ``start`` transitions together, then ``_begin``s each.
        """
        backends = self.backends
        # Only an id with nothing stored, or one whose cleanup was cut short, can be a
        # confirmed closure: asking the archive for every resumed instance would cost
        # a query each at start-up for nothing.
        if (stored is None or stored.snapshot.due is Due.CLEANUP) and self._confirmed_in_archive():
            raise InvalidTransition(
                instance_id=self.instance_id,
                event="start",
                state=State.INACTIVE.value,
                detail="its account closure was confirmed; a closed account never comes "
                "back: start a new instance with new credentials",
            )
        self._take(stored)
        if self._snap is None:
            return Facts(has_credentials=self._credentials_stored())
        # A resumed instance is new to this process's metrics: without this, an
        # exhausted or banned instance would have no series after a restart, and its
        # alert would fall silent.
        snap = self._snap
        self._guarded(
            "metrics",
            backends.metrics.transition,
            self.instance_id,
            None,
            snap.status,
            snap.last_failure_reason,
        )
        return None

    def _begin(self) -> None:
        """The second half of ``_start``, once the state is stored."""
        self._started = True
        if self._snap is not None and self._snap.status is State.CONNECTED:
            # A resumed CONNECTED instance was connected when its owner stopped:
            # check the terminal at once rather than trust it.
            self._check_at = self.backends.clock.now()

    def run_due(self) -> float | None:
        """Do what is due at the clock's now; return the next due time or ``None``.

        Raises ``StoreUnavailable`` when a backend is down: nothing was changed, and
        the instance waits ``policy.transient_retry_delay`` before trying again.
        """
        clock = self.backends.clock
        for _ in range(_MAX_STEPS):
            due = self.next_due
            now = clock.now()
            if due is None or due > now:
                return due
            self._step(now)
        return self.next_due

    # --- events ----------------------------------------------------------------

    def connection_lost(self) -> None:
        """The terminal lost its broker connection (``CONNECTED`` only)."""
        self._event("connection_lost")

    def terminal_failed(self) -> None:
        """The terminal crashed or stopped answering."""
        self._event("terminal_failed")

    def account_closed(self) -> None:
        """The broker closed the account: close its trades, never log in again."""
        self._event("account_closed")

    def account_banned(self) -> None:
        """The broker suspended or banned the account."""
        self._event("account_banned")

    # --- operator actions ------------------------------------------------------

    def reset(self, *, force: bool = False, by: str | None = None) -> None:
        """Clear the counters and log in again, from ``FAILED`` or ``INACTIVE``.

        ``by`` names the operator: the action is then archived (``AuditRecord``),
        refused or not.
        """
        self._audited("reset", by, lambda: self._event("reset"))

    def disable(self, *, by: str | None = None) -> None:
        """Take the instance out of service (``INACTIVE``, ``MANUAL``)."""
        self._audited("disable", by, lambda: self._event("disable"))

    def confirm_closure(self, *, by: str | None = None) -> None:
        """Confirm an ``ACCOUNT_CLOSED`` account: delete its credentials and state.

        Running it again after a crash mid-way finishes the cleanup.
        """

        def confirm() -> None:
            self._ensure_loaded()
            snap = self._snap
            if snap is not None and snap.due is Due.CLEANUP and not self._gone:
                self._cleanup(self.backends.clock.now())
                return
            self._event("confirm_closure")

        self._audited("confirm_closure", by, confirm)

    def _audited(self, action: str, by: str | None, run: Callable[[], None]) -> None:
        if by is None:
            run()
            return
        self._ensure_loaded()
        before = self._snap.status if self._snap is not None else None
        try:
            run()
        except InvalidTransition as exc:
            self._audit(action, by, before, before, "refused", exc.detail)
            raise
        after = State.INACTIVE if self._gone else (self._snap.status if self._snap else None)
        self._audit(action, by, before, after, "done", "")

    def _audit(
        self,
        action: str,
        by: str,
        before: State | None,
        after: State | None,
        outcome: str,
        detail: str,
    ) -> None:
        record = AuditRecord(
            instance_id=self.instance_id,
            at=utc(self.backends.clock.now()),
            actor=by,
            action=action,
            source=before,
            dest=after,
            outcome=outcome,
            detail=detail,
        )
        self._write([record])
        self._guarded("archive", self.backends.archive.flush)

    # --- the machinery ---------------------------------------------------------

    def _event(self, event: str) -> None:
        self._ensure_loaded()
        if self._gone or (self._snap is None and self._confirmed_in_archive()):
            raise InvalidTransition(
                instance_id=self.instance_id,
                event=event,
                state=State.INACTIVE.value,
                detail="its account closure was confirmed",
            )
        try:
            self._apply(event, self._facts())
        except _STALE:
            # Another writer moved the instance on: decide again on what it wrote.
            self._reload()
            self._apply(event, self._facts())
        snap = self._snap
        if snap is not None and snap.due in (Due.CLOSE_TRADES, Due.CLEANUP):
            # Closing trades and cleaning up change no state: do them now, while
            # the terminal still answers. They were stored as due first, so a crash
            # here leaves them to whoever resumes the instance.
            self._step(self.backends.clock.now())

    def _facts(self, **kwargs: Any) -> Facts:
        if self.policy.backoff_jitter:
            kwargs.setdefault("rand", random.random())  # noqa: S311 - jitter, not secrecy
        elif not kwargs:
            return _NO_FACTS
        return Facts(**kwargs)

    def _pending(self, now: float) -> Due | Literal["check"] | None:
        """What is due at ``now``: a due action, the connection check, or nothing.

        A hold that has run out is lifted on the way. A fleet's batched pass asks the
        same question, so that both paths take the same step.
        """
        hold = self._hold_until
        if hold is not None:
            if hold > now:
                return None
            self._hold_until = None
        snap = self._snap
        if snap is None:
            return None
        if snap.due is not None and snap.next_due is not None and snap.next_due <= now:
            return snap.due
        if self._check_at is not None and self._check_at <= now:
            return "check"
        return None

    def _step(self, now: float) -> None:
        pending = self._pending(now)
        if pending is None:
            return
        try:
            if pending == "check":
                self._check_connection(now)
            else:
                _ACTIONS[pending](self, now)
        except _STALE:
            self._reload()
        except _STORE_FAULTS as exc:
            self._hold_off(exc, now)
            raise

    def _hold_off(self, exc: StoreUnavailable, now: float) -> None:
        """A backend is down: nothing changed; try this instance again a little later."""
        self._hold_until = now + self.policy.transient_retry_delay
        self._guarded("metrics", self.backends.metrics.error, exc.backend, self.instance_id)
        log.warning("instance %s: %s; trying again later", self.instance_id, exc)

    def _apply(
        self,
        event: str,
        facts: Facts,
        *,
        lock: LockToken | None = None,
        failure: LoginResult | None = None,
    ) -> Decision:
        now = self.backends.clock.now()
        decision = self._decide(event, facts, now)
        version = self.backends.state.commit(
            self.instance_id, decision.snapshot, expected_version=self._version, lock=lock
        )
        self._finish(decision, version, now, lock, failure)
        return decision

    # ``_apply`` in two halves around its write, so that a fleet can decide for many
    # instances, write all their snapshots in one ``commit_many``, then finish each.

    def _decide(self, event: str, facts: Facts, now: float) -> Decision:
        decision = decide(self._snap, event, self.policy, now, facts)
        if decision is None:
            raise InvalidTransition(
                instance_id=self.instance_id,
                event=event,
                state=self._state_name(),
                detail=_refusal(self._snap, event),
            )
        return decision

    def _finish(
        self,
        decision: Decision,
        version: int,
        now: float,
        lock: LockToken | None,
        failure: LoginResult | None,
        *,
        notify: bool = True,
    ) -> None:
        """Everything after the decision is stored: the new state, then the world.

        ``notify=False`` leaves out ``_on_change``: a fleet's batched pass reschedules
        its instances itself, many under one lock, instead of each taking the lock.
        """
        before = self._snap
        self._version = version
        self._snap = decision.snapshot
        self._check_at = (
            now + self.policy.connection_check_interval
            if decision.snapshot.status is State.CONNECTED and self._started
            else None
        )
        self._publish(decision, before, now, failure)
        if lock is not None and lock.release_on_commit:
            lock = None  # given back by the commit
        for command in decision.commands:
            self._command(command, lock)
        if notify and self._on_change is not None:
            self._on_change(self)

    def _publish(
        self, decision: Decision, before: Snapshot | None, now: float, failure: LoginResult | None
    ) -> None:
        backends = self.backends
        instance_id = self.instance_id
        new = decision.snapshot
        event = decision.event
        source = before.status if before is not None else None
        if log.isEnabledFor(logging.INFO):
            log.info(
                "instance %s: %s -> %s on %s (%s)",
                instance_id,
                source.value if source is not None else "new",
                decision.dest,
                event,
                decision.reason.value if decision.reason is not None else "-",
            )
        failed = event == "login_failed" and failure is not None and failure.reason is not None
        if failed and failure is not None:
            log.warning(
                "instance %s: login failed (%s, code %s): %s; %d authentication failures "
                "in a row; %s -> %s",
                instance_id,
                failure.reason.value if failure.reason is not None else None,
                failure.code,
                failure.message,
                new.login_attempt_count,
                source.value if source is not None else "new",
                decision.dest,
            )
        # The default archive and metrics keep nothing: a fleet that uses them does not
        # pay for records and samples built only to be dropped.
        if not isinstance(backends.archive, NullArchive):
            records: list[ArchiveRecord] = [
                TransitionRecord(
                    instance_id=instance_id,
                    at=utc(now),
                    event=event,
                    source=source,
                    dest=new.status,
                    reason=decision.reason,
                )
            ]
            if failed and failure is not None and failure.reason is not None:
                records.append(
                    LoginFailureRecord(
                        instance_id=instance_id,
                        at=utc(_login_time(decision, now)),
                        attempt=new.login_attempt_count,
                        reason=failure.reason,
                        code=failure.code,
                        message=failure.message,
                    )
                )
            self._write(records)
        metrics = backends.metrics
        if not isinstance(metrics, NullMetrics):
            if failed and failure is not None:
                self._guarded(
                    "metrics", metrics.login, instance_id, failure.reason, new.login_attempt_count
                )
            elif event == "login_succeeded":
                self._guarded("metrics", metrics.login, instance_id, None, 0)
            self._guarded(
                "metrics", metrics.transition, instance_id, source, new.status, decision.reason
            )
            if event == "restart_due" and new.status is State.CONNECTING:
                self._guarded("metrics", metrics.restart, instance_id, new.restart_count)
        if decision.alerts:
            at = utc(now)
            for alert in decision.alerts:
                self._alert(alert.kind, alert.reason, alert.message, at)

    def _alert(self, kind: AlertKind, reason: Reason | None, message: str, at: Any) -> None:
        notification = Notification(
            kind=kind, instance_id=self.instance_id, reason=reason, message=message, at=at
        )
        self._guarded("notifier", self.backends.notifier.notify, notification)
        self._guarded("metrics", self.backends.metrics.alert, notification)

    def _write(self, records: Sequence[ArchiveRecord]) -> None:
        self._guarded("archive", self.backends.archive.write, records)

    def _guarded(self, component: str, call: Callable[..., object], *args: Any) -> None:
        # The transition is stored: a notifier, an archive or a metrics backend that
        # fails must not undo it or stop the others hearing of it.
        try:
            call(*args)
        except Exception:
            log.exception("instance %s: the %s failed", self.instance_id, component)
            if component != "metrics":
                try:
                    self.backends.metrics.error(component, self.instance_id)
                except Exception:
                    log.exception("instance %s: the metrics failed", self.instance_id)

    def _command(self, command: Command, lock: LockToken | None) -> None:
        broker = self.backends.broker
        if command is Command.STOP_TERMINAL:
            try:
                broker.stop(self.instance_id)
            except Exception:
                log.exception("instance %s: stopping the terminal failed", self.instance_id)
            return
        try:
            broker.restart(self.instance_id)
        except Exception as exc:
            log.warning(
                "instance %s: the terminal did not come up (%s)",
                self.instance_id,
                type(exc).__name__,
            )
            self._apply("terminal_failed", self._facts(), lock=lock)

    # --- due actions -----------------------------------------------------------

    def _login(self, now: float) -> None:
        backends = self.backends
        lock = backends.state.acquire_lock(self.instance_id, self.policy.lock_ttl)
        if lock is None:
            # Another worker is logging this account in: never two logins at once.
            self._hold_until = now + min(self.policy.transient_retry_delay, self.policy.lock_ttl)
            self._reload()
            return
        released = False
        try:
            released = self._login_locked(lock)
        finally:
            if not released:
                self._release(lock)

    def _login_locked(self, lock: LockToken) -> bool:
        """Log in under ``lock``; True when the commit of the result released it."""
        event, facts, lock, failure = self._log_in(lock)
        self._apply(event, facts, lock=lock, failure=failure)
        return lock.release_on_commit

    def _log_in(self, lock: LockToken) -> tuple[str, Facts, LockToken, LoginResult | None]:
        """The broker's half of a login under ``lock``: the event it leads to.

        Answers ``(event, facts, lock, failure)`` for ``_apply``. The lock comes back
        marked to be given back by the result's write (one round trip, not two),
        except when there are no credentials: nothing was tried, and the caller
        releases it.
        """
        backends = self.backends
        snap = self._snap
        assert snap is not None
        credentials = self._credentials()
        if credentials is None:
            return "credentials_missing", self._facts(has_credentials=False), lock, None
        login_at = backends.clock.now()
        try:
            result = backends.broker.login(
                self.instance_id, credentials, logged_in_before=snap.ever_logged_in
            )
        except Exception as exc:
            # A login that raised may have reached the broker or not: never count it
            # as a password try.
            result = LoginResult.failure(
                Reason.NETWORK, None, f"the login call raised {type(exc).__name__}"
            )
        if not isinstance(result, LoginResult) or (
            not result.ok and result.reason not in LOGIN_REASONS
        ):
            result = LoginResult.failure(
                Reason.NETWORK,
                None,
                f"the broker answered {type(result).__name__}, not a LoginResult",
            )
        releasing = LockToken(lock.instance_id, lock.token, release_on_commit=True)
        if result.ok:
            return "login_succeeded", self._facts(login_at=login_at), releasing, None
        return (
            "login_failed",
            self._facts(reason=result.reason, login_at=login_at),
            releasing,
            result,
        )

    def _reconnect_check(self, now: float) -> None:
        if self._terminal_status() is TerminalStatus.CONNECTED:
            # The terminal reconnected by itself: no login, no password sent.
            self._apply("login_succeeded", self._facts())
            return
        self._login(now)

    def _restart(self, now: float) -> None:
        backends = self.backends
        lock = backends.state.acquire_lock(self.instance_id, self.policy.lock_ttl)
        if lock is None:
            self._hold_until = now + min(self.policy.transient_retry_delay, self.policy.lock_ttl)
            self._reload()
            return
        try:
            has = self._credentials() is not None
            self._apply("restart_due", self._facts(has_credentials=has), lock=lock)
        finally:
            self._release(lock)

    def _close_trades(self, now: float) -> None:
        backends = self.backends
        close_all(backends.broker, self.instance_id, self.policy, backends.clock.now, self._outcome)
        self._settle(due=None, next_due=None, terminal_stopped=True)
        self._command(Command.STOP_TERMINAL, None)

    def _outcome(self, outcome: TradeOutcomeRecord) -> None:
        log.info(
            "instance %s: %s %s %s (retcode %s)",
            self.instance_id,
            outcome.kind,
            outcome.ticket,
            outcome.outcome.value,
            outcome.retcode,
        )
        self._write([outcome])
        # Each trade's outcome is made durable before the next trade is touched.
        self._guarded("archive", self.backends.archive.flush)

    def _cleanup(self, now: float) -> None:
        backends = self.backends
        snap = self._snap
        assert snap is not None
        backends.credentials.delete(self.instance_id)
        final = replace(snap, {"status": State.ACCOUNT_CLOSED, "due": None, "next_due": None})
        self._guarded("archive", backends.archive.flush)
        # Durable before the live state goes: from then on only the archive remembers
        # that this id must never start again. An archive that cannot take it raises
        # StoreUnavailable here, and confirm_closure run again finishes the cleanup.
        backends.archive.confirm(
            ClosureRecord(instance_id=self.instance_id, at=utc(now), final=final)
        )
        self._alert(
            AlertKind.CREDENTIALS_DELETED,
            Reason.ACCOUNT_CLOSED,
            "closure confirmed: the credentials and the live state were deleted; the "
            "history stays in the archive",
            utc(now),
        )
        backends.state.delete(self.instance_id)
        self._guarded(
            "metrics", backends.metrics.transition, self.instance_id, State.INACTIVE, None, None
        )
        log.info("instance %s: closure confirmed, credentials and state deleted", self.instance_id)
        self._snap = replace(snap, {"due": None, "next_due": None})
        self._gone = True
        self._check_at = None
        if self._on_change is not None:
            self._on_change(self)

    def _check_connection(self, now: float) -> None:
        event = self._checked(self._terminal_status(), now)
        if event is not None:
            self._apply(event, self._facts())

    def _checked(self, status: TerminalStatus, now: float) -> str | None:
        """The event a connection check's answer leads to, if any."""
        if status is TerminalStatus.CONNECTED:
            self._check_at = now + self.policy.connection_check_interval
            return None
        if status is TerminalStatus.DISCONNECTED:
            return "connection_lost"
        return "terminal_failed"

    # --- helpers ---------------------------------------------------------------

    def _refresh(self, stored: Stored | None) -> None:
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
            stop = Command.STOP_TERMINAL if new.terminal_stopped else Command.RESTART_TERMINAL
            self._command(stop, None)

    def _fence(self) -> None:
        """Take the instance over from a previous driver.

        Storing the same snapshot again bumps the version, so a write the previous
        driver still had in flight (a worker that lost its lease while paused) is
        refused as stale instead of landing after the takeover.
        """
        if self._snap is not None and not self._gone:
            self._settle()

    def _settle(self, **changes: Any) -> None:
        """Store bookkeeping that is not a transition (a finished due action)."""
        snap = self._snap
        assert snap is not None
        new = replace(snap, changes)
        self._version = self.backends.state.commit(
            self.instance_id, new, expected_version=self._version
        )
        self._snap = new
        if self._on_change is not None:
            self._on_change(self)

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
        except Exception:
            # The archive never blocks the lifecycle. A confirmed closure also deleted
            # the credentials, so an id wrongly let through goes FAILED, never in.
            log.exception(
                "instance %s: the archive could not say whether its closure was confirmed",
                self.instance_id,
            )
            self._guarded("metrics", self.backends.metrics.error, "archive", self.instance_id)
            return False

    def _credentials_stored(self) -> bool:
        return self._credentials() is not None

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
        if stored is None:
            if self._snap is not None and not self._gone:
                # Deleted under us (a closure confirmed elsewhere): final.
                self._gone = True
                self._check_at = None
                if self._on_change is not None:
                    self._on_change(self)
            self._version = 0
            return
        self._snap = stored.snapshot
        self._version = stored.version
        if stored.snapshot.status is not State.CONNECTED:
            self._check_at = None
        elif self._started and self._check_at is None:
            self._check_at = self.backends.clock.now()
        if self._on_change is not None:
            self._on_change(self)

    def _state_name(self) -> str | None:
        return self._snap.status.value if self._snap is not None else None


_DEFAULT_POLICY = Policy()
_NO_FACTS = Facts()

_ACTIONS: dict[Due, Callable[[Lifecycle, float], None]] = {
    Due.LOGIN: Lifecycle._login,
    Due.RECONNECT_CHECK: Lifecycle._reconnect_check,
    Due.RESTART: Lifecycle._restart,
    Due.CLOSE_TRADES: Lifecycle._close_trades,
    Due.CLEANUP: Lifecycle._cleanup,
}


def _login_time(decision: Decision, now: float) -> float:
    last = decision.snapshot.last_login_attempt
    return last.timestamp() if last is not None else now


def _refusal(snapshot: Snapshot | None, event: str) -> str:
    state = machine_state(snapshot)
    if state == CLOSURE_CONFIRMED:
        return "its account closure was confirmed"
    if snapshot is not None and snapshot.status is State.ACCOUNT_CLOSED and event == "reset":
        return "a closed account never comes back: start a new instance with new credentials"
    if snapshot is None:
        return "start() it first"
    return "the transition table has no such transition"
