"""The console: server-rendered pages over the same actions as the API.

A person signs in with a token once; the session (Starlette's ``SessionMiddleware``:
an itsdangerous-signed cookie, HttpOnly, SameSite=Strict) holds the token's name, a
binding to its secret, the session's end and a CSRF token; never the secret itself.
Every form carries the CSRF token and every POST checks it against the session's, so
a page of another site can neither post here (SameSite keeps the cookie home) nor
forge a form (it cannot read the token). The sign-in form has one too, from an
anonymous session, so another site cannot sign a browser in under its own token.

Pages work without JavaScript (each action has a confirmation page of its own); with
it, ``console.js`` opens the same confirmation in a dialog, filters and sorts the
table in place, and polls a small JSON route every few seconds to keep the page live.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..core.credentials import Credentials
from ..core.states import State
from ..errors import LifecycleError
from ..ports import Clock
from . import validate
from .actions import Operations
from .api import json_answer
from .auth import Principal, TokenBook
from .errors import WebError, from_library
from .history import read_history
from .views import STATES, counts, health_json, history_json, row_json, set_aside_json

__all__ = ["Console", "instance_url"]

log = logging.getLogger("mt5lifecycle.web")

PAGE_SIZE: Final = 50
ATTENTION_SHOWN: Final = 12
SET_ASIDE_SHOWN: Final = 50
SORTS: Final = {
    "id": lambda r: r["id"],
    "status": lambda r: (r["status"], r["id"]),
    "reason": lambda r: (r["last_failure_reason"] or "", r["id"]),
    "attempts": lambda r: (r["login_attempt_count"], r["id"]),
    "restarts": lambda r: (r["restart_count"], r["id"]),
    "last": lambda r: (r["last_login_attempt"] or "", r["id"]),
    "next": lambda r: (r["next_due"] or "~", r["id"]),
}
ACTIONS: Final = {
    # action: the states it is offered in (the transition table's rows)
    "reset": (State.FAILED, State.INACTIVE),
    "disable": (State.CONNECTING, State.CONNECTED, State.FAILED),
    "credentials": (State.CONNECTING, State.CONNECTED, State.FAILED, State.INACTIVE),
    "confirm-closure": (State.ACCOUNT_CLOSED,),
    # Set-aside notifications go back in any state: a closed account's alerts matter most.
    "redeliver": tuple(State),
}
_NEXT: Final = re.compile(r"/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")


def instance_url(root: str, instance_id: str) -> str:
    # /instances/new is the add page: an instance named "new" has its page one deeper.
    suffix = "/overview" if instance_id == "new" else ""
    return f"{root}/instances/{instance_id}{suffix}"


def _when(value: str | None) -> str:
    """An ISO 8601 time as the console shows it: ``2026-01-01 00:00:05``, in UTC."""
    if not value:
        return "-"
    return value.replace("T", " ")[:19]


def _age(seconds: float | None) -> str:
    """How long ago, as a person reads it (``console.js`` writes the same)."""
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{int(seconds)} s ago"
    if seconds < 7200:
        return f"{int(seconds // 60)} min ago"
    return f"{int(seconds // 3600)} h ago"


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def _verdict(value: bool | None) -> str:
    """``identity_verified``: ``None`` is a broker that cannot say, not a failure."""
    return "unknown" if value is None else ("yes" if value else "no")


class Console:
    """The console's routes over one ``Operations``."""

    def __init__(
        self,
        ops: Operations,
        book: TokenBook,
        history_source: object,
        *,
        clock: Clock,
        session_max_age: float,
        poll_interval: float,
        history_limit: int,
        title: str,
    ) -> None:
        self.ops = ops
        self.book = book
        self.history_source = history_source
        self.clock = clock
        self.session_max_age = session_max_age
        self.poll_interval = poll_interval
        self.history_limit = history_limit
        self.title = title
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("mt5lifecycle.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["when"] = _when
        env.filters["age"] = _age
        env.filters["pct"] = _pct
        env.filters["verdict"] = _verdict
        env.globals["ACTIONS"] = {k: [s.value for s in v] for k, v in ACTIONS.items()}
        env.globals["STATES"] = [s.value for s in STATES]
        env.globals["instance_url"] = instance_url
        self.templates = Jinja2Templates(env=env)

    # --- the session ----------------------------------------------------------------

    def session_alive(self, session: Mapping[str, Any]) -> bool:
        """Within its lifetime. Checked on the app's clock, so the end is absolute: a
        session rewritten (a message shown) does not live longer for it."""
        until = session.get("until")
        return isinstance(until, (int, float)) and until > self.clock.now()

    def _csrf(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    def _check_csrf(self, request: Request, form: FormData) -> None:
        user = request.user
        if isinstance(user, Principal) and user.via == "token":
            return  # a bearer token is not sent by a browser on its own: nothing to forge
        sent = form.get("csrf")
        kept = request.session.get("csrf")
        if not (
            isinstance(sent, str)
            and isinstance(kept, str)
            and hmac.compare_digest(sent.encode(), kept.encode())
        ):
            raise WebError(
                403,
                "csrf",
                "this form has expired or did not come from this console: reload the page "
                "and try again",
            )

    def _flash(self, request: Request, kind: str, text: str) -> None:
        flashes = request.session.get("flash")
        if not isinstance(flashes, list):
            flashes = []
        request.session["flash"] = [*flashes[-4:], {"kind": kind, "text": text}]

    # --- rendering ------------------------------------------------------------------

    def render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        user = request.user if isinstance(request.user, Principal) else None
        flashes = request.session.pop("flash", []) if "flash" in request.session else []
        root = request.scope.get("root_path", "")
        base = {
            "title": self.title,
            "user": user,
            "csrf": self._csrf(request),
            "flashes": flashes if isinstance(flashes, list) else [],
            "root": root,
            "poll_ms": int(self.poll_interval * 1000),
        }
        return self.templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status
        )

    def error_page(self, request: Request, error: WebError) -> Response:
        return self.render(request, "error.html", {"error": error}, error.status)

    def _redirect(self, request: Request, path: str) -> Response:
        return RedirectResponse(request.scope.get("root_path", "") + path, status_code=303)

    def _signed_in(self, request: Request, *, act: bool = False) -> Principal:
        user = request.user
        if not isinstance(user, Principal):
            raise _SignIn()
        if act and not user.can_act:
            raise WebError.forbidden(user.name, user.role, "act")
        return user

    # --- the routes -----------------------------------------------------------------

    def routes(self) -> list[Route | Mount]:
        page = self._page
        return [
            Route("/signin", page(self.signin_form, public=True), methods=["GET"]),
            Route("/signin", page(self.signin, public=True), methods=["POST"]),
            Route("/signout", page(self.signout), methods=["POST"]),
            Route("/", page(self.fleet), methods=["GET"]),
            Route("/live", self.live_fleet, methods=["GET"]),
            Route("/instances/new", page(self.new_form), methods=["GET"]),
            Route("/instances", page(self.add), methods=["POST"]),
            Route("/instances/{id}", page(self.instance), methods=["GET"]),
            Route("/instances/{id}/overview", page(self.instance), methods=["GET"]),
            Route("/instances/{id}/live", self.live_instance, methods=["GET"]),
            Route("/instances/{id}/closed", page(self.closed), methods=["GET"]),
            Route("/instances/{id}/{action}", page(self.confirm_form), methods=["GET"]),
            Route("/instances/{id}/{action}", page(self.act), methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("mt5lifecycle.web", "static")]), name="static"),
        ]

    def _page(
        self, handler: Callable[[Request], Any], *, public: bool = False
    ) -> Callable[[Request], Any]:
        """A page's handler, with the console's answers to what goes wrong."""

        async def run(request: Request) -> Response:
            try:
                if not public:
                    self._signed_in(request)
                response: Response = await handler(request)
                return response
            except _SignIn:
                query = urlencode({"next": _next_of(request)})
                return self._redirect(request, f"/signin?{query}")
            except WebError as error:
                return self.error_page(request, error)
            except LifecycleError as exc:
                return self.error_page(request, from_library(exc))

        return run

    async def _blocking(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await run_in_threadpool(call, *args, **kwargs)
        except LifecycleError as exc:
            raise from_library(exc) from None

    # sign in and out

    async def signin_form(self, request: Request) -> Response:
        if isinstance(request.user, Principal):
            return self._redirect(request, "/")
        return self.render(
            request, "signin.html", {"next": _safe_next(request.query_params.get("next"))}
        )

    async def signin(self, request: Request) -> Response:
        form = await request.form()
        self._check_csrf(request, form)
        token = form.get("token")
        principal = self.book.identify(token.strip()) if isinstance(token, str) and token else None
        next_path = _safe_next(form.get("next"))
        if principal is None:
            log.info("console: a sign-in with an unknown token was refused")
            return self.render(
                request,
                "signin.html",
                {"next": next_path, "failed": "That token is not valid."},
                401,
            )
        binding = self.book.binding(principal.name)
        session = request.session
        session.clear()
        session.update(
            {
                "name": principal.name,
                "bind": binding,
                "csrf": secrets.token_urlsafe(32),
                "until": self.clock.now() + self.session_max_age,
            }
        )
        log.info("console: %s signed in (%s)", principal.name, principal.role)
        return self._redirect(request, next_path or "/")

    async def signout(self, request: Request) -> Response:
        form = await request.form()
        self._check_csrf(request, form)
        request.session.clear()
        return self._redirect(request, "/signin")

    # the fleet

    def _fleet_view(self, request: Request) -> dict[str, Any]:
        params = request.query_params
        query = (params.get("q") or "").strip()[:128]
        status = params.get("status") or ""
        if status not in (*(s.value for s in STATES), "attention"):
            status = ""
        sort = params.get("sort") or "attention"
        descending = params.get("dir") == "desc"
        raw_page = params.get("page") or "1"
        page = (
            int(raw_page) if raw_page.isascii() and raw_page.isdigit() and len(raw_page) < 7 else 1
        )
        rows = self.ops.snapshots()
        every = [row_json(i, s) for i, s in rows]
        attention = [r for r in every if r["needs_attention"]]
        attention.sort(key=_urgency)
        shown = every
        if status == "attention":
            shown = attention
        elif status:
            shown = [r for r in shown if r["status"] == status]
        if query:
            needle = query.casefold()
            shown = [r for r in shown if needle in _haystack(r)]
        if sort in SORTS:
            shown = sorted(shown, key=SORTS[sort], reverse=descending)
        else:
            sort = "attention"
            shown = sorted(shown, key=_urgency)
        pages = max(1, -(-len(shown) // PAGE_SIZE))
        page = min(max(page, 1), pages)
        health = self.ops.fleet_health()
        return {
            "counts": counts(s for _, s in rows),
            "total": len(rows),
            "health": None
            if health is None
            else {"healthy": health.healthy, "instances": health.instances},
            "set_aside": self._set_aside_view(None, {i for i, _ in rows}, SET_ASIDE_SHOWN),
            "attention": attention[:ATTENTION_SHOWN],
            "attention_total": len(attention),
            "rows": shown[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
            "matched": len(shown),
            "page": page,
            "pages": pages,
            "query": {
                "q": query,
                "status": status,
                "sort": sort,
                "dir": "desc" if descending else "asc",
            },
        }

    def _set_aside_view(
        self, instance_ids: Sequence[str] | None, live: Collection[str], shown: int
    ) -> dict[str, Any]:
        """The set-aside notifications, newest first; ``live`` are the ids with a live
        state (only those can be redelivered: nothing drives the others)."""
        try:
            items = self.ops.set_aside(instance_ids)
        except WebError as error:
            if error.status != 501:
                raise
            return {"rows": None, "total": 0, "unavailable": error.message}
        rows = [
            {**set_aside_json(item), "live": item.notification.instance_id in live}
            for item in reversed(items[-shown:])
        ]
        return {"rows": rows, "total": len(items), "unavailable": None}

    async def fleet(self, request: Request) -> Response:
        view = await self._blocking(self._fleet_view, request)
        return self.render(request, "fleet.html", {"view": view})

    async def live_fleet(self, request: Request) -> Response:
        if not isinstance(request.user, Principal):
            return json_answer(WebError.unauthorized("signed out").body(), 401)
        try:
            view = await self._blocking(self._fleet_view, request)
        except WebError as error:
            return json_answer(error.body(), error.status)
        return json_answer(view)

    # one instance

    def _instance_view(self, instance_id: str) -> dict[str, Any]:
        snapshot = self.ops.snapshot(instance_id)
        confirmed = False
        if snapshot is None:
            confirmed = self.ops.confirmed(instance_id)
            if not confirmed:
                raise WebError.not_found(instance_id)
        history = read_history(self.history_source, instance_id, self.history_limit)
        health = self.ops.health(instance_id)
        live = () if snapshot is None else (instance_id,)
        return {
            "id": instance_id,
            "instance": None if snapshot is None else row_json(instance_id, snapshot),
            "closure_confirmed": confirmed,
            "history": history_json(history),
            "health": None if health is None else health_json(health),
            "set_aside": self._set_aside_view([instance_id], live, self.history_limit),
        }

    async def instance(self, request: Request) -> Response:
        instance_id = validate.instance_id(request.path_params["id"])
        view = await self._blocking(self._instance_view, instance_id)
        return self.render(request, "instance.html", {"view": view})

    async def live_instance(self, request: Request) -> Response:
        if not isinstance(request.user, Principal):
            return json_answer(WebError.unauthorized("signed out").body(), 401)
        try:
            instance_id = validate.instance_id(request.path_params["id"])
            view = await self._blocking(self._instance_view, instance_id)
        except WebError as error:
            return json_answer(error.body(), error.status)
        return json_answer(view)

    async def closed(self, request: Request) -> Response:
        instance_id = validate.instance_id(request.path_params["id"])
        view = await self._blocking(self._instance_view, instance_id)
        return self.render(request, "closed.html", {"view": view})

    # actions

    async def confirm_form(self, request: Request) -> Response:
        self._signed_in(request, act=True)
        instance_id = validate.instance_id(request.path_params["id"])
        action = request.path_params["action"]
        if action not in ACTIONS:
            raise HTTPException(404)
        snapshot = await self._blocking(self.ops.snapshot, instance_id)
        if snapshot is None:
            raise WebError.not_found(instance_id)
        row = row_json(instance_id, snapshot)
        context: dict[str, Any] = {"action": action, "row": row, "errors": {}, "values": {}}
        if action == "redeliver":
            view = await self._blocking(self._set_aside_view, [instance_id], (instance_id,), 1000)
            if view["rows"] is None:
                raise WebError.unsupported(view["unavailable"])
            context["aside"] = view["rows"]
            context["chosen"] = request.query_params.getlist("nid")
        return self.render(request, "confirm.html", context)

    async def act(self, request: Request) -> Response:
        instance_id = validate.instance_id(request.path_params["id"])
        action = request.path_params["action"]
        if action not in ACTIONS:
            raise HTTPException(404)
        form = await request.form()
        self._check_csrf(request, form)
        user = self._signed_in(request)
        if not user.can_act:
            await run_in_threadpool(
                self.ops.refuse,
                user.name,
                instance_id,
                action.replace("-", "_"),
                f"the token's role is {user.role}",
            )
            raise WebError.forbidden(user.name, user.role, action.replace("-", " "))
        page = instance_url("", instance_id)
        try:
            if action == "reset":
                force = form.get("force") == "1"
                await self._blocking(self.ops.reset, user.name, instance_id, force=force)
                self._flash(request, "ok", f"{instance_id} was reset: it logs in now.")
            elif action == "disable":
                await self._blocking(self.ops.disable, user.name, instance_id)
                self._flash(request, "ok", f"{instance_id} was disabled: its terminal stops.")
            elif action == "redeliver":
                chosen = [v for v in form.getlist("nid") if isinstance(v, str)]
                if not chosen:
                    self._flash(
                        request,
                        "error",
                        "Nothing chosen: tick the notifications to redeliver. Nothing was changed.",
                    )
                    return self._redirect(request, page)
                ids = validate.notification_ids(chosen, "nid")
                moved = await self._blocking(self.ops.redeliver, user.name, instance_id, ids)
                self._flash(request, *_redelivered(instance_id, moved))
            elif action == "confirm-closure":
                if form.get("confirm") != instance_id:
                    self._flash(
                        request,
                        "error",
                        "Not confirmed: type the instance id exactly. Nothing was changed.",
                    )
                    return self._redirect(request, f"/instances/{instance_id}/closed")
                await self._blocking(self.ops.confirm_closure, user.name, instance_id)
                self._flash(
                    request,
                    "ok",
                    f"Closure of {instance_id} confirmed: its credentials and live state were "
                    "deleted; its history stays.",
                )
            else:
                return await self._replace_credentials(request, form, user, instance_id)
        except WebError as error:
            if error.status in (404, 409):
                self._flash(request, "error", error.message)
                return self._redirect(request, page)
            raise
        return self._redirect(request, page)

    async def _replace_credentials(
        self, request: Request, form: FormData, user: Principal, instance_id: str
    ) -> Response:
        errors, credentials = _credentials_form(form)
        if credentials is None or errors:
            snapshot = await self._blocking(self.ops.snapshot, instance_id)
            if snapshot is None:
                raise WebError.not_found(instance_id)
            return self.render(
                request,
                "confirm.html",
                {
                    "action": "credentials",
                    "row": row_json(instance_id, snapshot),
                    "errors": errors,
                    "values": _kept(form),
                },
                422,
            )
        await self._blocking(self.ops.put_credentials, user.name, instance_id, credentials)
        self._flash(
            request,
            "ok",
            f"The credentials of {instance_id} were replaced: the next login uses them.",
        )
        return self._redirect(request, instance_url("", instance_id))

    async def new_form(self, request: Request) -> Response:
        self._signed_in(request, act=True)
        replaces = request.query_params.get("replaces") or ""
        values = {}
        try:
            values["replaces"] = validate.instance_id(replaces)
        except WebError:
            replaces = ""
        return self.render(
            request, "new.html", {"errors": {}, "values": values, "replaces": replaces}
        )

    async def add(self, request: Request) -> Response:
        form = await request.form()
        self._check_csrf(request, form)
        user = self._signed_in(request, act=True)
        errors, credentials = _credentials_form(form)
        raw_id = form.get("id")
        instance_id = raw_id.strip() if isinstance(raw_id, str) else ""
        try:
            validate.instance_id(instance_id)
        except WebError as error:
            errors = {"id": error.message.split(": ", 1)[1], **errors}
        values = _kept(form)
        replaces = values.get("replaces", "")
        if errors or credentials is None:
            return self.render(
                request, "new.html", {"errors": errors, "values": values, "replaces": replaces}, 422
            )
        try:
            await self._blocking(self.ops.add, user.name, instance_id, credentials)
        except WebError as error:
            if error.status != 409:
                raise
            return self.render(
                request,
                "new.html",
                {"errors": {"id": error.message}, "values": values, "replaces": replaces},
                409,
            )
        self._flash(request, "ok", f"{instance_id} was added: it logs in now.")
        return self._redirect(request, instance_url("", instance_id))


def _redelivered(instance_id: str, moved: int) -> tuple[str, str]:
    if not moved:
        return "error", (
            f"Nothing of {instance_id} was redelivered: those notifications are no longer "
            "set aside (redelivered meanwhile?)."
        )
    return "ok", (
        f"{moved} notification(s) of {instance_id} put back for delivery: the notifiers get "
        "them once more."
    )


class _SignIn(Exception):
    """Not signed in: the page sends the browser to the sign-in form."""


def _haystack(row: Mapping[str, Any]) -> str:
    return " ".join(
        str(row[k] or "") for k in ("id", "status", "last_failure_reason", "login_failure_reason")
    ).casefold()


_ORDER: Final = {
    State.ACCOUNT_CLOSED.value: 0,
    State.FAILED.value: 1,
    State.INACTIVE.value: 2,
    State.CONNECTING.value: 3,
    State.CONNECTED.value: 4,
}


def _urgency(row: Mapping[str, Any]) -> tuple[int, int, str]:
    return (0 if row["needs_attention"] else 1, _ORDER.get(row["status"], 5), row["id"])


def _next_of(request: HTTPConnection) -> str:
    path = request.url.path
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    query = request.url.query
    return path + (f"?{query}" if query else "")


def _safe_next(value: object) -> str:
    """A path on this console to go back to after signing in; never another site."""
    if isinstance(value, str) and len(value) <= 2000 and _NEXT.fullmatch(value):
        return value
    return ""


def _kept(form: FormData) -> dict[str, str]:
    """What a form with errors shows again: never the password."""
    out: dict[str, str] = {}
    for name in ("id", "login", "server", "replaces"):
        value = form.get(name)
        if isinstance(value, str) and len(value) <= 512:
            out[name] = value
    return out


def _credentials_form(form: FormData) -> tuple[dict[str, str], Credentials | None]:
    """The login, server and password of a form, and each field's error."""
    errors: dict[str, str] = {}
    raw_login = form.get("login")
    text = raw_login.strip() if isinstance(raw_login, str) else ""
    login = 0
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        errors["login"] = "the account number: digits only"
    else:
        login = int(text)
    fields: dict[str, Any] = {}
    for name, check in (
        ("login", lambda: validate.login(login)),
        ("server", lambda: validate.server(form.get("server"))),
        ("password", lambda: validate.password(form.get("password"))),
    ):
        if name in errors:
            continue
        try:
            fields[name] = check()
        except WebError as error:
            errors[name] = error.message.split(": ", 1)[1]
    if form.get("confirmed") != "1":
        errors["confirmed"] = "tick the box to confirm"
    if errors:
        return errors, None
    return errors, Credentials(fields["login"], fields["server"], fields["password"])
