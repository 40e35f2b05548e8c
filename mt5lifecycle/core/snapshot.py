"""The stored record of one instance.

``Snapshot`` is both what ``Lifecycle.snapshot()`` returns and what a state store
persists: one frozen value, so what a user reads is exactly what was written. Its
first eight fields are the SPEC's (section 10); the rest are the library's own keys
under the same prefix (SPEC section 5 allows them), kept because a process that
restarts must be able to carry on without guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs

from .answers import Account, Ticket
from .states import ConnectionState, Due, Reason, State

__all__ = ["Snapshot", "replace", "utc"]


def utc(timestamp: float) -> datetime:
    """A clock reading as the timezone-aware UTC ``datetime`` the schema stores."""
    return datetime.fromtimestamp(timestamp, tz=UTC)


@attrs.frozen(kw_only=True)
class Snapshot:
    """One instance's live state."""

    status: State
    connection_state: ConnectionState = ConnectionState.DISCONNECTED
    login_attempt_count: int = 0
    """Authentication failures in a row; equals the maximum once exhausted."""
    last_login_attempt: datetime | None = None
    login_failure_reason: Reason | None = None
    """The broker's reason for the latest failed login; cleared by a success or a reset."""
    last_failure_reason: Reason | None = None
    restart_count: int = 0
    next_due: float | None = None
    """When the pending ``due`` action runs, as a reading of the clock port."""

    due: Due | None = None
    """What happens at ``next_due``; ``None`` when nothing is pending."""
    network_retry_count: int = 0
    """Network losses retried since the last success, restart or reset."""
    ever_logged_in: bool = False
    """Whether these credentials ever logged in: a later ``Invalid account`` then means
    a closed account rather than a mistyped login (SPEC section 11)."""
    failed_since_success: bool = False
    """Any failure since the last success: the next ``CONNECTED`` fires ``LOGIN_RECOVERED``."""
    terminal_stopped: bool = False
    """The library stopped the terminal; ``reset`` starts it again before logging in."""
    account: Account | None = None
    """The account the last successful login was for: a terminal found logged in to
    another one (at a check) is cross-wired (SPEC section 12)."""
    tickets: tuple[Ticket, ...] | None = None
    """A closed account's closing plan: the positions and orders still to settle, the
    first in progress; ``None`` until they are listed (SPEC section 12)."""
    forced_try: bool = False
    """An operator's ``reset(force=True)`` allows one more login with credentials that
    exhausted their attempts (SPEC section 15)."""


_FIELDS = tuple(field.name for field in attrs.fields(Snapshot))


def _compile_replace() -> Callable[[Snapshot, dict[str, object]], Snapshot]:
    # Unrolled once at import, as attrs itself does for __init__: a transition's hot
    # path copies a snapshot, and a loop with getattr costs twice as much.
    lines = ["def replace(snapshot, changes):", "    new = _new(Snapshot)"]
    for name in _FIELDS:
        lines.append(
            f"    _set(new, {name!r}, changes[{name!r}] if {name!r} in changes "
            f"else snapshot.{name})"
        )
    lines.append("    return new")
    namespace: dict[str, Any] = {
        "_new": object.__new__,
        "_set": object.__setattr__,
        "Snapshot": Snapshot,
    }
    exec("\n".join(lines), namespace)  # noqa: S102 - code built from the field names above
    compiled: Callable[[Snapshot, dict[str, object]], Snapshot] = namespace["replace"]
    compiled.__doc__ = """``attrs.evolve`` without its introspection.

    ``Snapshot`` has no validators or converters, so copying field by field is the
    same value ``attrs.evolve`` would build, several times faster.
    """
    return compiled


replace = _compile_replace()
