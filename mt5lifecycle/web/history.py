"""Reading an instance's history back from the archive.

The ``Archive`` port only writes: reading is what some archives can also do
(``MemoryArchive``, ``DuckDBArchive``), each part by a method of its own. The console
and the API ask for what they need through the small Protocols below and say "history
unavailable" for a part the archive cannot give (the default ``NullArchive`` keeps
nothing; a queue in front of the archiver has nothing to read; a file can be busy):
an instance's page never fails because its history cannot be read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeVar, runtime_checkable

import attrs

from ..core.records import AuditRecord, LoginFailureRecord, TradeOutcomeRecord, TransitionRecord

__all__ = [
    "PARTS",
    "AuditReader",
    "FailureReader",
    "History",
    "OutcomeReader",
    "TransitionReader",
    "read_history",
]

log = logging.getLogger("mt5lifecycle.web")

PARTS: Final = ("transitions", "login_failures", "trade_outcomes", "audits")


@runtime_checkable
class TransitionReader(Protocol):
    def history(self, instance_id: str) -> Sequence[TransitionRecord]:
        """The instance's transitions, oldest first."""
        ...


@runtime_checkable
class FailureReader(Protocol):
    def failures(self, instance_id: str) -> Sequence[LoginFailureRecord]:
        """The instance's failed logins with the terminal's message, oldest first."""
        ...


@runtime_checkable
class OutcomeReader(Protocol):
    def outcomes(self, instance_id: str) -> Sequence[TradeOutcomeRecord]:
        """How each position and order of a closed account ended, oldest first."""
        ...


@runtime_checkable
class AuditReader(Protocol):
    def audits(self, instance_id: str) -> Sequence[AuditRecord]:
        """The operator actions on the instance, done or refused, oldest first."""
        ...


@attrs.frozen
class History:
    """The latest records of each part; ``None`` for a part that could not be read."""

    transitions: Sequence[TransitionRecord] | None
    login_failures: Sequence[LoginFailureRecord] | None
    trade_outcomes: Sequence[TradeOutcomeRecord] | None
    audits: Sequence[AuditRecord] | None
    unavailable: dict[str, str] = attrs.field(factory=dict)
    """Each part that could not be read, and why (a sentence for the operator)."""
    truncated: dict[str, int] = attrs.field(factory=dict)
    """Each part cut to the limit, and how many records it has in all."""


R = TypeVar("R")


def read_history(source: object, instance_id: str, limit: int) -> History:
    """The last ``limit`` records of each part that ``source`` can read."""
    unavailable: dict[str, str] = {}
    truncated: dict[str, int] = {}

    def part(name: str, read: Callable[[str], Sequence[R]] | None, kind: type[R]) -> list[R] | None:
        if read is None or not callable(read):
            unavailable[name] = (
                f"this archive ({type(source).__name__}) cannot read its {name} back"
            )
            return None
        try:
            rows = list(read(instance_id))
        except Exception as exc:
            log.warning(
                "instance %s: the archive could not read its %s (%s: %s)",
                instance_id,
                name,
                type(exc).__name__,
                exc,
            )
            unavailable[name] = f"the archive could not be read ({type(exc).__name__})"
            return None
        if len(rows) > limit:
            truncated[name] = len(rows)
            rows = rows[len(rows) - limit :]
        return [r for r in rows if isinstance(r, kind)]

    audits: Callable[[str], Sequence[AuditRecord]] | None = None
    kept = getattr(source, "audits", None)
    if isinstance(kept, list):
        # MemoryArchive keeps its audit records as a plain list attribute.
        def audits(instance_id: str) -> Sequence[AuditRecord]:
            return [r for r in kept if getattr(r, "instance_id", None) == instance_id]

    elif isinstance(source, AuditReader):
        audits = source.audits
    return History(
        transitions=part(
            "transitions",
            source.history if isinstance(source, TransitionReader) else None,
            TransitionRecord,
        ),
        login_failures=part(
            "login_failures",
            source.failures if isinstance(source, FailureReader) else None,
            LoginFailureRecord,
        ),
        trade_outcomes=part(
            "trade_outcomes",
            source.outcomes if isinstance(source, OutcomeReader) else None,
            TradeOutcomeRecord,
        ),
        audits=part("audits", audits, AuditRecord),
        unavailable=unavailable,
        truncated=truncated,
    )
