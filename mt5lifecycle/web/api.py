"""The JSON API of SPEC section 13, under ``/api/``.

Bearer tokens only: no cookie is ever read here, so a browser cannot be tricked into
acting through the API from another site (the console has its own routes, with a
session and a CSRF token). Every handler reads and checks its input first, then runs
the blocking store and fleet calls in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import LifecycleError
from . import validate
from .actions import Operations
from .auth import Principal
from .errors import JSON, WebError, from_library, json_bytes
from .history import read_history
from .views import (
    ListingCache,
    confirmed_json,
    fleet_health_json,
    health_json,
    history_json,
    instance_json,
    set_aside_json,
    stored_health_json,
)

__all__ = ["api_routes", "error_answer", "json_answer", "on_auth_error", "on_http_error"]

log = logging.getLogger("mt5lifecycle.web")

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def json_answer(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(content), status, headers=headers, media_type=JSON)


def error_answer(error: WebError) -> Response:
    return json_answer(error.body(), error.status, error.headers)


def on_auth_error(_conn: HTTPConnection, _exc: Exception) -> Response:
    """A bearer token was sent and is not one of ours."""
    return error_answer(WebError.unauthorized("the bearer token is not valid"))


async def on_http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no such route, method not allowed, body too large)."""
    if isinstance(exc, WebError):
        return error_answer(exc)
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
    error = WebError(exc.status_code, codes.get(exc.status_code, "http"), str(exc.detail))
    return json_answer(error.body(), exc.status_code, dict(exc.headers or {}))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    return error_answer(WebError(500, "internal", "an unexpected error; see the server's log"))


def reader(request: Request) -> Principal:
    user = request.user
    if not isinstance(user, Principal):
        raise WebError.unauthorized()
    return user


async def operator(
    request: Request, ops: Operations, instance_id: str | None, action: str
) -> Principal:
    """The principal, if its role may act; a viewer's try is archived and refused."""
    user = reader(request)
    if not user.can_act:
        if instance_id is not None:
            await run_in_threadpool(
                ops.refuse, user.name, instance_id, action, f"the token's role is {user.role}"
            )
        raise WebError.forbidden(user.name, user.role, action.replace("_", " "))
    return user


async def blocking(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a store or fleet call in a worker thread; a library error becomes an answer."""
    try:
        return await run_in_threadpool(call, *args, **kwargs)
    except LifecycleError as exc:
        raise from_library(exc) from None


def _path_id(request: Request) -> str:
    return validate.instance_id(request.path_params["id"])


def api_routes(ops: Operations, history_source: object) -> list[Route]:
    """The routes, relative to ``/api``."""

    listing = ListingCache()

    async def list_instances(request: Request) -> Response:
        reader(request)
        wanted = validate.states(request.query_params.getlist("status"))

        def body() -> bytes:
            rows = ops.snapshots()
            if wanted:
                rows = [(i, s) for i, s in rows if s.status in wanted]
            return listing.body(rows, complete=not wanted)

        return Response(await blocking(body), media_type=JSON)

    async def get_instance(request: Request) -> Response:
        reader(request)
        instance_id = _path_id(request)
        limit = _limit(request)

        def one() -> dict[str, Any]:
            snapshot = ops.snapshot(instance_id)
            if snapshot is not None:
                instance = instance_json(instance_id, snapshot)
                instance["closure_confirmed"] = False
            elif ops.confirmed(instance_id):
                instance = confirmed_json(instance_id)
            else:
                raise WebError.not_found(instance_id)
            history = read_history(history_source, instance_id, limit)
            health = ops.health(instance_id)
            return {
                "instance": instance,
                "history": history_json(history),
                "health": None if health is None else health_json(health),
            }

        return json_answer(await blocking(one))

    async def fleet_health(request: Request) -> Response:
        reader(request)

        def report() -> dict[str, Any]:
            health = ops.fleet_health()
            if health is not None:
                return fleet_health_json(health)
            return stored_health_json(s for _, s in ops.snapshots())

        return json_answer(await blocking(report))

    async def list_set_aside(request: Request) -> Response:
        reader(request)
        wanted = [
            validate.instance_id(i, "instance") for i in request.query_params.getlist("instance")
        ]

        def rows() -> dict[str, Any]:
            items = [set_aside_json(i) for i in ops.set_aside(wanted or None)]
            return {"notifications": items, "count": len(items)}

        return json_answer(await blocking(rows))

    async def redeliver(request: Request) -> Response:
        instance_id = _path_id(request)
        user = await operator(request, ops, instance_id, "redeliver")
        body = validate.json_object(await request.body(), allowed=("ids",), empty_ok=True)
        ids = validate.notification_ids(body["ids"]) if "ids" in body else None
        moved = await blocking(ops.redeliver, user.name, instance_id, ids)
        return json_answer({"id": instance_id, "redelivered": moved})

    async def add_instance(request: Request) -> Response:
        user = await operator(request, ops, None, "add")
        body = validate.json_object(
            await request.body(), allowed=("id", "login", "server", "password")
        )
        if "id" not in body:
            raise WebError.invalid("id", "required")
        instance_id = validate.instance_id(body["id"])
        credentials = validate.credentials(body)
        snapshot = await blocking(ops.add, user.name, instance_id, credentials)
        content = {"id": instance_id} if snapshot is None else instance_json(instance_id, snapshot)
        return json_answer(content, 201, {"Location": f"/api/instances/{instance_id}"})

    async def put_credentials(request: Request) -> Response:
        instance_id = _path_id(request)
        user = await operator(request, ops, instance_id, "put_credentials")
        body = validate.json_object(await request.body(), allowed=("login", "server", "password"))
        credentials = validate.credentials(body)
        await blocking(ops.put_credentials, user.name, instance_id, credentials)
        return Response(status_code=204)

    async def reset(request: Request) -> Response:
        instance_id = _path_id(request)
        user = await operator(request, ops, instance_id, "reset")
        body = validate.json_object(await request.body(), allowed=("force",), empty_ok=True)
        force = validate.flag(body.get("force", False), "force")
        snapshot = await blocking(ops.reset, user.name, instance_id, force=force)
        return _after(instance_id, snapshot)

    async def disable(request: Request) -> Response:
        instance_id = _path_id(request)
        user = await operator(request, ops, instance_id, "disable")
        validate.json_object(await request.body(), allowed=(), empty_ok=True)
        snapshot = await blocking(ops.disable, user.name, instance_id)
        return _after(instance_id, snapshot)

    async def confirm_closure(request: Request) -> Response:
        instance_id = _path_id(request)
        user = await operator(request, ops, instance_id, "confirm_closure")
        body = validate.json_object(await request.body(), allowed=("confirm",))
        if "confirm" not in body:
            raise WebError.invalid("confirm", "required: the instance id, typed again")
        if body["confirm"] != instance_id:
            raise WebError.invalid("confirm", "must be the instance id, typed again")
        await blocking(ops.confirm_closure, user.name, instance_id)
        return json_answer(confirmed_json(instance_id))

    return [
        Route("/health", fleet_health, methods=["GET"]),
        Route("/notifications/set-aside", list_set_aside, methods=["GET"]),
        Route("/instances", list_instances, methods=["GET"]),
        Route("/instances", add_instance, methods=["POST"]),
        Route("/instances/{id}", get_instance, methods=["GET"]),
        Route("/instances/{id}/credentials", put_credentials, methods=["PUT"]),
        Route("/instances/{id}/reset", reset, methods=["POST"]),
        Route("/instances/{id}/disable", disable, methods=["POST"]),
        Route("/instances/{id}/confirm-closure", confirm_closure, methods=["POST"]),
        Route("/instances/{id}/redeliver", redeliver, methods=["POST"]),
    ]


def _after(instance_id: str, snapshot: Any) -> Response:
    if snapshot is None:
        return json_answer({"id": instance_id})
    return json_answer(instance_json(instance_id, snapshot))


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (len(raw) <= 4 and raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise WebError.invalid("limit", f"expected a whole number from 1 to {MAX_LIMIT}")
    return int(raw)
