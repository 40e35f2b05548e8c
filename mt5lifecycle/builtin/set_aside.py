"""Set-aside notifications as an operator sees them: one shape for every surface.

The command line (``mt5lifecycle notifications``), the API and the console list and
redeliver what the relay set aside (SPEC 14); they share these helpers so a script
reads the same JSON from either, and the relay cuts the same secrets from the errors
it logs and stores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..ports import SetAside

__all__ = ["no_outbox", "oldest_first", "redact_urls", "redelivery_detail", "set_aside_dict"]


def _iso(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).isoformat()


_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{0,31})://\S+")


def redact_urls(text: str) -> str:
    """``text`` with every URL cut to its scheme.

    A set-aside notification's error is what its notifier raised, and an HTTP client's
    error quotes the URL it failed on: for a webhook, the URL is the secret. The
    scheme still says which channel failed.
    """
    return _URL.sub(lambda m: f"{m.group(1)}://...", text)


def no_outbox(state: object) -> str:
    """Why a state store has no set-aside notifications to list or redeliver."""
    return (
        f"the state store ({type(state).__name__}) keeps no outbox (ports.OutboxStore): "
        "a notification that kept failing was logged and counted in the metrics, not "
        "kept; nothing can be listed or redelivered"
    )


def oldest_first(items: Sequence[SetAside]) -> list[SetAside]:
    """Set-aside notifications in the order they were set aside, as every surface lists
    them (a store lists them per instance)."""
    return sorted(items, key=lambda s: (s.at, s.notification.instance_id))


def redelivery_detail(moved: int, asked: Sequence[str] | None) -> str:
    """The audit's detail of a redelivery, the same from the command line and the API."""
    which = "all" if asked is None else f"{len(asked)} asked"
    return f"{moved} set-aside notification(s) put back for delivery ({which})"


def set_aside_dict(item: SetAside) -> dict[str, Any]:
    """A set-aside notification as JSON-ready values: the same shape in the command
    line's ``--json`` and the API, so a script reads either.

    ``Notification`` has no field for a secret; the error is the notifier's words,
    with any URL in them cut to its scheme (``redact_urls``).
    """
    n = item.notification
    return {
        "instance_id": n.instance_id,
        "notification_id": n.id,
        "kind": n.kind.value,
        "reason": None if n.reason is None else n.reason.value,
        "message": n.message,
        "at": _iso(n.at),
        "set_aside_at": _iso(item.at),
        "error": redact_urls(item.error),
    }
