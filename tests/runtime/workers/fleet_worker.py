"""One Fleet worker process for the multi-process test (tests/test_fleet_processes.py).

Drives the instances it can lease over a shared Redis, with a fake broker whose
script for each instance depends only on its number, so the final state of every
instance is known whoever drives it. Every login records itself in Redis so the test
can tell if two workers ever logged one account in at once.
"""

from __future__ import annotations

import json
import sys
import time

import redis

from mt5lifecycle import Backends, Credentials, Fleet, Policy, Reason
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.adapters.redis.leases import RedisLeases
from mt5lifecycle.builtin.clock import SystemClock
from mt5lifecycle.builtin.memory import MemoryCredentialStore
from mt5lifecycle.core.records import LoginResult
from mt5lifecycle.testing import FakeBroker


class WatchedBroker(FakeBroker):
    def __init__(self, clock: SystemClock, client: redis.Redis, prefix: str, owner: str) -> None:
        super().__init__(clock)
        self.client = client
        self.prefix = prefix
        self.owner = owner
        self.fail_twice: set[str] = set()

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        active = f"{self.prefix}:active:{instance_id}"
        pipe = self.client.pipeline()
        pipe.incr(active)
        pipe.sadd(f"{self.prefix}:open:{self.owner}", instance_id)
        at_once = int(pipe.execute()[0])
        if at_once > 1:
            self.client.rpush(f"{self.prefix}:concurrent:{instance_id}", at_once)
        try:
            if instance_id in self.fail_twice and (
                int(self.client.incr(f"{self.prefix}:failed:{instance_id}")) <= 2
            ):
                # Two wrong passwords at the broker, whichever workers sent them: an
                # instance handed over twice must not fail two more in each process.
                self.fail_logins(instance_id, Reason.AUTH_FAILED, times=1)
            time.sleep(0.002)  # a login takes a while: gives a second driver a window
            return super().login(instance_id, credentials, logged_in_before=logged_in_before)
        finally:
            pipe = self.client.pipeline()
            pipe.decr(active)
            pipe.srem(f"{self.prefix}:open:{self.owner}", instance_id)
            pipe.execute()


def script(broker: WatchedBroker, number: int, instance_id: str) -> None:
    kind = number % 4
    if kind == 0:
        broker.fail_logins(instance_id, Reason.AUTH_FAILED)
    elif kind == 2:
        broker.ban_account(instance_id)
    elif kind == 3:
        broker.fail_twice.add(instance_id)
    if kind in (1, 3):
        # Every worker sees the same terminals: one that another worker logged in
        # before it died is still connected when this one takes the instance over.
        broker.restore_connection(instance_id)


def main(prefix: str, owner: str, count: int, seconds: float, limit: int, url: str) -> None:
    client = redis.Redis.from_url(url)
    clock = SystemClock()
    broker = WatchedBroker(clock, client, prefix, owner)
    credentials = MemoryCredentialStore()
    ids = [f"i{n}" for n in range(count)]
    for number, instance_id in enumerate(ids):
        credentials.put(instance_id, Credentials(1000 + number, "Srv", "pw"))
        script(broker, number, instance_id)
    backends = Backends(
        state=RedisStateStore(client, prefix=prefix),
        credentials=credentials,
        broker=broker,
        clock=clock,
    )
    policy = Policy(
        login_backoff=(0.05,),
        network_retry_delay=0.1,
        connection_check_interval=0.5,
        lock_ttl=1.0,
        transient_retry_delay=0.2,
    )
    fleet = Fleet(
        backends,
        policy,
        workers=4,
        leases=RedisLeases(client, namespace=f"{prefix}-lease"),
        owner=owner,
        lease_ttl=3.0,
    )
    # The test steers the run through Redis: it says when to stop adopting and when
    # to finish, so that slow machines change the timing, not the outcome.
    end = time.monotonic() + seconds
    while time.monotonic() < end and not client.exists(f"{prefix}:finish"):
        if not client.exists(f"{prefix}:settle"):
            adopted = fleet.adopt(ids, limit=limit)
            if adopted:
                client.rpush(f"{prefix}:adopted:{owner}", *adopted)
        fleet.run_due()
        time.sleep(0.02)
    members = sorted(fleet)
    fleet.close()
    print(json.dumps({"owner": owner, "members": members}))


if __name__ == "__main__":
    prefix, owner, count, seconds, limit, url = sys.argv[1:7]
    main(prefix, owner, int(count), float(seconds), int(limit), url)
