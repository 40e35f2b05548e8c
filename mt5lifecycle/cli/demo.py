"""The demo: a simulated fleet goes through every flow of the lifecycle.

It is the newcomer's first look (``mt5lifecycle demo``), so it runs the real thing on
the default ``Policy``: a ``Fleet`` drives one instance per flow over the shipped
stores, the ``FakeBroker`` plays the terminals and the broker, and a script plays
the world around them (a dropped network, a crashed terminal, a closed account) and
the operator (a reset, a confirmed closure). Only time is bent: a ``ScaledClock``
makes the five simulated minutes pass in a few seconds, or a ``FakeClock`` makes
them pass at once (``--instant``, what the tests use).

The timeline is printed from the ports' point of view: every transition, failed
login, trade outcome and alert is printed as the library hands it to the archive and
the notifier (and each close request's answer as the broker gives it), so what the
demo shows is what a real archive and notifier receive.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TextIO

import attrs

from ..core.credentials import Credentials
from ..core.policy import Policy
from ..core.records import (
    ArchiveRecord,
    ClosureRecord,
    LoginFailureRecord,
    LoginResult,
    Notification,
    Order,
    Position,
    TradeOutcomeRecord,
    TradeResult,
    TransitionRecord,
)
from ..core.states import AlertKind, Due, Reason, State, TerminalStatus
from ..errors import LifecycleError
from ..ports import Archive, Clock, CredentialStore, StateStore
from ..runtime.backends import Backends
from ..runtime.fleet import Fleet
from ..runtime.lifecycle import Lifecycle
from ..testing.broker import FakeBroker

__all__ = [
    "FLOWS",
    "SCRIPT",
    "SPAN",
    "Flow",
    "Scene",
    "Step",
    "SummaryRow",
    "print_summary",
    "run_demo",
]

SPAN = 300.0
"""Simulated seconds the demo plays: the slowest flow (three failed restarts) ends at
t = 270 s on the default policy."""

GRACE: Final = 300.0
"""Simulated seconds a step or the end may wait past its time when the machine runs
the due steps late (a real-time clock on a loaded machine)."""

DONE, PARTIAL, REQUOTE = 10009, 10010, 10004


@attrs.frozen
class Flow:
    """One instance of the demo and the state it must end in."""

    instance_id: str
    story: str
    expect: State
    expect_reason: Reason | None
    prepare: Callable[[FakeBroker, str], None] | None = None
    credentials: bool = True


@attrs.frozen
class Scene:
    """What a step acts on: the fleet, the simulated broker, and its instance."""

    lifecycles: Mapping[str, Lifecycle]
    """Every flow's Lifecycle (a confirmed closure leaves the fleet, not this map)."""
    broker: FakeBroker
    instance_id: str

    @property
    def lifecycle(self) -> Lifecycle:
        return self.lifecycles[self.instance_id]

    def replace_password_and_reset(self) -> None:
        lifecycle = self.lifecycle
        credentials = lifecycle.backends.credentials
        stored = credentials.get(self.instance_id)
        assert stored is not None
        credentials.put(self.instance_id, attrs.evolve(stored, password=stored.password + "-new"))
        lifecycle.reset(by="operator")


@attrs.frozen
class Step:
    """Something the world or the operator does at ``at`` seconds into the demo, once
    its instance is in the state ``when`` it acts on.

    On a real-time clock a loaded machine runs the due steps late: an operator who
    resets an instance still logging in would be refused, so the step waits for it.
    """

    at: float
    instance_id: str
    what: str
    act: Callable[[Scene], None]
    when: State = State.CONNECTED


def _wrong_password(times: int) -> Callable[[FakeBroker, str], None]:
    def prepare(broker: FakeBroker, instance_id: str) -> None:
        broker.fail_logins(instance_id, Reason.AUTH_FAILED, times=times)

    return prepare


def _open_trades(broker: FakeBroker, instance_id: str) -> None:
    broker.open_position(instance_id, 1001, "EURUSD", 1.0)
    # A partial fill closes half; the library sends the rest again.
    broker.open_position(instance_id, 1002, "GBPUSD", 0.8, close_retcode=[PARTIAL, DONE])
    # A requote, then the close goes through at the new price.
    broker.open_position(instance_id, 1003, "USDJPY", 0.5, close_retcode=[REQUOTE, DONE])
    broker.pending_order(instance_id, 2001, "EURUSD")
    broker.pending_order(instance_id, 2002, "XAUUSD")


FLOWS: tuple[Flow, ...] = (
    Flow("auth-recovers", "3 wrong passwords, then a good login", State.CONNECTED, None,
         _wrong_password(3)),
    Flow("auth-exhausted", "5 wrong passwords, then the right one and a reset", State.CONNECTED,
         None, _wrong_password(5)),
    Flow("network-drop", "network lost mid-session, logs in again", State.CONNECTED, None),
    Flow("terminal-crash", "terminal crashes, restarted", State.CONNECTED, None),
    Flow("terminal-dead", "terminal never comes back", State.FAILED,
         Reason.RECOVERY_EXHAUSTED),
    Flow("account-closed", "closed with trades open, closure confirmed", State.INACTIVE,
         Reason.ACCOUNT_CLOSED, _open_trades),
    Flow("banned", "the broker bans the account", State.INACTIVE, Reason.ACCOUNT_BANNED),
    Flow("no-credentials", "no credentials stored", State.FAILED,
         Reason.CREDENTIALS_MISSING, credentials=False),
)  # fmt: skip


def _ended(lifecycle: Lifecycle, flow: Flow) -> bool:
    snapshot = lifecycle.snapshot()
    if snapshot is None:
        return False
    reason = snapshot.last_failure_reason if snapshot.status is not State.CONNECTED else None
    return (
        snapshot.status is flow.expect
        and reason is flow.expect_reason
        and snapshot.due
        in (
            None,
            Due.CHECK,
        )
    )


def _kill(scene: Scene) -> None:
    scene.broker.fail_restarts(scene.instance_id)
    scene.broker.crash_terminal(scene.instance_id)


SCRIPT: tuple[Step, ...] = (
    Step(30, "network-drop", "the network drops (the terminal keeps running)",
         lambda s: s.broker.drop_connection(s.instance_id)),
    Step(40, "terminal-crash", "the terminal process crashes",
         lambda s: s.broker.crash_terminal(s.instance_id)),
    Step(45, "terminal-dead", "the terminal crashes and will not start again", _kill),
    Step(50, "account-closed", "the broker closes the account (3 positions, 2 orders open)",
         lambda s: s.broker.close_account(s.instance_id)),
    Step(80, "banned", "the broker bans the account",
         lambda s: s.broker.ban_account(s.instance_id)),
    # Credentials that exhausted their attempts are never tried again unchanged: the
    # operator stores the right password first (mt5lifecycle credentials put), then resets.
    Step(150, "auth-exhausted", "operator: credentials put auth-exhausted, then reset it",
         lambda s: s.replace_password_and_reset(), State.FAILED),
    Step(200, "account-closed", "operator: mt5lifecycle confirm-closure account-closed",
         lambda s: s.lifecycle.confirm_closure(), State.ACCOUNT_CLOSED),
)  # fmt: skip


@attrs.frozen
class SummaryRow:
    instance_id: str
    story: str
    state: State | None
    reason: Reason | None
    logins: int
    alerts: tuple[AlertKind, ...]
    expected: bool


_COLORS = {
    State.CONNECTED: "32",
    State.CONNECTING: "33",
    State.FAILED: "31",
    State.INACTIVE: "35",
    State.ACCOUNT_CLOSED: "31;1",
}


class _Printer:
    """Timeline lines, optionally coloured (only on a terminal, and never with NO_COLOR)."""

    def __init__(self, out: TextIO, clock: Clock, t0: float, color: bool) -> None:
        self.out = out
        self.clock = clock
        self.t0 = t0
        self.color = color
        self.width = max(len(flow.instance_id) for flow in FLOWS)

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def state(self, state: State | None) -> str:
        if state is None:
            return "new"
        return self.paint(state.value, _COLORS[state])

    def line(self, at: float, instance_id: str, text: str) -> None:
        stamp = f"t+{at - self.t0:6.1f}s"
        self.out.write(f"  {self.paint(stamp, '2')}  {instance_id:<{self.width}}  {text}\n")
        self.out.flush()

    def now(self, instance_id: str, text: str) -> None:
        self.line(self.clock.now(), instance_id, text)


class _TimelineArchive:
    """An ``Archive`` that prints each record, then hands it to the real archive."""

    def __init__(self, inner: Archive, printer: _Printer) -> None:
        self.inner = inner
        self.printer = printer

    def write(self, records: Sequence[ArchiveRecord]) -> None:
        p = self.printer
        for record in records:
            at = record.at.timestamp()
            if isinstance(record, TransitionRecord):
                reason = f" ({record.reason.value})" if record.reason is not None else ""
                p.line(
                    at,
                    record.instance_id,
                    f"{p.state(record.source)} -> {p.state(record.dest)}  {record.event}{reason}",
                )
            elif isinstance(record, LoginFailureRecord):
                p.line(
                    at,
                    record.instance_id,
                    f"   login failed: {record.reason.value}, {record.attempt} in a row "
                    f"(terminal: {record.code} {record.message})",
                )
            elif isinstance(record, TradeOutcomeRecord):
                volume = f" {record.volume:g} lots" if record.kind == "position" else ""
                p.line(
                    at,
                    record.instance_id,
                    f"   {record.kind} {record.ticket} {record.symbol}{volume}: "
                    f"{record.outcome.value} (retcode {record.retcode})",
                )
        self.inner.write(records)

    def confirm(self, record: ClosureRecord) -> None:
        self.printer.line(
            record.at.timestamp(),
            record.instance_id,
            "   final state archived, instance marked INACTIVE",
        )
        self.inner.confirm(record)

    def is_confirmed(self, instance_id: str) -> bool:
        return self.inner.is_confirmed(instance_id)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


class _TimelineBroker:
    """The ``FakeBroker``, with each close and cancel answer printed as it comes.

    The archive keeps one outcome per trade; the demo also shows the way there (a
    partial fill sent again for the rest, a requote retried at the new price).
    """

    def __init__(self, inner: FakeBroker, printer: _Printer) -> None:
        self.inner = inner
        self.printer = printer

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        return self.inner.login(instance_id, credentials, logged_in_before=logged_in_before)

    def status(self, instance_id: str) -> TerminalStatus:
        return self.inner.status(instance_id)

    def restart(self, instance_id: str) -> None:
        self.inner.restart(instance_id)

    def stop(self, instance_id: str) -> None:
        self.inner.stop(instance_id)

    def positions(self, instance_id: str) -> list[Position]:
        return self.inner.positions(instance_id)

    def orders(self, instance_id: str) -> list[Order]:
        return self.inner.orders(instance_id)

    def close_position(self, instance_id: str, position: Position, volume: float) -> TradeResult:
        result = self.inner.close_position(instance_id, position, volume)
        left = f", {result.remaining:g} left" if result.remaining else ""
        self.printer.now(
            instance_id,
            f"   close {position.ticket} {position.symbol} {volume:g} lots: broker answers "
            f"{result.retcode} {_RETCODES.get(result.retcode or 0, '')}{left}",
        )
        return result

    def cancel_order(self, instance_id: str, order: Order) -> TradeResult:
        return self.inner.cancel_order(instance_id, order)


_RETCODES = {DONE: "(done)", PARTIAL: "(partial fill)", REQUOTE: "(requote)"}


class _TimelineNotifier:
    """Prints each alert and counts them per instance for the summary."""

    def __init__(self, printer: _Printer) -> None:
        self.printer = printer
        self.kinds: dict[str, list[AlertKind]] = {}

    def notify(self, notification: Notification) -> None:
        self.kinds.setdefault(notification.instance_id, []).append(notification.kind)
        p = self.printer
        p.line(
            notification.at.timestamp(),
            notification.instance_id,
            p.paint(f"!  {notification.kind.value}: {notification.message}", "1"),
        )


def demo_credentials(index: int) -> Credentials:
    """Made-up credentials: the fake broker accepts anything the script allows."""
    return Credentials(login=50_000_000 + index, server="FakeBroker-Demo", password=f"demo-{index}")


def run_demo(
    out: TextIO,
    *,
    clock: Clock,
    state: StateStore,
    credentials: CredentialStore,
    archive: Archive,
    color: bool = False,
    span: float = SPAN,
) -> list[SummaryRow]:
    """Play the demo on the given stores; print the timeline; return the summary.

    The caller owns the stores (and closes the archive).
    """
    for flow in FLOWS:
        # Opens the archive (a DuckDB file is created and migrated) before the clock
        # starts: on an accelerated clock that second would be a simulated minute.
        archive.is_confirmed(flow.instance_id)
    t0 = clock.now()
    printer = _Printer(out, clock, t0, color)
    broker = FakeBroker(clock)
    notifier = _TimelineNotifier(printer)
    backends = Backends(
        state=state,
        credentials=credentials,
        broker=_TimelineBroker(broker, printer),
        clock=clock,
        archive=_TimelineArchive(archive, printer),
        notifier=notifier,
    )
    policy = Policy()
    fleet = Fleet(backends, policy)
    for index, flow in enumerate(FLOWS, start=1):
        if flow.credentials:
            credentials.put(flow.instance_id, demo_credentials(index))
        if flow.prepare is not None:
            flow.prepare(broker, flow.instance_id)
    lifecycles = {lc.instance_id: lc for lc in fleet.add_many(f.instance_id for f in FLOWS)}

    def settled(instance_id: str, state: State) -> bool:
        snapshot = lifecycles[instance_id].snapshot()
        # Closing trades is part of entering ACCOUNT_CLOSED: an operator confirms after.
        closing = (Due.CLOSE_TRADES, Due.SETTLE_TRADE)
        return snapshot is not None and snapshot.status is state and snapshot.due not in closing

    def wait(done: Callable[[], bool], limit: float) -> None:
        while not done() and clock.now() < limit:
            fleet.run(until=min(limit, clock.now() + 1.0))

    for step in sorted(SCRIPT, key=lambda s: s.at):
        fleet.run(until=t0 + step.at)
        wait(functools.partial(settled, step.instance_id, step.when), t0 + span + GRACE)
        printer.now(step.instance_id, printer.paint(f"*  {step.what}", "36"))
        try:
            step.act(Scene(lifecycles, broker, step.instance_id))
        except LifecycleError as exc:
            printer.now(step.instance_id, f"   refused: {exc}")
    fleet.run(until=t0 + span)
    # Late on a loaded machine: the flows still get to where they are going.
    wait(lambda: all(_ended(lifecycles[f.instance_id], f) for f in FLOWS), t0 + span + GRACE)

    rows = []
    for flow in FLOWS:
        snapshot = lifecycles[flow.instance_id].snapshot()
        current = snapshot.status if snapshot is not None else None
        reason = (
            snapshot.last_failure_reason
            if snapshot is not None and current is not State.CONNECTED
            else None
        )
        rows.append(
            SummaryRow(
                instance_id=flow.instance_id,
                story=flow.story,
                state=current,
                reason=reason,
                logins=len(broker.login_times(flow.instance_id)),
                alerts=tuple(notifier.kinds.get(flow.instance_id, ())),
                expected=current is flow.expect and reason is flow.expect_reason,
            )
        )
    return rows


def print_summary(out: TextIO, rows: Sequence[SummaryRow], *, color: bool = False) -> None:
    """The closing table: one line per instance."""
    header = ("instance", "flow", "final state", "reason", "logins", "alerts")
    table = [
        (
            row.instance_id,
            row.story,
            row.state.value if row.state is not None else "-",
            row.reason.value if row.reason is not None else "-",
            str(row.logins),
            ", ".join(kind.value for kind in row.alerts) or "-",
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header) - 1)]

    def fmt(cells: Sequence[str]) -> str:
        return (
            "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True))
            + "  "
            + cells[-1]
        )

    out.write("\n" + fmt(header) + "\n")
    for row, cells in zip(rows, table, strict=True):
        mark = "" if row.expected else "   <- unexpected"
        text = fmt(cells) + mark
        if color and not row.expected:
            text = f"\x1b[31;1m{text}\x1b[0m"
        out.write(text + "\n")


def use_color(out: TextIO) -> bool:
    """ANSI colours only on a terminal, and never when ``NO_COLOR`` is set."""
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ
