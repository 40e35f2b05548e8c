"""Drives ``MT5Broker`` over the real mt5linux client, for tests/adapters/test_mt5linux_bridge.py.

mt5linux 1.1 imports only on Python 3.12 or newer, so this runs in its own virtual
environment (the test builds it), with the project on ``PYTHONPATH``. It reads one JSON
command per line on standard input and answers each with one line starting ``@@``
(mt5linux prints to standard output by itself: "Connecting....").

Commands (``op``): ``setup`` (the broker, over ``mt5linux_client`` for the server's
port), ``login``, ``status``, ``account``, ``restart``, ``stop``, ``positions``,
``orders``, ``close``, ``cancel``, ``outcome``, ``lifecycle`` (a whole ``Lifecycle``
on a fake clock, over this broker), and ``script``/``eval`` (code run in the server,
next to the fake terminal, over a connection of its own).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import rpyc

from mt5lifecycle import Credentials, Lifecycle, Policy
from mt5lifecycle.adapters.mt5 import MT5Broker, mt5linux_client
from mt5lifecycle.builtin.memory import MemoryArchive
from mt5lifecycle.core.records import Order, Position, TradeResult
from mt5lifecycle.testing import FakeClock, memory_backends, run_for

ID = "acc-1"


class Driver:
    def __init__(self) -> None:
        self.broker: MT5Broker | None = None
        self.port = 0

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "setup":
            return self.setup(cmd)
        if op in ("script", "eval"):
            return self.remote(op, cmd["code"])
        broker = self.broker
        assert broker is not None, "setup first"
        if op == "login":
            creds = Credentials(cmd["login"], cmd["server"], cmd["password"])
            result = broker.login(ID, creds, logged_in_before=cmd.get("before", False))
            account = (
                None if result.account is None else [result.account.login, result.account.server]
            )
            return {
                "ok": result.ok,
                "reason": None if result.reason is None else result.reason.value,
                "code": result.code,
                "message": result.message,
                "account": account,
            }
        if op == "status":
            return {"status": broker.status(ID).value}
        if op == "account":
            found = broker.account(ID)
            return {"account": None if found is None else [found.login, found.server]}
        if op == "restart":
            broker.restart(ID)
            return {}
        if op == "stop":
            broker.stop(ID)
            return {}
        if op == "positions":
            return {"positions": [[p.ticket, p.symbol, p.volume] for p in broker.positions(ID)]}
        if op == "orders":
            return {"orders": [[o.ticket, o.symbol, o.volume] for o in broker.orders(ID)]}
        if op == "close":
            position = Position(ticket=cmd["ticket"], symbol=cmd["symbol"], volume=cmd["volume"])
            return _trade(broker.close_position(ID, position, cmd["volume"]))
        if op == "cancel":
            return _trade(
                broker.cancel_order(ID, Order(ticket=cmd["ticket"], symbol=cmd["symbol"]))
            )
        if op == "outcome":
            outcome = broker.trade_outcome(ID, cmd["kind"], cmd["ticket"])
            return {"outcome": None if outcome is None else _trade(outcome)}
        if op == "lifecycle":
            return self.lifecycle(broker, cmd)
        raise ValueError(f"unknown op {op!r}")

    def setup(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.port = int(cmd["port"])
        timeout = float(cmd["client_timeout"])
        self.broker = MT5Broker(
            lambda instance_id: mt5linux_client("127.0.0.1", self.port, timeout=timeout),
            call_timeout=float(cmd["call_timeout"]),
            login_timeout_ms=int(cmd["login_timeout_ms"]),
        )
        return {"longest_call": self.broker.longest_call}

    def remote(self, op: str, code: str) -> dict[str, Any]:
        # A connection of the test's own, to script the fake terminal in the server.
        conn = rpyc.classic.connect("127.0.0.1", self.port)
        try:
            conn.execute("import MetaTrader5 as m")
            if op == "script":
                conn.execute(code)
                return {}
            return {"value": rpyc.classic.obtain(conn.eval(code))}
        finally:
            conn.close()

    def lifecycle(self, broker: MT5Broker, cmd: dict[str, Any]) -> dict[str, Any]:
        clock = FakeClock()
        backends = memory_backends(broker=broker, clock=clock)
        backends.credentials.put(ID, Credentials(cmd["login"], cmd["server"], cmd["password"]))
        lc = Lifecycle(ID, backends, Policy(**cmd.get("policy", {})))
        lc.start()
        run_for(lc, clock, float(cmd.get("seconds", 1)))
        if cmd.get("then") == "account_closed":
            lc.account_closed()
        snap = lc.snapshot()
        archive = backends.archive
        assert isinstance(archive, MemoryArchive) and snap is not None
        return {
            "state": snap.status.value,
            "reason": None if snap.last_failure_reason is None else snap.last_failure_reason.value,
            "attempts": snap.login_attempt_count,
            "failures": [[f.reason.value, f.code] for f in archive.failures(ID)],
            "outcomes": {str(o.ticket): [o.outcome.value, o.retcode] for o in archive.outcomes(ID)},
        }


def _trade(result: TradeResult) -> dict[str, Any]:
    return {"retcode": result.retcode, "remaining": result.remaining, "comment": result.comment}


def main() -> None:
    driver = Driver()
    for line in sys.stdin:
        if not line.strip():
            continue
        started = time.monotonic()
        try:
            answer = driver.handle(json.loads(line))
        except Exception as exc:  # the test reads what was raised
            answer = {"raised": type(exc).__name__, "message": str(exc)}
        answer["seconds"] = time.monotonic() - started
        sys.stdout.write("@@" + json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
