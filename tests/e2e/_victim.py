"""A worker process that dies by SIGKILL at a chosen step: the kill -9 tests spawn it.

Run as ``python _victim.py '<json>'``. It builds the real adapters (Redis,
PostgreSQL, DuckDB, Prometheus, MT5Broker over a fake terminal) on the test's
prefix, database and file, wraps the ports in tripwires, and does one flow:

- ``closure``: ``Lifecycle(id).confirm_closure()`` on an ``ACCOUNT_CLOSED`` instance;
- ``login``: ``start()`` and run, the terminal failing ``fail_auth`` logins first;
- ``close``: log in, then ``account_closed()`` with the ``positions`` open.

With ``notify_file``, what the worker delivers is appended to that file (``FileNotifier``)
rather than kept in memory, so a test sees what it delivered before it died.

The tripwire named by ``kill`` (``port.method``, ``before``/``after``, the ``nth``
matching call) sends SIGKILL to this very process: no ``finally``, no ``atexit``, no
flush, exactly as a worker that the OOM killer takes. Exiting normally (code 0)
means the tripwire never fired, which the test treats as a failure.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from mt5lifecycle import Backends, Credentials, Lifecycle, Policy
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.mt5 import MT5Broker
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.adapters.prometheus import PrometheusMetrics
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.core.records import ClosureRecord, Notification
from mt5lifecycle.testing import FakeClock, RecordingNotifier, run_for
from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5


def _die() -> None:
    """As the OOM killer would: no ``finally``, no ``atexit``, no flush."""
    if sys.platform == "win32":
        os.kill(os.getpid(), signal.SIGTERM)  # TerminateProcess: as abrupt, on Windows
    else:
        os.kill(os.getpid(), signal.SIGKILL)


class FileNotifier:
    """Appends each notification it is handed to a file, one JSON line, synced: what a
    worker delivered survives its SIGKILL, so a test can count deliveries across workers."""

    def __init__(self, path: str) -> None:
        self.path = path

    def notify(self, notification: Notification) -> None:
        line = json.dumps(
            {
                "id": notification.id,
                "kind": notification.kind.value,
                "id_of": notification.instance_id,
            }
        )
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

    def delivered(self) -> list[dict[str, str]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as lines:
            return [json.loads(line) for line in lines]


class Tripwire:
    """Forwards everything to ``target``; the armed method kills the process."""

    def __init__(self, target: Any, name: str, kill: dict[str, Any], seen: dict[str, int]) -> None:
        self._target = target
        self._name = name
        self._kill = kill
        self._seen = seen

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._target, attr)
        key = f"{self._name}.{attr}"
        if key != self._kill["at"] or not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._matches(args, kwargs):
                self._seen[key] = self._seen.get(key, 0) + 1
                armed = self._seen[key] == self._kill.get("nth", 1)
            else:
                armed = False
            if armed and self._kill["when"] == "before":
                _die()
            result = value(*args, **kwargs)
            if armed and self._kill["when"] == "after":
                _die()
            return result

        return call

    def _matches(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        only = self._kill.get("only")
        if only == "closure":
            return any(isinstance(r, ClosureRecord) for r in args[0])
        if only == "notifications":
            return any(isinstance(e, Notification) for e in kwargs.get("outbox", ()))
        if only == "with_login":
            return bool(kwargs.get("login")) or self._kill["at"].endswith(".login")
        return True


def main(config: dict[str, Any]) -> None:
    kill: dict[str, Any] = config["kill"]
    seen: dict[str, int] = {}
    clock = FakeClock(config["now"])
    iid: str = config["instance_id"]
    client = redis.Redis(host=config["redis_host"], port=config["redis_port"])
    metrics = PrometheusMetrics(CollectorRegistry())
    mt5 = FakeMetaTrader5(data_path=Path(config["directory"]) / iid, clock=clock)
    mt5.add_account(config["login"], config["password"], config["server"])
    if config.get("fail_auth"):
        mt5.fail_logins(times=config["fail_auth"])
    for ticket in config.get("positions", []):
        mt5.open_position(ticket, "EURUSD", 1.0)
    ports: dict[str, Any] = {
        "state": RedisStateStore(client, prefix=config["prefix"]),
        "credentials": PostgresCredentialStore(config["conninfo"], keys=[config["key"]]),
        "archive": DuckDBArchive(
            config["archive"],
            background=False,
            clock=clock,
            batch_size=config.get("batch_size", 1000),
        ),
        "notifier": (
            FileNotifier(config["notify_file"]) if "notify_file" in config else RecordingNotifier()
        ),
        "metrics": metrics,
    }
    terminal: Any = mt5
    if kill["at"].startswith("mt5."):
        terminal = Tripwire(mt5, "mt5", kill, seen)
    wired = {
        name: Tripwire(port, name, kill, seen) if kill["at"].startswith(name + ".") else port
        for name, port in ports.items()
    }
    policy = Policy(**config.get("policy", {}))
    # Deadlines inside the login lock, as the conftest's World has them.
    broker = MT5Broker(
        {iid: terminal},
        call_timeout=policy.lock_ttl / 4,
        login_timeout_ms=max(1, int(policy.lock_ttl * 250)),
        sleep=lambda _: None,
    )
    backends = Backends(broker=broker, clock=clock, **wired)
    if config["mode"] == "closure":
        Lifecycle(iid, backends, policy).confirm_closure()
    else:
        creds = Credentials(config["login"], config["server"], config["password"])
        ports["credentials"].put(iid, creds)
        lc = Lifecycle(iid, backends, policy)
        lc.start()
        run_for(lc, clock, 3600 if config["mode"] == "login" else 1)
        if config["mode"] == "close":
            lc.account_closed()
    sys.stdout.write("survived\n")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
