"""THE transition table: every event, in every state, and what it leads to.

This module decides and does nothing else. It opens no socket, reads no clock and
sleeps nowhere: the runtime (``lifecycle.py``) hands it the stored snapshot, the
event, the facts the event came with (what the broker answered, whether credentials
are stored) and the time, and gets back the next snapshot, the alerts to raise and
the terminal commands to carry out. So the whole lifecycle can be drawn, tested and
reasoned about from ``TABLE`` alone.

Why the table is shaped so:

* One row per line of SPEC section 4. A row names its event, its source states, its
  destination, the named guards that must hold (``guards``) or must not
  (``unless``), and the named effects that compute the next snapshot. Rows for the
  same event and source are tried in order; the first whose guards hold wins, as in
  ``transitions``.
* The engine is ``transitions``, built once at import: one ``Machine`` shared by
  every instance. A ``Machine`` per instance (or ``add_model``, which binds trigger
  methods onto each model) costs kilobytes per instance; a fleet of 100,000 would pay
  for that in gigabytes. Here a decision builds a small slotted ``_Step``, triggers
  the shared ``Event`` on it, and throws it away.
* Two machine states are not ``State`` values: ``NEW`` (nothing stored yet: only
  ``start`` is accepted) and ``CLOSURE_CONFIRMED`` (reads as ``INACTIVE``; refuses
  everything, because a confirmed closure is final: the way on is a new instance).
* Waits are data, not sleeps: a row that retries sets ``due`` and ``next_due`` in
  the snapshot, and the runtime acts when that time comes.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import attrs
from transitions import Machine
from transitions.core import MachineError

from .policy import Policy
from .snapshot import Snapshot, replace, utc
from .states import AlertKind, ConnectionState, Due, Reason, State

__all__ = [
    "CLOSURE_CONFIRMED",
    "EVENTS",
    "NEW",
    "TABLE",
    "Alert",
    "Command",
    "Decision",
    "Facts",
    "Row",
    "decide",
    "machine_state",
    "markdown_table",
    "mermaid",
]

NEW = "NEW"
CLOSURE_CONFIRMED = "CLOSURE_CONFIRMED"

CONNECTING = State.CONNECTING.value
CONNECTED = State.CONNECTED.value
FAILED = State.FAILED.value
INACTIVE = State.INACTIVE.value
ACCOUNT_CLOSED = State.ACCOUNT_CLOSED.value

MACHINE_STATES = (NEW, CONNECTING, CONNECTED, FAILED, INACTIVE, ACCOUNT_CLOSED, CLOSURE_CONFIRMED)


class Command(str, Enum):
    """What the runtime must tell the terminal after a transition is stored."""

    STOP_TERMINAL = "STOP_TERMINAL"
    RESTART_TERMINAL = "RESTART_TERMINAL"
    """Stop (if running) and start the terminal: a restart, or a reset after a stop."""


@attrs.frozen
class Alert:
    """An alert the transition raises; the runtime turns it into a ``Notification``."""

    kind: AlertKind
    reason: Reason | None
    message: str


@attrs.frozen(kw_only=True)
class Facts:
    """What an event came with. Everything a guard may look at besides the snapshot."""

    reason: Reason | None = None
    """The broker's reason for ``login_failed``."""
    has_credentials: bool = True
    """Whether the credential store holds credentials (``start``, restarts)."""
    login_at: float | None = None
    """When the login call that produced this event began, if there was one."""
    rand: float = 0.5
    """A uniform draw in [0, 1) for the policy's jitter."""


@attrs.frozen
class Decision:
    """A transition the table allows: what to store and what to do."""

    event: str
    source: str
    dest: str
    snapshot: Snapshot
    alerts: tuple[Alert, ...]
    commands: tuple[Command, ...]
    reason: Reason | None
    """The reason to archive with the transition."""


@attrs.frozen
class Row:
    """One line of the table."""

    event: str
    sources: tuple[str, ...]
    dest: str
    guards: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    effects: tuple[str, ...] = ()


# fmt: off
TABLE: tuple[Row, ...] = (
    Row("start", (NEW,), CONNECTING, guards=("has_credentials",), effects=("login_now",)),
    Row("start", (NEW,), FAILED, unless=("has_credentials",), effects=("credentials_missing",)),

    Row("login_succeeded", (CONNECTING,), CONNECTED, effects=("connected",)),

    Row("login_failed", (CONNECTING,), CONNECTING, guards=("auth_failure", "attempts_left"),
        effects=("count_auth_failure", "retry_login_after_backoff")),
    Row("login_failed", (CONNECTING,), FAILED, guards=("auth_failure",), unless=("attempts_left",),
        effects=("count_auth_failure", "attempts_exhausted")),
    Row("login_failed", (CONNECTING,), CONNECTING,
        guards=("network_failure", "network_retries_left"),
        effects=("count_network_failure", "reconnect_check_later")),
    Row("login_failed", (CONNECTING,), FAILED, guards=("network_failure",),
        unless=("network_retries_left",), effects=("network_exhausted", "schedule_restart")),
    Row("login_failed", (CONNECTING,), FAILED, guards=("terminal_failure",),
        effects=("terminal_down", "schedule_restart")),
    Row("login_failed", (CONNECTING,), ACCOUNT_CLOSED, guards=("account_closed_failure",),
        effects=("account_closed",)),
    Row("login_failed", (CONNECTING,), INACTIVE, guards=("account_banned_failure",),
        effects=("account_banned",)),

    Row("credentials_missing", (CONNECTING,), FAILED, effects=("credentials_missing",)),

    Row("terminal_failed", (CONNECTING, CONNECTED), FAILED,
        effects=("terminal_down", "schedule_restart")),

    Row("restart_due", (FAILED,), FAILED, guards=("restart_pending",), unless=("restarts_left",),
        effects=("recovery_exhausted",)),
    Row("restart_due", (FAILED,), FAILED, guards=("restart_pending",), unless=("has_credentials",),
        effects=("credentials_missing",)),
    Row("restart_due", (FAILED,), CONNECTING, guards=("restart_pending",),
        effects=("restart", "login_now")),

    Row("connection_lost", (CONNECTED,), CONNECTING, effects=("connection_dropped",)),

    Row("account_closed", (CONNECTING, CONNECTED, FAILED), ACCOUNT_CLOSED,
        effects=("account_closed",)),
    Row("account_banned", (CONNECTING, CONNECTED, FAILED), INACTIVE,
        effects=("account_banned",)),

    Row("reset", (FAILED, INACTIVE), CONNECTING, effects=("reset", "login_now")),
    Row("disable", (CONNECTING, CONNECTED, FAILED, INACTIVE), INACTIVE, effects=("disable",)),
    Row("confirm_closure", (ACCOUNT_CLOSED,), CLOSURE_CONFIRMED, effects=("confirm_closure",)),
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
        self.alerts: list[Alert] = []
        self.commands: list[Command] = []
        self.effects: tuple[Callable[[_Step], None], ...] = ()

    def get(self, field: str) -> Any:
        """A field's value as the effects so far have left it."""
        if field in self.changes:
            return self.changes[field]
        return getattr(self.snap, field)


# --- guards: named predicates of (snapshot, facts, policy) -------------------------


def has_credentials(step: _Step) -> bool:
    return step.facts.has_credentials


def auth_failure(step: _Step) -> bool:
    return step.facts.reason is Reason.AUTH_FAILED


def attempts_left(step: _Step) -> bool:
    """This failure is not the last allowed one (it is counted before the check)."""
    return step.snap.login_attempt_count + 1 < step.policy.max_login_attempts


def network_failure(step: _Step) -> bool:
    return step.facts.reason is Reason.NETWORK


def network_retries_left(step: _Step) -> bool:
    return step.snap.network_retry_count < step.policy.max_network_retries


def terminal_failure(step: _Step) -> bool:
    return step.facts.reason is Reason.TERMINAL


def account_closed_failure(step: _Step) -> bool:
    return step.facts.reason is Reason.ACCOUNT_CLOSED


def account_banned_failure(step: _Step) -> bool:
    return step.facts.reason is Reason.ACCOUNT_BANNED


def restarts_left(step: _Step) -> bool:
    return step.snap.restart_count < step.policy.max_restarts


def restart_pending(step: _Step) -> bool:
    """Only a recoverable ``FAILED`` (network, terminal) has a restart to take."""
    return step.snap.due is Due.RESTART


GUARDS: dict[str, Callable[[_Step], bool]] = {
    f.__name__: f
    for f in (
        has_credentials,
        auth_failure,
        attempts_left,
        network_failure,
        network_retries_left,
        terminal_failure,
        account_closed_failure,
        account_banned_failure,
        restarts_left,
        restart_pending,
    )
}


# --- effects: named steps that compute the next snapshot ---------------------------


def login_now(step: _Step) -> None:
    step.changes.update(due=Due.LOGIN, next_due=step.now)


def connected(step: _Step) -> None:
    if step.snap.failed_since_success:
        step.alerts.append(Alert(AlertKind.LOGIN_RECOVERED, None, "logged in again after failures"))
    step.changes.update(
        connection_state=ConnectionState.CONNECTED,
        login_attempt_count=0,
        restart_count=0,
        network_retry_count=0,
        login_failure_reason=None,
        ever_logged_in=True,
        failed_since_success=False,
        terminal_stopped=False,
        due=None,
        next_due=None,
    )
    _stamp_login(step)


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
        step.alerts.append(
            Alert(
                AlertKind.REPEATED_LOGIN_FAILURE,
                Reason.AUTH_FAILED,
                f"{attempts} authentication failures in a row",
            )
        )


def retry_login_after_backoff(step: _Step) -> None:
    attempts = step.get("login_attempt_count")
    delay = step.policy.login_delay(attempts, step.facts.rand)
    step.changes.update(due=Due.LOGIN, next_due=step.now + delay)


def attempts_exhausted(step: _Step) -> None:
    message = (
        f"{step.policy.max_login_attempts} authentication failures in a row; no automatic recovery"
    )
    if step.snap.ever_logged_in:
        # A suspected closure is not a closure: say so, and leave the credentials alone.
        message += (
            "; these credentials worked before, so the account may have been closed: "
            "check with the broker, then reset or confirm the closure"
        )
    step.alerts.append(Alert(AlertKind.LOGIN_FAILURE, Reason.LOGIN_ATTEMPTS_EXHAUSTED, message))
    step.commands.append(Command.STOP_TERMINAL)
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        last_failure_reason=Reason.LOGIN_ATTEMPTS_EXHAUSTED,
        terminal_stopped=True,
        due=None,
        next_due=None,
    )


def count_network_failure(step: _Step) -> None:
    step.changes.update(
        network_retry_count=step.snap.network_retry_count + 1,
        login_failure_reason=Reason.NETWORK,
        connection_state=ConnectionState.DISCONNECTED,
        failed_since_success=True,
    )
    _stamp_login(step)


def reconnect_check_later(step: _Step) -> None:
    step.changes.update(
        due=Due.RECONNECT_CHECK, next_due=step.now + step.policy.network_retry_delay
    )


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
    if step.facts.reason is Reason.TERMINAL:
        step.changes["login_failure_reason"] = Reason.TERMINAL
        _stamp_login(step)


def schedule_restart(step: _Step) -> None:
    restarts = step.snap.restart_count
    if restarts < step.policy.max_restarts:
        delay = step.policy.restart_delay(restarts + 1, step.facts.rand)
    else:
        # None left: RECOVERY_EXHAUSTED is entered at once, with no wait.
        delay = 0.0
    step.changes.update(due=Due.RESTART, next_due=step.now + delay)


def recovery_exhausted(step: _Step) -> None:
    step.alerts.append(
        Alert(
            AlertKind.AUTO_RECOVERY_FAILURE,
            Reason.RECOVERY_EXHAUSTED,
            f"{step.policy.max_restarts} automatic restarts did not bring the terminal back; "
            "a manual reset is needed",
        )
    )
    step.commands.append(Command.STOP_TERMINAL)
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        last_failure_reason=Reason.RECOVERY_EXHAUSTED,
        terminal_stopped=True,
        due=None,
        next_due=None,
    )


def credentials_missing(step: _Step) -> None:
    step.alerts.append(
        Alert(
            AlertKind.LOGIN_FAILURE,
            Reason.CREDENTIALS_MISSING,
            "no credentials are stored for this instance",
        )
    )
    step.changes.update(
        connection_state=ConnectionState.FAILED,
        last_failure_reason=Reason.CREDENTIALS_MISSING,
        failed_since_success=True,
        due=None,
        next_due=None,
    )


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
        due=Due.RECONNECT_CHECK,
        next_due=step.now + step.policy.network_retry_delay,
    )


def account_closed(step: _Step) -> None:
    step.alerts.append(
        Alert(
            AlertKind.ACCOUNT_CLOSED,
            Reason.ACCOUNT_CLOSED,
            "the broker closed the account; open positions are being closed and orders "
            "cancelled. Confirm the closure to delete the credentials, and add a new "
            "account to go on trading",
        )
    )
    if step.facts.reason is Reason.ACCOUNT_CLOSED:
        step.changes["login_failure_reason"] = Reason.ACCOUNT_CLOSED
        _stamp_login(step)
    # The design notes: the attempt count is set to 0 after closure.
    step.changes.update(
        connection_state=ConnectionState.DISCONNECTED,
        last_failure_reason=Reason.ACCOUNT_CLOSED,
        login_attempt_count=0,
        due=Due.CLOSE_TRADES,
        next_due=step.now,
    )


def account_banned(step: _Step) -> None:
    step.alerts.append(
        Alert(
            AlertKind.ACCOUNT_BANNED,
            Reason.ACCOUNT_BANNED,
            "the broker suspended or banned the account; the instance is inactive until an "
            "operator resets it",
        )
    )
    if step.facts.reason is Reason.ACCOUNT_BANNED:
        step.changes["login_failure_reason"] = Reason.ACCOUNT_BANNED
        _stamp_login(step)
    step.commands.append(Command.STOP_TERMINAL)
    step.changes.update(
        connection_state=ConnectionState.DISCONNECTED,
        last_failure_reason=Reason.ACCOUNT_BANNED,
        failed_since_success=True,
        terminal_stopped=True,
        due=None,
        next_due=None,
    )


def reset(step: _Step) -> None:
    if step.snap.terminal_stopped:
        step.commands.append(Command.RESTART_TERMINAL)
    step.changes.update(
        connection_state=ConnectionState.DISCONNECTED,
        login_attempt_count=0,
        restart_count=0,
        network_retry_count=0,
        login_failure_reason=None,
        terminal_stopped=False,
    )


def disable(step: _Step) -> None:
    if not step.snap.terminal_stopped:
        step.commands.append(Command.STOP_TERMINAL)
    step.changes.update(
        connection_state=ConnectionState.DISCONNECTED,
        last_failure_reason=Reason.MANUAL,
        terminal_stopped=True,
        due=None,
        next_due=None,
    )


def confirm_closure(step: _Step) -> None:
    # The cleanup itself is I/O; storing it as due first makes an interrupted cleanup
    # visible, so running confirm_closure again finishes it.
    step.changes.update(due=Due.CLEANUP, next_due=step.now)


EFFECTS: dict[str, Callable[[_Step], None]] = {
    f.__name__: f
    for f in (
        login_now,
        connected,
        count_auth_failure,
        retry_login_after_backoff,
        attempts_exhausted,
        count_network_failure,
        reconnect_check_later,
        network_exhausted,
        terminal_down,
        schedule_restart,
        recovery_exhausted,
        credentials_missing,
        restart,
        connection_dropped,
        account_closed,
        account_banned,
        reset,
        disable,
        confirm_closure,
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
        event_data.model.effects = effects

    callback.__name__ = f"{row.event}->{row.dest}"
    return callback


MACHINE: Machine = _build()
"""The one ``transitions.Machine`` every instance shares. It holds no model."""

_TRIGGERS = {name: MACHINE.events[name] for name in EVENTS}


def machine_state(snapshot: Snapshot | None) -> str:
    """The machine state a stored snapshot is in."""
    if snapshot is None:
        return NEW
    if snapshot.due is Due.CLEANUP:
        return CLOSURE_CONFIRMED
    return snapshot.status.value


_BLANK = Snapshot(status=State.CONNECTING)
_STATUS = {
    name: State.INACTIVE if name == CLOSURE_CONFIRMED else State(name)
    for name in MACHINE_STATES
    if name != NEW
}


def decide(
    snapshot: Snapshot | None,
    event: str,
    policy: Policy,
    now: float,
    facts: Facts = Facts(),
) -> Decision | None:
    """The transition ``event`` takes from ``snapshot``, or ``None`` if the table refuses it."""
    trigger = _TRIGGERS.get(event)
    if trigger is None:
        return None
    source = machine_state(snapshot)
    step = _Step(source, snapshot if snapshot is not None else _BLANK, facts, policy, now)
    try:
        if not trigger.trigger(step):
            return None
    except MachineError:
        return None
    for effect in step.effects:
        effect(step)
    dest = step.state
    changes = step.changes
    changes["status"] = _STATUS[dest]
    new = replace(step.snap, changes)
    return Decision(
        event=event,
        source=source,
        dest=dest,
        snapshot=new,
        alerts=tuple(step.alerts),
        commands=tuple(step.commands),
        reason=_archived_reason(new, event, facts),
    )


def _archived_reason(new: Snapshot, event: str, facts: Facts) -> Reason | None:
    if new.status in (State.FAILED, State.INACTIVE, State.ACCOUNT_CLOSED):
        return new.last_failure_reason
    if event == "login_failed":
        return facts.reason
    if event == "connection_lost":
        return Reason.NETWORK
    return None


def mermaid() -> str:
    """A Mermaid ``stateDiagram-v2`` of ``TABLE``, guards on the edges."""
    lines = ["stateDiagram-v2"]
    names = {NEW: "[*]", CLOSURE_CONFIRMED: "CLOSURE_CONFIRMED"}
    for row in TABLE:
        label = row.event
        conditions = [*row.guards, *(f"not {name}" for name in row.unless)]
        if conditions:
            label += " [" + " and ".join(conditions) + "]"
        for source in row.sources:
            lines.append(
                f"    {names.get(source, source)} --> {names.get(row.dest, row.dest)}: {label}"
            )
    lines.append("    CLOSURE_CONFIRMED --> [*]")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """``TABLE`` as a Markdown table (docs/lifecycle.md embeds it)."""
    lines = ["| event | from | guards | to | effects |", "| --- | --- | --- | --- | --- |"]
    for row in TABLE:
        guards = ", ".join([*row.guards, *(f"not {name}" for name in row.unless)]) or "—"
        effects = ", ".join(f"`{name}`" for name in row.effects)
        lines.append(
            f"| `{row.event}` | {', '.join(row.sources)} | {guards} | {row.dest} | {effects} |"
        )
    return "\n".join(lines) + "\n"
