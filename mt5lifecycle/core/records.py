"""The values that leave the core: notifications and archive records.

They are plain frozen values so that every adapter (a log line, a Redis stream
entry, a DuckDB row, a Prometheus sample) is a projection of the same fact. None of
them has a field that could hold a password.
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime
from enum import Enum

import attrs

from .answers import LOGIN_REASONS, Account, LoginResult, Order, Position, TradeResult
from .snapshot import Snapshot
from .states import AlertKind, Reason, State

__all__ = [
    "LOGIN_REASONS",
    "Account",
    "ArchiveRecord",
    "AuditRecord",
    "ClosureRecord",
    "LoginFailureRecord",
    "LoginResult",
    "Notification",
    "Order",
    "Outcome",
    "Position",
    "TradeOutcomeRecord",
    "TradeResult",
    "TransitionRecord",
    "new_record_id",
    "record_key",
]


_PROCESS = os.urandom(8).hex()
_COUNTER = itertools.count()


def _reseed() -> None:
    # A forked child must not mint its parent's ids.
    global _PROCESS, _COUNTER
    _PROCESS = os.urandom(8).hex()
    _COUNTER = itertools.count()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_record_id() -> str:
    """An id minted once per record, so a record retried through a queue lands once.

    A random per-process prefix and a counter: unique across processes and hosts like
    a uuid4, at a fraction of its cost on a transition's hot path.
    """
    return f"{_PROCESS}{next(_COUNTER):x}"


@attrs.frozen(kw_only=True)
class Notification:
    """What a notifier receives: one per alert."""

    kind: AlertKind
    instance_id: str
    reason: Reason | None
    message: str
    at: datetime
    id: str = attrs.field(factory=new_record_id)
    """Minted once, when the transition that raised it is decided, and stored with it:
    delivery is at least once, and a notification delivered twice (after a crash)
    carries the same id both times, so a notifier can drop the second."""


@attrs.frozen(kw_only=True)
class TransitionRecord:
    """One transition: every one is archived, self-loops (a retry) included."""

    instance_id: str
    at: datetime
    event: str
    source: State | None
    """``None`` for an instance's first transition (``start``)."""
    dest: State
    reason: Reason | None
    """``last_failure_reason`` after the transition, for transitions into a failure."""
    record_id: str = attrs.field(factory=new_record_id)


@attrs.frozen(kw_only=True)
class LoginFailureRecord:
    """One failed login, with what the broker said."""

    instance_id: str
    at: datetime
    attempt: int
    """``login_attempt_count`` after this failure (authentication failures in a row)."""
    reason: Reason
    code: int | None
    message: str
    record_id: str = attrs.field(factory=new_record_id)


class Outcome(str, Enum):
    """How a position or order ended when its account closed (SPEC section 8)."""

    CLOSED = "CLOSED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class TradeOutcomeRecord:
    """One position or pending order of a closed account, and how it ended."""

    instance_id: str
    at: datetime
    kind: str
    """``"position"`` or ``"order"``."""
    ticket: int
    symbol: str
    volume: float
    """The volume when closing began (0 for an order)."""
    outcome: Outcome
    retcode: int | None
    """The broker's last return code; ``None`` when the call itself failed."""
    comment: str = ""
    record_id: str = attrs.field(factory=new_record_id)


@attrs.frozen(kw_only=True)
class ClosureRecord:
    """A confirmed closure: the instance's final state, marked ``INACTIVE``.

    There is at most one per instance; an archive that holds it refuses the id's
    ``start()`` for good.
    """

    instance_id: str
    at: datetime
    final: Snapshot
    """The state the instance was in when the closure was confirmed."""
    status: State = State.INACTIVE


@attrs.frozen(kw_only=True)
class AuditRecord:
    """One operator action (from the API, the console or the command line), done or refused."""

    instance_id: str
    at: datetime
    actor: str
    """Who: a token's name, or the OS user for the command line."""
    action: str
    """What: ``reset``, ``disable``, ``confirm_closure``, ``add``, ``put_credentials``, ..."""
    source: State | None
    """The state before the action (``None``: nothing was stored)."""
    dest: State | None
    """The state after it; equal to ``source`` for a refused action."""
    outcome: str
    """``"done"`` or ``"refused"``."""
    detail: str = ""
    """Why it was refused, or what it changed; never a password."""
    record_id: str = attrs.field(factory=new_record_id)


ArchiveRecord = (
    TransitionRecord | LoginFailureRecord | TradeOutcomeRecord | ClosureRecord | AuditRecord
)


def record_key(record: ArchiveRecord) -> str:
    """The identity an archive dedupes on.

    A closure has no ``record_id``: there is at most one per instance, so its
    instance id is its identity.
    """
    if isinstance(record, ClosureRecord):
        return "closure:" + record.instance_id
    return record.record_id
