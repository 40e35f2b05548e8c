"""The JSON shapes of the API (and of the console's live updates): one place.

Times are ISO 8601 in UTC, enums are their names, and nothing here can hold a
password: ``Snapshot``, ``Health``, ``Notification`` and the archive's records have no
field for one. A set-aside notification has the command line's shape
(``cli.common.set_aside_dict``): ``mt5lifecycle notifications --json`` and the API
answer the same fields.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ..builtin.set_aside import set_aside_dict as set_aside_json
from ..core.health import FleetHealth, Health
from ..core.records import AuditRecord, LoginFailureRecord, TradeOutcomeRecord, TransitionRecord
from ..core.snapshot import Snapshot, utc
from ..core.states import Due, Reason, State
from .history import History

__all__ = [
    "STATES",
    "counts",
    "fleet_health_json",
    "health_json",
    "history_json",
    "instance_json",
    "needs_person",
    "set_aside_json",
    "stored_health_json",
]

STATES = tuple(State)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _name(value: Any) -> str | None:
    return None if value is None else str(value.value)


def needs_person(snapshot: Snapshot) -> bool:
    """Stuck until someone acts: ``FAILED`` with no restart pending, closed, inactive."""
    status = snapshot.status
    if status is State.FAILED:
        return snapshot.due is not Due.RESTART
    return status is State.ACCOUNT_CLOSED or status is State.INACTIVE


def instance_json(instance_id: str, snapshot: Snapshot) -> dict[str, Any]:
    """``id`` and the fields of ``Snapshot`` (SPEC section 10), and what is due next."""
    last = snapshot.last_login_attempt
    due = snapshot.due
    next_due = snapshot.next_due
    return {
        "id": instance_id,
        "status": snapshot.status.value,
        "connection_state": snapshot.connection_state.value,
        "login_attempt_count": snapshot.login_attempt_count,
        "last_login_attempt": None if last is None else last.isoformat(),
        "login_failure_reason": _name(snapshot.login_failure_reason),
        "last_failure_reason": _name(snapshot.last_failure_reason),
        "restart_count": snapshot.restart_count,
        "next_due": None if next_due is None or due is None else utc(next_due).isoformat(),
        "due": None if due is None else due.value,
        "needs_attention": needs_person(snapshot),
    }


def confirmed_json(instance_id: str) -> dict[str, Any]:
    """An instance whose closure was confirmed: gone from the live state, not forgotten."""
    return {
        "id": instance_id,
        "status": State.INACTIVE.value,
        "closure_confirmed": True,
    }


def health_json(health: Health) -> dict[str, Any]:
    """One instance's ``Health`` (SPEC section 15): ages in seconds, uptimes as fractions."""
    return {
        "id": health.instance_id,
        "healthy": health.healthy,
        "connected": health.connected,
        "identity_verified": health.identity_verified,
        "last_check_age": health.last_check_age,
        "reason": _name(health.reason),
        "uptime_5m": health.uptime_5m,
        "uptime_1h": health.uptime_1h,
        "uptime_1d": health.uptime_1d,
    }


def fleet_health_json(health: FleetHealth) -> dict[str, Any]:
    """The fleet's ``FleetHealth``, as the fleet in this process measures it."""
    return {
        "source": "fleet",
        "instances": health.instances,
        "connected": health.connected,
        "healthy": health.healthy,
        "unhealthy": [health_json(h) for h in health.unhealthy],
        "uptime_5m": health.uptime_5m,
        "uptime_1h": health.uptime_1h,
        "uptime_1d": health.uptime_1d,
    }


def stored_health_json(snapshots: Iterable[Snapshot]) -> dict[str, Any]:
    """What the stored snapshots tell of the fleet's health, without a fleet here.

    How many instances there are and how many are ``CONNECTED`` is in the store; being
    healthy (the identity check, the age of the last check) and uptime are measured by
    the process that drives the instances, so they are ``null``, never guessed: a
    dashboard that compares ``healthy`` with ``instances`` sees it does not know.
    """
    shown = list(snapshots)
    return {
        "source": "store",
        "instances": len(shown),
        "connected": sum(1 for s in shown if s.status is State.CONNECTED),
        "healthy": None,
        "unhealthy": None,
        "uptime_5m": None,
        "uptime_1h": None,
        "uptime_1d": None,
    }


def counts(snapshots: Iterable[Snapshot]) -> dict[str, int]:
    """Instances per state, every state named (zero included)."""
    seen = Counter(s.status for s in snapshots)
    return {state.value: seen.get(state, 0) for state in STATES}


def _transition(r: TransitionRecord) -> dict[str, Any]:
    return {
        "at": r.at.isoformat(),
        "event": r.event,
        "from": _name(r.source),
        "to": r.dest.value,
        "reason": _name(r.reason),
    }


def _failure(r: LoginFailureRecord) -> dict[str, Any]:
    return {
        "at": r.at.isoformat(),
        "attempt": r.attempt,
        "reason": r.reason.value,
        "code": r.code,
        "message": r.message,
    }


def _outcome(r: TradeOutcomeRecord) -> dict[str, Any]:
    return {
        "at": r.at.isoformat(),
        "kind": r.kind,
        "ticket": r.ticket,
        "symbol": r.symbol,
        "volume": r.volume,
        "outcome": r.outcome.value,
        "retcode": r.retcode,
        "comment": r.comment,
    }


def _audit(r: AuditRecord) -> dict[str, Any]:
    return {
        "at": r.at.isoformat(),
        "actor": r.actor,
        "action": r.action,
        "from": _name(r.source),
        "to": _name(r.dest),
        "outcome": r.outcome,
        "detail": r.detail,
    }


def _rows(records: Sequence[Any] | None, render: Any) -> list[dict[str, Any]] | None:
    return None if records is None else [render(r) for r in records]


def history_json(history: History) -> dict[str, Any]:
    """Each part oldest first; ``null`` with a reason in ``unavailable`` when unreadable."""
    return {
        "transitions": _rows(history.transitions, _transition),
        "login_failures": _rows(history.login_failures, _failure),
        "trade_outcomes": _rows(history.trade_outcomes, _outcome),
        "audits": _rows(history.audits, _audit),
        "unavailable": dict(history.unavailable),
        "truncated": dict(history.truncated),
    }


def hint(snapshot: Snapshot) -> str:
    """What a person should do about an instance that needs one (the console's words)."""
    status = snapshot.status
    reason = snapshot.last_failure_reason
    if status is State.ACCOUNT_CLOSED:
        return "The broker closed the account: confirm the closure, then add a new account."
    if status is State.INACTIVE:
        if reason is Reason.ACCOUNT_BANNED:
            return "The broker banned the account: reset it once the ban is lifted."
        return "Disabled: reset it to bring it back."
    if status is State.FAILED and snapshot.due is not Due.RESTART:
        if reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED:
            return (
                f"The broker refused the password {snapshot.login_attempt_count} times in a row: "
                "replace the credentials, then reset."
            )
        if reason is Reason.RECOVERY_EXHAUSTED:
            return "The restarts did not bring it back: check the terminal, then reset."
        if reason is Reason.CREDENTIALS_MISSING:
            return "No credentials are stored: store them, then reset."
        return "No restart is pending: reset it."
    return ""


def row_json(instance_id: str, snapshot: Snapshot) -> dict[str, Any]:
    """A table row of the console: the instance's fields and what to do about it."""
    row = instance_json(instance_id, snapshot)
    row["hint"] = hint(snapshot)
    return row


class ListingCache:
    """Each instance's JSON in ``GET /api/instances``, kept while its snapshot is unchanged.

    A listing of 10,000 instances spends most of its time turning snapshots into JSON,
    and between two listings most snapshots are the ones read last time. A snapshot is
    a frozen value, so the JSON of an equal one is the same bytes: the cache is keyed
    by the value itself, whatever the store's versions do. A full listing keeps only
    the instances it saw, so the cache never outgrows the fleet.
    """

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[str, tuple[Snapshot, bytes]] = {}

    def body(self, rows: Sequence[tuple[str, Snapshot]], *, complete: bool) -> bytes:
        """``{"instances": [...], "count": n}`` for ``rows``; ``complete``: every instance."""
        from .errors import json_bytes

        cache = self._rows
        kept: dict[str, tuple[Snapshot, bytes]] = {} if complete else cache
        parts: list[bytes] = []
        for instance_id, snapshot in rows:
            hit = cache.get(instance_id)
            if hit is not None and (hit[0] is snapshot or hit[0] == snapshot):
                part = hit[1]
            else:
                part = json_bytes(instance_json(instance_id, snapshot))
                hit = (snapshot, part)
            kept[instance_id] = hit
            parts.append(part)
        if complete:
            self._rows = kept
        return (
            b'{"instances":[' + b",".join(parts) + b'],"count":' + str(len(parts)).encode() + b"}"
        )
