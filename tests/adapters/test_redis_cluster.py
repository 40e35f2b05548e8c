"""RedisStateStore on a real Redis Cluster: three private, throwaway nodes.

The hash tag must keep each instance's keys (its outbox included) on one node, every
script must run there, and the pipelined calls (which redis-py refuses to pipeline
through a cluster client) must reach every node. A broker server's keys share a hash
tag of their own.
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

from mt5lifecycle.adapters._archive_codec import entry_id
from mt5lifecycle.adapters.redis import KEY_SUFFIXES, RedisStateStore
from mt5lifecycle.core.answers import Account, Ticket
from mt5lifecycle.core.snapshot import Snapshot, utc
from mt5lifecycle.core.states import Due, Reason, State
from mt5lifecycle.errors import ConcurrentUpdate, LockLost
from mt5lifecycle.ports import Commit, Outbox, Stored
from tests.adapters.test_redis_outbox import notification, transition

NODES = 3
SLOTS = 16384
SNAPSHOT = Snapshot(
    status=State.CONNECTING,
    login_attempt_count=1,
    last_login_attempt=utc(1767225605.25),
    login_failure_reason=Reason.AUTH_FAILED,
    last_failure_reason=Reason.NETWORK,
    next_due=1767225610.25,
    due=Due.LOGIN,
    account=Account(5550001, "Broker-Demo"),
    tickets=(Ticket(kind="position", ticket=90001, symbol="EURUSD", volume=0.5),),
    forced_try=True,
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
    aside = notification("acct-1")
    store.commit(
        "acct-1",
        SNAPSHOT,
        expected_version=0,
        outbox=[aside, notification("acct-1"), transition("acct-1")],
    )
    store.set_aside("acct-1", aside.id, "refused")
    assert store.acquire_lock("acct-1", 30.0) is not None

    keys = [store.key("acct-1", suffix) for suffix in KEY_SUFFIXES]
    slots = {client.keyslot(key) for key in keys}

    assert len(slots) == 1
    assert all(client.exists(key) for key in keys)  # every one of them written
    assert client.get("instance_state:{acct-1}:status") == b"CONNECTING"
    assert store.load("acct-1") == Stored(SNAPSHOT, 1, pending=2)
    assert store.redeliver("acct-1") == 1
    assert store.load("acct-1") == Stored(SNAPSHOT, 2, pending=3)


def test_every_method_works_across_the_nodes(client: Any) -> None:
    store = RedisStateStore(client, cluster=True)
    ids = [f"acct-{n}" for n in range(300)]
    nodes = {client.get_node_from_key(store.key(i, "status")).name for i in ids}
    assert len(nodes) == NODES

    assert store.commit_many([Commit(i, SNAPSHOT, 0) for i in ids]) == [1] * len(ids)
    assert sorted(store.ids()) == sorted(ids)
    assert store.load_many(ids) == {i: Stored(SNAPSHOT, 1) for i in ids}
    assert store.versions([*ids, "absent"]) == dict.fromkeys(ids, 1)

    results = store.commit_many([Commit(i, SNAPSHOT, 1 if n % 2 else 0) for n, i in enumerate(ids)])
    assert [isinstance(r, ConcurrentUpdate) for r in results] == [n % 2 == 0 for n in range(300)]

    lock = store.acquire_lock("acct-7", 30.0)
    assert lock is not None
    assert store.acquire_lock("acct-7", 30.0) is None
    assert store.commit("acct-7", SNAPSHOT, expected_version=2, lock=lock) == 3
    store.release_lock(lock)
    with pytest.raises(LockLost):
        store.commit("acct-7", SNAPSHOT, expected_version=3, lock=lock)

    for i in ids:
        store.delete(i)
    assert list(store.ids()) == []


def test_the_outbox_works_across_the_nodes(client: Any) -> None:
    store = RedisStateStore(client, cluster=True)
    ids = [f"acct-{n}" for n in range(60)]
    notes = {i: (notification(i), notification(i)) for i in ids}
    records = {i: transition(i) for i in ids}

    results = store.commit_many(
        [Commit(i, SNAPSHOT, 0, outbox=(*notes[i], records[i])) for i in ids]
    )

    assert results == [1] * len(ids)
    assert store.outbox(ids) == {i: Outbox(notes[i], (records[i],)) for i in ids}
    assert {i: s.pending for i, s in store.load_many(ids).items()} == dict.fromkeys(ids, 3)

    store.acknowledge({i: [notes[i][0].id, entry_id(records[i])] for i in ids})
    assert store.outbox(ids) == {i: Outbox(notes[i][1:]) for i in ids}

    for i in ids[::3]:
        store.set_aside(i, notes[i][1].id, "refused")
    aside = store.set_aside_notifications()  # a SCAN of every node
    assert sorted(s.notification.instance_id for s in aside) == sorted(ids[::3])
    assert store.set_aside_notifications(ids[:4]) == [
        aside_of(aside, ids[0]),
        aside_of(aside, ids[3]),
    ]
    assert sum(store.redeliver(i) for i in ids) == len(ids[::3])
    assert store.set_aside_notifications() == []

    # A purge keeps the outbox on its node.
    assert store.commit_many([Commit(i, None, 1 if n % 3 else 2) for n, i in enumerate(ids)]) == [
        2 if n % 3 else 3 for n in range(len(ids))
    ]
    assert store.load_many(ids) == {}
    assert store.outbox(ids) == {i: Outbox(notes[i][1:]) for i in ids}
    for i in ids:
        store.delete(i)
    assert store.outbox(ids) == {}


def aside_of(aside: list[Any], instance_id: str) -> Any:
    (found,) = [s for s in aside if s.notification.instance_id == instance_id]
    return found


def test_a_server_s_keys_share_one_slot_and_its_scripts_run(client: Any) -> None:
    store = RedisStateStore(client, cluster=True)
    for server in ("Broker-Demo", "Broker {Live}", "Брокер:2", "€"):
        token = store.acquire_slot(server, 1, 30.0)
        assert token is not None
        assert store.acquire_slot(server, 1, 30.0) is None
        store.release_slot(server, token)
        assert store.report_failure(server, "acct-1", 0.0, 60.0) == 1
        assert store.report_failure(server, "acct-2", 1.0, 60.0) == 2
        assert store.mark_down(server) is True
        assert store.is_down(server) is True
        assert store.probe(server, 1.0, 30.0) is True
        assert store.probe(server, 2.0, 30.0) is False
        # Three keys in one script: CROSSSLOT unless they share the server's tag.
        assert store.mark_up(server) is True
        assert store.is_down(server) is False
        assert store.report_failure(server, "acct-3", 2.0, 60.0) == 1


def test_scripts_flushed_on_every_node_are_loaded_again(client: Any) -> None:
    store = RedisStateStore(client, cluster=True)
    ids = [f"acct-{n}" for n in range(30)]
    store.commit("acct-0", SNAPSHOT, expected_version=0)

    client.script_flush()  # every primary
    assert (
        store.commit_many([Commit(i, SNAPSHOT, 0, outbox=(transition(i),)) for i in ids[1:]])
        == [1] * 29
    )
    client.script_flush()  # every primary
    assert len(store.load_many(ids)) == 30
    client.script_flush()  # every primary
    assert store.load("acct-0") == Stored(SNAPSHOT, 1)
    client.script_flush()  # every primary
    store.acknowledge({i: [] for i in ids})
    assert len(store.outbox(ids)) == 29
