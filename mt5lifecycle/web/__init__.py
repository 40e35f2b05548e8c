"""The operator's service (SPEC section 13): the JSON API and the console, one ASGI app.

    from mt5lifecycle.web import create_app

    app = create_app(backends, tokens={"alice": (secret, "operator")}, fleet=fleet)
    uvicorn.run(app, host="127.0.0.1", port=8080)

Needs the ``web`` extra (``pip install mt5lifecycle[web]``): Starlette, uvicorn,
Jinja2, python-multipart and itsdangerous. See ``docs/operations/console.md``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from ..core.policy import Policy
from ..runtime.backends import Backends
from ..runtime.fleet import Fleet
from .actions import Operations
from .api import api_routes, on_auth_error, on_http_error, on_unexpected
from .auth import ROLES, BearerAuth, ConsoleAuth, Principal, TokenBook
from .console import Console
from .errors import WebError
from .headers import SecurityHeaders
from .limits import BodyLimit
from .probes import probe_routes

__all__ = ["ROLES", "Principal", "create_app"]

log = logging.getLogger("mt5lifecycle.web")

SESSION_COOKIE = "mt5lifecycle_session"


def create_app(
    backends: Backends,
    *,
    tokens: Mapping[str, tuple[str, str]],
    fleet: Fleet | None = None,
    policy: Policy | None = None,
    history: object | None = None,
    session_key: str | bytes | None = None,
    session_max_age: float = 8 * 3600,
    secure_cookies: bool = False,
    metrics_token: bool = False,
    readiness_timeout: float = 2.0,
    poll_interval: float = 5.0,
    history_limit: int = 100,
    max_body_size: int = 64 * 1024,
    title: str = "mt5lifecycle",
) -> Starlette:
    """The API and the console over ``backends`` as one Starlette (ASGI) application.

    ``tokens`` maps a token's name to ``(secret, role)``, role ``"viewer"`` (reads)
    or ``"operator"`` (reads and acts); only keyed digests of the secrets are kept.
    With ``fleet``, actions on the instances it drives go through ``fleet.send`` and
    new accounts through ``fleet.add``; otherwise they are stored (as the command
    line's are) and the fleet driving the instance acts on them; ``policy`` is then
    the policy their decisions are taken with (the fleet's when one is given).

    ``history`` is what instance pages read their history from (methods
    ``history``, ``failures``, ``outcomes``, ``audits`` taking an id); it defaults
    to ``backends.archive``, and a part it cannot give shows as unavailable.

    ``session_key`` signs the console's session cookie; without one a key is drawn
    for this app, and every session ends with the process. Sessions end
    ``session_max_age`` seconds after signing in, whatever happens meanwhile.
    ``secure_cookies=True`` marks the cookie ``Secure`` (serve over HTTPS, or behind a
    proxy that does). ``metrics_token=True`` makes ``/metrics`` need a bearer token.
    """
    if not isinstance(backends, Backends):
        raise TypeError(f"backends must be a Backends value, not {type(backends).__name__}")
    if fleet is not None and not isinstance(fleet, Fleet):
        raise TypeError(f"fleet must be a Fleet, not {type(fleet).__name__}")
    for name, value, low in (
        ("session_max_age", session_max_age, 1),
        ("readiness_timeout", readiness_timeout, 0.001),
        ("poll_interval", poll_interval, 0.1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            raise ValueError(f"{name} must be a number of seconds >= {low}, not {value!r}")
    for name, count in (("history_limit", history_limit), ("max_body_size", max_body_size)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{name} must be a positive int, not {count!r}")
    key = _session_key(session_key)
    book = TokenBook(tokens, key)
    ops = Operations(backends, fleet=fleet, policy=policy)
    source = backends.archive if history is None else history
    console = Console(
        ops,
        book,
        source,
        clock=backends.clock,
        session_max_age=float(session_max_age),
        poll_interval=float(poll_interval),
        history_limit=history_limit,
        title=title,
    )

    api = Starlette(
        routes=api_routes(ops, source),
        middleware=[
            Middleware(AuthenticationMiddleware, backend=BearerAuth(book), on_error=on_auth_error)
        ],
        exception_handlers={
            WebError: on_http_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )

    async def console_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            error = WebError(exc.status_code, "http", str(exc.detail))
        elif isinstance(exc, WebError):
            error = exc
        else:
            log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
            error = WebError(500, "internal", "An unexpected error: see the server's log.")
        return console.error_page(request, error)

    pages = Starlette(
        routes=console.routes(),
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=key.decode("latin-1"),
                session_cookie=SESSION_COOKIE,
                # itsdangerous' own limit backs the session's "until" up.
                max_age=int(session_max_age) + 60,
                same_site="strict",
                https_only=secure_cookies,
            ),
            Middleware(
                AuthenticationMiddleware,
                backend=ConsoleAuth(book, console.session_alive),
                on_error=on_auth_error,
            ),
        ],
        exception_handlers={
            WebError: console_error,
            HTTPException: console_error,
            Exception: console_error,
        },
    )

    app = Starlette(
        routes=[
            *probe_routes(
                backends, book, timeout=float(readiness_timeout), metrics_token=metrics_token
            ),
            Mount("/api", app=api),
            Mount("/", app=pages),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(BodyLimit, max_body_size=max_body_size),
        ],
    )
    app.state.tokens = book
    return app


def _session_key(value: str | bytes | None) -> bytes:
    if value is None:
        return secrets.token_urlsafe(48).encode("ascii")
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if not isinstance(raw, bytes) or len(raw) < 32:
        raise ValueError("session_key must be at least 32 bytes (secrets.token_urlsafe(32))")
    return raw
