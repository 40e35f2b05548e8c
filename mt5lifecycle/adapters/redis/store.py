"""The state store on Redis (SPEC sections 5, 14 and 15).

The shape of the data is the SPEC's: one plain string key per field, named
``<prefix>:<id>:<field>``, so an operator with ``redis-cli`` reads an instance
without the library (no pickles, no JSON). The library adds its own keys next to the
SPEC's: the fields a restarted process needs to carry on (``restart_count``,
``next_due``, ``due``, ...), a fencing ``version``, the id of the write that made
that version (``last_commit``), the login lock (``login_lock``), and the outbox: two
lists, ``notifications`` and ``records``, that hold what a transition has to tell
until it is handed over, and ``set_aside`` for notifications that kept failing. All
of an instance's keys share its hash tag on a cluster, so one transition is one
script on one node.

Why Lua scripts rather than MULTI/EXEC: a transition must be checked against the
version it read *and* against the lock, and must then write every key and push its
outbox entries, in one round trip. MULTI/EXEC cannot branch on what it reads (WATCH
would cost a round trip more and fail spuriously under load); a script can, and
Redis runs it atomically. The scripts are registered once with ``register_script``
and called by SHA, in the manner of redis-py's own ``Lock``.

Why ``last_commit``: redis-py retries a command after a timeout or a dropped
connection by default. A commit that landed but whose reply was lost would then be
retried, find the version it just wrote, and refuse itself as a stale writer. The
script recognises its own retried write by this id and answers as the first try
would have (without pushing its outbox entries twice); any other writer is still
refused.

Why reads are a script too: ``MGET`` answers nil for a key of the wrong Redis type,
which would read a list stored at ``:login_failure_reason`` as "no reason". The read
script follows its ``MGET`` with one ``EXISTS`` over the keys that came back nil
(still one round trip) and names the key whose type is wrong, so a foreign value is
never taken for absence.

Per broker server (SPEC 15) the store keeps ``<prefix>:server:{<name>}:slots`` (the
logins in flight, a sorted set of tokens by expiry in Redis's own clock),
``:failures`` (the accounts that failed lately), ``:down`` and ``:probe``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

from ...core.ids import check_instance_id
from ...core.records import Notification, new_record_id
from ...core.snapshot import Snapshot, utc
from ...errors import (
    ConcurrentUpdate,
    CorruptState,
    InvalidInstanceId,
    LockLost,
)
from ...ports import Commit, Entry, LockToken, Outbox, SetAside, Stored
from .._archive_codec import decode_entry, encode_entry
from ._calls import as_error, evalsha, glob_escape, pipelined, reaching, text
from ._schema import (
    COUNT,
    FIELDS,
    KEY_SUFFIXES,
    LAST_COMMIT,
    LOCK,
    NOTIFICATIONS,
    RECORDS,
    REQUIRED,
    SET_ASIDE,
    VERSION,
    BadValueError,
)

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster
    from redis.commands.core import Script

__all__ = ["BATCH", "KEY_SUFFIXES", "RedisStateStore", "RedisType"]

BATCH: Final = 1000
"""Instances per pipeline in ``load_many`` and ``commit_many``: large enough to hide
the round trip, small enough not to hold Redis (or the reply buffer) for long."""


@attrs.frozen(repr=False)
class RedisType:
    """What a key of the wrong Redis type holds, as ``CorruptState.value``."""

    name: str

    def __repr__(self) -> str:
        return f"a Redis {self.name}"


_N: Final = len(FIELDS)
_FIELD_TAILS: Final = tuple(f":{f.suffix}" for f in FIELDS)
_VERSION_EXPECTED: Final = "a non-negative integer (the fencing version)"

# --- the scripts --------------------------------------------------------------------

# KEYS: the field keys, version, last_commit, then the two outbox lists and the
# set-aside list. Returns
# {0, entries waiting, value...} or, for a key of the wrong type, {index, type}. MGET
# answers nil for a key of another type, so the absent ones are asked once more
# (EXISTS): a list is not "no value".
_LOAD = """
local n = #KEYS - 3
local values = redis.call('MGET', unpack(KEYS, 1, n))
local absent = {}
for i = 1, n do
  if not values[i] then absent[#absent + 1] = KEYS[i] end
end
if #absent > 0 and redis.call('EXISTS', unpack(absent)) > 0 then
  for i = 1, n do
    if not values[i] then
      local t = redis.call('TYPE', KEYS[i])['ok']
      if t ~= 'none' then return {i, t} end
    end
  end
end
local waiting = 0
for i = n + 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t == 'list' then
    -- The set-aside list (the last key) is checked, not counted: nothing is due in it.
    if i < #KEYS then waiting = waiting + redis.call('LLEN', KEYS[i]) end
  elseif t ~= 'none' then
    return {i, t}
  end
end
table.insert(values, 1, waiting)
table.insert(values, 1, 0)
return values
"""

# KEYS: version, last_commit, login_lock, the two outbox lists, then the field keys.
# ARGV: expected version, the version this write makes, lock token ('' for none),
# commit id, '1' to release the lock in the same write (a login's result and the
# lock's release in one round trip), '1' to delete the state (not the outbox), the
# numbers of notifications and of records to append, one value per field key ('' deletes
# the key: no field is ever stored empty), then the entries.
# Returns the new version, or {-1} lock lost, {-2, index, type} wrong type, {-3, raw}
# corrupt version, {-4, raw or nil} version mismatch.
_COMMIT = """
local vkey, ckey, lkey = KEYS[1], KEYS[2], KEYS[3]
local got = redis.call('MGET', vkey, ckey, lkey)
local raw, made, held = got[1], got[2], got[3]
local function wrong(i)
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' then return {-2, i, t} end
end
-- The usual write finds the version it read and its lock as they were, in two string
-- comparisons; anything else is looked into here.
if raw ~= ARGV[1] or (ARGV[3] ~= '' and held ~= ARGV[3]) then
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
  -- A deletion sent again after its reply was lost finds nothing left to delete.
  -- (Not from version 0: there was nothing to delete, and its entries must land.)
  if ARGV[6] == '1' and expected > 0 and not raw and not made
      and redis.call('EXISTS', KEYS[6]) == 0 then
    return expected + 1
  end
  if ARGV[3] ~= '' and held ~= ARGV[3] then
    if not held then
      local bad = wrong(3)
      if bad then return bad end
    end
    return {-1}
  end
  if found ~= expected then return {-4, raw} end
end
local notes, records = tonumber(ARGV[7]), tonumber(ARGV[8])
for i, count in ipairs({notes, records}) do
  if count > 0 then
    local t = redis.call('TYPE', KEYS[3 + i])['ok']
    if t ~= 'none' and t ~= 'list' then return {-2, 3 + i, t} end
  end
end
if ARGV[6] == '1' then
  local gone = {vkey, ckey, lkey}
  for i = 6, #KEYS do gone[#gone + 1] = KEYS[i] end
  redis.call('DEL', unpack(gone))
else
  local kv, gone = {vkey, ARGV[2], ckey, ARGV[4]}, {}
  for i = 6, #KEYS do
    local v = ARGV[i + 3]
    if v == '' then
      gone[#gone + 1] = KEYS[i]
    else
      kv[#kv + 1] = KEYS[i]
      kv[#kv + 1] = v
    end
  end
  if ARGV[3] ~= '' and ARGV[5] == '1' then gone[#gone + 1] = lkey end
  redis.call('MSET', unpack(kv))
  if #gone > 0 then redis.call('DEL', unpack(gone)) end
end
local first = #KEYS + 4
if notes > 0 then redis.call('RPUSH', KEYS[4], unpack(ARGV, first, first + notes - 1)) end
if records > 0 then
  redis.call('RPUSH', KEYS[5], unpack(ARGV, first + notes, first + notes + records - 1))
end
return tonumber(ARGV[2])
"""

# Each outbox script first checks that its keys are lists (or absent), so that a key
# of another type is named ({-2, index, type}) before anything is changed.

# KEYS: the two outbox lists. ARGV: the ids handed over. Drops them from the heads
# (an entry is "<id> <json>"); stops at the first entry of each list not handed over.
_ACK = """
for k = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= 'list' then return {-2, k, t} end
end
local done = {}
for i = 1, #ARGV do done[ARGV[i]] = true end
local dropped = 0
for k = 1, #KEYS do
  while true do
    local head = redis.call('LINDEX', KEYS[k], 0)
    if not head then break end
    local id = string.match(head, '^(%S+) ')
    if not id or not done[id] then break end
    redis.call('LPOP', KEYS[k])
    dropped = dropped + 1
  end
end
return dropped
"""

# KEYS: notifications, set_aside. ARGV: the notification id, the error, the time.
_SET_ASIDE = """
for k = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= 'list' then return {-2, k, t} end
end
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if string.match(item, '^(%S+) ') == ARGV[1] then
    redis.call('LREM', KEYS[1], 1, item)
    redis.call('RPUSH', KEYS[2], cjson.encode({entry = item, error = ARGV[2], at = ARGV[3]}))
    return 1
  end
end
return 0
"""

# KEYS: set_aside, notifications, version. ARGV: the ids to put back (none: all of
# them). Every item is read before any is moved: a corrupt one ({-3, 1, item}) moves
# none. Moving any changes the instance, so its version moves too (when it has one):
# the process that drives it reads it back, and finds them.
_REDELIVER = """
for k = 1, 2 do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= 'list' then return {-2, k, t} end
end
local vt = redis.call('TYPE', KEYS[3])['ok']
if vt ~= 'none' and vt ~= 'string' then return {-2, 3, vt} end
local version = redis.call('GET', KEYS[3])
if version and not string.match(version, '^%d+$') then return {-3, 3, version} end
local wanted = {}
for i = 1, #ARGV do wanted[ARGV[i]] = true end
local items, entries = redis.call('LRANGE', KEYS[1], 0, -1), {}
for n, item in ipairs(items) do
  local ok, data = pcall(cjson.decode, item)
  local entry = ok and type(data) == 'table' and data['entry']
  if type(entry) ~= 'string' or not string.match(entry, '^%S+ ') then return {-3, 1, item} end
  entries[n] = entry
end
local moved = 0
for n, item in ipairs(items) do
  if #ARGV == 0 or wanted[string.match(entries[n], '^(%S+) ')] then
    redis.call('LREM', KEYS[1], 1, item)
    redis.call('RPUSH', KEYS[2], entries[n])
    moved = moved + 1
  end
end
if moved > 0 and version then redis.call('INCR', KEYS[3]) end
return moved
"""

# KEYS: login_lock. ARGV: token, ttl in ms. Returns 1 taken, 0 held by another, or the
# key's type when it is not a string. A retry of our own SET (the reply was lost)
# finds our token and still answers "taken".
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'string' then return t end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# KEYS: login_lock. ARGV: token. Deletes only our own token (compare-and-delete).
_RELEASE = """
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then return redis.call('TYPE', KEYS[1])['ok'] end
if v == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: a server's slots. ARGV: token, limit, ttl in ms. Expiry in Redis's own clock,
# so a holder that died frees its slot whatever the hosts' clocks say.
_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
-- Never shorten the key's life below a slot taken earlier with a longer ttl.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return 1
"""

# KEYS: a server's failures. ARGV: instance id, now and the window in ms.
_FAILURE = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: a server's down flag, failures, probe. Returns 1 for the caller that ended it.
_UP = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

# KEYS: a server's probe. ARGV: now, ttl (seconds of the callers' clock).
_PROBE = """
local until_ = redis.call('GET', KEYS[1])
if until_ and tonumber(until_) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], tostring(tonumber(ARGV[1]) + tonumber(ARGV[2])))
return 1
"""


def _ttl_millis(ttl: object) -> int:
    """A TTL in whole milliseconds (at least one), checked."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds, not {ttl!r}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a finite number of seconds > 0, not {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


_SERVER_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _escape(found: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in found.group(0).encode("utf-8", "surrogatepass"))


@attrs.frozen
class _Call:
    """One commit as sent: what ``_committed`` needs to read the script's answer."""

    instance_id: str
    expected_version: int
    keys: list[str]
    args: list[str]


class RedisStateStore:
    """The state store on a ``redis.Redis`` (or ``redis.RedisCluster``) client.

    Besides the ``StateStore`` port it is an ``OutboxStore`` (each transition's
    notifications and records in its atomic write), ``LoginSlots`` and
    ``ServerOutages`` (shared by every process on the same Redis), and a
    ``VersionReader``. ``prefix`` namespaces the keys (``instance_state`` by default,
    the SPEC's). ``cluster=True`` wraps the id in a hash tag
    (``<prefix>:{<id>}:status``) so that one instance's keys share a slot and each
    script touches one node. The client is the host's: its timeouts and retries
    apply, and the store never closes it.
    """

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
        register = client.register_script
        self._load: Script = register(_LOAD)
        self._commit: Script = register(_COMMIT)
        self._ack: Script = register(_ACK)
        self._aside: Script = register(_SET_ASIDE)
        self._redeliver: Script = register(_REDELIVER)
        self._acquire: Script = register(_ACQUIRE)
        self._release: Script = register(_RELEASE)
        self._slot: Script = register(_SLOT)
        self._failure: Script = register(_FAILURE)
        self._up: Script = register(_UP)
        self._probe: Script = register(_PROBE)

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
        keys = self._read_keys(instance_id)
        with reaching(instance_id):
            reply = self._load(keys=keys)
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
            keys = [self._read_keys(i) for i in chunk]
            with reaching(None):
                replies = pipelined(self._client, self._load, [(k, []) for k in keys])
            for instance_id, instance_keys, reply in zip(chunk, keys, replies, strict=True):
                if isinstance(reply, Exception):
                    raise as_error(reply, instance_id)
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
            keys = [f"{self._base(i)}:{VERSION}" for i in chunk]
            with reaching(None):
                if self._cluster:
                    cluster: Any = self._client  # redis-py leaves mget_nonatomic untyped
                    values = cluster.mget_nonatomic(keys)
                else:
                    values = self._client.mget(keys)
            for instance_id, raw in zip(chunk, values, strict=True):
                try:
                    version = text(raw)
                except UnicodeDecodeError:
                    continue
                if version is not None and COUNT.fullmatch(version) is not None:
                    found[instance_id] = int(version)
        return found

    def ids(self) -> Iterator[str]:
        """Every instance id with a status key, by ``SCAN`` (it never blocks Redis).

        Keys under the prefix that are not of this store's form (another prefix
        nested under this one, the other cluster form) are not this store's and are
        skipped. An id may be seen twice by ``SCAN``; it is yielded once.
        """
        pattern = f"{glob_escape(self._prefix)}:*:status"
        head, tail = f"{self._prefix}:", ":status"
        seen: set[str] = set()
        with reaching(None):
            for raw in self._client.scan_iter(match=pattern, count=1000):
                try:
                    key = text(raw)
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
        snapshot: Snapshot | None,
        *,
        expected_version: int,
        lock: LockToken | None = None,
        outbox: Sequence[Entry] = (),
    ) -> int:
        """Write a whole snapshot and append ``outbox`` atomically, in one round trip;
        return the new version. ``snapshot=None`` deletes the state (not the outbox).

        A stored version other than ``expected_version`` raises ``ConcurrentUpdate``; a
        ``lock`` whose token no longer holds the login lock raises ``LockLost``. Either
        way nothing is written. ``StoreUnavailable`` after the command was sent is
        ambiguous (the write may have landed); the version keeps that safe: the next
        write from the old version is refused and the writer reloads.
        """
        call = self._commit_call(Commit(instance_id, snapshot, expected_version, lock, outbox))
        try:
            reply = evalsha(self._client, self._commit, call.keys, call.args)
        except Exception as exc:
            error = as_error(exc, instance_id)
            if error is exc:
                raise
            raise error from exc
        return self._committed(call, reply)

    def commit_many(self, items: Sequence[Commit]) -> list[int | Exception]:
        """Several instances' commits, pipelined ``BATCH`` at a time.

        Each item is checked and written exactly as ``commit`` would (atomically,
        against its version and lock). The answer holds, in the items' order, the new
        version or the exception ``commit`` would have raised (``ConcurrentUpdate``,
        ``LockLost``, ``CorruptState``, ``StoreUnavailable``). Bad input raises before
        anything is sent. A connection lost mid-pipeline raises ``StoreUnavailable``
        for the call: any of its items may have landed, each whole or not at all, so
        the caller reloads before deciding again.
        """
        calls = [self._commit_call(item) for item in items]
        out: list[int | Exception] = []
        for start in range(0, len(calls), BATCH):
            part = calls[start : start + BATCH]
            with reaching(None):
                replies = pipelined(self._client, self._commit, [(c.keys, c.args) for c in part])
            for call, reply in zip(part, replies, strict=True):
                if isinstance(reply, Exception):
                    out.append(as_error(reply, call.instance_id))
                    continue
                try:
                    out.append(self._committed(call, reply))
                except (ConcurrentUpdate, LockLost, CorruptState) as exc:
                    out.append(exc)
        return out

    def delete(self, instance_id: str) -> None:
        """Remove every key of the instance, the lock and the outbox included."""
        check_instance_id(instance_id)
        base = self._base(instance_id)
        with reaching(instance_id):
            self._client.delete(*(f"{base}:{suffix}" for suffix in KEY_SUFFIXES))

    # -- the outbox ------------------------------------------------------------------

    def outbox(self, instance_ids: Sequence[str]) -> dict[str, Outbox]:
        """What each instance's outbox holds, in order; ids with nothing are left out."""
        ids = [check_instance_id(i) for i in instance_ids]
        found: dict[str, Outbox] = {}
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            keys = []
            with reaching(None):
                pipe = self._client.pipeline(transaction=False)
                for instance_id in chunk:
                    base = self._base(instance_id)
                    keys += [f"{base}:{NOTIFICATIONS}", f"{base}:{RECORDS}"]
                    pipe.lrange(keys[-2], 0, -1)
                    pipe.lrange(keys[-1], 0, -1)
                replies = pipe.execute(raise_on_error=False)
            for n, instance_id in enumerate(chunk):
                notes, records = replies[2 * n], replies[2 * n + 1]
                for key, reply in ((keys[2 * n], notes), (keys[2 * n + 1], records)):
                    if isinstance(reply, Exception):
                        raise self._list_error(instance_id, key, reply)
                if notes or records:
                    found[instance_id] = Outbox(
                        notifications=tuple(
                            self._entry(instance_id, NOTIFICATIONS, raw)  # type: ignore[misc]
                            for raw in notes
                        ),
                        records=tuple(
                            self._entry(instance_id, RECORDS, raw)  # type: ignore[misc]
                            for raw in records
                        ),
                    )
        return found

    def acknowledge(self, delivered: Mapping[str, Sequence[str]]) -> None:
        """Drop handed-over entries from the heads of their outboxes, one pipeline."""
        calls = []
        for instance_id, ids in delivered.items():
            base = self._base(check_instance_id(instance_id))
            calls.append(([f"{base}:{NOTIFICATIONS}", f"{base}:{RECORDS}"], [*ids]))
        for start in range(0, len(calls), BATCH):
            part = calls[start : start + BATCH]
            with reaching(None):
                replies = pipelined(self._client, self._ack, part)
            owners = list(delivered)[start : start + BATCH]
            for instance_id, (keys, _), reply in zip(owners, part, replies, strict=True):
                if isinstance(reply, Exception):
                    raise as_error(reply, None)
                self._counted(instance_id, keys, reply)

    def set_aside(
        self, instance_id: str, notification_id: str, error: str, *, at: float | None = None
    ) -> None:
        base = self._base(check_instance_id(instance_id))
        when = (datetime.now(UTC) if at is None else utc(at)).isoformat()
        keys = [f"{base}:{NOTIFICATIONS}", f"{base}:{SET_ASIDE}"]
        with reaching(instance_id):
            reply = self._aside(keys=keys, args=[notification_id, error[:1000], when])
        self._counted(instance_id, keys, reply)

    def set_aside_notifications(self, instance_ids: Iterable[str] | None = None) -> list[SetAside]:
        """What was set aside, for these instances or (by ``SCAN``) for all."""
        if instance_ids is None:
            # As in ``ids``: keys of another form (a nested prefix, the other cluster
            # form) are not this store's, and SCAN may yield a key twice.
            found = self._scan(f"{glob_escape(self._prefix)}:*:{SET_ASIDE}")
            keys = list(dict.fromkeys(k for k in found if self._owns(k, SET_ASIDE)))
        else:
            keys = [f"{self._base(check_instance_id(i))}:{SET_ASIDE}" for i in instance_ids]
        out: list[SetAside] = []
        for start in range(0, len(keys), BATCH):
            chunk = keys[start : start + BATCH]
            with reaching(None):
                pipe = self._client.pipeline(transaction=False)
                for key in chunk:
                    pipe.lrange(key, 0, -1)
                replies = pipe.execute(raise_on_error=False)
            for key, items in zip(chunk, replies, strict=True):
                if isinstance(items, Exception):
                    raise self._list_error(None, key, items)
                for raw in items:
                    out.append(self._set_aside_item(key, raw))
        return out

    def redeliver(self, instance_id: str, notification_ids: Sequence[str] | None = None) -> int:
        base = self._base(check_instance_id(instance_id))
        if notification_ids is not None and not notification_ids:
            return 0  # none chosen (an empty ARGV would mean all)
        keys = [f"{base}:{SET_ASIDE}", f"{base}:{NOTIFICATIONS}", f"{base}:{VERSION}"]
        with reaching(instance_id):
            moved = self._redeliver(keys=keys, args=list(notification_ids or ()))
        return self._counted(instance_id, keys, moved)

    # -- the login lock --------------------------------------------------------------

    def acquire_lock(self, instance_id: str, ttl: float) -> LockToken | None:
        """``SET NX PX`` with a fresh token; ``None`` when another holds the lock."""
        check_instance_id(instance_id)
        millis = _ttl_millis(ttl)
        token = new_record_id()
        key = f"{self._base(instance_id)}:{LOCK}"
        with reaching(instance_id):
            reply = self._acquire(keys=[key], args=[token, millis])
        if reply == 1:
            return LockToken(instance_id, token)
        if reply == 0:
            return None
        raise self._wrong_type(instance_id, key, reply)

    def release_lock(self, lock: LockToken) -> None:
        """Delete the lock if it still holds this token; otherwise do nothing."""
        if not isinstance(lock, LockToken):
            raise TypeError(f"release_lock takes a LockToken, not {lock!r}")
        check_instance_id(lock.instance_id)
        key = f"{self._base(lock.instance_id)}:{LOCK}"
        with reaching(lock.instance_id):
            reply = self._release(keys=[key], args=[lock.token])
        if reply not in (0, 1):
            raise self._wrong_type(lock.instance_id, key, reply)

    # -- per broker server: login slots and outages -------------------------------------

    def acquire_slot(self, server: str, limit: int, ttl: float) -> str | None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, not {limit!r}")
        token = new_record_id()
        with reaching(None):
            taken = self._slot(
                keys=[self._server(server, "slots")], args=[token, limit, _ttl_millis(ttl)]
            )
        return token if taken == 1 else None

    def release_slot(self, server: str, token: str) -> None:
        with reaching(None):
            self._client.zrem(self._server(server, "slots"), token)

    def report_failure(self, server: str, instance_id: str, now: float, window: float) -> int:
        check_instance_id(instance_id)
        with reaching(instance_id):
            count = self._failure(
                keys=[self._server(server, "failures")],
                args=[instance_id, math.floor(now * 1000), _ttl_millis(window)],
            )
        return int(count)

    def mark_down(self, server: str) -> bool:
        with reaching(None):
            return bool(self._client.set(self._server(server, "down"), "1", nx=True))

    def mark_up(self, server: str) -> bool:
        keys = [self._server(server, name) for name in ("down", "failures", "probe")]
        with reaching(None):
            answer = self._up(keys=keys)
        return bool(answer == 1)

    def is_down(self, server: str) -> bool:
        with reaching(None):
            return bool(self._client.exists(self._server(server, "down")))

    def probe(self, server: str, now: float, ttl: float) -> bool:
        with reaching(None):
            answer = self._probe(keys=[self._server(server, "probe")], args=[repr(now), repr(ttl)])
        return bool(answer == 1)

    # -- internals -------------------------------------------------------------------

    def _base(self, instance_id: str) -> str:
        if self._cluster:
            return f"{self._prefix}:{{{instance_id}}}"
        return f"{self._prefix}:{instance_id}"

    def _server(self, server: str, name: str) -> str:
        if not isinstance(server, str) or not server:
            raise ValueError(f"a broker server name must be a non-empty string, not {server!r}")
        # Any character may appear in a server's name; the key keeps safe ones as they
        # are (readable in redis-cli) and escapes the rest, byte by byte of their UTF-8,
        # so that two names never share a key.
        safe = _SERVER_SAFE.sub(_escape, server)
        return f"{self._prefix}:server:{{{safe}}}:{name}"

    def _owns(self, key: str, suffix: str) -> bool:
        """Whether ``key`` is ``suffix``'s key of one of this store's instances."""
        head, tail = f"{self._prefix}:", f":{suffix}"
        if not key.startswith(head) or not key.endswith(tail):
            return False
        middle = key[len(head) : -len(tail)]
        try:
            return self._base(check_instance_id(middle.strip("{}"))) + tail == key
        except InvalidInstanceId:
            return False

    def _read_keys(self, instance_id: str) -> list[str]:
        base = self._base(instance_id)
        return [
            *(base + tail for tail in _FIELD_TAILS),
            f"{base}:{VERSION}",
            f"{base}:{LAST_COMMIT}",
            f"{base}:{NOTIFICATIONS}",
            f"{base}:{RECORDS}",
            f"{base}:{SET_ASIDE}",
        ]

    def _scan(self, pattern: str) -> Iterator[str]:
        with reaching(None):
            for raw in self._client.scan_iter(match=pattern, count=1000):
                key = text(raw)
                if key is not None:
                    yield key

    def _commit_call(self, item: Commit) -> _Call:
        instance_id = check_instance_id(item.instance_id)
        snapshot, expected_version, lock = item.snapshot, item.expected_version, item.lock
        if snapshot is not None and not isinstance(snapshot, Snapshot):
            raise TypeError(f"commit takes a Snapshot or None, not {snapshot!r}")
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
        notes = [encode_entry(e) for e in item.outbox if not _is_record(e)]
        records = [encode_entry(e) for e in item.outbox if _is_record(e)]
        base = self._base(instance_id)
        keys = [
            f"{base}:{VERSION}",
            f"{base}:{LAST_COMMIT}",
            f"{base}:{LOCK}",
            f"{base}:{NOTIFICATIONS}",
            f"{base}:{RECORDS}",
            *(base + tail for tail in _FIELD_TAILS),
        ]
        if snapshot is None:
            values = [""] * _N
        else:
            values = [f.encode(getattr(snapshot, f.suffix)) or "" for f in FIELDS]
        args = [
            str(expected_version),
            str(expected_version + 1),
            token,
            # Unique is all a commit id must be: the records' cheap minting.
            new_record_id(),
            "1" if lock is not None and lock.release_on_commit else "0",
            "1" if snapshot is None else "0",
            str(len(notes)),
            str(len(records)),
            *values,
            *notes,
            *records,
        ]
        return _Call(instance_id, expected_version, keys, args)

    def _committed(self, call: _Call, reply: Any) -> int:
        if type(reply) is int:
            return reply
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
                value=text(reply[1]),
                expected=_VERSION_EXPECTED,
            )
        if code == -4:
            found = text(reply[1]) if len(reply) > 1 else None
            raise ConcurrentUpdate(
                instance_id=instance_id,
                expected_version=call.expected_version,
                found_version=None if found is None else int(found),
            )
        raise TypeError(f"unexpected reply from the commit script: {reply!r}")

    def _decode(self, instance_id: str, keys: Sequence[str], reply: Any) -> Stored | None:
        """The stored state, checked."""
        if reply[0] != 0:
            raise self._wrong_type(instance_id, keys[int(reply[0]) - 1], reply[1])
        waiting = int(reply[1])
        raw = list(reply[2:])
        # Lua drops trailing nils from a table: absent last keys come back short.
        raw += [None] * (_N + 2 - len(raw))
        if raw.count(None) == len(raw):
            # Nothing stored (a new instance), or a purged closure whose last
            # notifications still wait in its outbox: nothing to resume either way.
            return None
        texts: list[str | None] = []
        for key, value in zip(keys, raw, strict=False):
            try:
                texts.append(text(value))
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
        for f, key, value_text in zip(FIELDS, keys, texts, strict=False):
            if value_text is None:
                if f.missing is REQUIRED:
                    raise CorruptState(
                        instance_id=instance_id, key=key, value=None, expected=f.expected
                    )
                fields[f.suffix] = f.missing
                continue
            try:
                fields[f.suffix] = f.decode(value_text)
            except BadValueError as bad:
                raise CorruptState(
                    instance_id=instance_id, key=key, value=value_text, expected=bad.expected
                ) from None
        version_text = texts[_N]
        version = 0
        if version_text is not None:
            if COUNT.fullmatch(version_text) is None:
                raise CorruptState(
                    instance_id=instance_id,
                    key=keys[_N],
                    value=version_text,
                    expected=_VERSION_EXPECTED,
                )
            version = int(version_text)
        return Stored(Snapshot(**fields), version, waiting)

    def _entry(self, instance_id: str, lane: str, raw: object) -> Entry:
        try:
            entry_text = text(raw)
            assert entry_text is not None
            return decode_entry(entry_text)
        except (ValueError, TypeError, AssertionError, UnicodeDecodeError):
            raise CorruptState(
                instance_id=instance_id,
                key=f"{self._base(instance_id)}:{lane}",
                value=raw,
                expected="outbox entries as '<id> <JSON>'",
            ) from None

    def _set_aside_item(self, key: str, raw: object) -> SetAside:
        try:
            data = json.loads(text(raw) or "")
            entry = decode_entry(data["entry"])
            if not isinstance(entry, Notification):
                raise TypeError("not a notification")
            return SetAside(entry, str(data["error"]), datetime.fromisoformat(data["at"]))
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise CorruptState(
                instance_id=None,  # type: ignore[arg-type]
                key=key,
                value=raw,
                expected="set-aside notifications as JSON",
            ) from None

    def _wrong_type(self, instance_id: str | None, key: str, kind: object) -> CorruptState:
        name = text(kind) or "value"
        if key.endswith((f":{NOTIFICATIONS}", f":{RECORDS}", f":{SET_ASIDE}")):
            expected = "a list (the instance's outbox)"
        else:
            expected = "a string" + (" (the login lock's token)" if key.endswith(LOCK) else "")
        return CorruptState(
            instance_id=instance_id,  # type: ignore[arg-type]
            key=key,
            value=RedisType(name),
            expected=expected,
        )

    def _list_error(self, instance_id: str | None, key: str, exc: Exception) -> Exception:
        """What a failed read of an outbox list answers: the key named when it is of
        another type (``WRONGTYPE``), else the client's error as the store maps it."""
        from redis.exceptions import ResponseError

        if isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc):
            with reaching(instance_id):
                kind = text(self._client.type(key))
            if kind not in ("list", "none"):
                return self._wrong_type(instance_id, key, kind)
        return as_error(exc, instance_id)

    def _counted(self, instance_id: str, keys: Sequence[str], reply: Any) -> int:
        """An outbox script's count, or the key it found of another type or corrupt."""
        if type(reply) is int:
            return reply
        key = keys[int(reply[1]) - 1]
        if reply[0] == -2:
            raise self._wrong_type(instance_id, key, reply[2])
        raise CorruptState(
            instance_id=instance_id,
            key=key,
            value=text(reply[2]) if key.endswith(f":{VERSION}") else reply[2],
            expected=(
                _VERSION_EXPECTED
                if key.endswith(f":{VERSION}")
                else "set-aside notifications as JSON"
            ),
        )


def _is_record(entry: Entry) -> bool:
    return not isinstance(entry, Notification)
