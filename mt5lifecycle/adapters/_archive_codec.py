"""Archive records and notifications as JSON: the Redis stream between workers and
the archiver, and the entries of an instance's outbox in the Redis state store.

The codec is driven by the records' own attrs fields, so it carries exactly what a
record holds and nothing else (no record has a field that could hold a password),
and a field the core adds later travels without a change here. Decoding is strict:
an unknown record type, a missing or unknown field, or a value of the wrong type
raises ``ValueError`` naming it, because a guessed record in an archive is worse
than a missing one.
"""

from __future__ import annotations

import json
import types
import typing
from datetime import datetime
from enum import Enum
from typing import Any, Final

import attrs

from ..core.answers import Account, Ticket
from ..core.ids import check_instance_id
from ..core.records import (
    ArchiveRecord,
    AuditRecord,
    ClosureRecord,
    LoginFailureRecord,
    Notification,
    TradeOutcomeRecord,
    TransitionRecord,
    record_key,
)
from ..core.snapshot import Snapshot

__all__ = [
    "KINDS",
    "decode",
    "decode_entry",
    "decode_many",
    "encode",
    "encode_entry",
    "encode_many",
    "entry_id",
    "record_key",
]

KINDS: Final[dict[str, type[Any]]] = {
    "transition": TransitionRecord,
    "login_failure": LoginFailureRecord,
    "trade_outcome": TradeOutcomeRecord,
    "closure": ClosureRecord,
    "audit": AuditRecord,
}
_KIND_OF: Final[dict[type[Any], str]] = {cls: kind for kind, cls in KINDS.items()}
_TYPE_KEY: Final = "type"

for _cls in (*KINDS.values(), Snapshot, Notification, Account, Ticket):
    attrs.resolve_types(_cls)


def _to_json(value: object) -> object:
    if value is None or (
        isinstance(value, (bool, int, float, str)) and not isinstance(value, Enum)
    ):
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"archive times must be timezone-aware, not {value!r}")
        return value.isoformat()
    if isinstance(value, tuple):
        return [_to_json(item) for item in value]
    cls: Any = type(value)
    if attrs.has(cls):
        return {f.name: _to_json(getattr(value, f.name)) for f in attrs.fields(cls)}
    raise ValueError(f"cannot archive a value of type {type(value).__name__}")


def _as_dict(record: ArchiveRecord) -> dict[str, object]:
    kind = _KIND_OF.get(type(record))
    if kind is None:
        raise ValueError(f"not an archive record: {type(record).__name__}")
    out = typing.cast("dict[str, object]", _to_json(record))
    out[_TYPE_KEY] = kind
    return out


def encode(record: ArchiveRecord) -> str:
    return json.dumps(_as_dict(record), separators=(",", ":"))


def encode_many(records: typing.Iterable[ArchiveRecord]) -> str:
    """Several records as one JSON array: one stream entry per ``write`` call."""
    return json.dumps([_as_dict(r) for r in records], separators=(",", ":"))


def _from_json(value: object, hint: Any, where: str) -> object:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise ValueError(f"{where} must not be null")
        (inner,) = [o for o in options if o is not type(None)]
        return _from_json(value, inner, where)
    if value is None:
        raise ValueError(f"{where} must not be null")
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{where} must be an array, not {value!r}")
        return tuple(_from_json(v, item, f"{where}[{n}]") for n, v in enumerate(value))
    if isinstance(hint, type):
        if issubclass(hint, Enum):
            try:
                return hint(value)
            except ValueError:
                raise ValueError(f"{where} is not a {hint.__name__}: {value!r}") from None
        if hint is datetime:
            if not isinstance(value, str):
                raise ValueError(f"{where} must be an ISO 8601 time, not {value!r}")
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise ValueError(f"{where} must be timezone-aware: {value!r}")
            return parsed
        if attrs.has(hint):
            if not isinstance(value, dict):
                raise ValueError(f"{where} must be an object, not {value!r}")
            return _build(hint, value, where)
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint is bool and isinstance(value, bool):
            return value
        if hint in (int, str, float) and type(value) is hint:
            return value
    raise ValueError(f"{where} is not a {getattr(hint, '__name__', hint)}: {value!r}")


def _build(cls: type[Any], data: dict[str, object], where: str) -> object:
    fields = {f.name: f for f in attrs.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where} has unknown fields {sorted(unknown)}")
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is attrs.NOTHING:
                raise ValueError(f"{where} lacks the field {name!r}")
            continue
        kwargs[name] = _from_json(data[name], field.type, f"{where}.{name}")
    return cls(**kwargs)


def _record(data: object) -> ArchiveRecord:
    if not isinstance(data, dict):
        raise ValueError(f"an archive record must be a JSON object, not {data!r:.80}")
    body = dict(data)
    kind = body.pop(_TYPE_KEY, None)
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown archive record type {kind!r}")
    # A forged entry must not bring a hostile id into the archive.
    check_instance_id(body.get("instance_id"))
    return typing.cast("ArchiveRecord", _build(cls, body, kind))


def decode(text: str | bytes) -> ArchiveRecord:
    return _record(json.loads(text))


def decode_many(text: str | bytes) -> list[ArchiveRecord]:
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("an archive entry must hold a JSON array of records")
    return [_record(item) for item in data]


_NOTIFICATION: Final = "notification"


def entry_id(entry: ArchiveRecord | Notification) -> str:
    """The id an outbox entry is acknowledged by: a notification's ``id``, a record's key."""
    return entry.id if isinstance(entry, Notification) else record_key(entry)


def encode_entry(entry: ArchiveRecord | Notification) -> str:
    """An outbox entry: its id, a space, its JSON (so a script can read the id alone)."""
    if isinstance(entry, Notification):
        body = typing.cast("dict[str, object]", _to_json(entry))
        body[_TYPE_KEY] = _NOTIFICATION
    else:
        body = _as_dict(entry)
    return entry_id(entry) + " " + json.dumps(body, separators=(",", ":"))


def decode_entry(text: str | bytes) -> ArchiveRecord | Notification:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    head, _, body = text.partition(" ")
    data = json.loads(body)
    entry: ArchiveRecord | Notification
    if isinstance(data, dict) and data.get(_TYPE_KEY) == _NOTIFICATION:
        data = dict(data)
        del data[_TYPE_KEY]
        check_instance_id(data.get("instance_id"))
        entry = typing.cast(Notification, _build(Notification, data, _NOTIFICATION))
    else:
        entry = _record(data)
    # The head is what an acknowledgement matches: one that is not the entry's own id
    # would keep the entry (and all behind it) in the outbox for ever.
    if head != entry_id(entry):
        raise ValueError(f"an outbox entry's id {head!r:.40} is not its own {entry_id(entry)!r}")
    return entry
