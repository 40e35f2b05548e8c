"""The decision core on its own: one shared Machine, a drawable table, no I/O."""

from __future__ import annotations

import ast
import inspect

import pytest

import mt5lifecycle.core.machine as machine
from mt5lifecycle import Policy, Reason, State
from mt5lifecycle.core.answers import Account, LoginResult, Ticket
from mt5lifecycle.core.machine import (
    DELETED,
    MACHINE,
    TABLE,
    Command,
    Facts,
    Refusal,
    decide,
    dot,
    markdown_table,
    mermaid,
    needs_operator,
    refusal,
)
from mt5lifecycle.core.records import TransitionRecord
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.core.states import AlertKind, Due, TerminalStatus

ID = "acc-1"
CONNECTED = Snapshot(
    status=State.CONNECTED, due=Due.CHECK, next_due=60.0, account=Account(5550001, "Demo")
)


def test_one_machine_holds_no_model() -> None:
    before = list(MACHINE.models)
    decide(ID, None, "start", Policy(), 0.0)
    assert MACHINE.models == before == []


def test_every_guard_and_effect_named_in_the_table_exists_and_every_one_is_used() -> None:
    named_guards = {name for row in TABLE for name in (*row.guards, *row.unless)}
    named_effects = {name for row in TABLE for name in row.effects}
    assert named_guards == set(machine.GUARDS)
    assert named_effects == set(machine.EFFECTS)


def test_no_effect_is_named_like_its_event() -> None:
    for row in TABLE:
        assert row.event not in row.effects, row


def test_the_machine_module_does_no_io() -> None:
    tree = ast.parse(inspect.getsource(machine))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add((node.module or "").split(".")[0])
    assert roots <= {
        "__future__",
        "collections",
        "datetime",
        "enum",
        "typing",
        "attrs",
        "transitions",
    }
    source = inspect.getsource(machine)
    for forbidden in ("time.time(", "sleep(", "open(", "import socket", ".now()"):
        assert forbidden not in source


def test_the_drawings_have_every_row() -> None:
    edges = sum(len(row.sources) for row in TABLE)
    diagram = mermaid()
    assert diagram.startswith("stateDiagram-v2")
    assert diagram.count("-->") == edges + 1
    # The picture draws the rows between two states on one arrow, a line each.
    pairs = {(s, row.dest or s) for row in TABLE for s in row.sources}
    drawn = dot()
    assert drawn.count(" -> ") == len(pairs)
    assert all(row.event in drawn for row in TABLE)
    assert markdown_table().count("\n") == len(TABLE) + 2


def test_decide_is_pure_and_does_not_mutate_the_snapshot() -> None:
    snap = Snapshot(status=State.CONNECTING, due=Due.LOGIN, next_due=0.0)
    facts = Facts(result=LoginResult.failure(Reason.AUTH_FAILED, -6, "no"), login_at=0.0)
    decision = decide(ID, snap, "login_failed", Policy(), 0.0, facts)
    again = decide(ID, snap, "login_failed", Policy(), 0.0, facts)
    assert decision is not None and again is not None
    assert snap.login_attempt_count == 0
    assert decision.snapshot is not None and decision.snapshot.login_attempt_count == 1
    assert decision.snapshot == again.snapshot
    assert [type(r) for r in decision.records] == [type(r) for r in again.records]


@pytest.mark.parametrize("event", ["nonsense", "", "START"])
def test_unknown_events_are_refused(event: str) -> None:
    assert decide(ID, Snapshot(status=State.CONNECTED), event, Policy(), 0.0) is None


def test_a_model_costs_no_trigger_methods() -> None:
    snap = Snapshot(status=State.CONNECTED)
    decide(ID, snap, "connection_lost", Policy(), 0.0)
    assert not hasattr(snap, "connection_lost")
    assert not hasattr(machine._Step, "connection_lost")


def test_a_decision_carries_its_notifications_and_records() -> None:
    snap = Snapshot(status=State.CONNECTING, due=Due.LOGIN, next_due=0.0, login_attempt_count=4)
    facts = Facts(result=LoginResult.failure(Reason.AUTH_FAILED, -6, "refused"), login_at=3.0)
    decision = decide(ID, snap, "login_failed", Policy(), 7.0, facts)
    assert decision is not None
    assert [n.kind for n in decision.notifications] == [AlertKind.LOGIN_FAILURE]
    assert all(n.instance_id == ID and n.id for n in decision.notifications)
    kinds = [type(r).__name__ for r in decision.records]
    assert kinds == ["TransitionRecord", "LoginFailureRecord"]
    assert decision.records[1].at.timestamp() == 3.0
    assert Command.REJECT_CREDENTIALS in decision.commands


def test_a_passing_check_is_stored_quietly() -> None:
    facts = Facts(terminal=TerminalStatus.CONNECTED, account=Account(5550001, "demo"))
    decision = decide(ID, CONNECTED, "connection_checked", Policy(), 60.0, facts)
    assert decision is not None and decision.changed
    assert decision.snapshot == Snapshot(
        status=State.CONNECTED, due=Due.CHECK, next_due=120.0, account=Account(5550001, "Demo")
    )
    assert not any(isinstance(r, TransitionRecord) for r in decision.records)


def test_a_login_that_may_go_ahead_changes_nothing_and_asks_to_log_in() -> None:
    snap = Snapshot(status=State.CONNECTING, due=Due.LOGIN, next_due=0.0)
    decision = decide(ID, snap, "login_due", Policy(), 0.0, Facts())
    assert decision is not None
    assert not decision.changed
    assert decision.commands == (Command.LOG_IN,)


def test_a_reconnect_without_a_login_is_not_archived_as_a_login() -> None:
    snap = Snapshot(status=State.CONNECTING, due=Due.RECONNECT_CHECK, next_due=10.0)
    decision = decide(
        ID, snap, "reconnect_checked", Policy(), 10.0, Facts(terminal=TerminalStatus.CONNECTED)
    )
    assert decision is not None and decision.dest == "CONNECTED"
    (record,) = [r for r in decision.records if isinstance(r, TransitionRecord)]
    assert record.event == "reconnect_checked"
    assert decision.snapshot is not None and decision.snapshot.last_login_attempt is None


def test_a_terminal_logged_in_to_another_account_is_a_terminal_failure() -> None:
    facts = Facts(terminal=TerminalStatus.CONNECTED, account=Account(999, "Demo"))
    decision = decide(ID, CONNECTED, "connection_checked", Policy(), 60.0, facts)
    assert decision is not None and decision.dest == "FAILED"
    assert decision.snapshot is not None
    assert decision.snapshot.last_failure_reason is Reason.TERMINAL
    assert decision.snapshot.due is Due.RESTART
    assert "another account" in decision.notifications[0].message


def test_the_closing_plan_is_stored_then_worked_through() -> None:
    tickets = (
        Ticket(kind="position", ticket=1, symbol="EURUSD", volume=1.0),
        Ticket(kind="order", ticket=2, symbol="EURUSD", volume=0.0),
    )
    closed = Snapshot(status=State.ACCOUNT_CLOSED, due=Due.CLOSE_TRADES, next_due=0.0)
    listed = decide(ID, closed, "trades_listed", Policy(), 0.0, Facts(tickets=tickets))
    assert listed is not None and listed.snapshot is not None
    assert listed.snapshot.tickets == tickets and listed.snapshot.due is Due.SETTLE_TRADE
    first = decide(ID, listed.snapshot, "trade_settled", Policy(), 1.0, Facts())
    assert first is not None and first.snapshot is not None
    assert first.snapshot.tickets == tickets[1:]
    last = decide(ID, first.snapshot, "trade_settled", Policy(), 2.0, Facts())
    assert last is not None and last.snapshot is not None
    assert last.snapshot.tickets is None and last.snapshot.due is None
    assert Command.STOP_TERMINAL in last.commands


def test_a_purge_deletes_the_live_state() -> None:
    purging = Snapshot(status=State.INACTIVE, due=Due.PURGE, next_due=0.0)
    decision = decide(ID, purging, "purged", Policy(), 0.0)
    assert decision is not None
    assert decision.dest == DELETED and decision.snapshot is None and decision.changed
    assert decide(ID, None, "reset", Policy(), 0.0, deleted=True) is None


def test_refusals_say_why() -> None:
    closed = Snapshot(status=State.ACCOUNT_CLOSED)
    assert refusal(closed, "reset")[0] is Refusal.CLOSED_FOR_GOOD
    assert refusal(None, "reset")[0] is Refusal.NOT_STARTED
    assert refusal(None, "reset", deleted=True)[0] is Refusal.CLOSURE_CONFIRMED
    failed = Snapshot(status=State.FAILED)
    assert refusal(failed, "reset", Facts(known_bad=True))[0] is Refusal.CREDENTIALS_REJECTED
    assert refusal(failed, "connection_lost")[0] is Refusal.NO_ROW


@pytest.mark.parametrize(
    ("snapshot", "stuck"),
    [
        (Snapshot(status=State.CONNECTING), False),
        (Snapshot(status=State.CONNECTED), False),
        (Snapshot(status=State.FAILED, due=Due.RESTART, next_due=1.0), False),
        (Snapshot(status=State.FAILED), True),
        (Snapshot(status=State.INACTIVE), True),
        (Snapshot(status=State.ACCOUNT_CLOSED), True),
    ],
)
def test_needs_operator_is_the_states_that_cannot_be_left_alone(
    snapshot: Snapshot, stuck: bool
) -> None:
    assert needs_operator(snapshot) is stuck
