"""RedisStateStore on a Redis Cluster with one node down: the others' answers stand.

A private three-node cluster of its own (the ``cluster`` fixture is per module), one
of whose nodes this module shuts down.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.errors import StoreUnavailable
from mt5lifecycle.ports import Commit, Outbox, Stored
from tests.adapters.test_redis_cluster import SNAPSHOT, cluster
from tests.adapters.test_redis_outbox import notification

__all__ = ["cluster"]  # the fixture, imported for this module's own cluster


def test_a_node_down_fails_only_the_instances_it_holds(cluster: list[int]) -> None:
    # No retries: the test wants the fault itself, at once, well inside the nodes'
    # timeout (after which the live nodes answer CLUSTERDOWN too).
    client: Any = RedisCluster(
        host="127.0.0.1",
        port=cluster[0],
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    store = RedisStateStore(client, cluster=True)
    ids = [f"acct-{n}" for n in range(30)]
    home = {i: client.get_node_from_key(store.key(i, "login_lock")).port for i in ids}
    down = cluster[2]
    assert down in home.values() and len(set(home.values())) == 3
    # The scripts loaded on every node, and one instance on each stored.
    assert store.load_many(ids) == {}
    first = {port: next(i for i in ids if home[i] == port) for port in cluster}
    for instance_id in first.values():
        store.commit(instance_id, SNAPSHOT, expected_version=0)
        lock = store.acquire_lock(instance_id, 1.0)
        assert lock is not None
        store.release_lock(lock)
    # (Warmed first because a script a node lacks is loaded through the cluster client,
    # on every primary: with one of them down, that load fails.)
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis(port=down).shutdown(nosave=True)

    notes = {i: notification(i) for i in ids}
    written = store.commit_many(
        [Commit(i, SNAPSHOT, 1 if i in first.values() else 0, outbox=(notes[i],)) for i in ids]
    )

    for instance_id, version in zip(ids, written, strict=True):
        if home[instance_id] == down:
            assert isinstance(version, StoreUnavailable)
            assert version.instance_id == instance_id
        else:
            assert version == (2 if instance_id in first.values() else 1)
    # What the live nodes hold is whole, each write with its entry, and they go on.
    alive = [i for i in ids if home[i] != down]
    assert store.outbox(alive) == {i: Outbox((notes[i],)) for i in alive}
    assert store.load(first[cluster[0]]) == Stored(SNAPSHOT, 2, pending=1)
    assert all(store.acquire_lock(i, 60.0) is not None for i in alive)
    with pytest.raises(StoreUnavailable):
        store.acquire_lock(first[down], 60.0)
    with pytest.raises(StoreUnavailable):
        store.load_many(ids)
    client.close()
