"""One Fleet process for the per-server admission test (tests/runtime/test_admission_processes.py).

Drives its own instances over a shared Redis; every instance's broker server is one
of a few, shared with the other processes. Each login takes a little real time and
records itself in Redis, so the test can count the logins in flight per server
across all the processes at once.
"""

from __future__ import annotations

import json
import sys
import time

import redis

from mt5lifecycle import Backends, Credentials, Fleet, Policy, State
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.builtin.clock import SystemClock
from mt5lifecycle.builtin.memory import MemoryCredentialStore
from mt5lifecycle.core.records import LoginResult
from mt5lifecycle.testing import FakeBroker


class CountingBroker(FakeBroker):
    def __init__(
        self, clock: SystemClock, client: redis.Redis, prefix: str, worker: int, hold: float
    ) -> None:
        super().__init__(clock)
        self.client = client
        self.prefix = prefix
        self.worker = worker
        self.hold = hold

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        key = f"{self.prefix}:inflight:{credentials.server}"
        mine = f"{self.prefix}:open:{self.worker}"
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.sadd(mine, f"{credentials.server}|{instance_id}")
        at_once = int(pipe.execute()[0])
        self.client.rpush(f"{self.prefix}:seen:{credentials.server}", at_once)
        try:
            # A login takes a while: the window in which a bound could be broken.
            time.sleep(self.hold)
            return super().login(instance_id, credentials, logged_in_before=logged_in_before)
        finally:
            pipe = self.client.pipeline()
            pipe.decr(key)
            pipe.srem(mine, f"{credentials.server}|{instance_id}")
            pipe.execute()


def _state_name(state: State | None) -> str | None:
    return state.value if state is not None else None


def main(prefix: str, worker: int, count: int, servers: int, limit: int, url: str) -> None:
    client = redis.Redis.from_url(url)
    clock = SystemClock()
    broker = CountingBroker(clock, client, prefix, worker, hold=0.02)
    credentials = MemoryCredentialStore()
    ids = [f"w{worker}-{n}" for n in range(count)]
    for n, instance_id in enumerate(ids):
        credentials.put(instance_id, Credentials(1000 + n, f"srv-{n % servers}", "pw"))
    backends = Backends(
        state=RedisStateStore(client, prefix=prefix),
        credentials=credentials,
        broker=broker,
        clock=clock,
    )
    policy = Policy(
        max_concurrent_logins_per_server=limit or None,
        admission_retry_delay=0.05,
        lock_ttl=2.0,
        connection_check_interval=30.0,
    )
    fleet = Fleet(backends, policy, workers=4)
    fleet.add_many(ids)
    client.rpush(f"{prefix}:started", worker)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not client.exists(f"{prefix}:finish"):
        fleet.run_due()
        time.sleep(0.005)  # the loop a host writes around run_due
    states = {i: _state_name(fleet[i].state) for i in ids}
    fleet.close()
    print(json.dumps(states))


if __name__ == "__main__":
    prefix, worker, count, servers, limit, url = sys.argv[1:7]
    main(prefix, int(worker), int(count), int(servers), int(limit), url)
