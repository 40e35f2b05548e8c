"""Bad input, refused before anything is touched, with the field named.

Each check raises ``WebError.invalid(field, why)`` (a 422). The reasons say what was
expected and, at most, the type that came: never the value, which may be a password
typed in the wrong field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any, Final

from ..core.credentials import Credentials
from ..core.states import State
from .errors import WebError

__all__ = [
    "MAX_LOGIN",
    "MAX_PASSWORD",
    "MAX_SERVER",
    "credentials",
    "flag",
    "instance_id",
    "json_object",
    "login",
    "notification_ids",
    "password",
    "server",
    "states",
]

MAX_LOGIN: Final = 2**63 - 1
"""An account number a PostgreSQL ``bigint`` (and DuckDB's) can hold."""
MAX_SERVER: Final = 256
MAX_PASSWORD: Final = 1024
MAX_IDS: Final = 1000
"""Notification ids one redelivery may name."""

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NOTIFICATION_ID: Final = re.compile(r"[!-~]{1,128}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_ID_RULE: Final = (
    "expected 1 to 128 characters of [A-Za-z0-9._-], starting with a letter or a digit"
)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def json_object(raw: bytes, *, allowed: Collection[str], empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object with no field outside ``allowed``.

    An unknown field is refused rather than ignored: ``{"forse": true}`` must not
    quietly reset without force.
    """
    if not raw.strip():
        if empty_ok:
            return {}
        raise WebError.invalid("body", "expected a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise WebError.invalid("body", "not valid JSON (UTF-8)") from None
    if not isinstance(body, dict):
        raise WebError.invalid("body", f"expected a JSON object, got {_kind(body)}")
    for key in body:
        if key not in allowed:
            raise WebError.invalid(
                "body", f"unknown field (expected only {', '.join(sorted(allowed)) or 'none'})"
            )
    return body


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise WebError.invalid(field, f"expected a string, got {_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise WebError.invalid(field, "not valid Unicode (a lone surrogate)") from None
    return value


def instance_id(value: object, field: str = "id") -> str:
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise WebError.invalid(field, _ID_RULE)
    return value


def login(value: object, field: str = "login") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WebError.invalid(
            field, f"expected an account number (an integer), got {_kind(value)}"
        )
    if not 0 < value <= MAX_LOGIN:
        raise WebError.invalid(field, f"expected an account number from 1 to {MAX_LOGIN}")
    return value


def server(value: object, field: str = "server") -> str:
    text = _text(value, field)
    if not text.strip():
        raise WebError.invalid(field, "must not be empty")
    if len(text) > MAX_SERVER:
        raise WebError.invalid(field, f"longer than {MAX_SERVER} characters")
    if _CONTROL.search(text):
        raise WebError.invalid(field, "must not contain control characters (newlines, NUL...)")
    return text


def password(value: object, field: str = "password") -> str:
    text = _text(value, field)
    if not text:
        raise WebError.invalid(field, "must not be empty")
    if len(text) > MAX_PASSWORD:
        raise WebError.invalid(field, f"longer than {MAX_PASSWORD} characters")
    if "\x00" in text:
        raise WebError.invalid(field, "must not contain NUL characters")
    return text


def flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise WebError.invalid(field, f"expected true or false, got {_kind(value)}")
    return value


def notification_ids(value: object, field: str = "ids") -> list[str]:
    """The notification ids a redelivery names: a non-empty list, each id printable
    ASCII without spaces (what the stores key them by).

    An empty list is refused, not taken as "all": leaving ``ids`` out means all, and
    a list that came out empty (a filter that matched nothing) must not widen to it.
    """
    if not isinstance(value, list):
        raise WebError.invalid(field, f"expected a list of notification ids, got {_kind(value)}")
    if not value:
        raise WebError.invalid(field, "must name at least one id (leave it out for all)")
    if len(value) > MAX_IDS:
        raise WebError.invalid(field, f"more than {MAX_IDS} ids")
    for item in value:
        if not isinstance(item, str) or _NOTIFICATION_ID.fullmatch(item) is None:
            raise WebError.invalid(
                field, "expected ids of 1 to 128 printable ASCII characters without spaces"
            )
    return list(dict.fromkeys(value))


def credentials(body: Mapping[str, Any]) -> Credentials:
    """``login``, ``server`` and ``password``, each required and checked."""
    for field in ("login", "server", "password"):
        if field not in body:
            raise WebError.invalid(field, "required")
    return Credentials(
        login=login(body["login"]),
        server=server(body["server"]),
        password=password(body["password"]),
    )


def states(values: Collection[str]) -> set[State]:
    """``?status=`` values: state names, each one checked."""
    out: set[State] = set()
    for value in values:
        try:
            out.add(State(value))
        except ValueError:
            names = ", ".join(s.value for s in State)
            raise WebError.invalid("status", f"expected one of {names}") from None
    return out
