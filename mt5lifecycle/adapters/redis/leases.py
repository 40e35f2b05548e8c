"""Leases on Redis: which ``Fleet`` worker drives which instance.

One key per instance, ``<namespace>:<id>``, holding the owner's token with a TTL in
Redis's own clock, so a worker that dies (``kill -9``, a lost host) loses its
instances when the TTL runs out, whatever the other hosts' clocks say. Taking and
renewing are the same script, for a batch of ids in one round trip: a free or
expired lease is taken, one the caller holds is extended, anyone else's is left
alone. Lease keys live outside the state store's prefix on purpose: deleting an
instance's state (a confirmed closure) must not depend on who drove it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...core.ids import check_instance_id
from ...errors import StoreUnavailable

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["RedisLeases"]

_ACQUIRE = """
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  elseif holder == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    n = n + redis.call('DEL', key)
  end
end
return n
"""

_BATCH = 500
"""Ids per script call: one round trip each, short enough not to hold Redis."""


class RedisLeases:
    """The ``Leases`` port on one Redis (not a cluster: a batch spans slots)."""

    def __init__(self, client: Redis, *, namespace: str = "mt5lifecycle:lease") -> None:
        if not namespace or any(c in namespace for c in "*?[]{} \n"):
            raise ValueError(f"invalid lease namespace {namespace!r}")
        self._client = client
        self._namespace = namespace
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def key(self, instance_id: str) -> str:
        return f"{self._namespace}:{check_instance_id(instance_id)}"

    def acquire(self, instance_ids: Sequence[str], owner: str, ttl: float) -> list[str]:
        ttl_ms = max(1, int(ttl * 1000))
        held: list[str] = []
        ids = list(instance_ids)
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            keys = [self.key(i) for i in chunk]
            flags = self._call(self._acquire, keys, [owner, ttl_ms])
            held.extend(i for i, flag in zip(chunk, flags, strict=True) if int(flag))
        return held

    def release(self, instance_ids: Sequence[str], owner: str) -> None:
        ids = list(instance_ids)
        for start in range(0, len(ids), _BATCH):
            keys = [self.key(i) for i in ids[start : start + _BATCH]]
            self._call(self._release, keys, [owner])

    def owner(self, instance_id: str) -> str | None:
        value = self._client.get(self.key(instance_id))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if not keys:
            return []
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return script(keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(backend="redis", instance_id=None, detail=str(exc)) from None

    def __repr__(self) -> str:
        return f"RedisLeases(namespace={self._namespace!r})"
