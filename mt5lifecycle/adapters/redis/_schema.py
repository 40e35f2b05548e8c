"""The key schema of the Redis state store: one plain string per field.

Every field has a codec that checks a value on the way in and on the way out: a
value that does not parse is never guessed at (``CorruptState``), so the store must
never be the one to write such a value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Final, TypeVar, cast

import attrs

from ...core.answers import Account, Ticket
from ...core.states import ConnectionState, Due, Reason, State

__all__ = [
    "COUNT",
    "FIELDS",
    "KEY_SUFFIXES",
    "LAST_COMMIT",
    "LOCK",
    "NOTIFICATIONS",
    "RECORDS",
    "REQUIRED",
    "SET_ASIDE",
    "VERSION",
    "BadValueError",
    "Field",
]

_E = TypeVar("_E", bound=Enum)
Codec = tuple[Callable[[object], str | None], Callable[[str], object], str]


class BadValueError(Exception):
    """A stored value that does not parse; ``expected`` says what the schema wants."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


COUNT: Final = re.compile(r"[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)


def _enum_codec(kind: type[_E], attr: str, *, optional: bool) -> Codec:
    names = ", ".join(member.value for member in kind)
    expected = f"a {kind.__name__} name ({names})"

    def encode(value: object) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, kind):
            raise TypeError(f"Snapshot.{attr} must be a {kind.__name__}, not {value!r}")
        # ``_value_`` is a plain attribute; ``.value`` goes through a descriptor that
        # costs more than the rest of this function, once per field per commit.
        return cast(str, value._value_)

    def decode(text: str) -> object:
        try:
            return kind(text)
        except ValueError:
            raise BadValueError(expected) from None

    return encode, decode, expected


def _count_codec(attr: str) -> Codec:
    expected = "a non-negative integer"

    def encode(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"Snapshot.{attr} must be a non-negative int, not {value!r}")
        return str(value)

    def decode(text: str) -> object:
        if COUNT.fullmatch(text) is None:
            raise BadValueError(expected)
        return int(text)

    return encode, decode, expected


def _flag_codec(attr: str) -> Codec:
    expected = '"1" or "0"'

    def encode(value: object) -> str | None:
        if not isinstance(value, bool):
            raise TypeError(f"Snapshot.{attr} must be a bool, not {value!r}")
        return "1" if value else "0"

    def decode(text: str) -> object:
        if text == "1":
            return True
        if text == "0":
            return False
        raise BadValueError(expected)

    return encode, decode, expected


def _time_codec(attr: str) -> Codec:
    expected = "an ISO 8601 UTC timestamp (e.g. 2026-01-01T00:00:05.250000+00:00)"

    def encode(value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise ValueError(f"Snapshot.{attr} must be a timezone-aware datetime, not {value!r}")
        return value.astimezone(UTC).isoformat()

    def decode(text: str) -> object:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise BadValueError(expected) from None
        # A naive time or another offset is not what the schema says: converting the
        # one would guess a zone, and accepting the other hides a foreign writer.
        if moment.utcoffset() != UTC.utcoffset(None):
            raise BadValueError(expected)
        return moment.replace(tzinfo=UTC)

    return encode, decode, expected


def _due_time_codec(
    attr: str,
) -> Codec:
    expected = "a finite number of seconds of the clock"

    def encode(value: object) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"Snapshot.{attr} must be a float, not {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"Snapshot.{attr} must be finite, not {value!r}")
        return repr(float(value))

    def decode(text: str) -> object:
        if _FLOAT.fullmatch(text) is None:
            raise BadValueError(expected)
        value = float(text)
        if not math.isfinite(value):  # "1e999" matches the pattern and reads as inf
            raise BadValueError(expected)
        return value

    return encode, decode, expected


_ACCOUNT = re.compile(r"([0-9]+)@(.+)", re.ASCII | re.DOTALL)


def _account_codec(attr: str) -> Codec:
    expected = "an account as <login>@<server> (e.g. 5550001@Broker-Demo)"

    def encode(value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, Account):
            raise TypeError(f"Snapshot.{attr} must be an Account, not {value!r}")
        # What decode reads back, checked here: the store never writes what it refuses.
        login, server = value.login, value.server
        if isinstance(login, bool) or not isinstance(login, int) or login < 0:
            raise ValueError(f"Snapshot.{attr}.login must be a non-negative int, not {login!r}")
        if not isinstance(server, str) or not server:
            raise ValueError(f"Snapshot.{attr}.server must be a non-empty str, not {server!r}")
        return f"{login}@{server}"

    def decode(text: str) -> object:
        # The login is digits only, so the first @ ends it whatever the server's name.
        found = _ACCOUNT.fullmatch(text)
        if found is None:
            raise BadValueError(expected)
        return Account(int(found.group(1)), found.group(2))

    return encode, decode, expected


def _tickets_codec(attr: str) -> Codec:
    expected = 'a JSON array of {"kind", "ticket", "symbol", "volume"} objects'

    def encode(value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, tuple) or not all(isinstance(t, Ticket) for t in value):
            raise TypeError(f"Snapshot.{attr} must be a tuple of Tickets, not {value!r}")
        # What decode reads back, checked here: the store never writes what it refuses.
        for t in value:
            try:
                _one_of(t.kind, ("position", "order"))
                _int(t.ticket)
                _str(t.symbol)
                _number(t.volume)
            except (ValueError, TypeError):
                raise ValueError(f"Snapshot.{attr} holds a malformed ticket: {t!r}") from None
        return json.dumps(
            [{"kind": t.kind, "ticket": t.ticket, "symbol": t.symbol, "volume": t.volume}
             for t in value],
            separators=(",", ":"),
        )  # fmt: skip

    def decode(text: str) -> object:
        try:
            data = json.loads(text)
            if not isinstance(data, list):  # iterating an object would read its keys
                raise TypeError(data)
            tickets = tuple(
                Ticket(
                    kind=_one_of(item["kind"], ("position", "order")),
                    ticket=_int(item["ticket"]),
                    symbol=_str(item["symbol"]),
                    volume=float(_number(item["volume"])),
                )
                for item in data
            )
        except (ValueError, TypeError, KeyError):
            raise BadValueError(expected) from None
        return tickets

    return encode, decode, expected


def _one_of(value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(value)
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _number(value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(value)
    return value


@attrs.frozen
class Field:
    suffix: str
    encode: Callable[[object], str | None]
    decode: Callable[[str], object]
    expected: str
    missing: object
    """What an absent key reads as; ``REQUIRED`` when absence is corruption."""


REQUIRED: Final = object()


def _field(
    attr: str,
    codec: Codec,
    missing: object,
) -> Field:
    encode, decode, expected = codec
    return Field(attr, encode, decode, expected, missing)


# The order is the order of KEYS in the scripts: never reorder without them.
FIELDS: Final = (
    # The SPEC's keys:
    _field("status", _enum_codec(State, "status", optional=False), REQUIRED),
    _field(
        "connection_state",
        _enum_codec(ConnectionState, "connection_state", optional=False),
        REQUIRED,
    ),
    _field("login_attempt_count", _count_codec("login_attempt_count"), REQUIRED),
    _field("last_login_attempt", _time_codec("last_login_attempt"), None),
    _field(
        "login_failure_reason", _enum_codec(Reason, "login_failure_reason", optional=True), None
    ),
    _field("last_failure_reason", _enum_codec(Reason, "last_failure_reason", optional=True), None),
    # The library's own. Absent ones read as the Snapshot's defaults, so that a state
    # written with the SPEC's keys alone (by a host's own tool) still loads.
    _field("restart_count", _count_codec("restart_count"), 0),
    _field("next_due", _due_time_codec("next_due"), None),
    _field("due", _enum_codec(Due, "due", optional=True), None),
    _field("network_retry_count", _count_codec("network_retry_count"), 0),
    _field("ever_logged_in", _flag_codec("ever_logged_in"), False),
    _field("failed_since_success", _flag_codec("failed_since_success"), False),
    _field("terminal_stopped", _flag_codec("terminal_stopped"), False),
    _field("account", _account_codec("account"), None),
    _field("tickets", _tickets_codec("tickets"), None),
    _field("forced_try", _flag_codec("forced_try"), False),
)

VERSION: Final = "version"
LAST_COMMIT: Final = "last_commit"
LOCK: Final = "login_lock"
NOTIFICATIONS: Final = "notifications"
"""The outbox's notifications, in order (a Redis list)."""
RECORDS: Final = "records"
"""The outbox's archive records, in order (a Redis list)."""
SET_ASIDE: Final = "set_aside"
"""Notifications that kept failing, for an operator (a Redis list)."""

KEY_SUFFIXES: Final = (
    *(f.suffix for f in FIELDS),
    VERSION,
    LAST_COMMIT,
    LOCK,
    NOTIFICATIONS,
    RECORDS,
    SET_ASIDE,
)
"""Every key suffix of one instance, the SPEC's first."""
