"""The state store on Redis (SPEC section 5).

The shape of the data is the SPEC's: one plain string key per field, named
``<prefix>:<id>:<field>``, so an operator with ``redis-cli`` reads an instance
without the library (no pickles, no JSON). The library adds its own keys next to the
SPEC's: the fields a restarted process needs to carry on (``restart_count``,
``next_due``, ``due``, ...), a fencing ``version``, the id of the write that made
that version (``last_commit``) and the login lock (``login_lock``).

Why Lua scripts rather than MULTI/EXEC: a transition must be checked against the
version it read *and* against the lock, and must then write every key, in one round
trip. MULTI/EXEC cannot branch on what it reads (WATCH would cost a round trip more
and fail spuriously under load); a script can, and Redis runs it atomically. The
scripts are registered once with ``register_script`` and called by SHA, in the
manner of redis-py's own ``Lock``.

Why ``last_commit``: redis-py retries a command after a timeout or a dropped
connection by default. A commit that landed but whose reply was lost would then be
retried, find the version it just wrote, and refuse itself as a stale writer. The
script recognises its own retried write by this id and answers as the first try
would have; any other writer is still refused.

Why reads are a script too: ``MGET`` answers nil for a key of the wrong Redis type,
which would read a list stored at ``:login_failure_reason`` as "no reason". The read
script follows its ``MGET`` with one ``EXISTS`` over the keys that came back nil
(still one round trip) and names the key whose type is wrong, so a foreign value is
never taken for absence.

Why every value is checked on the way out as well as on the way in: a value that
does not parse is never guessed at (``CorruptState``), so the store must never be
the one to write such a value.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import attrs

from ...core.ids import check_instance_id
from ...core.records import new_record_id
from ...core.snapshot import Snapshot
from ...core.states import ConnectionState, Due, Reason, State
from ...errors import (
    ConcurrentUpdate,
    CorruptState,
    InvalidInstanceId,
    LifecycleError,
    LockLost,
    StoreUnavailable,
)
from ...ports import LockToken, Stored

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.commands.core import Script

__all__ = ["KEY_SUFFIXES", "PendingCommit", "RedisStateStore", "RedisType"]

_E = TypeVar("_E", bound=Enum)

PendingCommit = tuple[str, Snapshot, int, "LockToken | None"]
"""One item of ``commit_many``: ``(instance_id, snapshot, expected_version, lock)``.

A plain tuple so that the core can batch commits without importing this adapter."""

BATCH: Final = 1000
"""Instances per pipeline in ``load_many`` and ``commit_many``: large enough to hide
the round trip, small enough not to hold Redis (or the reply buffer) for long."""

GROUP: Final = 100
"""Instances per script call in ``commit_many`` (not on a cluster, where each
instance's keys live in their own slot): a call holds Redis for well under a
millisecond, and its MSET stays far below Lua's limit on unpacked arguments."""


@attrs.frozen(repr=False)
class RedisType:
    """What a key of the wrong Redis type holds, as ``CorruptState.value``."""

    name: str

    def __repr__(self) -> str:
        return f"a Redis {self.name} (not a string)"


# --- the schema ---------------------------------------------------------------------


class _BadValueError(Exception):
    """A stored value that does not parse; ``expected`` says what the schema wants."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


_COUNT = re.compile(r"[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)


def _enum_codec(
    kind: type[_E], attr: str, *, optional: bool
) -> tuple[Callable[[object], str | None], Callable[[str], object], str]:
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
            raise _BadValueError(expected) from None

    return encode, decode, expected


def _count_codec(attr: str) -> tuple[Callable[[object], str | None], Callable[[str], object], str]:
    expected = "a non-negative integer"

    def encode(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"Snapshot.{attr} must be a non-negative int, not {value!r}")
        return str(value)

    def decode(text: str) -> object:
        if _COUNT.fullmatch(text) is None:
            raise _BadValueError(expected)
        return int(text)

    return encode, decode, expected


def _flag_codec(attr: str) -> tuple[Callable[[object], str | None], Callable[[str], object], str]:
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
        raise _BadValueError(expected)

    return encode, decode, expected


def _time_codec(attr: str) -> tuple[Callable[[object], str | None], Callable[[str], object], str]:
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
            raise _BadValueError(expected) from None
        # A naive time or another offset is not what the schema says: converting the
        # one would guess a zone, and accepting the other hides a foreign writer.
        if moment.utcoffset() != UTC.utcoffset(None):
            raise _BadValueError(expected)
        return moment.replace(tzinfo=UTC)

    return encode, decode, expected


def _due_time_codec(
    attr: str,
) -> tuple[Callable[[object], str | None], Callable[[str], object], str]:
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
            raise _BadValueError(expected)
        value = float(text)
        if not math.isfinite(value):  # "1e999" matches the pattern and reads as inf
            raise _BadValueError(expected)
        return value

    return encode, decode, expected


@attrs.frozen
class _Field:
    suffix: str
    encode: Callable[[object], str | None]
    decode: Callable[[str], object]
    expected: str
    missing: object
    """What an absent key reads as; ``_REQUIRED`` when absence is corruption."""


_REQUIRED: Final = object()


def _field(
    attr: str,
    codec: tuple[Callable[[object], str | None], Callable[[str], object], str],
    missing: object,
) -> _Field:
    encode, decode, expected = codec
    return _Field(attr, encode, decode, expected, missing)


# The order is the order of KEYS in the scripts: never reorder without them.
_FIELDS: Final = (
    # The SPEC's keys:
    _field("status", _enum_codec(State, "status", optional=False), _REQUIRED),
    _field(
        "connection_state",
        _enum_codec(ConnectionState, "connection_state", optional=False),
        _REQUIRED,
    ),
    _field("login_attempt_count", _count_codec("login_attempt_count"), _REQUIRED),
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
)
_N: Final = len(_FIELDS)
_VERSION: Final = "version"
_LAST_COMMIT: Final = "last_commit"
_LOCK: Final = "login_lock"

KEY_SUFFIXES: Final = (*(f.suffix for f in _FIELDS), _VERSION, _LAST_COMMIT, _LOCK)
"""Every key suffix of one instance, the SPEC's first, in the scripts' order."""

_TAILS: Final = tuple(f":{suffix}" for suffix in KEY_SUFFIXES)
_VERSION_TAIL: Final = f":{_VERSION}"
_LAST_COMMIT_TAIL: Final = f":{_LAST_COMMIT}"
_LOCK_TAIL: Final = f":{_LOCK}"
_LOADED: Final = _N + 2
"""A read takes the fields, the version and the id of the commit that made it."""
_FIELD_NAMES: Final = tuple(f.suffix for f in _FIELDS)
_OTHER_BASE: Final = -5
_LENDING_POOL: Final = 64
"""The fewest connections a pool must allow for ``start_commit_many`` to hold one of
them while its caller goes on: a fleet's running chunk holds up to three (redis-py's
default pool allows 100)."""


def _compile_changes() -> Callable[[Snapshot, Snapshot, str, list[str], list[str]], None]:
    # Unrolled once at import, as snapshot.replace is: this runs on every commit, and
    # a loop with two getattr calls per field costs twice as much.
    lines = ["def changes(new, old, head, keys, values):"]
    for index, f in enumerate(_FIELDS):
        lines += [
            f"    a = new.{f.suffix}",
            f"    b = old.{f.suffix}",
            "    if a is not b and (type(a) is not type(b) or a != b):",
            f"        keys.append(head + {':' + f.suffix!r})",
            f"        values.append(_encode[{index}](a) or '')",
        ]
    namespace: dict[str, Any] = {"_encode": tuple(f.encode for f in _FIELDS)}
    exec("\n".join(lines), namespace)  # noqa: S102 - code built from the field names above
    compiled: Callable[[Snapshot, Snapshot, str, list[str], list[str]], None]
    compiled = namespace["changes"]
    compiled.__doc__ = """Append the key and encoded value of each field ``new`` changes.

    A field of the same type and an equal value encodes alike, and the old value was
    checked when it was written, so only a change needs encoding (and checking). The
    type test keeps ``True`` from passing for ``1``.
    """
    return compiled


_changes = _compile_changes()

_VERSION_EXPECTED: Final = "a non-negative integer (the fencing version)"


# --- the scripts --------------------------------------------------------------------

# KEYS: the field keys, version, last_commit. Returns {0, value...} or, for a key of
# the wrong type, {index, type}. MGET answers nil for a key of another type, so the
# absent ones are asked once more (EXISTS): a list is not "no value".
_LOAD = """
local values = redis.call('MGET', unpack(KEYS))
local absent = {}
for i = 1, #KEYS do
  if not values[i] then absent[#absent + 1] = KEYS[i] end
end
if #absent > 0 and redis.call('EXISTS', unpack(absent)) > 0 then
  for i = 1, #KEYS do
    if not values[i] then
      local t = redis.call('TYPE', KEYS[i])['ok']
      if t ~= 'none' then return {i, t} end
    end
  end
end
table.insert(values, 1, 0)
return values
"""

# _LOAD for many instances in one script (a restore, a fleet's read-back of its idle
# members): one MGET for all their keys, one EXISTS for all the absent ones.
# KEYS: per instance, the keys _LOAD reads. Returns {values, wrong}: MGET's answer
# for every key, and {position, type, ...} for each absent key that holds another
# type (looked for only when some absent key exists at all).
_LOAD_MANY = """
local values = redis.call('MGET', unpack(KEYS))
local absent, names, wrong = {}, {}, {}
for i = 1, #KEYS do
  if not values[i] then
    absent[#absent + 1] = i
    names[#names + 1] = KEYS[i]
  end
end
if #names > 0 and redis.call('EXISTS', unpack(names)) > 0 then
  for _, i in ipairs(absent) do
    local t = redis.call('TYPE', KEYS[i])['ok']
    if t ~= 'none' then
      wrong[#wrong + 1] = i
      wrong[#wrong + 1] = t
    end
  end
end
return {values, wrong}
"""

# KEYS: version, last_commit, login_lock, then the keys of the fields to write.
# ARGV: expected version, the version this write makes, lock token ('' for none),
# commit id, '1' to release the lock in the same write (a login's result and the
# lock's release in one round trip), the commit id the write builds on ('' for a
# whole write), then one value per field key ('' deletes the key: no field is ever
# stored empty).
# A whole write names every field; a change names only the fields that differ from
# the state made by the commit it builds on, and is refused ({-5}, nothing written)
# unless that commit is the one stored, so a change is never laid over another state.
# Returns the new version (an integer; {0, new version} from _COMMIT_MANY), {-1}
# lock lost, {-2, index, type} wrong type, {-3, raw} corrupt version, {-4, raw or
# nil} version mismatch, {-5} other base.
# Each command a script runs costs Redis about as much as a small one sent by a
# client, so the usual path is one MGET and one MSET (and a DEL when a key goes):
# MGET reads a key of another type as nil, which the rare paths then look into.
_COMMIT = """
local vkey, ckey, lkey = KEYS[1], KEYS[2], KEYS[3]
local got = redis.call('MGET', vkey, ckey, lkey)
local raw, made, held = got[1], got[2], got[3]
-- The usual write finds the version it read, its lock and its base as they were,
-- in three string comparisons; anything else is looked into below.
if raw ~= ARGV[1] or (ARGV[3] ~= '' and held ~= ARGV[3])
    or (ARGV[6] ~= '' and made ~= ARGV[6]) then
  local function wrong(i)
    local t = redis.call('TYPE', KEYS[i])['ok']
    if t ~= 'none' then return {-2, i, t} end
  end
  local found = 0
  if raw then
    if not string.match(raw, '^%d+$') then return {-3, raw} end
    found = tonumber(raw)
  else
    local bad = wrong(1)
    if bad then return bad end
  end
  local expected = tonumber(ARGV[1])
  -- This very write, sent again after its reply was lost: answer as the first try
  -- did, even though the lock it released is gone by now.
  if found == expected + 1 and made == ARGV[4] then return found end
  if ARGV[3] ~= '' and held ~= ARGV[3] then
    if not held then
      local bad = wrong(3)
      if bad then return bad end
    end
    return {-1}
  end
  if found ~= expected then return {-4, raw} end
  if ARGV[6] ~= '' and made ~= ARGV[6] then return {-5} end
end
local kv, n, gone = {vkey, ARGV[2], ckey, ARGV[4]}, 4, {}
for i = 4, #KEYS do
  local v = ARGV[i + 3]
  if v == '' then
    gone[#gone + 1] = KEYS[i]
  else
    kv[n + 1] = KEYS[i]
    kv[n + 2] = v
    n = n + 2
  end
end
if ARGV[3] ~= '' and ARGV[5] == '1' then gone[#gone + 1] = lkey end
redis.call('MSET', unpack(kv))
if #gone > 0 then redis.call('DEL', unpack(gone)) end
return tonumber(ARGV[2])
"""

# The commits of many instances in one script: what _COMMIT does for one, item by
# item, each checked and answered on its own (a refused item changes nothing and
# does not hold up the others). Redis pays for starting a script and for each
# command it runs about as much as for a small command from a client; one script
# per hundred instances, one MGET for all their versions, commit ids and locks and
# one MSET for all their writes spend that once rather than per instance.
# KEYS: per item, the item's _COMMIT keys. ARGV: per item, the number of field
# keys it names, then its _COMMIT arguments. An instance appears once per call (the
# client starts another call for a second commit of it), so the writes of different
# items never touch the same key and their order does not matter.
# Returns one _COMMIT answer per item.
_COMMIT_MANY = """
local starts, heads = {}, {}
local k, a, n = 1, 1, 0
while a <= #ARGV do
  n = n + 1
  starts[n] = k
  starts[-n] = a + 1
  heads[#heads + 1] = KEYS[k]
  heads[#heads + 1] = KEYS[k + 1]
  heads[#heads + 1] = KEYS[k + 2]
  local fields = tonumber(ARGV[a])
  k = k + 3 + fields
  a = a + 7 + fields
end
local got = redis.call('MGET', unpack(heads))
local out, kv, gone = {}, {}, {}
local function wrong(key, index)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' then return {-2, index, t} end
end
-- A version MGET read as nil is absent (a new instance) or of another type; one
-- EXISTS for all of them says whether any needs a TYPE.
local new = {}
for i = 1, n do
  if not got[3 * i - 2] then new[#new + 1] = heads[3 * i - 2] end
end
local foreign = #new > 0 and redis.call('EXISTS', unpack(new)) > 0
for i = 1, n do
  local k, a = starts[i], starts[-i]
  local raw, made, held = got[3 * i - 2], got[3 * i - 1], got[3 * i]
  local last = (starts[i + 1] or (#KEYS + 1)) - 1
  local answer
  local found = 0
  if raw then
    if string.match(raw, '^%d+$') then found = tonumber(raw) else answer = {-3, raw} end
  elseif foreign then
    answer = wrong(KEYS[k], 1)
  end
  if not answer then
    local expected = tonumber(ARGV[a])
    if found == expected + 1 and made == ARGV[a + 3] then
      answer = {0, found}
    elseif ARGV[a + 2] ~= '' and held ~= ARGV[a + 2] then
      answer = (not held and wrong(KEYS[k + 2], 3)) or {-1}
    elseif found ~= expected then
      answer = {-4, raw}
    elseif ARGV[a + 5] ~= '' and made ~= ARGV[a + 5] then
      answer = {-5}
    else
      kv[#kv + 1] = KEYS[k]
      kv[#kv + 1] = ARGV[a + 1]
      kv[#kv + 1] = KEYS[k + 1]
      kv[#kv + 1] = ARGV[a + 3]
      for j = k + 3, last do
        local v = ARGV[a + 6 + j - k - 3]
        if v == '' then
          gone[#gone + 1] = KEYS[j]
        else
          kv[#kv + 1] = KEYS[j]
          kv[#kv + 1] = v
        end
      end
      if ARGV[a + 2] ~= '' and ARGV[a + 4] == '1' then gone[#gone + 1] = KEYS[k + 2] end
      answer = {0, tonumber(ARGV[a + 1])}
    end
  end
  out[i] = answer
end
if #kv > 0 then redis.call('MSET', unpack(kv)) end
if #gone > 0 then redis.call('DEL', unpack(gone)) end
return out
"""

# KEYS: login_lock. ARGV: token, ttl in ms. Returns 1 taken, 0 held by another,
# or the key's type when it is not a string. A retry of our own SET (the reply was
# lost) finds our token and still answers "taken".
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'string' then return t end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# _ACQUIRE for many instances in one script (the logins a fleet runs together).
# KEYS: their login_lock keys, each once. ARGV: ttl in ms, then one token per key.
# Returns one _ACQUIRE answer per key.
_ACQUIRE_MANY = """
local out = {}
for i = 1, #KEYS do
  local key, token = KEYS[i], ARGV[i + 1]
  if redis.call('SET', key, token, 'NX', 'PX', ARGV[1]) then
    out[i] = 1
  else
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'string' then
      out[i] = t
    elseif redis.call('GET', key) == token then
      out[i] = 1
    else
      out[i] = 0
    end
  end
end
return out
"""

# KEYS: login_lock. ARGV: token. Deletes only our own token (compare-and-delete).
_RELEASE = """
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then return redis.call('TYPE', KEYS[1])['ok'] end
if v == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# --- faults -------------------------------------------------------------------------


@functools.cache
def _transient() -> tuple[type[BaseException], ...]:
    from redis import exceptions

    # BusyLoadingError, AuthenticationError and MaxConnectionsError are
    # ConnectionErrors; ReadOnlyError is a replica answering during a failover;
    # ClusterError covers a cluster that is down or reshaping.
    return (
        exceptions.ConnectionError,
        exceptions.TimeoutError,
        exceptions.ReadOnlyError,
        exceptions.TryAgainError,
        exceptions.ClusterError,
        TimeoutError,
    )


@functools.cache
def _no_script() -> type[BaseException]:
    from redis.exceptions import NoScriptError

    return NoScriptError


def _unavailable(exc: BaseException, instance_id: str | None) -> StoreUnavailable:
    detail = f"{type(exc).__name__}: {exc}"
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return StoreUnavailable(backend="redis", instance_id=instance_id, detail=detail)


def _as_error(exc: Exception, instance_id: str | None) -> Exception:
    """What the store answers for a client error: ``StoreUnavailable`` when transient."""
    if isinstance(exc, _transient()):
        unavailable = _unavailable(exc, instance_id)
        unavailable.__cause__ = exc
        return unavailable
    return exc


@contextmanager
def _reaching(instance_id: str | None) -> Iterator[None]:
    try:
        yield
    except LifecycleError:
        raise
    except Exception as exc:
        error = _as_error(exc, instance_id)
        if error is exc:
            raise
        raise error from exc


def _text(raw: object) -> str | None:
    """A reply as text, whether or not the client decodes responses."""
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        return raw.decode("utf-8")
    raise TypeError(f"unexpected reply from Redis: {raw!r}")


def _spans(ids: Sequence[str]) -> list[tuple[int, int]]:
    """``ids`` cut into runs of at most ``GROUP`` for one script call each.

    An id never appears twice in one run: its second commit must run after the
    first, and its second lock request would find its own first token held.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    while start < len(ids):
        end, seen = start, set()
        while end < len(ids) and end - start < GROUP and ids[end] not in seen:
            seen.add(ids[end])
            end += 1
        spans.append((start, end))
        start = end
    return spans


def _per_lock(calls: Sequence[tuple[list[str], list[str]]], replies: Sequence[Any]) -> list[Any]:
    """Lock scripts' answers, one per lock: a call's error stands for each of its locks."""
    out: list[Any] = []
    for (keys, _), reply in zip(calls, replies, strict=True):
        out += reply if isinstance(reply, list) else [reply] * len(keys)
    return out


def _ttl_millis(ttl: object) -> int:
    """A lock's TTL in whole milliseconds (at least one), checked."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"lock ttl must be a number of seconds, not {ttl!r}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"lock ttl must be a finite number of seconds > 0, not {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


# --- the store ----------------------------------------------------------------------


@attrs.define
class _Call:
    """One commit as sent: what ``_committed`` needs to read the script's answer.

    Not frozen only because a frozen attrs class sets each field through
    ``object.__setattr__``: one is built per commit, and nothing changes it.
    """

    instance_id: str
    snapshot: Snapshot
    expected_version: int
    lock: LockToken | None
    commit_id: str
    keys: list[str]
    args: list[str]


class RedisStateStore:
    """The ``StateStore`` port on a ``redis.Redis`` (or ``redis.RedisCluster``) client.

    ``prefix`` namespaces the keys (``instance_state`` by default, the SPEC's).
    ``cluster=True`` wraps the id in a hash tag (``<prefix>:{<id>}:status``) so that one
    instance's keys share a slot and each script touches one node. The client is the
    host's: its timeouts and retries apply, and the store never closes it.
    """

    __slots__ = (
        "_acquire",
        "_acquire_many",
        "_client",
        "_cluster",
        "_commit",
        "_commit_many",
        "_known",
        "_load",
        "_load_many",
        "_prefix",
        "_release",
    )

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "instance_state",
        cluster: bool = False,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"RedisStateStore prefix must be a non-empty string, not {prefix!r}")
        # A brace in the prefix would become the hash tag and put every instance in
        # one cluster slot; whitespace makes keys that are easy to mistype in redis-cli.
        if any(ch in prefix for ch in "{}") or any(ch.isspace() for ch in prefix):
            raise ValueError(
                f"RedisStateStore prefix must not contain braces or whitespace: {prefix!r}"
            )
        if not isinstance(cluster, bool):
            raise TypeError(f"RedisStateStore cluster must be a bool, not {cluster!r}")
        from redis.cluster import RedisCluster

        if isinstance(client, RedisCluster) and not cluster:
            # Without the hash tag one instance's keys spread over slots, and every
            # script would fail with CROSSSLOT.
            raise ValueError("a RedisCluster client needs RedisStateStore(..., cluster=True)")
        self._client = client
        self._prefix = prefix
        self._cluster = cluster
        self._load: Script = client.register_script(_LOAD)
        self._load_many: Script = client.register_script(_LOAD_MANY)
        self._commit: Script = client.register_script(_COMMIT)
        self._commit_many: Script = client.register_script(_COMMIT_MANY)
        self._acquire: Script = client.register_script(_ACQUIRE)
        self._acquire_many: Script = client.register_script(_ACQUIRE_MANY)
        self._release: Script = client.register_script(_RELEASE)
        # What this store last wrote or read of each instance: (version, the id of
        # the commit that made it, the snapshot). A commit from that version then
        # sends only the fields that changed, which spares most of a commit's bytes
        # and of the script's work; the script still checks that id (a ``{-5}``
        # refusal) so a change is never applied to a state this store did not see.
        # One entry per instance driven here, holding the Lifecycle's own snapshot.
        self._known: dict[str, tuple[int, str, Snapshot]] = {}

    def __repr__(self) -> str:
        # Never the client: its connection arguments may carry a password.
        return f"RedisStateStore(prefix={self._prefix!r}, cluster={self._cluster!r})"

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def cluster(self) -> bool:
        return self._cluster

    def key(self, instance_id: str, field: str) -> str:
        """The full Redis key of one field of an instance (for operators and tests)."""
        check_instance_id(instance_id)
        if field not in KEY_SUFFIXES:
            raise ValueError(f"unknown field {field!r}: expected one of {', '.join(KEY_SUFFIXES)}")
        return f"{self._base(instance_id)}:{field}"

    # -- reading ---------------------------------------------------------------------

    def load(self, instance_id: str) -> Stored | None:
        """One instance, in one round trip; ``None`` when nothing is stored."""
        check_instance_id(instance_id)
        keys = self._keys(instance_id)
        with _reaching(instance_id):
            reply = self._load(keys=keys[:_LOADED])
        return self._decode(instance_id, keys, reply)

    def load_many(self, instance_ids: Iterable[str]) -> dict[str, Stored]:
        """Many instances, pipelined ``BATCH`` at a time; absent ids are left out.

        Each instance is read atomically; the batch as a whole is not a snapshot of
        the fleet at one instant (nor does restoring need it to be).
        """
        wanted = list(dict.fromkeys(check_instance_id(i) for i in instance_ids))
        found: dict[str, Stored] = {}
        for start in range(0, len(wanted), BATCH):
            chunk = wanted[start : start + BATCH]
            keys = [self._keys(i)[:_LOADED] for i in chunk]
            with _reaching(None):
                replies = self._read_many(keys)
            for instance_id, instance_keys, reply in zip(chunk, keys, replies, strict=True):
                if isinstance(reply, Exception):
                    raise _as_error(reply, instance_id)
                stored = self._decode(instance_id, instance_keys, reply)
                if stored is not None:
                    found[instance_id] = stored
        return found

    def versions(self, instance_ids: Sequence[str]) -> dict[str, int]:
        """Each id's stored version alone, ``BATCH`` at a time in one ``MGET``.

        What a fleet's periodic read-back asks first: only the ids whose version moved
        are then read whole. An absent version, or one that is not a count (corrupt,
        or a key of another type, which ``MGET`` reads as absent), is left out, and
        the whole read that follows names it.
        """
        ids = [check_instance_id(i) for i in instance_ids]
        found: dict[str, int] = {}
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            keys = [self._base(i) + _VERSION_TAIL for i in chunk]
            with _reaching(None):
                if self._cluster:
                    # Any: redis-py leaves mget_nonatomic untyped.
                    cluster: Any = self._client
                    values = cluster.mget_nonatomic(keys)
                else:
                    values = self._client.mget(keys)
            for instance_id, raw in zip(chunk, values, strict=True):
                try:
                    text = _text(raw)
                except UnicodeDecodeError:
                    continue
                if text is not None and _COUNT.fullmatch(text) is not None:
                    found[instance_id] = int(text)
        return found

    def _read_many(self, keys: list[list[str]]) -> list[Any]:
        """Each instance's ``_LOAD`` answer (or the exception that stopped it), in order.

        On a cluster every instance has its own slot: one ``_LOAD`` each. Else
        ``GROUP`` instances share a ``_LOAD_MANY``, whose answer is cut back into
        theirs here.
        """
        if self._cluster:
            return self._pipelined(self._load, [(k, []) for k in keys])
        spans = [(n, min(n + GROUP, len(keys))) for n in range(0, len(keys), GROUP)]
        calls: list[tuple[list[str], list[str]]]
        calls = [([key for k in keys[a:b] for key in k], []) for a, b in spans]
        replies: list[Any] = []
        for (first, last), reply in zip(
            spans, self._pipelined(self._load_many, calls), strict=True
        ):
            if isinstance(reply, Exception):
                replies += [reply] * (last - first)
                continue
            values, wrong = reply
            if len(values) != (last - first) * _LOADED:
                raise TypeError(
                    f"the load script answered {len(values)} keys, not {(last - first) * _LOADED}"
                )
            bad: dict[int, list[Any]] = {}
            for position, kind in zip(wrong[::2], wrong[1::2], strict=True):
                item, index = divmod(int(position) - 1, _LOADED)
                bad.setdefault(item, [index + 1, kind])  # the first, as _LOAD answers
            for item in range(last - first):
                if item in bad:
                    replies.append(bad[item])
                else:
                    replies.append([0, *values[item * _LOADED : (item + 1) * _LOADED]])
        return replies

    def ids(self) -> Iterator[str]:
        """Every instance id with a status key, by ``SCAN`` (it never blocks Redis).

        Keys under the prefix that are not of this store's form (another prefix
        nested under this one, the other cluster form) are not this store's and are
        skipped. An id may be seen twice by ``SCAN``; it is yielded once.
        """
        pattern = f"{_glob_escape(self._prefix)}:*:status"
        head, tail = f"{self._prefix}:", ":status"
        seen: set[str] = set()
        with _reaching(None):
            for raw in self._client.scan_iter(match=pattern, count=1000):
                try:
                    key = _text(raw)
                except UnicodeDecodeError:
                    continue
                if key is None or not key.startswith(head) or not key.endswith(tail):
                    continue
                middle = key[len(head) : -len(tail)]
                if self._cluster:
                    if not (middle.startswith("{") and middle.endswith("}")):
                        continue
                    middle = middle[1:-1]
                try:
                    instance_id = check_instance_id(middle)
                except InvalidInstanceId:
                    continue
                if instance_id not in seen:
                    seen.add(instance_id)
                    yield instance_id

    # -- writing ---------------------------------------------------------------------

    def commit(
        self,
        instance_id: str,
        snapshot: Snapshot,
        *,
        expected_version: int,
        lock: LockToken | None = None,
    ) -> int:
        """Write a whole snapshot atomically, in one round trip; return the new version.

        A stored version other than ``expected_version`` raises ``ConcurrentUpdate``; a
        ``lock`` whose token no longer holds the login lock raises ``LockLost``. Either
        way nothing is written. ``StoreUnavailable`` after the command was sent is
        ambiguous (the write may have landed); the version keeps that safe: the next
        write from the old version is refused and the writer reloads.
        """
        check_instance_id(instance_id)
        call = self._commit_call(instance_id, snapshot, expected_version, lock)
        # No ``_reaching`` here: a generator context manager costs a microsecond, on
        # the one call every transition makes.
        try:
            reply = self._evalsha(self._commit, call.keys, call.args)
            if type(reply) is not int and reply[0] == _OTHER_BASE:
                call = self._commit_call(instance_id, snapshot, expected_version, lock, whole=True)
                reply = self._evalsha(self._commit, call.keys, call.args)
            return self._committed(call, reply)
        except BaseException as exc:
            self._known.pop(instance_id, None)
            if isinstance(exc, Exception) and (error := _as_error(exc, instance_id)) is not exc:
                raise error from exc
            raise

    def commit_many(self, items: Iterable[PendingCommit]) -> list[int | Exception]:
        """Several instances' commits, pipelined ``BATCH`` at a time.

        Each item is ``(instance_id, snapshot, expected_version, lock)`` and is checked
        and written exactly as ``commit`` would (atomically, against its version and
        lock). The answer holds, in the items' order, the new version or the exception
        that ``commit`` would have raised (``ConcurrentUpdate``, ``LockLost``,
        ``CorruptState``, ``StoreUnavailable``). Bad input (an invalid id, a malformed
        snapshot) raises before anything is sent. A connection lost mid-pipeline
        raises ``StoreUnavailable`` for the call: any of its items may have landed,
        each whole or not at all, so the caller reloads before deciding again.
        """
        return self._commit_calls(self._calls(items))

    def start_commit_many(
        self,
        items: Iterable[PendingCommit],
        lock_first: Sequence[str] = (),
        ttl: float = 0.0,
    ) -> InFlight | Answered:
        """``commit_many``'s writes sent now; calling the answer reads their answers.

        Why: a fleet decides the next instances while Redis runs these writes, so
        neither waits on the other. ``lock_first`` names instances whose login locks
        (``ttl`` seconds) are asked for ahead of the writes, on the same connection,
        so that their answers (``locks()``, as ``acquire_many`` answers) come back
        first: the fleet's next slice of logins. Bad input raises here, before
        anything is sent. The call answers as ``commit_many`` does, and raises
        ``StoreUnavailable`` where it would. Until it is made, the pool connection
        the writes went on is theirs: make it once, soon. On a cluster, for more
        than ``BATCH`` items or locks, or on a client without a pool that can lend a
        connection for that long (``single_connection_client``, a
        ``BlockingConnectionPool``, a pool of fewer than 64 connections), all is
        done here and now.
        """
        calls = self._calls(items)
        lock_ids = [check_instance_id(i) for i in lock_first]
        millis = str(_ttl_millis(ttl)) if lock_ids else ""
        client = self._client
        from redis import BlockingConnectionPool, Redis

        if (
            self._cluster
            or len(calls) > BATCH
            or len(lock_ids) > BATCH
            or not isinstance(client, Redis)
            or client.connection is not None
            # A caller holds this connection while it asks the pool for another
            # (the next slice's locks, its writes): a bounded pool could run dry.
            or isinstance(client.connection_pool, BlockingConnectionPool)
            or getattr(client.connection_pool, "max_connections", 0) < _LENDING_POOL
        ):
            return Answered(self, lock_ids, ttl, calls)
        lock_keys, tokens, lock_calls = self._lock_requests(lock_ids, millis)
        groups, sizes = self._groups(calls)
        pool = client.connection_pool
        commands = [
            ("EVALSHA", script.sha, len(k), *k, *a)
            for script, part in ((self._acquire_many, lock_calls), (self._commit_many, groups))
            for k, a in part
        ]
        try:
            with _reaching(None):
                # Any: redis-py leaves a connection's methods untyped.
                connection: Any = pool.get_connection()
                try:
                    packed = connection.pack_commands(commands)
                    # The client's retries, as its pipelines have them: a connection
                    # the server dropped (a restart) is opened again. Sent twice is
                    # harmless: a lock asked again with its token is answered taken,
                    # and a commit sent again is recognised by its commit id.
                    connection.retry.call_with_retry(
                        lambda: connection.send_packed_command(packed),
                        lambda _error: connection.disconnect(),
                    )
                except BaseException:
                    connection.disconnect()
                    pool.release(connection)
                    raise
        except BaseException:
            self._forget(calls)
            raise
        return InFlight(
            self, connection, (lock_ids, lock_keys, tokens, lock_calls), (calls, groups, sizes)
        )

    def _lock_requests(
        self, ids: list[str], millis: str
    ) -> tuple[list[str], list[str], list[tuple[list[str], list[str]]]]:
        """Each id's lock key and a fresh token, and the ``_ACQUIRE_MANY`` calls that
        ask for them (``GROUP`` locks a call, an id at most once in each)."""
        keys = [self._base(i) + _LOCK_TAIL for i in ids]
        tokens = [new_record_id() for _ in ids]
        calls = [(keys[a:b], [millis, *tokens[a:b]]) for a, b in _spans(ids)]
        return keys, tokens, calls

    def _lock_answers(
        self, ids: list[str], keys: list[str], tokens: list[str], replies: list[Any]
    ) -> list[LockToken | Exception | None]:
        """``_ACQUIRE`` answers, one per id, as ``acquire_many`` gives them."""
        out: list[LockToken | Exception | None] = []
        for instance_id, key, token, reply in zip(ids, keys, tokens, replies, strict=True):
            if reply == 1:
                out.append(LockToken(instance_id, token))
            elif reply == 0:
                out.append(None)
            elif isinstance(reply, Exception):
                out.append(_as_error(reply, instance_id))
            else:
                out.append(self._wrong_type(instance_id, key, reply))
        return out

    def _calls(self, items: Iterable[PendingCommit]) -> list[_Call]:
        calls: list[_Call] = []
        for item in items:
            instance_id, snapshot, expected_version, lock = item
            check_instance_id(instance_id)
            calls.append(self._commit_call(instance_id, snapshot, expected_version, lock))
        return calls

    def _commit_calls(self, calls: list[_Call]) -> list[int | Exception]:
        results: list[int | Exception] = []
        for start in range(0, len(calls), BATCH):
            chunk = calls[start : start + BATCH]
            try:
                with _reaching(None):
                    replies = self._send_commits(chunk)
            except BaseException:
                self._forget(chunk)
                raise
            results += self._answers(chunk, replies)
        return results

    def _forget(self, calls: list[_Call]) -> None:
        """Their writes are in doubt: the next commit of each sends its whole state."""
        for call in calls:
            self._known.pop(call.instance_id, None)

    def _answers(self, chunk: list[_Call], replies: list[Any]) -> list[int | Exception]:
        """Each call's new version or error; a change refused for its base goes again whole."""
        again = [
            i
            for i, reply in enumerate(replies)
            if not isinstance(reply, (Exception, int)) and reply[0] == _OTHER_BASE
        ]
        if again:
            whole = [
                self._commit_call(
                    chunk[i].instance_id,
                    chunk[i].snapshot,
                    chunk[i].expected_version,
                    chunk[i].lock,
                    whole=True,
                )
                for i in again
            ]
            try:
                with _reaching(None):
                    retried = self._send_commits(whole)
            except StoreUnavailable as exc:
                # The replies in hand stand; only the resent writes are in doubt.
                retried = [exc] * len(whole)
            for i, call, reply in zip(again, whole, retried, strict=True):
                chunk[i] = call
                replies[i] = reply
        results: list[int | Exception] = []
        for call, reply in zip(chunk, replies, strict=True):
            if isinstance(reply, Exception):
                self._known.pop(call.instance_id, None)
                results.append(_as_error(reply, call.instance_id))
                continue
            try:
                results.append(self._committed(call, reply))
            except LifecycleError as exc:
                self._known.pop(call.instance_id, None)
                results.append(exc)
        return results

    def _send_commits(self, calls: list[_Call]) -> list[Any]:
        """Each call's script answer (or the exception that stopped it), in order.

        On a cluster every instance has its own slot: one ``_COMMIT`` per call. Else
        the calls go ``GROUP`` to a ``_COMMIT_MANY``.
        """
        if self._cluster:
            return self._pipelined(self._commit, [(c.keys, c.args) for c in calls])
        groups, sizes = self._groups(calls)
        return self._ungroup(sizes, self._pipelined(self._commit_many, groups))

    @staticmethod
    def _groups(calls: list[_Call]) -> tuple[list[tuple[list[str], list[str]]], list[int]]:
        """``_COMMIT_MANY`` calls of ``GROUP`` commits, and the size of each.

        A second commit of an instance already in a group starts the next group, so
        that it runs after the first.
        """
        groups: list[tuple[list[str], list[str]]] = []
        sizes: list[int] = []
        for first, last in _spans([c.instance_id for c in calls]):
            keys: list[str] = []
            args: list[str] = []
            for call in calls[first:last]:
                keys += call.keys
                args.append(str(len(call.keys) - 3))
                args += call.args
            groups.append((keys, args))
            sizes.append(last - first)
        return groups, sizes

    @staticmethod
    def _ungroup(sizes: list[int], replies: list[Any]) -> list[Any]:
        """The groups' answers as one answer per commit."""
        out: list[Any] = []
        for size, reply in zip(sizes, replies, strict=True):
            if isinstance(reply, Exception):
                out += [reply] * size
            elif len(reply) != size:
                raise TypeError(f"the commit script answered {len(reply)} items, not {size}")
            else:
                out += reply
        return out

    def delete(self, instance_id: str) -> None:
        """Remove every key of the instance, the lock included, in one ``DEL``."""
        check_instance_id(instance_id)
        keys = self._keys(instance_id)
        self._known.pop(instance_id, None)
        with _reaching(instance_id):
            self._client.delete(*keys)

    # -- the login lock --------------------------------------------------------------

    def acquire_lock(self, instance_id: str, ttl: float) -> LockToken | None:
        """``SET NX PX`` with a fresh token; ``None`` when another holds the lock."""
        check_instance_id(instance_id)
        millis = _ttl_millis(ttl)
        # Unique is all a token must be (the records' cheap ids: a random
        # per-process prefix and a counter); a uuid4 costs a system call each.
        token = new_record_id()
        key = f"{self._base(instance_id)}:{_LOCK}"
        with _reaching(instance_id):
            reply = self._acquire(keys=[key], args=[token, millis])
        if reply == 1:
            return LockToken(instance_id, token)
        if reply == 0:
            return None
        raise self._wrong_type(instance_id, key, reply)

    def acquire_many(
        self, instance_ids: Sequence[str], ttl: float
    ) -> list[LockToken | Exception | None]:
        """``acquire_lock`` for many instances, pipelined ``BATCH`` at a time.

        Each answer is the lock, ``None`` when another holds it, or the error
        ``acquire_lock`` would have raised for that id (``CorruptState``,
        ``StoreUnavailable``). Bad input raises before anything is sent. Redis
        unreachable from the start raises ``StoreUnavailable``; lost after some
        pipelines, the ids not yet answered get it, and the locks taken stand.
        """
        ids = [check_instance_id(i) for i in instance_ids]
        millis = str(_ttl_millis(ttl))
        keys, tokens, calls = self._lock_requests(ids, millis)
        script, per_pipeline = self._acquire_many, BATCH // GROUP
        # On a cluster each instance's lock is in its own slot: a call each.
        if self._cluster:
            script, per_pipeline = self._acquire, BATCH
            calls = [([key], [token, millis]) for key, token in zip(keys, tokens, strict=True)]
        replies: list[Any] = []
        for offset in range(0, len(calls), per_pipeline):
            part = calls[offset : offset + per_pipeline]
            try:
                with _reaching(None):
                    answered = self._pipelined(script, part)
            except StoreUnavailable as exc:
                if not replies:
                    raise
                # The locks taken by the pipelines before stand, with their tokens.
                answered = [exc] * len(part)
            replies += _per_lock(part, answered)
        return self._lock_answers(ids, keys, tokens, replies)

    def release_lock(self, lock: LockToken) -> None:
        """Delete the lock if it still holds this token; otherwise do nothing."""
        if not isinstance(lock, LockToken):
            raise TypeError(f"release_lock takes a LockToken, not {lock!r}")
        check_instance_id(lock.instance_id)
        key = f"{self._base(lock.instance_id)}:{_LOCK}"
        with _reaching(lock.instance_id):
            reply = self._release(keys=[key], args=[lock.token])
        if reply not in (0, 1):
            raise self._wrong_type(lock.instance_id, key, reply)

    # -- internals -------------------------------------------------------------------

    def _base(self, instance_id: str) -> str:
        if self._cluster:
            return f"{self._prefix}:{{{instance_id}}}"
        return f"{self._prefix}:{instance_id}"

    def _keys(self, instance_id: str) -> list[str]:
        base = self._base(instance_id)
        return [base + tail for tail in _TAILS]

    def _commit_call(
        self,
        instance_id: str,
        snapshot: Snapshot,
        expected_version: int,
        lock: LockToken | None,
        *,
        whole: bool = False,
    ) -> _Call:
        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"commit takes a Snapshot, not {snapshot!r}")
        if (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or expected_version < 0
        ):
            raise ValueError(
                f"expected_version must be a non-negative int, not {expected_version!r}"
            )
        token = ""
        if lock is not None:
            if not isinstance(lock, LockToken):
                raise TypeError(f"lock must be a LockToken or None, not {lock!r}")
            if lock.instance_id != instance_id:
                raise ValueError(
                    f"the lock of instance {lock.instance_id!r} cannot guard a write "
                    f"to instance {instance_id!r}"
                )
            if not isinstance(lock.token, str) or not lock.token:
                raise ValueError("a LockToken's token must be a non-empty string")
            token = lock.token
        head = self._base(instance_id)
        keys = [head + _VERSION_TAIL, head + _LAST_COMMIT_TAIL, head + _LOCK_TAIL]
        # The commit id only has to be unique: the records' cheap minting (a random
        # per-process prefix and a counter) spares an os.urandom call per commit,
        # which under a worker pool costs a GIL hand-off each time.
        commit_id = new_record_id()
        release = "1" if lock is not None and lock.release_on_commit else "0"
        known = None if whole else self._known.get(instance_id)
        base = ""
        values: list[str] = []
        if known is not None and known[0] == expected_version:
            _, base, previous = known
            _changes(snapshot, previous, head, keys, values)
        else:
            keys += [head + ":" + name for name in _FIELD_NAMES]
            values = [f.encode(getattr(snapshot, f.suffix)) or "" for f in _FIELDS]
        args = [
            str(expected_version),
            str(expected_version + 1),
            token,
            commit_id,
            release,
            base,
            *values,
        ]
        return _Call(instance_id, snapshot, expected_version, lock, commit_id, keys, args)

    def _committed(self, call: _Call, reply: Any) -> int:
        # _COMMIT answers a success with the version alone, _COMMIT_MANY with {0, v}.
        if type(reply) is int or reply[0] == 0:
            version = reply if type(reply) is int else int(reply[1])
            self._known[call.instance_id] = (version, call.commit_id, call.snapshot)
            return version
        code = reply[0]
        instance_id = call.instance_id
        if code == -1:
            raise LockLost(instance_id=instance_id)
        if code == -2:
            raise self._wrong_type(instance_id, call.keys[int(reply[1]) - 1], reply[2])
        if code == -3:
            raise CorruptState(
                instance_id=instance_id,
                key=call.keys[0],
                value=_text(reply[1]),
                expected=_VERSION_EXPECTED,
            )
        if code == -4:
            found = _text(reply[1]) if len(reply) > 1 else None
            raise ConcurrentUpdate(
                instance_id=instance_id,
                expected_version=call.expected_version,
                found_version=None if found is None else int(found),
            )
        raise TypeError(f"unexpected reply from the commit script: {reply!r}")

    def _decode(self, instance_id: str, keys: Sequence[str], reply: Any) -> Stored | None:
        """The stored state, checked; it becomes what the next commit builds on."""
        self._known.pop(instance_id, None)
        if reply[0] != 0:
            raise self._wrong_type(instance_id, keys[int(reply[0]) - 1], reply[1])
        raw = list(reply[1:])
        if raw.count(None) == len(raw):
            return None  # nothing stored: a new instance (the common case of a start)
        # Lua drops trailing nils from a table: absent last keys come back short.
        raw += [None] * (_LOADED - len(raw))
        texts: list[str | None] = []
        for key, value in zip(keys[:_LOADED], raw, strict=True):
            try:
                texts.append(_text(value))
            except UnicodeDecodeError:
                raise CorruptState(
                    instance_id=instance_id, key=key, value=value, expected="UTF-8 text"
                ) from None
        if texts[0] is None:
            if any(t is not None for t in texts[1:]):
                raise CorruptState(
                    instance_id=instance_id,
                    key=keys[0],
                    value=None,
                    expected="a State name (other keys of the instance are present)",
                )
            return None
        fields: dict[str, Any] = {}
        for f, key, text in zip(_FIELDS, keys, texts, strict=False):
            if text is None:
                if f.missing is _REQUIRED:
                    raise CorruptState(
                        instance_id=instance_id, key=key, value=None, expected=f.expected
                    )
                fields[f.suffix] = f.missing
                continue
            try:
                fields[f.suffix] = f.decode(text)
            except _BadValueError as bad:
                raise CorruptState(
                    instance_id=instance_id, key=key, value=text, expected=bad.expected
                ) from None
        version_text = texts[_N]
        version = 0
        if version_text is not None:
            if _COUNT.fullmatch(version_text) is None:
                raise CorruptState(
                    instance_id=instance_id,
                    key=keys[_N],
                    value=version_text,
                    expected=_VERSION_EXPECTED,
                )
            version = int(version_text)
        snapshot = Snapshot(**fields)
        made_by = texts[_N + 1]
        if made_by is not None:
            self._known[instance_id] = (version, made_by, snapshot)
        return Stored(snapshot, version)

    def _evalsha(self, script: Script, keys: list[str], args: list[str]) -> Any:
        """``script(keys=, args=)`` without its per-call overhead, on the one call every
        transition makes: a script the server lost is loaded again, as redis-py does."""
        client = self._client
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except _no_script():
            script.sha = client.script_load(script.script)
            return client.evalsha(script.sha, len(keys), *keys, *args)

    def _wrong_type(self, instance_id: str, key: str, kind: object) -> CorruptState:
        name = _text(kind) or "value"
        return CorruptState(
            instance_id=instance_id,
            key=key,
            value=RedisType(name),
            expected="a string" + (" (the login lock's token)" if key.endswith(_LOCK) else ""),
        )

    def _pipelined(self, script: Script, calls: Sequence[tuple[list[str], list[str]]]) -> list[Any]:
        """EVALSHA per call, pipelined; on a cluster, one pipeline per node."""
        from redis.cluster import RedisCluster

        client = self._client
        if not isinstance(client, RedisCluster):
            return self._pipelined_on(client, script, calls)
        # redis-py refuses EVALSHA in a cluster pipeline. Every key of one call shares
        # its hash tag, so each call belongs to one node: pipeline per node instead.
        from redis.exceptions import AskError, MovedError

        locate = cast("Callable[[str], ClusterNode]", client.get_node_from_key)
        by_node: dict[str, tuple[Redis, list[int]]] = {}
        for index, (keys, _) in enumerate(calls):
            node = locate(keys[0])
            if node.name not in by_node:
                by_node[node.name] = (client.get_redis_connection(node), [])
            by_node[node.name][1].append(index)
        results: list[Any] = [None] * len(calls)
        lost = False
        for node_client, indexes in by_node.values():
            try:
                replies = self._pipelined_on(node_client, script, [calls[i] for i in indexes])
            except Exception as exc:
                # One node down: its calls answer with the error; the other nodes'
                # answers stand (some of those calls wrote, or took a lock).
                replies = [exc] * len(indexes)
                lost = True
            for index, reply in zip(indexes, replies, strict=True):
                results[index] = reply
        if lost:
            # What the cluster client does after a connection error: learn the
            # topology again, so that the next call finds a failed-over primary.
            with contextlib.suppress(Exception):
                client.nodes_manager.initialize()
        for index, reply in enumerate(results):
            if isinstance(reply, (MovedError, AskError)):
                # A slot moved under us (resharding): the refused call did not run;
                # the cluster client follows the redirection for this one.
                keys, args = calls[index]
                try:
                    results[index] = script(keys=keys, args=args, client=client)
                except Exception as exc:
                    results[index] = exc
        return results

    def _pipelined_on(
        self, client: Redis, script: Script, calls: Sequence[tuple[list[str], list[str]]]
    ) -> list[Any]:
        """EVALSHA per call in one pipeline, loading the script once if Redis lost it.

        redis-py's own pipeline scripting asks ``SCRIPT EXISTS`` before every
        execution, a second round trip; a lost script (a restarted or flushed server)
        is rare, so it is handled when ``NOSCRIPT`` comes back instead. A call that
        got ``NOSCRIPT`` did not run, so running it again is safe.
        """
        from redis.exceptions import NoScriptError

        results = self._pipeline_once(client, script, calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            script.sha = client.script_load(script.script)
            again = self._pipeline_once(client, script, [calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    @staticmethod
    def _pipeline_once(
        client: Redis, script: Script, calls: Sequence[tuple[list[str], list[str]]]
    ) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))


class InFlight:
    """Lock requests and writes sent on one connection, answered in the order sent.

    ``locks()`` reads the lock requests' answers; calling it reads the writes'
    answers (the locks' first, if not read yet) and gives the connection back. Each
    is read once and kept. A connection that fails on the way is dropped, never
    reused with answers unread: the locks still unread become ``StoreUnavailable``
    (taken or not, they expire), and the call raises it.
    """

    __slots__ = ("_commits", "_connection", "_failed", "_lock_answers", "_locks", "_store")

    def __init__(
        self,
        store: RedisStateStore,
        connection: Any,
        locks: tuple[list[str], list[str], list[str], list[tuple[list[str], list[str]]]],
        commits: tuple[list[_Call], list[tuple[list[str], list[str]]], list[int]],
    ) -> None:
        self._store = store
        self._connection: Any = connection
        self._locks = locks
        self._commits = commits
        self._lock_answers: list[LockToken | Exception | None] | None = None
        self._failed: StoreUnavailable | None = None

    def locks(self) -> list[LockToken | Exception | None]:
        if self._lock_answers is None:
            ids, keys, tokens, calls = self._locks
            try:
                replies = self._read(len(calls), self._store._acquire_many, calls)
            except StoreUnavailable as exc:
                self._lock_answers = [exc] * len(ids)
            else:
                flat = _per_lock(calls, replies)
                self._lock_answers = self._store._lock_answers(ids, keys, tokens, flat)
        return self._lock_answers

    def __call__(self) -> list[int | Exception]:
        calls, groups, sizes = self._commits
        store = self._store
        try:
            self.locks()  # the answers come in the order sent
            replies = self._read(len(groups), store._commit_many, groups)
        except BaseException:
            store._forget(calls)
            raise
        finally:
            self._give_back()
        return store._answers(calls, store._ungroup(sizes, replies))

    def _read(
        self, count: int, script: Script, calls: list[tuple[list[str], list[str]]]
    ) -> list[Any]:
        """The next ``count`` answers on the connection; a lost script's calls again.

        Anything going wrong on the way (the connection, reloading a lost script, an
        interrupt) drops the connection, never reused with answers unread, and
        leaves every answer not yet read ``StoreUnavailable``.
        """
        from redis.exceptions import NoScriptError, ResponseError

        if self._failed is not None:
            raise self._failed
        connection = self._connection
        replies: list[Any] = []
        try:
            with _reaching(None):
                for _ in range(count):
                    try:
                        replies.append(connection.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:
                    # Those scripts did not run (a restarted or flushed server): load
                    # the script and send them again, on a connection of their own.
                    client = cast("Redis", self._store._client)  # InFlight: never a cluster
                    again = self._store._pipelined_on(client, script, [calls[i] for i in missing])
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except BaseException as exc:
            if self._connection is not None:
                self._connection.disconnect()
            self._give_back()
            self._failed = (
                exc
                if isinstance(exc, StoreUnavailable)
                else StoreUnavailable(
                    backend="redis", instance_id=None, detail="the answers were lost"
                )
            )
            raise
        return replies

    def _give_back(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Any: the client's pool, typed loosely by redis-py.
            client: Any = self._store._client
            client.connection_pool.release(connection)


class Answered:
    """What ``start_commit_many`` answers when it wrote at once: the same two reads."""

    __slots__ = ("_commits", "_locks")

    def __init__(
        self, store: RedisStateStore, lock_ids: list[str], ttl: float, calls: list[_Call]
    ) -> None:
        self._locks: list[LockToken | Exception | None]
        try:
            self._locks = store.acquire_many(lock_ids, ttl) if lock_ids else []
        except StoreUnavailable as exc:
            self._locks = [exc] * len(lock_ids)
        self._commits: list[int | Exception] | StoreUnavailable
        try:
            self._commits = store._commit_calls(calls)
        except StoreUnavailable as exc:
            self._commits = exc

    def locks(self) -> list[LockToken | Exception | None]:
        return self._locks

    def __call__(self) -> list[int | Exception]:
        if isinstance(self._commits, StoreUnavailable):
            raise self._commits
        return self._commits
