"""The decision core on its own: one shared Machine, a drawable table, no I/O."""

from __future__ import annotations

import ast
import inspect

import pytest

import mt5lifecycle.core.machine as machine
from mt5lifecycle import Policy, Reason, State
from mt5lifecycle.core.machine import MACHINE, TABLE, Facts, decide, mermaid
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.core.states import Due


def test_one_machine_holds_no_model() -> None:
    before = list(MACHINE.models)
    decide(None, "start", Policy(), 0.0)
    assert MACHINE.models == before == []


def test_every_guard_and_effect_named_in_the_table_exists() -> None:
    for row in TABLE:
        for name in (*row.guards, *row.unless):
            assert name in machine.GUARDS
        for name in row.effects:
            assert name in machine.EFFECTS


def test_the_machine_module_does_no_io() -> None:
    tree = ast.parse(inspect.getsource(machine))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "collections", "enum", "typing", "attrs", "transitions"}
    source = inspect.getsource(machine)
    for forbidden in ("time.time(", "sleep(", "open(", "import socket"):
        assert forbidden not in source


def test_the_mermaid_diagram_has_every_row() -> None:
    diagram = mermaid()
    assert diagram.startswith("stateDiagram-v2")
    edges = sum(len(row.sources) for row in TABLE)
    assert diagram.count("-->") == edges + 1


def test_decide_is_pure_and_does_not_mutate_the_snapshot() -> None:
    snap = Snapshot(status=State.CONNECTING, due=Due.LOGIN, next_due=0.0)
    decision = decide(
        snap, "login_failed", Policy(), 0.0, Facts(reason=Reason.AUTH_FAILED, login_at=0.0)
    )
    assert decision is not None
    assert snap.login_attempt_count == 0
    assert decision.snapshot.login_attempt_count == 1
    again = decide(
        snap, "login_failed", Policy(), 0.0, Facts(reason=Reason.AUTH_FAILED, login_at=0.0)
    )
    assert again == decision


@pytest.mark.parametrize("event", ["nonsense", "", "START"])
def test_unknown_events_are_refused(event: str) -> None:
    assert decide(Snapshot(status=State.CONNECTED), event, Policy(), 0.0) is None


def test_a_model_costs_no_trigger_methods() -> None:
    snap = Snapshot(status=State.CONNECTED)
    decide(snap, "connection_lost", Policy(), 0.0)
    assert not hasattr(snap, "connection_lost")
    assert not hasattr(machine._Step, "connection_lost")
