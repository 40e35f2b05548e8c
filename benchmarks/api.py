"""The API's throughput against a bare Starlette route returning the same JSON.

    python benchmarks/api.py [--instances 10000] [--seconds 3] [--clients 4]

A server process (this script with ``--serve``) holds ``--instances`` instances in the
in-memory store and serves, on one uvicorn, the real app (``create_app``: bearer
token, store reads, snapshot to JSON, history reads) and a bare Starlette app whose
routes return the very same JSON, computed once at start-up (Starlette's
``JSONResponse`` still encodes it on every request). This process drives both with
``--clients`` concurrent httpx clients for ``--seconds`` each, in the same run, and
prints requests per second and latency percentiles of each, and the real app's share
of the bare route's rate. Goal: at least 50 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

OPERATOR = "benchmark-operator-token-0123456789abcdef"
DETAIL = "bot-00042"


def build_server(instances: int) -> Any:
    """The real app and the bare one behind one ASGI callable (``/bare/...``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send

    from mt5lifecycle import ConnectionState, Credentials, Reason, Snapshot, State
    from mt5lifecycle.core.records import AuditRecord, LoginFailureRecord, TransitionRecord
    from mt5lifecycle.core.states import Due
    from mt5lifecycle.testing import memory_backends
    from mt5lifecycle.web import create_app
    from mt5lifecycle.web.history import read_history
    from mt5lifecycle.web.views import history_json, instance_json

    backends = memory_backends()
    t0 = backends.clock.now()
    at = datetime.fromtimestamp(t0, tz=UTC)
    for n in range(instances):
        instance_id = f"bot-{n:05d}"
        if n % 10 == 3:
            snapshot = Snapshot(
                status=State.FAILED,
                connection_state=ConnectionState.FAILED,
                login_attempt_count=5,
                last_login_attempt=at,
                login_failure_reason=Reason.AUTH_FAILED,
                last_failure_reason=Reason.LOGIN_ATTEMPTS_EXHAUSTED,
            )
        elif n % 10 == 7:
            snapshot = Snapshot(
                status=State.CONNECTING,
                login_attempt_count=1,
                last_login_attempt=at,
                login_failure_reason=Reason.NETWORK,
                next_due=t0 + 10,
                due=Due.LOGIN,
            )
        else:
            snapshot = Snapshot(
                status=State.CONNECTED,
                connection_state=ConnectionState.CONNECTED,
                last_login_attempt=at,
                ever_logged_in=True,
            )
        backends.state.commit(instance_id, snapshot, expected_version=0)
    backends.credentials.put(DETAIL, Credentials(5012345, "Broker-Demo", "benchmark-pw"))
    records: list[Any] = [
        TransitionRecord(
            instance_id=DETAIL,
            at=at,
            event="start",
            source=None,
            dest=State.CONNECTING,
            reason=None,
        )
    ]
    for attempt in range(1, 6):
        records.append(
            LoginFailureRecord(
                instance_id=DETAIL,
                at=at,
                attempt=attempt,
                reason=Reason.AUTH_FAILED,
                code=-6,
                message="Terminal: Authorization failed",
            )
        )
        records.append(
            TransitionRecord(
                instance_id=DETAIL,
                at=at,
                event="login_failed",
                source=State.CONNECTING,
                dest=State.CONNECTING if attempt < 5 else State.FAILED,
                reason=Reason.AUTH_FAILED,
            )
        )
    records.append(
        AuditRecord(
            instance_id=DETAIL,
            at=at,
            actor="alice",
            action="reset",
            source=State.FAILED,
            dest=State.FAILED,
            outcome="refused",
            detail="benchmark",
        )
    )
    backends.archive.write(records)

    app = create_app(backends, tokens={"bench": (OPERATOR, "operator")})

    # The same JSON the real routes answer, computed once.
    ids = list(backends.state.ids())
    stored = backends.state.load_many(ids)
    listing = [instance_json(i, stored[i].snapshot) for i in ids]
    list_body = {"instances": listing, "count": len(listing)}
    detail_instance = instance_json(DETAIL, stored[DETAIL].snapshot)
    detail_instance["closure_confirmed"] = False
    detail_body = {
        "instance": detail_instance,
        "history": history_json(read_history(backends.archive, DETAIL, 100)),
        "health": None,  # no fleet in this process drives it
    }

    async def bare_list(_request: Request) -> JSONResponse:
        return JSONResponse(list_body)

    async def bare_detail(_request: Request) -> JSONResponse:
        return JSONResponse(detail_body)

    bare = Starlette(
        routes=[
            Route("/bare/instances", bare_list),
            Route("/bare/instances/{id}", bare_detail),
        ]
    )

    async def both(scope: Scope, receive: Receive, send: Send) -> None:
        target = bare if scope.get("path", "").startswith("/bare/") else app
        await target(scope, receive, send)

    return both


def serve(port: int, instances: int) -> None:
    import uvicorn

    uvicorn.run(
        build_server(instances),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


async def drive(base: str, path: str, seconds: float, clients: int) -> list[float]:
    """Latencies (s) of every request ``clients`` concurrent clients made in ``seconds``."""
    import httpx

    latencies: list[float] = []
    headers = {} if path.startswith("/bare/") else {"Authorization": f"Bearer {OPERATOR}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as http:
        for _ in range(clients):  # warm the connections and the server's caches
            (await http.get(path)).raise_for_status()
        end = time.perf_counter() + seconds

        async def one_client() -> None:
            while time.perf_counter() < end:
                started = time.perf_counter()
                response = await http.get(path)
                await response.aread()
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(base: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    import httpx

    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the server did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.instances)
        return 0

    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, __file__, "--serve", str(port), "--instances", str(args.instances)]
    process = subprocess.Popen(command)
    try:
        wait_ready(base, process, time.monotonic() + 120)
        pairs = [
            ("GET /api/instances", "/api/instances", "/bare/instances"),
            (
                f"GET /api/instances/{DETAIL}",
                f"/api/instances/{DETAIL}",
                f"/bare/instances/{DETAIL}",
            ),
        ]
        print(
            f"{args.instances} instances, {args.clients} concurrent clients, "
            f"{args.seconds:g} s per measurement, one uvicorn (h11) worker"
        )
        print(f"{'route':<34} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'share':>7}")
        status = 0
        for label, real, bare in pairs:
            answer = httpx.get(base + real, headers={"Authorization": f"Bearer {OPERATOR}"})
            assert json.loads(answer.content) == json.loads(httpx.get(base + bare).content), label
            # Interleaved, so a drift of the machine's load hits both alike.
            runs: dict[str, list[float]] = {"bare": [], "real": []}
            for _ in range(2):
                for name, path in (("bare", bare), ("real", real)):
                    runs[name] += asyncio.run(drive(base, path, args.seconds / 2, args.clients))
            rate = {k: len(v) / args.seconds for k, v in runs.items()}
            share = rate["real"] / rate["bare"]
            for name, shown in (("bare", "bare Starlette, same JSON"), ("real", label)):
                v = runs[name]
                print(
                    f"{shown:<34} {rate[name]:>9.1f} {statistics.median(v) * 1000:>9.2f} "
                    f"{percentile(v, 0.99) * 1000:>9.2f} "
                    f"{'' if name == 'bare' else f'{share:.0%}':>7}"
                )
            if share < 0.5:
                status = 1
        print("goal: the real routes at >= 50% of the bare route's rate")
        return status
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
