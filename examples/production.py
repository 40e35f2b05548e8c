"""Production wiring in code: Redis, PostgreSQL, DuckDB, Prometheus, MetaTrader 5 terminals.

Most hosts need no code: ``mt5lifecycle serve serve.toml`` runs the same fleet from
one configuration file, with the HTTP API, the console and the signals handled
(docs/operations/serve.md). This file is for a host that embeds the fleet in its own
process.

The ``MetaTrader5`` package drives one terminal per process, so giving every
instance the same module would have each login log the others out (``MT5Broker``
refuses it with ``TerminalShared``). ``ProcessTerminals`` runs each terminal's calls
in a worker process of its own, so one ``Fleet`` drives every terminal of a Windows
host::

    $env:MT5LIFECYCLE_REDIS_URL = "redis://127.0.0.1:6379/0"
    $env:MT5LIFECYCLE_POSTGRES_DSN = "host=127.0.0.1 user=postgres dbname=postgres"
    $env:MT5LIFECYCLE_KEYS = (mt5lifecycle generate-key)
    $env:MT5LIFECYCLE_ARCHIVE = "C:\\mt5lifecycle\\archive.duckdb"
    python examples\\production.py --terminal acct-1=C:\\MT5\\acct-1\\terminal64.exe `
                                   --terminal acct-2=C:\\MT5\\acct-2\\terminal64.exe

It drives every stored instance that has a terminal (add accounts with ``mt5lifecycle
add``) until Ctrl-C or SIGTERM. ``--dry-run IDS...`` uses the testing kit's fake
``MetaTrader5`` instead, with made-up credentials, so the wiring can be tried on
Linux; ``--seconds N`` stops after N seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
from typing import Any

from mt5lifecycle import Backends, Credentials, Fleet, Policy
from mt5lifecycle.builtin.clock import SystemClock
from mt5lifecycle.builtin.notify import LoggingNotifier

REQUIRED = ("MT5LIFECYCLE_REDIS_URL", "MT5LIFECYCLE_POSTGRES_DSN", "MT5LIFECYCLE_KEYS",
            "MT5LIFECYCLE_ARCHIVE")  # fmt: skip


def fake_terminals(credentials: Any) -> Any:
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
    parser = argparse.ArgumentParser(description="A Fleet wired to production backends.")
    parser.add_argument("ids", nargs="*", metavar="ID", help="--dry-run: instances to add")
    parser.add_argument("--terminal", action="append", default=[], metavar="ID=PATH",
                        help="an instance and its terminal64.exe (repeat for each)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="fake terminals, made-up logins")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--metrics-port", type=int, default=9464, help="0 picks a free port")
    args = parser.parse_args(argv)
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print(f"production.py needs {', '.join(missing)} in the environment", file=sys.stderr)
        return 2
    paths = dict(item.split("=", 1) for item in args.terminal)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)

    # The adapters' drivers: pip install "mt5lifecycle[all]".
    import redis

    from mt5lifecycle.adapters.duckdb import DuckDBArchive
    from mt5lifecycle.adapters.mt5 import MT5Broker
    from mt5lifecycle.adapters.postgres import PostgresCredentialStore
    from mt5lifecycle.adapters.prometheus import PrometheusMetrics
    from mt5lifecycle.adapters.redis import RedisStateStore
    from mt5lifecycle.adapters.redis.leases import RedisLeases

    env = os.environ
    client = redis.Redis.from_url(env["MT5LIFECYCLE_REDIS_URL"], socket_timeout=5)
    prefix = env.get("MT5LIFECYCLE_PREFIX") or "instance_state"
    state = RedisStateStore(client, prefix=prefix)
    credentials = PostgresCredentialStore(
        env["MT5LIFECYCLE_POSTGRES_DSN"],
        keys=env["MT5LIFECYCLE_KEYS"].split(","),
        schema=env.get("MT5LIFECYCLE_SCHEMA") or "mt5lifecycle",
    )
    metrics = PrometheusMetrics()
    archive = DuckDBArchive(env["MT5LIFECYCLE_ARCHIVE"], metrics=metrics)
    server = metrics.start_http_server(args.metrics_port, "127.0.0.1")

    terminals: Any
    if args.dry_run:
        for number, instance_id in enumerate(args.ids, start=1):
            if credentials.get(instance_id) is None:
                made_up = Credentials(90_000_000 + number, "FakeBroker-Demo", secrets.token_hex(8))
                credentials.put(instance_id, made_up)
        terminals, ids = fake_terminals(credentials), list(args.ids)
    else:
        from mt5lifecycle.adapters.mt5_process import ProcessTerminals  # type: ignore[import-not-found,unused-ignore]

        # One worker process per terminal, each importing MetaTrader5 for itself.
        terminals = ProcessTerminals(paths)
        ids = [i for i in state.ids() if i in paths]
    backends = Backends(state=state, credentials=credentials, clock=SystemClock(),
                        broker=MT5Broker(terminals), archive=archive,
                        notifier=LoggingNotifier(), metrics=metrics)  # fmt: skip
    # Leases: several such processes on one Redis never drive one instance twice.
    fleet = Fleet(
        backends, Policy(), leases=RedisLeases(client, namespace=f"mt5lifecycle:lease:{prefix}")
    )
    fleet.adopt(ids)

    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()
        fleet.stop()  # run() returns after the current pass

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
        if sig is not None:  # SIGBREAK: Ctrl-Break and the console closing, on Windows
            signal.signal(sig, stop)
    clock = backends.clock
    end = float("inf") if args.seconds is None else clock.now() + args.seconds
    try:
        # In slices of half a second: before Python 3.14 a Windows process runs its
        # signal handlers only between them, so Ctrl-C is answered within one.
        while not stopping.is_set() and clock.now() < end:
            fleet.run(until=min(clock.now() + 0.5, end))
    finally:
        for instance_id in fleet:
            print(f"{instance_id}: {fleet[instance_id].state}")
        fleet.close()  # hands the leases back: another process adopts at once
        if hasattr(terminals, "close"):
            terminals.close()
        archive.close()
        credentials.close()
        server.shutdown()
        server.server_close()
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
