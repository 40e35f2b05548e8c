"""``/healthz``, ``/readyz`` and ``/metrics``: what a load balancer and Prometheus ask.

``/healthz`` and ``/readyz`` need no token: a probe that must authenticate is a probe
that fails for the wrong reason, and they say nothing but which backend is down (the
driver's own message, which may name a host, goes to the log only).

``/metrics`` needs no token by default either: the series hold no secret (labels
are the library's enums and, per instance, the instance id), and many scrapers are
set up without one. ``metrics_token=True`` makes it need a bearer token of either
role, which Prometheus sends with ``authorization: {credentials_file: ...}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..adapters.prometheus import PrometheusMetrics
from ..runtime.backends import Backends
from .api import error_answer, json_answer
from .auth import TokenBook, bearer
from .errors import WebError

__all__ = ["PROBE_ID", "probe_routes"]

log = logging.getLogger("mt5lifecycle.web")

PROBE_ID = "mt5lifecycle-readyz-probe"
"""A valid id that no one uses: each backend is asked about it, the cheapest real
round trip each port has (one key read, one row read)."""


def _probes(backends: Backends) -> dict[str, Callable[[], object]]:
    return {
        "state": lambda: backends.state.load(PROBE_ID),
        "credentials": lambda: backends.credentials.get(PROBE_ID),
        "archive": lambda: backends.archive.is_confirmed(PROBE_ID),
    }


def probe_routes(
    backends: Backends, book: TokenBook, *, timeout: float, metrics_token: bool
) -> list[Route]:
    probes = _probes(backends)

    async def healthz(_request: Request) -> Response:
        return json_answer({"alive": True})

    async def readyz(_request: Request) -> Response:
        results: dict[str, str] = {}

        async def check(name: str, probe: Callable[[], object]) -> None:
            try:
                with anyio.fail_after(timeout):
                    await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
            except TimeoutError:
                log.warning("readyz: the %s backend did not answer within %s s", name, timeout)
                results[name] = f"no answer within {timeout:g} s"
            except Exception as exc:
                log.warning("readyz: the %s backend failed: %s: %s", name, type(exc).__name__, exc)
                results[name] = f"unavailable ({type(exc).__name__})"
            else:
                results[name] = "ok"

        async with anyio.create_task_group() as group:
            for name, probe in probes.items():
                group.start_soon(check, name, probe)
        ordered = {name: results[name] for name in probes}
        down = [name for name, result in ordered.items() if result != "ok"]
        if down:
            error = WebError.unavailable(f"not ready: {', '.join(down)} unreachable")
            return json_answer({**error.body(), "backends": ordered}, 503)
        return json_answer({"ready": True, "backends": ordered})

    async def metrics(request: Request) -> Response:
        if metrics_token:
            token = bearer(request)
            if not token or book.identify(token) is None:
                return error_answer(WebError.unauthorized())
        source = backends.metrics
        if not isinstance(source, PrometheusMetrics):
            return error_answer(
                WebError(
                    404, "not_found", "no Prometheus metrics are configured (PrometheusMetrics)"
                )
            )
        import prometheus_client as pc

        body = await run_in_threadpool(pc.generate_latest, source.registry)
        return Response(body, media_type=pc.CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
