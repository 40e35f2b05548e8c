"""THE transition table: every event, in every state, and what it leads to.

This module decides and does nothing else. It opens no socket, reads no clock and
sleeps nowhere. The runtime (``runtime/lifecycle.py``) observes the world (what the
broker answered, whether credentials are stored, whether a broker server is down),
hands the observation to ``decide`` as an event and its ``Facts``, and gets back a
``Decision``: the next snapshot, the notifications and archive records that travel
with it, and the commands to carry out. Nothing else decides: a reader can draw the
whole lifecycle from ``TABLE``, the reconnect, closure and cleanup steps included.

Why the table is shaped so:

* One row per decision. A row names its event, its source states, its destination
  (``SAME`` keeps the state: an internal transition of ``transitions``), the named
  guards that must hold (``guards``) or must not (``unless``), and the named effects
  that compute the next snapshot. Rows for the same event and source are tried in
  order; the first whose guards hold wins, as in ``transitions``.
* Events are what happened, named after the observation: ``login_failed``,
  ``connection_checked`` (a periodic check answered), ``reconnect_checked`` (the check
  after a network loss answered), ``trade_settled``. A due step's I/O is fixed by its
  ``Due``; what the answer leads to is always a row here.
* A row that only moves a due time or records bookkeeping is ``quiet``: it is stored
  (the snapshot holds every next step, so a process that dies loses nothing) but not
  archived as a transition, because nothing happened to the lifecycle. A decision that
  changes nothing at all (``login_due`` when the login may go ahead) is not stored.
* The engine is ``transitions``, built once at import: one ``Machine`` shared by
  every instance. A ``Machine`` per instance (or ``add_model``, which binds trigger
  methods onto each model) costs kilobytes per instance; a fleet of 100,000 would pay
  for that in gigabytes. Here a decision builds a small slotted ``_Step``, triggers
  the shared ``Event`` on it, and throws it away.
* Three machine states are not ``State`` values: ``NEW`` (nothing stored yet: only
  ``start`` is accepted), ``CLOSURE_CONFIRMED`` (reads as ``INACTIVE``; the cleanup is
  under way) and ``DELETED`` (the cleanup is done and the live state is gone; it
  refuses everything, because a confirmed closure is final: the way on is a new
  instance).
* Waits are data, not sleeps: a row that waits sets ``due`` and ``next_due`` in the
  snapshot, and the runtime acts when that time comes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any

import attrs
from transitions import Machine
from transitions.core import MachineError

from .answers import Account, LoginResult, Ticket
from .policy import Policy
from .records import (
    ArchiveRecord,
    AuditRecord,
    LoginFailureRecord,
    Notification,
    TradeOutcomeRecord,
    TransitionRecord,
)
from .snapshot import Snapshot, replace, utc
from .states import AlertKind, ConnectionState, Due, Reason, State, TerminalStatus

__all__ = [
    "CLOSURE_CONFIRMED",
    "DELETED",
    "EVENTS",
    "NEW",
    "SAME",
    "TABLE",
    "Command",
    "Decision",
    "Facts",
    "Refusal",
    "Row",
    "decide",
    "dot",
    "machine_state",
    "markdown_table",
    "mermaid",
    "needs_operator",
    "refusal",
    "refused_action",
]

NEW = "NEW"
CLOSURE_CONFIRMED = "CLOSURE_CONFIRMED"
DELETED = "DELETED"
SAME: None = None
"""A row's destination when the state stays as it is (an internal transition)."""

CONNECTING = State.CONNECTING.value
CONNECTED = State.CONNECTED.value
FAILED = State.FAILED.value
INACTIVE = State.INACTIVE.value
ACCOUNT_CLOSED = State.ACCOUNT_CLOSED.value

MACHINE_STATES = (
    NEW,
    CONNECTING,
    CONNECTED,
    FAILED,
    INACTIVE,
    ACCOUNT_CLOSED,
    CLOSURE_CONFIRMED,
    DELETED,
)


class Command(str, Enum):
    """What the runtime must do besides storing the decision."""

    LOG_IN = "LOG_IN"
    """Send the credentials to the terminal, once; its answer is the next event."""
    STOP_TERMINAL = "STOP_TERMINAL"
    RESTART_TERMINAL = "RESTART_TERMINAL"
    """Stop (if running) and start the terminal: a restart, or a reset after a stop."""
    REJECT_CREDENTIALS = "REJECT_CREDENTIALS"
    """Remember these credentials as exhausted in the credential store (SPEC section 15).
    Done before the state is written: a process that dies in between leaves the
    credentials marked, never a live state that has forgotten them."""
    FORGIVE_CREDENTIALS = "FORGIVE_CREDENTIALS"
    """Credentials that were marked as exhausted just logged in: drop the mark."""


@attrs.frozen(kw_only=True)
class Facts:
    """What an event came with: everything a guard may look at besides the snapshot."""

    result: LoginResult | None = None
    """The broker's answer to the login (``login_succeeded``, ``login_failed``)."""
    login_at: float | None = None
    """When the login call that produced this event began."""
    has_credentials: bool = True
    """Whether the credential store holds credentials (``start``, ``login_due``, restarts)."""
    known_bad: bool = False
    """The stored credentials are the ones that exhausted their attempts (SPEC 15)."""
    force: bool = False
    """An operator's ``reset(force=True)``: try known-bad credentials once more."""
    closure_confirmed: bool = False
    """The archive remembers a confirmed closure of this id (``start``)."""
    terminal: TerminalStatus | None = None
    """A connection check's answer."""
    account: Account | None = None
    """The account the terminal says it is logged in to, when the broker can tell."""
    expected: Account | None = None
    """The account of the credentials a login used (the snapshot keeps it afterwards)."""
    server_down: bool = False
    """The instance's broker server is taken as down (SPEC 15)."""
    outage_accounts: int = 0
    """This failure took the server down: how many accounts failed together."""
    server_recovered: bool = False
    """This login is the first to succeed on a server that was down."""
    tickets: tuple[Ticket, ...] = ()
    """The positions and orders a closed account still had (``trades_listed``)."""
    outcome: TradeOutcomeRecord | None = None
    """How the first ticket of the closing plan ended (``trade_settled``)."""
    actor: str | None = None
    """The operator who asked for this event (``reset``, ``disable``, ...): audited."""
    rand: float = 0.5
    """A uniform draw in [0, 1) for the policy's jitter."""


@attrs.frozen
class Decision:
    """A transition the table allows: what to store, what to say, what to do."""

    event: str
    source: str
    dest: str
    snapshot: Snapshot | None
    """The snapshot to store; ``None`` deletes the live state (``DELETED``)."""
    changed: bool
    """Whether anything is to be stored: a decision that changes nothing is not written."""
    notifications: tuple[Notification, ...]
    records: tuple[ArchiveRecord, ...]
    commands: tuple[Command, ...]
    reason: Reason | None
    """The reason archived with the transition."""


@attrs.frozen
class Row:
    """One line of the table."""

    event: str
    sources: tuple[str, ...]
    dest: str | None
    guards: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    effects: tuple[str, ...] = ()
    quiet: bool = False
    """Stored, but not archived as a transition: only a due time or bookkeeping moved."""


_TAKEN = (CONNECTING, CONNECTED, FAILED)
_RESUMABLE = (CONNECTING, FAILED, INACTIVE, ACCOUNT_CLOSED, CLOSURE_CONFIRMED)

# fmt: off
TABLE: tuple[Row, ...] = (
    # -- starting, and taking up what the state store holds -------------------------
    Row("start", (NEW,), CONNECTING, guards=("has_credentials",),
        unless=("known_bad", "closure_confirmed"), effects=("login_soon",)),
    Row("start", (NEW,), FAILED, unless=("has_credentials", "closure_confirmed"),
        effects=("credentials_missing",)),
    Row("start", (NEW,), FAILED, guards=("has_credentials", "known_bad"),
        unless=("closure_confirmed",), effects=("credentials_rejected",)),
    Row("resumed", (CONNECTED,), SAME, effects=("check_now",), quiet=True),
    Row("resumed", _RESUMABLE, SAME, quiet=True),

    # -- logging in (due LOGIN) -----------------------------------------------------
    Row("login_due", (CONNECTING,), FAILED, unless=("has_credentials",),
        effects=("credentials_missing",)),
    Row("login_due", (CONNECTING,), FAILED, guards=("known_bad",), unless=("forced_try",),
        effects=("credentials_rejected",)),
    Row("login_due", (CONNECTING,), SAME, guards=("server_down",),
        effects=("wait_for_server",), quiet=True),
    Row("login_due", (CONNECTING,), SAME, effects=("log_in",), quiet=True),

    Row("login_succeeded", (CONNECTING,), FAILED, guards=("wrong_account",),
        effects=("cross_wired", "schedule_restart")),
    Row("login_succeeded", (CONNECTING,), CONNECTED, effects=("connected", "announce_recovery")),

    Row("login_failed", (CONNECTING,), SAME, guards=("outage_failure", "server_down"),
        effects=("wait_for_server", "announce_outage")),
    Row("login_failed", (CONNECTING,), SAME, guards=("auth_failure", "attempts_left"),
        effects=("count_auth_failure", "retry_login_after_backoff", "announce_recovery")),
    Row("login_failed", (CONNECTING,), FAILED, guards=("auth_failure",), unless=("attempts_left",),
        effects=("count_auth_failure", "attempts_exhausted", "announce_recovery")),
    Row("login_failed", (CONNECTING,), SAME, guards=("network_failure", "network_retries_left"),
        effects=("count_network_failure", "reconnect_check_later")),
    Row("login_failed", (CONNECTING,), FAILED, guards=("network_failure",),
        unless=("network_retries_left",), effects=("network_exhausted", "schedule_restart")),
    Row("login_failed", (CONNECTING,), FAILED, guards=("terminal_failure",),
        effects=("terminal_down", "schedule_restart")),
    Row("login_failed", (CONNECTING,), ACCOUNT_CLOSED, guards=("account_closed_failure",),
        effects=("begin_closing", "announce_recovery")),
    Row("login_failed", (CONNECTING,), INACTIVE, guards=("account_banned_failure",),
        effects=("suspend", "announce_recovery")),

    # -- watching the connection (due CHECK, due RECONNECT_CHECK) -------------------
    Row("connection_checked", (CONNECTED,), FAILED, guards=("wrong_account",),
        effects=("cross_wired", "schedule_restart")),
    Row("connection_checked", (CONNECTED,), SAME, guards=("terminal_online", "server_back"),
        effects=("check_later", "announce_recovery")),
    Row("connection_checked", (CONNECTED,), SAME, guards=("terminal_online",),
        effects=("check_later",), quiet=True),
    Row("connection_checked", (CONNECTED,), CONNECTING, guards=("terminal_offline",),
        effects=("connection_dropped", "announce_outage")),
    Row("connection_checked", (CONNECTED,), FAILED, effects=("terminal_down", "schedule_restart")),

    Row("reconnect_checked", (CONNECTING,), FAILED, guards=("wrong_account",),
        effects=("cross_wired", "schedule_restart")),
    Row("reconnect_checked", (CONNECTING,), CONNECTED, guards=("terminal_online",),
        effects=("connected", "announce_recovery")),
    Row("reconnect_checked", (CONNECTING,), SAME, effects=("login_now",)),

    # -- what the host reports ------------------------------------------------------
    Row("connection_lost", (CONNECTED,), CONNECTING, effects=("connection_dropped",)),
    Row("terminal_failed", (CONNECTING, CONNECTED), FAILED,
        effects=("terminal_down", "schedule_restart")),
    Row("account_closed", _TAKEN, ACCOUNT_CLOSED, effects=("begin_closing",)),
    Row("account_banned", _TAKEN, INACTIVE, effects=("suspend",)),

    # -- restarts (due RESTART) -----------------------------------------------------
    Row("restart_due", (FAILED,), FAILED, guards=("restart_pending",), unless=("restarts_left",),
        effects=("recovery_exhausted",)),
    Row("restart_due", (FAILED,), FAILED, guards=("restart_pending",), unless=("has_credentials",),
        effects=("credentials_missing",)),
    Row("restart_due", (FAILED,), FAILED, guards=("restart_pending", "known_bad"),
        unless=("forced_try",), effects=("credentials_rejected",)),
    Row("restart_due", (FAILED,), SAME, guards=("restart_pending", "server_down"),
        effects=("wait_for_server",), quiet=True),
    Row("restart_due", (FAILED,), CONNECTING, guards=("restart_pending",),
        effects=("restart", "login_now")),

    # -- closing a closed account's trades (due CLOSE_TRADES, due SETTLE_TRADE) -----
    Row("trades_listed", (ACCOUNT_CLOSED,), SAME, guards=("tickets_listed",),
        effects=("plan_closing",), quiet=True),
    Row("trades_listed", (ACCOUNT_CLOSED,), SAME, effects=("closing_done",)),
    Row("trade_settled", (ACCOUNT_CLOSED,), SAME, guards=("tickets_after_this",),
        effects=("record_outcome",), quiet=True),
    Row("trade_settled", (ACCOUNT_CLOSED,), SAME, effects=("record_outcome", "closing_done")),

    # -- the operator ---------------------------------------------------------------
    Row("reset", (FAILED, INACTIVE), CONNECTING, unless=("known_bad",),
        effects=("clear_counters", "login_now")),
    Row("reset", (FAILED, INACTIVE), CONNECTING, guards=("known_bad", "forced"),
        effects=("clear_counters", "one_more_try", "login_now")),
    Row("disable", (CONNECTING, CONNECTED, FAILED, INACTIVE), INACTIVE,
        effects=("take_out_of_service",)),
    Row("confirm_closure", (ACCOUNT_CLOSED,), CLOSURE_CONFIRMED, effects=("cleanup_now",)),
    # Confirmed again after a crash cut the cleanup short: it goes on from where it was.
    Row("confirm_closure", (CLOSURE_CONFIRMED,), SAME, quiet=True),

    # -- the confirmed closure's cleanup (due CLEANUP, due PURGE) -------------------
    Row("credentials_deleted", (CLOSURE_CONFIRMED,), SAME, effects=("announce_deletion",),
        quiet=True),
    Row("purged", (CLOSURE_CONFIRMED,), DELETED, quiet=True),
)
# fmt: on

EVENTS: tuple[str, ...] = tuple(dict.fromkeys(row.event for row in TABLE))
"""Every event the table knows, in table order."""


class _Step:
    """The model ``transitions`` drives for one decision; discarded afterwards.

    Slotted and short-lived: the shared ``Machine`` never keeps a reference to it.
    """

    __slots__ = (
        "alerts",
        "changes",
        "commands",
        "effects",
        "facts",
        "now",
        "policy",
        "row",
        "snap",
        "state",
    )

    def __init__(
        self, state: str, snap: Snapshot, facts: Facts, policy: Policy, now: float
    ) -> None:
        self.state = state
        self.snap = snap
        self.facts = facts
        self.policy = policy
        self.now = now
        self.changes: dict[str, Any] = {}
        self.alerts: list[tuple[AlertKind, Reason | None, str]] = []
        self.commands: list[Command] = []
        self.effects: tuple[Callable[[_Step], None], ...] = ()
        self.row: Row | None = None

    def get(self, field: str) -> Any:
        """A field's value as the effects so far have left it."""
        if field in self.changes:
            return self.changes[field]
        return getattr(self.snap, field)

    def alert(self, kind: AlertKind, reason: Reason | None, message: str) -> None:
        self.alerts.append((kind, reason, message))


# --- guards: named predicates of (snapshot, facts, policy) -------------------------


def _failure(step: _Step) -> Reason | None:
    result = step.facts.result
    return result.reason if result is not None else None


def has_credentials(step: _Step) -> bool:
    return step.facts.has_credentials


def known_bad(step: _Step) -> bool:
    return step.facts.known_bad


def forced(step: _Step) -> bool:
    return step.facts.force


def forced_try(step: _Step) -> bool:
    """An operator asked for one more try of known-bad credentials (``reset(force=True)``)."""
    return step.snap.forced_try


def closure_confirmed(step: _Step) -> bool:
    return step.facts.closure_confirmed


def auth_failure(step: _Step) -> bool:
    return _failure(step) is Reason.AUTH_FAILED


def attempts_left(step: _Step) -> bool:
    """This failure is not the last allowed one (it is counted before the check)."""
    return step.snap.login_attempt_count + 1 < step.policy.max_login_attempts


def network_failure(step: _Step) -> bool:
    return _failure(step) is Reason.NETWORK


def network_retries_left(step: _Step) -> bool:
    return step.snap.network_retry_count < step.policy.max_network_retries


def terminal_failure(step: _Step) -> bool:
    return _failure(step) is Reason.TERMINAL


def outage_failure(step: _Step) -> bool:
    """A failure a broker server outage explains (SPEC 15): the link, not the password."""
    return _failure(step) in (Reason.NETWORK, Reason.TERMINAL)


def account_closed_failure(step: _Step) -> bool:
    return _failure(step) is Reason.ACCOUNT_CLOSED


def account_banned_failure(step: _Step) -> bool:
    return _failure(step) is Reason.ACCOUNT_BANNED


def server_down(step: _Step) -> bool:
    return step.facts.server_down


def wrong_account(step: _Step) -> bool:
    """The terminal is logged in to an account other than the one it should be.

    After a login the expected account is the credentials'; at a check it is the one
    the last login stored. A broker that cannot say who is logged in is trusted.
    """
    said = step.facts.account
    expected = step.facts.expected or step.snap.account
    return said is not None and expected is not None and not said.matches(expected)


def terminal_online(step: _Step) -> bool:
    return step.facts.terminal is TerminalStatus.CONNECTED


def terminal_offline(step: _Step) -> bool:
    """The terminal runs but lost its broker connection."""
    return step.facts.terminal is TerminalStatus.DISCONNECTED


def restarts_left(step: _Step) -> bool:
    return step.snap.restart_count < step.policy.max_restarts


def restart_pending(step: _Step) -> bool:
    """Only a recoverable ``FAILED`` (network, terminal) has a restart to take."""
    return step.snap.due is Due.RESTART


def server_back(step: _Step) -> bool:
    """This answer is the first to show a server taken as down is back."""
    return step.facts.server_recovered


def tickets_listed(step: _Step) -> bool:
    return bool(step.facts.tickets)


def tickets_after_this(step: _Step) -> bool:
    return len(step.snap.tickets or ()) > 1


GUARDS: dict[str, Callable[[_Step], bool]] = {
    f.__name__: f
    for f in (
        has_credentials,
        known_bad,
        forced,
        forced_try,
        closure_confirmed,
        auth_failure,
        attempts_left,
        network_failure,
        network_retries_left,
        terminal_failure,
        outage_failure,
        account_closed_failure,
        account_banned_failure,
        server_down,
        wrong_account,
        terminal_online,
        terminal_offline,
        server_back,
        restarts_left,
        restart_pending,
        tickets_listed,
        tickets_after_this,
    )
}


# --- effects: named steps that compute the next snapshot ---------------------------


def _due(step: _Step, due: Due | None, delay: float = 0.0) -> None:
    step.changes.update(due=due, next_due=None if due is None else step.now + delay)


def login_now(step: _Step) -> None:
    _due(step, Due.LOGIN)


def login_soon(step: _Step) -> None:
    """A first login, spread over ``Policy.start_spread``: a host that starts thousands
    of instances at once does not send thousands of logins in the same second."""
    _due(step, Due.LOGIN, step.policy.start_spread * step.facts.rand)


def log_in(step: _Step) -> None:
    step.commands.append(Command.LOG_IN)


def check_now(step: _Step) -> None:
    # A resumed CONNECTED instance was connected when its owner stopped: check the
    # terminal at once rather than trust it.
    _due(step, Due.CHECK)


def check_later(step: _Step) -> None:
    _due(step, Due.CHECK, step.policy.connection_check_interval)


def connected(step: _Step) -> None:
    if step.snap.failed_since_success:
        step.alert(AlertKind.LOGIN_RECOVERED, None, "logged in again after failures")
    if step.snap.forced_try:
        step.commands.append(Command.FORGIVE_CREDENTIALS)
    expected = step.facts.expected
    step.changes.update(
        connection_state=ConnectionState.CONNECTED,
        login_attempt_count=0,
        restart_count=0,
        network_retry_count=0,
        login_failure_reason=None,
        ever_logged_in=True,
        failed_since_success=False,
        terminal_stopped=False,
        forced_try=False,
        account=expected if expected is not None else step.snap.account,
    )
    check_later(step)
    _stamp_login(step)


def announce_recovery(step: _Step) -> None:
    # Any answer but a lost link (a refused password too) shows the server is back.
    if step.facts.server_recovered and step.facts.expected is not None:
        server = step.facts.expected.server
        step.alert(
            AlertKind.BROKER_SERVER_RECOVERED,
            None,
            f"broker server {server!r} answers again; the accounts that waited for it log in now",
        )


def wait_for_server(step: _Step) -> None:
    # Waiting is neither a failure nor an attempt: the due action stays what it was,
    # later, and no count moves.
    due = step.snap.due if step.snap.due is not None else Due.LOGIN
    _due(step, due, step.policy.server_probe_interval)


def announce_outage(step: _Step) -> None:
    accounts = step.facts.outage_accounts
    account = step.facts.expected or step.snap.account
    if accounts and account is not None:
        step.alert(
            AlertKind.BROKER_SERVER_DOWN,
            _failure(step) or Reason.NETWORK,
            f"broker server {account.server!r} is taken as down: {accounts} accounts "
            f"failed together within {step.policy.server_outage_window:g} s; their logins "
            "and restarts wait for it without using up their counts",
        )


def _stamp_login(step: _Step) -> None:
    if step.facts.login_at is not None:
        step.changes["last_login_attempt"] = utc(step.facts.login_at)


def count_auth_failure(step: _Step) -> None:
    attempts = step.snap.login_attempt_count + 1
    step.changes.update(
        login_attempt_count=attempts,
        login_failure_reason=Reason.AUTH_FAILED,
        failed_since_success=True,
    )
    _stamp_login(step)
    policy = step.policy
    # With max_login_attempts at or below the threshold the final failure fires it.
    if attempts == min(policy.repeated_failure_threshold, policy.max_login_attempts):
        step.alert(
            AlertKind.REPEATED_LOGIN_FAILURE,
            Reason.AUTH_FAILED,
            f"{attempts} authentication failures in a row",
        )


def retry_login_after_backoff(step: _Step) -> None:
    attempts = step.get("login_attempt_count")
    _due(step, Due.LOGIN, step.policy.login_delay(attempts, step.facts.rand))


def attempts_exhausted(step: _Step) -> None:
    message = (
        f"{step.policy.max_login_attempts} authentication failures in a row; no automatic recovery"
    )
    if step.snap.forced_try:
        message = "the one more try of credentials that had exhausted their attempts failed too"
    if step.snap.ever_logged_in:
        # A suspected closure is not a closure: say so, and leave the credentials alone.
        message += (
            "; these credentials worked before, so the account may have been closed: "
            "check with the broker, then reset or confirm the closure"
        )
    step.alert(AlertKind.LOGIN_FAILURE, Reason.LOGIN_ATTEMPTS_EXHAUSTED, message)
    step.commands += [Command.REJECT_CREDENTIALS, Command.STOP_TERMINAL]
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        last_failure_reason=Reason.LOGIN_ATTEMPTS_EXHAUSTED,
        terminal_stopped=True,
        forced_try=False,
    )
    _due(step, None)


def credentials_rejected(step: _Step) -> None:
    step.alert(
        AlertKind.LOGIN_FAILURE,
        Reason.LOGIN_ATTEMPTS_EXHAUSTED,
        "these credentials exhausted their login attempts before and have not changed "
        "since; they are not tried again: replace them, or reset with force to try them "
        "once more",
    )
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        last_failure_reason=Reason.LOGIN_ATTEMPTS_EXHAUSTED,
        login_attempt_count=step.policy.max_login_attempts,
        failed_since_success=True,
    )
    _due(step, None)


def one_more_try(step: _Step) -> None:
    # One login, not a new round of them: a refused password counts at the broker,
    # and brokers lock accounts for that.
    step.changes.update(login_attempt_count=step.policy.max_login_attempts - 1, forced_try=True)


def count_network_failure(step: _Step) -> None:
    step.changes.update(
        network_retry_count=step.snap.network_retry_count + 1,
        login_failure_reason=Reason.NETWORK,
        connection_state=ConnectionState.DISCONNECTED,
        failed_since_success=True,
    )
    _stamp_login(step)


def reconnect_check_later(step: _Step) -> None:
    _due(step, Due.RECONNECT_CHECK, step.policy.network_retry_delay)


def network_exhausted(step: _Step) -> None:
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        login_failure_reason=Reason.NETWORK,
        last_failure_reason=Reason.NETWORK,
        failed_since_success=True,
    )
    _stamp_login(step)


def terminal_down(step: _Step) -> None:
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        last_failure_reason=Reason.TERMINAL,
        failed_since_success=True,
    )
    if _failure(step) is Reason.TERMINAL:
        step.changes["login_failure_reason"] = Reason.TERMINAL
        _stamp_login(step)


def cross_wired(step: _Step) -> None:
    said = step.facts.account
    step.alert(
        AlertKind.LOGIN_FAILURE,
        Reason.TERMINAL,
        "the terminal is logged in to another account"
        + (f" (login {said.login} on {said.server!r})" if said is not None else "")
        + ": nothing is traded on it, and it is restarted",
    )
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        last_failure_reason=Reason.TERMINAL,
        login_failure_reason=Reason.TERMINAL,
        failed_since_success=True,
    )
    _stamp_login(step)


def schedule_restart(step: _Step) -> None:
    restarts = step.snap.restart_count
    if restarts < step.policy.max_restarts:
        delay = step.policy.restart_delay(restarts + 1, step.facts.rand)
    else:
        # None left: RECOVERY_EXHAUSTED is entered at once, with no wait.
        delay = 0.0
    _due(step, Due.RESTART, delay)


def recovery_exhausted(step: _Step) -> None:
    step.alert(
        AlertKind.AUTO_RECOVERY_FAILURE,
        Reason.RECOVERY_EXHAUSTED,
        f"{step.policy.max_restarts} automatic restarts did not bring the terminal back; "
        "a manual reset is needed",
    )
    step.commands.append(Command.STOP_TERMINAL)
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        last_failure_reason=Reason.RECOVERY_EXHAUSTED,
        terminal_stopped=True,
    )
    _due(step, None)


def credentials_missing(step: _Step) -> None:
    step.alert(
        AlertKind.LOGIN_FAILURE,
        Reason.CREDENTIALS_MISSING,
        "no credentials are stored for this instance",
    )
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        last_failure_reason=Reason.CREDENTIALS_MISSING,
        failed_since_success=True,
    )
    _due(step, None)


def restart(step: _Step) -> None:
    step.commands.append(Command.RESTART_TERMINAL)
    step.changes.update(
        restart_count=step.snap.restart_count + 1,
        network_retry_count=0,
        connection_state=ConnectionState.DISCONNECTED,
        terminal_stopped=False,
    )


def connection_dropped(step: _Step) -> None:
    step.changes.update(
        connection_state=ConnectionState.DISCONNECTED,
        failed_since_success=True,
    )
    reconnect_check_later(step)


def begin_closing(step: _Step) -> None:
    step.alert(
        AlertKind.ACCOUNT_CLOSED,
        Reason.ACCOUNT_CLOSED,
        "the broker closed the account; open positions are being closed and orders "
        "cancelled. Confirm the closure to delete the credentials, and add a new "
        "account to go on trading",
    )
    if _failure(step) is Reason.ACCOUNT_CLOSED:
        step.changes["login_failure_reason"] = Reason.ACCOUNT_CLOSED
        _stamp_login(step)
    # The design notes: the attempt count is set to 0 after closure.
    step.changes.update(
        connection_state=ConnectionState.DISCONNECTED,
        last_failure_reason=Reason.ACCOUNT_CLOSED,
        login_attempt_count=0,
        tickets=None,
    )
    _due(step, Due.CLOSE_TRADES)


def plan_closing(step: _Step) -> None:
    # The whole plan is stored before the first ticket is touched: a worker that dies
    # mid-way leaves the next owner the tickets still to settle, the first of them in
    # progress, and nothing it could send twice.
    step.changes["tickets"] = step.facts.tickets
    _due(step, Due.SETTLE_TRADE)


def record_outcome(step: _Step) -> None:
    step.changes["tickets"] = (step.snap.tickets or ())[1:]
    _due(step, Due.SETTLE_TRADE)


def closing_done(step: _Step) -> None:
    step.commands.append(Command.STOP_TERMINAL)
    step.changes.update(tickets=None, terminal_stopped=True)
    _due(step, None)


def suspend(step: _Step) -> None:
    step.alert(
        AlertKind.ACCOUNT_BANNED,
        Reason.ACCOUNT_BANNED,
        "the broker suspended or banned the account; the instance is inactive until an "
        "operator resets it",
    )
    if _failure(step) is Reason.ACCOUNT_BANNED:
        step.changes["login_failure_reason"] = Reason.ACCOUNT_BANNED
        _stamp_login(step)
    step.commands.append(Command.STOP_TERMINAL)
    step.changes.update(
        connection_state=ConnectionState.DISCONNECTED,
        last_failure_reason=Reason.ACCOUNT_BANNED,
        failed_since_success=True,
        terminal_stopped=True,
    )
    _due(step, None)


def clear_counters(step: _Step) -> None:
    if step.snap.terminal_stopped:
        step.commands.append(Command.RESTART_TERMINAL)
    step.changes.update(
        connection_state=ConnectionState.DISCONNECTED,
        login_attempt_count=0,
        restart_count=0,
        network_retry_count=0,
        login_failure_reason=None,
        terminal_stopped=False,
        forced_try=False,
    )


def take_out_of_service(step: _Step) -> None:
    if not step.snap.terminal_stopped:
        step.commands.append(Command.STOP_TERMINAL)
    step.changes.update(
        connection_state=ConnectionState.DISCONNECTED,
        last_failure_reason=Reason.MANUAL,
        terminal_stopped=True,
        tickets=None,
    )
    _due(step, None)


def cleanup_now(step: _Step) -> None:
    # The cleanup itself is I/O; storing it as due first makes an interrupted cleanup
    # visible, so whoever resumes the instance (or confirm_closure run again) finishes it.
    _due(step, Due.CLEANUP)


def announce_deletion(step: _Step) -> None:
    step.alert(
        AlertKind.CREDENTIALS_DELETED,
        Reason.ACCOUNT_CLOSED,
        "closure confirmed: the credentials and the live state were deleted; the "
        "history stays in the archive",
    )
    # The live state goes once this notification has been handed over: it travels in
    # the instance's own outbox, which the deletion must not take with it.
    _due(step, Due.PURGE)


EFFECTS: dict[str, Callable[[_Step], None]] = {
    f.__name__: f
    for f in (
        login_now,
        login_soon,
        log_in,
        check_now,
        check_later,
        connected,
        announce_recovery,
        wait_for_server,
        announce_outage,
        count_auth_failure,
        retry_login_after_backoff,
        attempts_exhausted,
        credentials_rejected,
        one_more_try,
        count_network_failure,
        reconnect_check_later,
        network_exhausted,
        terminal_down,
        cross_wired,
        schedule_restart,
        recovery_exhausted,
        credentials_missing,
        restart,
        connection_dropped,
        begin_closing,
        plan_closing,
        record_outcome,
        closing_done,
        suspend,
        clear_counters,
        take_out_of_service,
        cleanup_now,
        announce_deletion,
    )
}


def _build() -> Machine:
    machine = Machine(
        model=None,
        states=list(MACHINE_STATES),
        initial=None,
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
    )
    for row in TABLE:
        machine.add_transition(
            row.event,
            list(row.sources),
            row.dest,
            conditions=[_guard(name) for name in row.guards],
            unless=[_guard(name) for name in row.unless],
            after=_chosen(row),
        )
    return machine


def _guard(name: str) -> Callable[[Any], bool]:
    check = GUARDS[name]

    def condition(event_data: Any) -> bool:
        return check(event_data.model)

    condition.__name__ = name
    return condition


def _chosen(row: Row) -> Callable[[Any], None]:
    # One callback per row records which row fired; its effects then run in plain
    # Python, in table order. (Several rows share an event, source and destination:
    # the row, not the destination, says what to do.)
    effects = tuple(EFFECTS[name] for name in row.effects)

    def callback(event_data: Any) -> None:
        model = event_data.model
        model.effects = effects
        model.row = row

    callback.__name__ = f"{row.event}->{row.dest or 'same'}"
    return callback


MACHINE: Machine = _build()
"""The one ``transitions.Machine`` every instance shares. It holds no model."""

_TRIGGERS = {name: MACHINE.events[name] for name in EVENTS}


def machine_state(snapshot: Snapshot | None, *, deleted: bool = False) -> str:
    """The machine state a stored snapshot is in."""
    if deleted:
        return DELETED
    if snapshot is None:
        return NEW
    if snapshot.due in (Due.CLEANUP, Due.PURGE):
        return CLOSURE_CONFIRMED
    return snapshot.status.value


_BLANK = Snapshot(status=State.CONNECTING)
_STATUS = {
    name: State.INACTIVE if name in (CLOSURE_CONFIRMED, DELETED) else State(name)
    for name in MACHINE_STATES
    if name != NEW
}


def decide(
    instance_id: str,
    snapshot: Snapshot | None,
    event: str,
    policy: Policy,
    now: float,
    facts: Facts = Facts(),
    *,
    deleted: bool = False,
) -> Decision | None:
    """The transition ``event`` takes from ``snapshot``, or ``None`` if the table refuses it."""
    trigger = _TRIGGERS.get(event)
    if trigger is None:
        return None
    source = machine_state(snapshot, deleted=deleted)
    step = _Step(source, snapshot if snapshot is not None else _BLANK, facts, policy, now)
    try:
        if not trigger.trigger(step):
            return None
    except MachineError:
        return None
    for effect in step.effects:
        effect(step)
    row = step.row
    assert row is not None
    dest = step.state
    changes = step.changes
    at = utc(now)
    new: Snapshot | None
    if dest == DELETED:
        new, changed = None, True
    else:
        changes["status"] = _STATUS[dest]
        new = replace(step.snap, changes)
        changed = snapshot is None or new != snapshot
    reason = _archived_reason(new, event, facts)
    notifications = tuple(
        Notification(kind=kind, instance_id=instance_id, reason=why, message=message, at=at)
        for kind, why, message in step.alerts
    )
    records = _records(instance_id, row, snapshot, new, dest, facts, reason, at)
    return Decision(
        event=event,
        source=source,
        dest=dest,
        snapshot=new,
        changed=changed or bool(notifications) or bool(records),
        notifications=notifications,
        records=records,
        commands=tuple(step.commands),
        reason=reason,
    )


def _records(
    instance_id: str,
    row: Row,
    before: Snapshot | None,
    new: Snapshot | None,
    dest: str,
    facts: Facts,
    reason: Reason | None,
    at: datetime,
) -> tuple[ArchiveRecord, ...]:
    """What the archive keeps of a decision: the transition, a failed login, a trade's
    outcome and an operator's action, each as it happened."""
    records: list[ArchiveRecord] = []
    source = before.status if before is not None else None
    after = new.status if new is not None else _STATUS[dest]
    if not row.quiet:
        records.append(
            TransitionRecord(
                instance_id=instance_id,
                at=at,
                event=row.event,
                source=source,
                dest=after,
                reason=reason,
            )
        )
    result = facts.result
    if row.event == "login_failed" and result is not None and result.reason is not None:
        login_at = facts.login_at
        records.append(
            LoginFailureRecord(
                instance_id=instance_id,
                at=utc(login_at) if login_at is not None else at,
                attempt=new.login_attempt_count if new is not None else 0,
                reason=result.reason,
                code=result.code,
                message=result.message,
            )
        )
    if facts.outcome is not None:
        records.append(facts.outcome)
    if facts.actor is not None:
        records.append(
            AuditRecord(
                instance_id=instance_id,
                at=at,
                actor=facts.actor,
                action=row.event,
                source=source,
                dest=after,
                outcome="done",
            )
        )
    return tuple(records)


def _archived_reason(new: Snapshot | None, event: str, facts: Facts) -> Reason | None:
    if new is None:
        return Reason.ACCOUNT_CLOSED
    if new.status in (State.FAILED, State.INACTIVE, State.ACCOUNT_CLOSED):
        return new.last_failure_reason
    if event == "login_failed":
        return _failure_reason(facts)
    if event in ("connection_lost", "connection_checked"):
        return Reason.NETWORK
    return None


def _failure_reason(facts: Facts) -> Reason | None:
    return facts.result.reason if facts.result is not None else None


# --- questions the runtime asks about a state --------------------------------------


class Refusal(str, Enum):
    """Why the table refused an event, for the error the runtime raises."""

    NO_ROW = "NO_ROW"
    CLOSURE_CONFIRMED = "CLOSURE_CONFIRMED"
    CLOSED_FOR_GOOD = "CLOSED_FOR_GOOD"
    NOT_STARTED = "NOT_STARTED"
    ALREADY_STARTED = "ALREADY_STARTED"
    CREDENTIALS_REJECTED = "CREDENTIALS_REJECTED"
    """Raised as ``CredentialsRejected``: known-bad credentials, reset without force."""


_REFUSALS = {
    Refusal.NO_ROW: "the transition table has no such transition",
    Refusal.CLOSURE_CONFIRMED: "its account closure was confirmed; a closed account never "
    "comes back: start a new instance with new credentials",
    Refusal.CLOSED_FOR_GOOD: "a closed account never comes back: start a new instance with "
    "new credentials",
    Refusal.NOT_STARTED: "start() it first",
    Refusal.ALREADY_STARTED: "this Lifecycle is already started",
    Refusal.CREDENTIALS_REJECTED: "its credentials exhausted their login attempts and have "
    "not changed since; replace them, or reset with force to try them once more",
}


def refusal(
    snapshot: Snapshot | None, event: str, facts: Facts = Facts(), *, deleted: bool = False
) -> tuple[Refusal, str]:
    """Why ``event`` is refused in this state, as a kind and a sentence an operator can
    act on (the table itself only says "no row")."""
    state = machine_state(snapshot, deleted=deleted)
    if state in (CLOSURE_CONFIRMED, DELETED) or facts.closure_confirmed:
        kind = Refusal.CLOSURE_CONFIRMED
    elif state == ACCOUNT_CLOSED and event == "reset":
        kind = Refusal.CLOSED_FOR_GOOD
    elif state == NEW:
        kind = Refusal.NOT_STARTED
    elif event == "start":
        kind = Refusal.ALREADY_STARTED
    elif event == "reset" and facts.known_bad and state in (FAILED, INACTIVE):
        kind = Refusal.CREDENTIALS_REJECTED
    else:
        kind = Refusal.NO_ROW
    return kind, _REFUSALS[kind]


def needs_operator(snapshot: Snapshot | None, *, deleted: bool = False) -> bool:
    """Whether the instance is in a state it cannot leave by itself.

    ``FAILED`` with no restart pending, ``INACTIVE`` and ``ACCOUNT_CLOSED`` (and a
    confirmed closure) wait for an operator or a new instance: a caller waiting for
    ``CONNECTED`` must be told at once rather than wait out a timeout.
    """
    if deleted:
        return True
    if snapshot is None:
        return False
    status = snapshot.status
    return status in (State.INACTIVE, State.ACCOUNT_CLOSED) or (
        status is State.FAILED and snapshot.due is not Due.RESTART
    )


def refused_action(
    instance_id: str,
    snapshot: Snapshot | None,
    action: str,
    actor: str,
    detail: str,
    now: float,
    *,
    deleted: bool = False,
) -> AuditRecord:
    """The archive's record of an operator action the table refused."""
    state = machine_state(snapshot, deleted=deleted)
    status = None if state == NEW else _STATUS[state]
    return AuditRecord(
        instance_id=instance_id,
        at=utc(now),
        actor=actor,
        action=action,
        source=status,
        dest=status,
        outcome="refused",
        detail=detail,
    )


# --- drawings ----------------------------------------------------------------------


def _label(row: Row) -> str:
    conditions = [*row.guards, *(f"not {name}" for name in row.unless)]
    return row.event + (" [" + " and ".join(conditions) + "]" if conditions else "")


def mermaid() -> str:
    """A Mermaid ``stateDiagram-v2`` of ``TABLE``, guards on the edges."""
    lines = ["stateDiagram-v2"]
    names = {NEW: "[*]"}
    for row in TABLE:
        for source in row.sources:
            dest = source if row.dest is None else row.dest
            lines.append(
                f"    {names.get(source, source)} --> {names.get(dest, dest)}: {_label(row)}"
            )
    lines.append("    DELETED --> [*]")
    return "\n".join(lines) + "\n"


def dot() -> str:
    """A Graphviz ``dot`` drawing of ``TABLE`` (the docs render it to SVG at build time).

    The rows between the same two states share one arrow, one row per line of its
    label, so the picture stays readable; quiet rows (stored, not archived) are grey.
    """
    edges: dict[tuple[str, str], list[Row]] = {}
    for row in TABLE:
        for source in row.sources:
            dest = source if row.dest is None else row.dest
            edges.setdefault((source, dest), []).append(row)
    lines = [
        "digraph lifecycle {",
        '  graph [rankdir=TB, fontname="Helvetica", nodesep=0.6, ranksep=0.9, bgcolor="white"];',
        '  node [shape=box, style="rounded,filled", fillcolor="#eef2fb", color="#3b4a6b", '
        'fontname="Helvetica-Bold", fontsize=13, margin="0.25,0.12"];',
        '  edge [fontname="Helvetica", fontsize=9, color="#55607a", arrowsize=0.7];',
        '  NEW [shape=circle, label="", width=0.22, fillcolor="#222222"];',
        '  DELETED [shape=doublecircle, label="", width=0.16, fillcolor="#222222"];',
        '  CLOSURE_CONFIRMED [fillcolor="#f3f3f3", fontname="Helvetica"];',
        "  { rank=same; FAILED; CONNECTED; }",
        "  { rank=same; INACTIVE; ACCOUNT_CLOSED; }",
    ]
    for (source, dest), rows in edges.items():
        loud = [row for row in rows if not row.quiet]
        text = "\\l".join(_label(row).replace('"', '\\"') for row in rows) + "\\l"
        style = "" if loud else ', style="dashed", color="#9aa3b5", fontcolor="#7a8295"'
        if dest == CONNECTING and source not in (NEW, CONNECTING):
            # The way back in (a reset, a restart, a dropped connection): drawn, but
            # left out of the ranking, so the picture reads top to bottom as the flow.
            style += ", constraint=false"
        lines.append(f'  {source} -> {dest} [label="{text}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """``TABLE`` as a Markdown table (docs/lifecycle.md embeds it)."""
    lines = [
        "| event | from | guards | to | effects |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in TABLE:
        guards = ", ".join([*row.guards, *(f"not {name}" for name in row.unless)]) or "—"
        effects = ", ".join(f"`{name}`" for name in row.effects) or "—"
        dest = "(same)" if row.dest is None else row.dest
        if row.quiet:
            dest += " (quiet)"
        lines.append(
            f"| `{row.event}` | {', '.join(row.sources)} | {guards} | {dest} | {effects} |"
        )
    return "\n".join(lines) + "\n"
