"""RedisStateStore on a Redis Cluster with one node down: the others' answers stand.

A private three-node cluster of its own (the ``cluster`` fixture is per module), one
of whose nodes this module shuts down.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis
from redis.cluster import RedisCluster

from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.errors import StoreUnavailable
from mt5lifecycle.ports import LockToken
from tests.adapters.test_redis_cluster import SNAPSHOT, cluster

__all__ = ["cluster"]  # the fixture, imported for this module's own cluster


def test_a_node_down_fails_only_the_instances_it_holds(cluster: list[int]) -> None:
    client: Any = RedisCluster(
        host="127.0.0.1", port=cluster[0], socket_timeout=0.5, socket_connect_timeout=0.5
    )
    store = RedisStateStore(client, cluster=True)
    ids = [f"acct-{n}" for n in range(30)]
    home = {i: client.get_node_from_key(store.key(i, "login_lock")).port for i in ids}
    down = cluster[2]
    assert down in home.values() and len(set(home.values())) == 3
    store.acquire_many(["warm"], 1.0)  # the scripts loaded on every node
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis(port=down).shutdown(nosave=True)

    locks = store.acquire_many(ids, 60.0)
    written = store.commit_many([(i, SNAPSHOT, 0, None) for i in ids])

    for instance_id, lock, version in zip(ids, locks, written, strict=True):
        if home[instance_id] == down:
            assert isinstance(lock, StoreUnavailable)
            assert isinstance(version, StoreUnavailable)
        else:
            assert isinstance(lock, LockToken)
            assert version == 1
    client.close()
