"""Eight processes on one Redis: the per-server login bound holds across all of them,
and no login waits for ever, even when a process dies holding slots (kill -9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

URL = "redis://127.0.0.1:6379/0"
WORKER = Path(__file__).resolve().parent / "workers" / "admission_worker.py"
PROCESSES = 8
PER_PROCESS = 40
SERVERS = 2
LIMIT = 3


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"admission-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(URL)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)


def _start(prefix: str, worker: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    args = [str(PER_PROCESS), str(SERVERS), str(LIMIT), URL]
    return subprocess.Popen(
        [sys.executable, str(WORKER), prefix, str(worker), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)  # polling real processes, not waiting on logic
    return condition()


def test_the_per_server_bound_holds_across_processes_and_no_login_waits_for_ever(
    prefix: str,
) -> None:
    client = redis.Redis.from_url(URL, decode_responses=True)
    workers = {n: _start(prefix, n) for n in range(PROCESSES)}
    try:
        assert _wait(lambda: client.llen(f"{prefix}:started") >= 1, 30)
        # The first process to start dies mid-way, holding whatever slots it had.
        victim_id = int(client.lindex(f"{prefix}:started", 0) or 0)
        assert _wait(lambda: client.llen(f"{prefix}:seen:srv-0") >= 3, 30)
        psutil.Process(workers[victim_id].pid).kill()
        workers[victim_id].wait()

        def everyone_connected() -> bool:
            states = client.mget(
                [
                    f"{prefix}:w{w}-{n}:status"
                    for w in workers
                    if w != victim_id
                    for n in range(PER_PROCESS)
                ]
            )
            return all(state == "CONNECTED" for state in states)

        connected = _wait(everyone_connected, 60)
        client.set(f"{prefix}:finish", 1)
        reports = {}
        for n, process in workers.items():
            out, _ = process.communicate(timeout=60)
            if n != victim_id:
                assert process.returncode == 0, out
                reports[n] = json.loads(out.strip().splitlines()[-1])
        # A login the kill interrupted never counted itself out: the counter reads one
        # higher for each of them from then on (and their slots hold until they expire).
        interrupted = [str(v).split("|")[0] for v in client.smembers(f"{prefix}:open:{victim_id}")]
        for server in range(SERVERS):
            name = f"srv-{server}"
            seen = [int(v) for v in client.lrange(f"{prefix}:seen:{name}", 0, -1)]
            assert seen, f"no login reached {name}"
            assert max(seen) <= LIMIT + interrupted.count(name), (name, max(seen))
        assert connected, "a login waited for ever"
        assert all(s == "CONNECTED" for r in reports.values() for s in r.values())
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
