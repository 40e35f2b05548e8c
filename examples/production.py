"""Production wiring: Redis, PostgreSQL, DuckDB, Prometheus and MetaTrader 5 terminals.

One worker process drives a ``Fleet``: live state in Redis (shared by every worker and
read by the ``mt5lifecycle`` command), credentials encrypted in PostgreSQL, history
in a DuckDB file that this process owns, metrics for the packaged alert rules on
``/metrics``, alerts in the log (swap ``LoggingNotifier`` for a ``CallbackNotifier``
that pages someone). It resumes every instance Redis holds, adds the ids given on
the command line, and runs until SIGINT or SIGTERM.

It runs only when the servers are given in the environment (the same variables the
``mt5lifecycle`` command reads)::

    export MT5LIFECYCLE_REDIS_URL=redis://127.0.0.1:6379/0
    export MT5LIFECYCLE_POSTGRES_DSN="host=127.0.0.1 user=postgres dbname=postgres"
    export MT5LIFECYCLE_KEYS=$(python -c "from mt5lifecycle.adapters.postgres import \
PostgresCredentialStore as P; print(P.generate_key())")
    export MT5LIFECYCLE_ARCHIVE=/var/lib/mt5lifecycle/archive.duckdb
    python examples/production.py acct-1 acct-2

``--dry-run`` swaps the terminals for the fake ``MetaTrader5`` module of the testing
kit and stores made-up credentials for ids that have none, so the wiring can be
tried on Linux without a terminal; ``--seconds N`` stops after N seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from mt5lifecycle import Backends, Credentials, Fleet, Policy
from mt5lifecycle.builtin.clock import SystemClock
from mt5lifecycle.builtin.notify import LoggingNotifier

REQUIRED = (
    "MT5LIFECYCLE_REDIS_URL",
    "MT5LIFECYCLE_POSTGRES_DSN",
    "MT5LIFECYCLE_KEYS",
    "MT5LIFECYCLE_ARCHIVE",
)

log = logging.getLogger("production")


def real_terminal(_instance_id: str) -> Any:
    """The ``MetaTrader5`` module for an instance.

    The package drives one terminal per process, so this serves a worker with one
    instance. For several terminals on one host, run one mt5linux RPC server per
    terminal and return ``mt5linux.MetaTrader5(host=..., port=...)`` for each id.
    """
    import MetaTrader5

    return MetaTrader5


def fake_terminals(credentials: Any) -> Callable[[str], Any]:
    """Dry run: a fake terminal per instance whose broker knows its stored account."""
    from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5

    def terminal(instance_id: str) -> Any:
        mt5 = FakeMetaTrader5()
        stored = credentials.get(instance_id)
        if stored is not None:
            mt5.add_account(stored.login, stored.password, stored.server)
        return mt5

    return terminal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("ids", nargs="*", metavar="ID", help="instances to add")
    parser.add_argument("--dry-run", action="store_true", help="fake terminals, made-up logins")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--metrics-port", type=int, default=9464, help="0 picks a free port")
    parser.add_argument("--metrics-addr", default="127.0.0.1", help="0.0.0.0 for a scraper")
    args = parser.parse_args(argv)
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print(f"production.py needs {', '.join(missing)} in the environment", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("transitions").setLevel(logging.WARNING)

    # Drivers are the adapters' own dependencies: pip install 'mt5lifecycle[all]'.
    import redis

    from mt5lifecycle.adapters.duckdb import DuckDBArchive
    from mt5lifecycle.adapters.mt5 import MT5Broker
    from mt5lifecycle.adapters.postgres import PostgresCredentialStore
    from mt5lifecycle.adapters.prometheus import PrometheusMetrics
    from mt5lifecycle.adapters.redis import RedisStateStore

    env = os.environ
    client = redis.Redis.from_url(env["MT5LIFECYCLE_REDIS_URL"], socket_timeout=5)
    state = RedisStateStore(client, prefix=env.get("MT5LIFECYCLE_PREFIX") or "instance_state")
    credentials = PostgresCredentialStore(
        env["MT5LIFECYCLE_POSTGRES_DSN"],
        keys=[k.strip() for k in env["MT5LIFECYCLE_KEYS"].split(",") if k.strip()],
        schema=env.get("MT5LIFECYCLE_SCHEMA") or "mt5lifecycle",
    )
    metrics = PrometheusMetrics()
    archive = DuckDBArchive(env["MT5LIFECYCLE_ARCHIVE"], metrics=metrics)
    server = metrics.start_http_server(args.metrics_port, args.metrics_addr)
    log.info("metrics on http://%s:%d/metrics", args.metrics_addr, server.server_port)

    if args.dry_run:
        for number, instance_id in enumerate(args.ids, start=1):
            if credentials.get(instance_id) is None:
                made_up = Credentials(90_000_000 + number, "FakeBroker-Demo", secrets.token_hex(8))
                credentials.put(instance_id, made_up)
    terminals = fake_terminals(credentials) if args.dry_run else real_terminal
    backends = Backends(
        state=state,
        credentials=credentials,
        broker=MT5Broker(terminals),
        clock=SystemClock(),
        archive=archive,
        notifier=LoggingNotifier(),
        metrics=metrics,
    )
    fleet = Fleet(backends, Policy())
    for instance_id in dict.fromkeys([*args.ids, *state.ids()]):
        fleet.add(instance_id)

    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the current pass", signum)
        stopping.set()
        fleet.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    clock = backends.clock
    deadline = float("inf") if args.seconds is None else clock.now() + args.seconds
    try:
        # run() drives the fleet until stop() (the signal handler) or the deadline.
        fleet.run(until=None if args.seconds is None else deadline)
    finally:
        for instance_id in fleet:
            print(f"{instance_id}: {fleet[instance_id].state}")
        archive.close()
        credentials.close()
        server.shutdown()
        server.server_close()
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
