"""Calling Redis: fault mapping, text replies, scripts pipelined (on a cluster, per node).

Kept apart from the store so that every Redis-backed piece (the state store, its
outbox, the per-server keys) maps a client's faults to ``StoreUnavailable`` the same
way, and so that a lost script (a restarted or flushed server) is loaded again in one
place.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from ...errors import LifecycleError, StoreUnavailable

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.commands.core import Script

__all__ = [
    "as_error",
    "evalsha",
    "glob_escape",
    "pipelined",
    "reaching",
    "text",
]


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


def as_error(exc: Exception, instance_id: str | None) -> Exception:
    """What the store answers for a client error: ``StoreUnavailable`` when transient."""
    if isinstance(exc, _transient()):
        unavailable = _unavailable(exc, instance_id)
        unavailable.__cause__ = exc
        return unavailable
    return exc


@contextmanager
def reaching(instance_id: str | None) -> Iterator[None]:
    try:
        yield
    except LifecycleError:
        raise
    except Exception as exc:
        error = as_error(exc, instance_id)
        if error is exc:
            raise
        raise error from exc


def text(raw: object) -> str | None:
    """A reply as text, whether or not the client decodes responses."""
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        return raw.decode("utf-8")
    raise TypeError(f"unexpected reply from Redis: {raw!r}")


def glob_escape(value: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", value)


def evalsha(client: Redis | RedisCluster, script: Script, keys: list[str], args: list[str]) -> Any:
    """``script(keys=, args=)`` without its per-call overhead: a script the server lost
    is loaded again, as redis-py does."""
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except _no_script():
        script.sha = client.script_load(script.script)
        return client.evalsha(script.sha, len(keys), *keys, *args)


def pipelined(
    client: Redis | RedisCluster, script: Script, calls: Sequence[tuple[list[str], list[str]]]
) -> list[Any]:
    """EVALSHA per call, pipelined; on a cluster, one pipeline per node.

    Each answer is the script's reply or the exception that call raised.
    """
    from redis.cluster import RedisCluster

    if not isinstance(client, RedisCluster):
        return _pipelined_on(client, script, calls)
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
            replies = _pipelined_on(node_client, script, [calls[i] for i in indexes])
        except Exception as exc:
            # One node down: its calls answer with the error; the other nodes'
            # answers stand (some of those calls wrote, or took a lock).
            replies = [exc] * len(indexes)
            lost = True
        for index, reply in zip(indexes, replies, strict=True):
            results[index] = reply
    if lost:
        # What the cluster client does after a connection error: learn the topology
        # again, so that the next call finds a failed-over primary.
        with contextlib.suppress(Exception):
            client.nodes_manager.initialize()
    for index, reply in enumerate(results):
        if isinstance(reply, (MovedError, AskError)):
            # A slot moved under us (resharding): the refused call did not run; the
            # cluster client follows the redirection for this one.
            keys, args = calls[index]
            try:
                results[index] = script(keys=keys, args=args, client=client)
            except Exception as exc:
                results[index] = exc
    return results


def _pipelined_on(
    client: Redis, script: Script, calls: Sequence[tuple[list[str], list[str]]]
) -> list[Any]:
    """EVALSHA per call in one pipeline, loading the script once if Redis lost it.

    redis-py's own pipeline scripting asks ``SCRIPT EXISTS`` before every execution,
    a second round trip; a lost script is rare, so it is handled when ``NOSCRIPT``
    comes back instead. A call that got ``NOSCRIPT`` did not run, so running it again
    is safe.
    """
    from redis.exceptions import NoScriptError

    results = _pipeline_once(client, script, calls)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        script.sha = client.script_load(script.script)
        again = _pipeline_once(client, script, [calls[i] for i in missing])
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results


def _pipeline_once(
    client: Redis, script: Script, calls: Sequence[tuple[list[str], list[str]]]
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(pipe.execute(raise_on_error=False))
