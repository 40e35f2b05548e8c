"""RedisStateStore when Redis goes away: a private, throwaway redis-server.

The shared Redis on 6379 is never stopped (others use it): each test starts its own
``redis-server`` on a free port, without persistence, and kills it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.core.snapshot import Snapshot, utc
from mt5lifecycle.core.states import ConnectionState, Due, Reason, State
from mt5lifecycle.errors import ConcurrentUpdate, StoreUnavailable
from mt5lifecycle.ports import Commit, LockToken, Outbox, Stored
from tests.adapters.test_redis_outbox import notification, transition

if sys.platform == "win32":
    pytest.skip(
        "POSIX only: SIGSTOP and SIGCONT, to freeze a Redis server", allow_module_level=True
    )

FIRST = Snapshot(
    status=State.CONNECTING,
    login_attempt_count=1,
    last_login_attempt=utc(1767225600.0),
    login_failure_reason=Reason.AUTH_FAILED,
    next_due=1767225605.0,
    due=Due.LOGIN,
)
SECOND = Snapshot(
    status=State.CONNECTED,
    connection_state=ConnectionState.CONNECTED,
    last_login_attempt=utc(1767225605.0),
    ever_logged_in=True,
)


class Server:
    """A redis-server subprocess on its own port; ``kill`` and ``start`` at will."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
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
        )
        # Wait on the server's own word rather than on a timer.
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()

    def client(self) -> redis.Redis:
        # No retries: the test wants the fault itself, at once.
        return redis.Redis(
            port=self.port,
            socket_connect_timeout=0.2,
            socket_timeout=0.2,
            retry=Retry(NoBackoff(), 0),
        )


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
        server.kill()


def test_a_killed_redis_is_store_unavailable_and_work_goes_on_after_a_restart(
    server: Server,
) -> None:
    client = server.client()
    store = RedisStateStore(client, prefix=f"outage-{uuid.uuid4().hex}")
    assert store.commit("acct-1", FIRST, expected_version=0) == 1
    lock = store.acquire_lock("acct-1", 30.0)
    assert lock is not None

    server.kill()

    with pytest.raises(StoreUnavailable) as unavailable:
        store.commit("acct-1", SECOND, expected_version=1, lock=lock)
    assert unavailable.value.instance_id == "acct-1"
    for call in (
        lambda: store.load("acct-1"),
        lambda: store.acquire_lock("acct-1", 30.0),
        lambda: store.release_lock(lock),
        lambda: store.delete("acct-1"),
        lambda: store.load_many(["acct-1"]),
        lambda: store.versions(["acct-1"]),
        lambda: store.commit_many([Commit("acct-1", SECOND, 1, lock)]),
        lambda: store.commit("acct-1", None, expected_version=1, outbox=[transition("acct-1")]),
        lambda: list(store.ids()),
        lambda: store.outbox(["acct-1"]),
        lambda: store.acknowledge({"acct-1": ["n1"]}),
        lambda: store.set_aside("acct-1", "n1", "refused"),
        lambda: store.set_aside_notifications(),
        lambda: store.redeliver("acct-1"),
        lambda: store.acquire_slot("Broker-Demo", 1, 30.0),
        lambda: store.report_failure("Broker-Demo", "acct-1", 0.0, 60.0),
        lambda: store.mark_down("Broker-Demo"),
        lambda: store.probe("Broker-Demo", 0.0, 30.0),
    ):
        with pytest.raises(StoreUnavailable):
            call()

    # The restarted server has neither the data (no persistence) nor the scripts:
    # the store reconnects and loads its scripts again, single and pipelined.
    server.start()
    assert store.load("acct-1") is None
    assert store.commit("acct-1", SECOND, expected_version=0) == 1
    assert store.load("acct-1") == Stored(SECOND, 1)

    server.kill()
    server.start()
    assert store.commit_many([Commit("acct-1", FIRST, 0), Commit("acct-2", FIRST, 0)]) == [1, 1]
    server.kill()
    server.start()
    store.commit("acct-1", FIRST, expected_version=0)
    client.script_flush()
    assert store.load_many(["acct-1", "acct-2"]) == {"acct-1": Stored(FIRST, 1)}
    client.script_flush()
    relock = store.acquire_lock("acct-1", 30.0)
    assert relock is not None
    client.script_flush()
    store.release_lock(relock)
    assert store.acquire_lock("acct-1", 30.0) is not None
    # The outbox's and the servers' scripts too, each after a flush.
    note = notification("acct-2")
    assert store.commit("acct-2", FIRST, expected_version=0, outbox=[note]) == 1
    for step in (
        lambda: store.set_aside("acct-2", note.id, "refused"),
        lambda: store.redeliver("acct-2"),
        lambda: store.acknowledge({"acct-2": [note.id]}),
        lambda: store.acquire_slot("Broker-Demo", 1, 30.0),
        lambda: store.report_failure("Broker-Demo", "acct-2", 0.0, 60.0),
        lambda: store.probe("Broker-Demo", 0.0, 30.0),
        lambda: store.mark_up("Broker-Demo"),
    ):
        client.script_flush()
        step()
    assert store.outbox(["acct-2"]) == {}
    assert store.load("acct-2") == Stored(FIRST, 2)  # the redelivery moved the version
    client.close()


def test_a_commit_that_timed_out_is_whole_or_absent_and_fences_the_stale_writer(
    server: Server,
) -> None:
    client = server.client()
    prefix = f"outage-{uuid.uuid4().hex}"
    store = RedisStateStore(client, prefix=prefix)
    store.commit("acct-1", FIRST, expected_version=0)
    store.load("acct-1")
    assert server.process is not None

    # A frozen server: the command is sent, the reply never comes, and the client
    # gives up after its socket timeout (200 ms of real time: the socket's own).
    note = notification("acct-1")
    os.kill(server.process.pid, signal.SIGSTOP)
    with pytest.raises(StoreUnavailable):
        store.commit("acct-1", SECOND, expected_version=1, outbox=[note])
    os.kill(server.process.pid, signal.SIGCONT)

    # Whether the server ran the abandoned script when it woke is not ours to know;
    # either way the instance is whole, one version or the other, never a mix, and
    # its notification is there exactly when its state is.
    stored = store.load("acct-1")
    assert stored in (Stored(FIRST, 1), Stored(SECOND, 2, pending=1))
    assert store.outbox(["acct-1"]) == ({"acct-1": Outbox((note,))} if stored.version == 2 else {})
    plain = redis.Redis(port=server.port, decode_responses=True)
    keys = {key.rsplit(":", 1)[1] for key in plain.scan_iter(match=f"{prefix}:acct-1:*")}
    expected = {"status", "connection_state", "login_attempt_count", "last_login_attempt"}
    expected |= {"restart_count", "network_retry_count", "ever_logged_in"}
    expected |= {"failed_since_success", "terminal_stopped", "forced_try", "version"}
    expected |= {"last_commit"}
    if stored == Stored(FIRST, 1):
        expected |= {"login_failure_reason", "next_due", "due"}
    else:
        expected |= {"notifications"}
    assert keys == expected
    plain.close()

    # The writer that still believes version 1 is refused when the write had landed.
    assert stored is not None
    if stored.version == 2:
        with pytest.raises(ConcurrentUpdate):
            store.commit("acct-1", FIRST, expected_version=1)
    assert store.commit("acct-1", FIRST, expected_version=stored.version) == stored.version + 1
    client.close()


def test_batch_answers_that_do_not_come_are_store_unavailable_and_the_pool_goes_on(
    server: Server,
) -> None:
    client = server.client()
    store = RedisStateStore(client, prefix=f"outage-{uuid.uuid4().hex}")
    assert store.commit("acct-1", FIRST, expected_version=0) == 1
    assert server.process is not None
    notes = [notification("acct-1"), notification("acct-2")]

    # A frozen server: the pipeline is sent, its answers never come.
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):
            store.commit_many(
                [
                    Commit("acct-1", SECOND, 1, outbox=(notes[0],)),
                    Commit("acct-2", SECOND, 0, outbox=(notes[1],)),
                ]
            )
        with pytest.raises(StoreUnavailable):
            store.load_many(["acct-1"])
    finally:
        os.kill(server.process.pid, signal.SIGCONT)

    # Any of the items may have landed (here both do, once Redis goes on), each whole
    # with its entry: the writer reloads and carries on from what it finds.
    found = store.load_many(["acct-1", "acct-2"])
    outbox = store.outbox(["acct-1", "acct-2"])
    for instance_id, note in zip(("acct-1", "acct-2"), notes, strict=True):
        stored = found.get(instance_id)
        if stored is not None and stored.snapshot == SECOND:
            assert outbox[instance_id] == Outbox((note,))
        else:
            assert instance_id not in outbox
    stored = store.load("acct-1")
    assert stored is not None
    assert store.commit("acct-1", stored.snapshot, expected_version=stored.version) == (
        stored.version + 1
    )
    lock = store.acquire_lock("acct-3", 30.0)
    assert isinstance(lock, LockToken)
    client.close()
