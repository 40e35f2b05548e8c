"""Four Fleet processes over one Redis, one killed with ``kill -9`` mid-run.

All of the dead worker's instances are picked up once its leases expire, no account
is ever logged in by two workers at once, and every instance ends in the state its
broker script implies. Real processes and real time (the leases expire in Redis's
clock): the run lasts a few seconds by nature, the one exception to "no test waits".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from mt5lifecycle.adapters.redis import RedisStateStore

URL = "redis://127.0.0.1:6379/0"
WORKER = Path(__file__).resolve().parent / "workers" / "fleet_worker.py"
COUNT = 2000
EXPECTED = {
    0: ("FAILED", "LOGIN_ATTEMPTS_EXHAUSTED"),
    1: ("CONNECTED", None),
    2: ("INACTIVE", "ACCOUNT_BANNED"),
    3: ("CONNECTED", None),
}


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"t-fleet-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(URL)
    for pattern in (f"{name}:*", f"{name}-lease:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


# Each worker's stderr goes to a file, not a pipe nobody reads: one that fails says why.
_STDERR: dict[int, IO[str]] = {}


def start_worker(prefix: str, owner: str, seconds: float) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        [sys.executable, str(WORKER), prefix, owner, str(COUNT), str(seconds), "1000", URL],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    _STDERR[process.pid] = stderr
    return process


def _stderr_tail(process: subprocess.Popen[str]) -> str:
    stderr = _STDERR[process.pid]
    stderr.seek(0)
    text = stderr.read()
    return text[text.rfind("Traceback") :][-3000:] if "Traceback" in text else text[-3000:]


def final_states(prefix: str) -> dict[int, tuple[str, str | None]]:
    store = RedisStateStore(redis.Redis.from_url(URL), prefix=prefix)
    stored = store.load_many([f"i{n}" for n in range(COUNT)])
    out: dict[int, tuple[str, str | None]] = {}
    for n in range(COUNT):
        if f"i{n}" not in stored:
            continue
        snap = stored[f"i{n}"].snapshot
        reason = snap.last_failure_reason.value if snap.last_failure_reason else None
        out[n] = (snap.status.value, reason if snap.status.value != "CONNECTED" else None)
    return out


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)  # polling real processes, not waiting on logic
    return condition()


def test_four_workers_one_killed_every_instance_ends_right(prefix: str) -> None:
    client = redis.Redis.from_url(URL, decode_responses=True)
    workers = {f"w{n}": start_worker(prefix, f"w{n}", 120.0) for n in range(4)}
    try:
        victim = workers["w0"]
        assert wait_until(lambda: client.llen(f"{prefix}:adopted:w0") > 0, 60)
        time.sleep(0.5)  # let the victim log some of its instances in
        victim.kill()  # SIGKILL; TerminateProcess on Windows
        victim.wait()
        assert victim.stdout is not None
        victim.stdout.close()

        lease_keys = [f"{prefix}-lease:i{n}" for n in range(COUNT)]

        def all_leased_by_survivors() -> bool:
            owners = client.mget(lease_keys)
            return all(owner in ("w1", "w2", "w3") for owner in owners)

        def all_settled() -> bool:
            states = final_states(prefix)
            return len(states) == COUNT and all(states[n] == EXPECTED[n % 4] for n in states)

        picked_up = wait_until(all_leased_by_survivors, 60)
        settled = wait_until(all_settled, 60)
        client.set(f"{prefix}:settle", 1)
        client.set(f"{prefix}:finish", 1)
        reports = {}
        for owner, process in workers.items():
            if owner == "w0":
                continue
            out, _ = process.communicate(timeout=60)
            assert process.returncode == 0, _stderr_tail(process)
            reports[owner] = json.loads(out.strip().splitlines()[-1])

        assert picked_up, "the killed worker's instances were not all taken over"
        victims = set(client.lrange(f"{prefix}:adopted:w0", 0, -1))
        survivors = set().union(*(set(r["members"]) for r in reports.values()))
        assert victims <= survivors
        assert survivors == {f"i{n}" for n in range(COUNT)}

        # Never two logins at once. A login the kill interrupted never counted itself
        # out, so for those accounts (and only those) the counter starts one higher.
        interrupted = set(client.smembers(f"{prefix}:open:w0"))
        for n in range(COUNT):
            seen = [int(v) for v in client.lrange(f"{prefix}:concurrent:i{n}", 0, -1)]
            allowed = 2 if f"i{n}" in interrupted else 1
            assert all(v <= allowed for v in seen), (n, seen)

        states = final_states(prefix)
        wrong = [(n, states.get(n)) for n in range(COUNT) if states.get(n) != EXPECTED[n % 4]]
        assert settled, wrong[:10]
        assert wrong == []
    finally:
        # A failed assertion must not leave workers writing under the prefix
        # after the fixture has cleaned it.
        for process in workers.values():
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None and not process.stdout.closed:
                process.stdout.close()
            _STDERR.pop(process.pid).close()
