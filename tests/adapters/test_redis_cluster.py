"""RedisStateStore on a real Redis Cluster: three private, throwaway nodes.

The hash tag must keep each instance's keys on one node, every script must run
there, and the pipelined calls (which redis-py refuses to pipeline through a cluster
client) must reach every node.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from mt5lifecycle.adapters.redis import KEY_SUFFIXES, RedisStateStore
from mt5lifecycle.core.snapshot import Snapshot, utc
from mt5lifecycle.core.states import Due, Reason, State
from mt5lifecycle.errors import ConcurrentUpdate, LockLost
from mt5lifecycle.ports import Stored

NODES = 3
SLOTS = 16384
SNAPSHOT = Snapshot(
    status=State.CONNECTING,
    login_attempt_count=1,
    last_login_attempt=utc(1767225605.25),
    login_failure_reason=Reason.AUTH_FAILED,
    next_due=1767225610.25,
    due=Due.LOGIN,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def formed(node: Any) -> bool:
    info = node.execute_command("CLUSTER INFO")
    return bool(info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == NODES)


def meet_all(nodes: list[Any], ports: list[int], buses: list[int]) -> None:
    for node, own in zip(nodes, ports, strict=True):
        for port, bus in zip(ports, buses, strict=True):
            if port != own:
                node.execute_command("CLUSTER MEET", "127.0.0.1", port, bus)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    ports: list[int] = []
    buses: list[int] = []
    processes: list[subprocess.Popen[str]] = []
    try:
        for n in range(NODES):
            port, bus = free_port(), free_port()
            workdir: Path = tmp_path_factory.mktemp(f"node{n}")
            process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--cluster-port",
                    str(bus),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / "nodes.conf"),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=workdir,
            )
            processes.append(process)
            assert process.stdout is not None
            for line in process.stdout:
                if "Ready to accept connections" in line:
                    break
            ports.append(port)
            buses.append(bus)
        # Any: redis-py leaves execute_command untyped.
        nodes: list[Any] = [redis.Redis(port=port, decode_responses=True) for port in ports]
        share = SLOTS // NODES
        for n, node in enumerate(nodes):
            last = SLOTS - 1 if n == NODES - 1 else (n + 1) * share - 1
            node.execute_command("CLUSTER ADDSLOTSRANGE", n * share, last)
        # Real time, unavoidably: the nodes agree by gossip on their own timers, and a
        # fresh master reports the cluster whole only 2 s after it started. Every node
        # meets every other directly, and meets them again every 3 s while the cluster has
        # not formed, as `redis-cli --cluster create` does: a handshake that fails
        # is otherwise retried only after the node timeout (15 s), which a loaded CI
        # machine has been seen to hit.
        deadline = time.monotonic() + 60
        next_meet = time.monotonic()
        while not all(formed(node) for node in nodes):
            now = time.monotonic()
            assert now < deadline, "the private cluster did not form:\n" + "\n".join(
                node.execute_command("CLUSTER NODES") for node in nodes
            )
            if now >= next_meet:
                meet_all(nodes, ports, buses)
                next_meet = now + 3.0
            time.sleep(0.02)
        for node in nodes:
            node.close()
        yield ports
    finally:
        for process in processes:
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture
def client(cluster: list[int]) -> Iterator[Any]:
    # Any: redis-py types RedisCluster's own arguments (target_nodes) loosely.
    client: Any = RedisCluster(host="127.0.0.1", port=cluster[0])
    yield client
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()


def test_one_instance_s_keys_live_on_one_node(client: Any) -> None:
    store = RedisStateStore(client, prefix="instance_state", cluster=True)
    store.commit("acct-1", SNAPSHOT, expected_version=0)
    assert store.acquire_lock("acct-1", 30.0) is not None

    slots = {client.keyslot(store.key("acct-1", suffix)) for suffix in KEY_SUFFIXES}

    assert len(slots) == 1
    assert client.get("instance_state:{acct-1}:status") == b"CONNECTING"
    assert store.load("acct-1") == Stored(SNAPSHOT, 1)


def test_every_method_works_across_the_nodes(client: Any) -> None:
    store = RedisStateStore(client, cluster=True)
    ids = [f"acct-{n}" for n in range(300)]
    nodes = {client.get_node_from_key(store.key(i, "status")).name for i in ids}
    assert len(nodes) == NODES

    assert store.commit_many([(i, SNAPSHOT, 0, None) for i in ids]) == [1] * len(ids)
    assert sorted(store.ids()) == sorted(ids)
    assert store.load_many(ids) == {i: Stored(SNAPSHOT, 1) for i in ids}
    assert store.versions([*ids, "absent"]) == dict.fromkeys(ids, 1)

    results = store.commit_many([(i, SNAPSHOT, 1 if n % 2 else 0, None) for n, i in enumerate(ids)])
    assert [isinstance(r, ConcurrentUpdate) for r in results] == [n % 2 == 0 for n in range(300)]

    lock = store.acquire_lock("acct-7", 30.0)
    assert lock is not None
    assert store.acquire_lock("acct-7", 30.0) is None
    assert store.commit("acct-7", SNAPSHOT, expected_version=2, lock=lock) == 3
    store.release_lock(lock)
    with pytest.raises(LockLost):
        store.commit("acct-7", SNAPSHOT, expected_version=3, lock=lock)

    later = [f"later-{n}" for n in range(60)]
    answers = store.start_commit_many([(i, SNAPSHOT, 0, None) for i in later])
    assert answers() == [1] * 60
    assert store.load_many(later) == {i: Stored(SNAPSHOT, 1) for i in later}

    for i in [*ids, *later]:
        store.delete(i)
    assert list(store.ids()) == []


def test_scripts_flushed_on_every_node_are_loaded_again(client: Any) -> None:
    store = RedisStateStore(client, cluster=True)
    ids = [f"acct-{n}" for n in range(30)]
    store.commit("acct-0", SNAPSHOT, expected_version=0)

    client.script_flush()  # every primary
    assert store.commit_many([(i, SNAPSHOT, 0, None) for i in ids[1:]]) == [1] * 29
    client.script_flush()  # every primary
    assert len(store.load_many(ids)) == 30
    client.script_flush()  # every primary
    assert store.load("acct-0") == Stored(SNAPSHOT, 1)
