"""How long the soak would take on the real Redis and PostgreSQL (not a test).

    python -m tests.e2e._soak_on_real_backends [INSTANCES] [SIMULATED_HOURS]

A ``Fleet`` of ``INSTANCES`` on ``RedisStateStore`` (127.0.0.1:6379, a throwaway
prefix) and ``PostgresCredentialStore`` (a throwaway database), a ``FakeBroker`` and
a ``FakeClock``, with a few random faults every five simulated minutes, as in
``test_soak.py``. It prints the time to set up and to play the simulated hours, and
the time a week would take at that rate; docs/reliability.md quotes it. Everything
it creates is deleted at the end.
"""

from __future__ import annotations

import logging
import random
import sys
import time
import uuid

import psycopg
import redis
from psycopg import sql

from mt5lifecycle import Backends, Credentials, Fleet, Policy, Reason
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.testing import FakeBroker, FakeClock, run_for

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def main(instances: int, hours: float) -> None:
    logging.disable(logging.CRITICAL)
    client = redis.Redis(host="127.0.0.1", port=6379)
    prefix = f"soak-real-{uuid.uuid4().hex}"
    database = f"mt5l_soak_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        clock = FakeClock()
        broker = FakeBroker(clock)
        store = PostgresCredentialStore(
            f"host=127.0.0.1 port=5432 user=postgres dbname={database}",
            keys=[PostgresCredentialStore.generate_key()],
        )
        backends = Backends(
            state=RedisStateStore(client, prefix=prefix),
            credentials=store,
            broker=broker,
            clock=clock,
        )
        fleet = Fleet(backends, Policy(connection_check_interval=3600.0))
        started = time.perf_counter()
        for n in range(instances):
            store.put(f"i{n}", Credentials(5012345, "Broker-Demo", "soak-pw"))
            fleet.add(f"i{n}")
        setup = time.perf_counter() - started
        rng = random.Random(1)
        started = time.perf_counter()
        end = clock.now() + hours * 3600
        while clock.now() < end:
            for _ in range(rng.randint(0, 4)):
                iid = f"i{rng.randrange(instances)}"
                fault = rng.randrange(3)
                if fault == 0:
                    broker.drop_connection(iid)
                elif fault == 1:
                    broker.fail_logins(iid, Reason.AUTH_FAILED, 2)
                else:
                    broker.crash_terminal(iid)
            run_for(fleet, clock, 300)
        played = time.perf_counter() - started
        store.close()
        print(
            f"{instances} instances, {hours:g} simulated hours on Redis and PostgreSQL: "
            f"setup {setup:.1f} s, run {played:.1f} s; a week at this rate: "
            f"{played * 168 / hours:.0f} s"
        )
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 5000,
        float(sys.argv[2]) if len(sys.argv) > 2 else 6.0,
    )
