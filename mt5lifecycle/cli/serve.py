"""``mt5lifecycle serve CONFIG``: a production fleet, its HTTP API, console and metrics.

How it runs, and why:

- One thread drives the ``Fleet``: ``fleet.run(until=now + poll_interval)`` in a
  loop, and between two runs it adopts the instances stored since (``mt5lifecycle
  add`` from another shell, the API of another process, a worker that died and whose
  leases expired). Membership changes only in that thread, so nothing races the
  fleet's own loop.
- uvicorn serves the ASGI app in a second thread, on a socket bound here with an
  exclusive bind (``listen.py``): uvicorn installs no signal handlers outside the
  main thread, so the main thread keeps them.
- The main thread only waits, in slices of half a second: before Python 3.14 a
  Windows process does not run its signal handlers while the main thread blocks in
  an unbounded ``Event.wait``, so Ctrl-C would wait out the fleet's sleep.
- SIGTERM, SIGINT and, on Windows, SIGBREAK (Ctrl-Break, and the console closing:
  Windows ends the process about five seconds after CTRL_CLOSE) stop it the same
  way: the HTTP server stops taking requests, the fleet finishes its pass, hands
  its leases back (the other workers adopt at once), the broker's worker processes
  stop, the archive is flushed and closed, and the exit code is 0.
  A second signal gives up waiting for the pass (exit 130; the leases then expire).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..builtin.clock import SystemClock
from ..builtin.listen import PortInUse, bind_exclusive
from ..builtin.notify import LoggingNotifier
from ..core.records import Notification
from ..errors import InvalidTransition, StoreUnavailable
from ..runtime.backends import Backends
from ..runtime.fleet import Fleet
from .common import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    Context,
    driver,
)
from .config import ConfigError, ServeConfig, TerminalSettings, load

if TYPE_CHECKING:
    from ..ports import Broker, CredentialStore, Notifier

__all__ = ["Service", "cmd_serve"]

log = logging.getLogger("mt5lifecycle.serve")

_SLICE = 0.5
"""The longest the main thread blocks at a time (signals on Windows, see above)."""
_STARTUP_TIMEOUT = 30.0


def cmd_serve(ctx: Context) -> int:
    try:
        config = load(ctx.args.config, env=ctx.env)
    except ConfigError as exc:
        ctx.err.write(f"mt5lifecycle: error: {exc}\n")
        return EXIT_USAGE
    if ctx.args.check:
        for line in _missing_packages(config):
            ctx.err.write(f"mt5lifecycle: warning: {line}\n")
        ctx.out.write(f"{config.path}: OK\n{describe(config)}")
        return EXIT_OK
    return Service(config, ctx).run()


def describe(config: ServeConfig) -> str:
    """What a configuration sets up, in a few lines; references, never secrets."""
    t = config.terminals
    tokens = ", ".join(
        f"{tok.name} ({tok.role}, {tok.secret.source})" for tok in config.http.tokens
    )
    notifiers = ", ".join(
        n.kind if n.kind == "log" else f"apprise ({len(n.urls)} URL(s))" for n in config.notifiers
    )
    return (
        f"  state:       Redis {_where(config.redis.url.source)}, prefix "
        f"{config.redis.prefix!r}{', cluster' if config.redis.cluster else ''}\n"
        f"  credentials: PostgreSQL {_where(config.postgres.dsn.source)}, schema "
        f"{config.postgres.schema!r}, {len(config.postgres.keys)} key(s)\n"
        f"  archive:     DuckDB {config.duckdb.path}\n"
        f"  terminals:   {t.kind}, {len(t.ids) if t.kind != 'fake' else 'fake'} "
        f"{'instance(s)' if t.kind != 'fake' else 'terminals for every instance'}\n"
        f"  notifiers:   {notifiers}\n"
        f"  http:        {config.http.host}:{config.http.port}, tokens: {tokens or 'none'}\n"
        f"  fleet:       {config.fleet.workers} workers, new instances looked for every "
        f"{config.fleet.poll_interval:g} s\n"
    )


def _where(source: str) -> str:
    return "(given inline)" if source == "inline" else f"(from {source})"


def _missing_packages(config: ServeConfig) -> list[str]:
    wanted = {
        "redis": "redis",
        "psycopg": "postgres",
        "duckdb": "duckdb",
        "prometheus_client": "prometheus",
        "uvicorn": "web",
        "starlette": "web",
    }
    if config.terminals.kind == "mt5linux":
        wanted["mt5linux"] = "mt5linux"
    if any(n.kind == "apprise" for n in config.notifiers):
        wanted["apprise"] = "apprise"
    return [
        f"the {module} package is not installed: pip install 'mt5lifecycle[{extra}]'"
        for module, extra in wanted.items()
        if importlib.util.find_spec(module) is None
    ]


class Notifiers:
    """Every configured notifier, each one's failure logged and kept from the others."""

    def __init__(self, notifiers: list[Notifier]) -> None:
        self.notifiers = notifiers

    def notify(self, notification: Notification) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(notification)
            except Exception:
                log.exception("notifier %s failed", type(notifier).__name__)


class Service:
    """One ``serve`` process: the backends, the fleet, the HTTP server, the signals."""

    def __init__(self, config: ServeConfig, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx
        self.stopping = threading.Event()
        self.abandon = threading.Event()
        self.signals = 0
        self.failure: BaseException | None = None
        self.fleet: Fleet | None = None
        self.server: Any = None

    # --- running ---------------------------------------------------------------------

    def run(self) -> int:
        # A service logs: [log] level, on stderr (--verbose has added a handler of its
        # own already).
        verbose = bool(getattr(self.ctx.args, "verbose", False))
        handler: logging.Handler = logging.NullHandler()
        if not verbose:
            handler = logging.StreamHandler(self.ctx.err)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
        root = logging.getLogger()
        level = root.level
        root.addHandler(handler)
        root.setLevel("DEBUG" if verbose else self.config.log_level)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        try:
            with contextlib.ExitStack() as stack:
                return self._run(stack)
        except PortInUse as exc:
            raise CliError(f"[http] port: {exc}", EXIT_UNAVAILABLE) from None
        finally:
            root.removeHandler(handler)
            root.setLevel(level)

    def _run(self, stack: contextlib.ExitStack) -> int:
        config = self.config
        sock = bind_exclusive(config.http.host, config.http.port)
        stack.callback(sock.close)
        backends, leases, closers = self._backends(stack)
        fleet = self._fleet(backends, leases)
        self.fleet = fleet
        ids = self._stored_ids(backends)
        self._warn_unconfigured(ids)
        self._adopt(fleet, ids, leases is not None)
        log.info("resumed %d stored instance(s)", len(fleet))
        app = self._app(backends, fleet)
        previous = self._install_signals()
        try:
            server_thread = self._start_http(app, sock)
            driver_thread = threading.Thread(
                target=self._drive, args=(fleet, backends, leases is not None),
                name="mt5lifecycle-serve-fleet",
            )  # fmt: skip
            driver_thread.start()
            host, port = sock.getsockname()[:2]
            self.ctx.out.write(
                f"mt5lifecycle serve: listening on http://{_url_host(host)}:{port}\n"
            )
            self.ctx.out.flush()
            while not self.stopping.wait(_SLICE):
                if not driver_thread.is_alive() or not server_thread.is_alive():
                    log.error("a serving thread ended on its own: stopping")
                    self._stop()
            return self._shut_down(fleet, server_thread, driver_thread, closers)
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _shut_down(
        self,
        fleet: Fleet,
        server_thread: threading.Thread,
        driver_thread: threading.Thread,
        closers: list[Callable[[], None]],
    ) -> int:
        log.info("stopping: finishing the current pass")
        self._stop()
        _join(server_thread, self.abandon, limit=10.0)
        _join(driver_thread, self.abandon)
        if self.abandon.is_set():
            log.warning("stopped without finishing the pass; the leases will expire")
            return EXIT_INTERRUPTED
        members = len(fleet)
        fleet.close()
        log.info("leases handed back for %d instance(s)", members)
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("closing a backend failed")
        if self.failure is not None:
            log.error("stopped after an unexpected error: %r", self.failure)
            return EXIT_INTERNAL
        log.info("stopped")
        return EXIT_OK

    def _stop(self) -> None:
        self.stopping.set()
        if self.fleet is not None:
            self.fleet.stop()
        if self.server is not None:
            self.server.should_exit = True

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            log.info("%s: stopping after the current pass", name)
            self._stop()
        else:
            log.warning("%s again: stopping now", name)
            self.abandon.set()

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous  # a host calling main() from a thread keeps its own
        # SIGBREAK exists on Windows only: Ctrl-Break, and the console closing.
        for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _drive(self, fleet: Fleet, backends: Backends, leased: bool) -> None:
        poll = self.config.fleet.poll_interval
        clock = backends.clock
        try:
            while not self.stopping.is_set():
                fleet.run(until=clock.now() + poll)
                if self.stopping.is_set():
                    break
                try:
                    ids = [i for i in backends.state.ids() if i not in fleet]
                except StoreUnavailable as exc:
                    log.warning("could not list the stored instances: %s", exc)
                    continue
                if ids:
                    self._adopt(fleet, ids, leased)
        except BaseException as exc:
            log.exception("the fleet stopped on an unexpected error")
            self.failure = exc
            self._stop()

    def _adopt(self, fleet: Fleet, ids: list[str], leased: bool) -> None:
        if leased:
            adopted = fleet.adopt(ids)
            if adopted:
                log.info("driving %d more instance(s): %s", len(adopted), _few(adopted))
            return
        for instance_id in ids:
            try:
                fleet.add(instance_id)
            except (InvalidTransition, StoreUnavailable) as exc:
                log.warning("instance %s not added: %s", instance_id, exc)
            else:
                log.info("driving instance %s", instance_id)

    def _stored_ids(self, backends: Backends) -> list[str]:
        return sorted(backends.state.ids())

    def _warn_unconfigured(self, ids: list[str]) -> None:
        t = self.config.terminals
        if t.kind == "fake":
            return
        known = set(t.ids)
        missing = [i for i in ids if i not in known]
        if missing:
            log.warning(
                "%d stored instance(s) have no terminal in [terminals] and cannot log in: %s",
                len(missing),
                _few(missing),
            )

    # --- building --------------------------------------------------------------------

    def _backends(
        self, stack: contextlib.ExitStack
    ) -> tuple[Backends, Any, list[Callable[[], None]]]:
        """The backends, and what closes them in order after the fleet let go."""
        c = self.config
        redis = driver("redis", "redis")
        driver("psycopg", "postgres")
        driver("duckdb", "duckdb")
        driver("prometheus_client", "prometheus")
        from ..adapters.duckdb import DuckDBArchive
        from ..adapters.postgres import PostgresCredentialStore
        from ..adapters.prometheus import PrometheusMetrics
        from ..adapters.redis.leases import RedisLeases
        from ..adapters.redis.store import RedisStateStore

        closers: list[Callable[[], None]] = []
        options = {"socket_connect_timeout": 3, "socket_timeout": 5}
        try:
            if c.redis.cluster:
                client = redis.RedisCluster.from_url(c.redis.url.value, **options)
            else:
                client = redis.Redis.from_url(c.redis.url.value, **options)
        except ValueError:
            # redis-py's message may quote the URL, and the URL may hold a password.
            raise CliError("[backends.redis] url: not a valid Redis URL", EXIT_USAGE) from None
        stack.callback(client.close)
        state = RedisStateStore(client, prefix=c.redis.prefix, cluster=c.redis.cluster)
        leases = (
            None
            if c.redis.cluster
            else RedisLeases(client, namespace=f"mt5lifecycle:lease:{c.redis.prefix}")
        )
        try:
            credentials = PostgresCredentialStore(
                c.postgres.dsn.value, keys=c.postgres.key_values, schema=c.postgres.schema
            )
        except ValueError as exc:
            raise CliError(f"[backends.postgres] {exc}", EXIT_USAGE) from None
        stack.callback(credentials.close)
        credentials.migrate()  # fail fast: PostgreSQL down is exit 3 now, not later
        metrics = PrometheusMetrics(per_instance=c.prometheus.per_instance)
        archive = DuckDBArchive(c.duckdb.path, metrics=metrics, keep_open=c.duckdb.keep_open)
        stack.callback(archive.close)
        # Creates the file (and its schema) now: `mt5lifecycle add` asks it whether an
        # id was closed, and refuses a file that does not exist.
        archive.is_confirmed("startup-probe")
        broker, close_broker = self._broker(c.terminals, credentials)
        if close_broker is not None:
            stack.callback(close_broker)
        notifier = self._notifier()
        # After the fleet let go: the terminals, then the archive's last flush.
        if close_broker is not None:
            closers.append(close_broker)
        closers.append(archive.close)
        backends = Backends(
            state=state,
            credentials=credentials,
            broker=broker,
            clock=SystemClock(),
            archive=archive,
            notifier=notifier,
            metrics=metrics,
        )
        return backends, leases, closers

    def _fleet(self, backends: Backends, leases: Any) -> Fleet:
        f = self.config.fleet
        try:
            return Fleet(
                backends,
                self.config.policy,
                workers=f.workers,
                leases=leases,
                owner=f.owner,
                lease_ttl=f.lease_ttl,
            )
        except ValueError as exc:
            # A broker whose calls could outlive the login lock, and the like.
            raise CliError(f"[policy] {exc}", EXIT_USAGE) from None

    def _broker(
        self, t: TerminalSettings, credentials: CredentialStore
    ) -> tuple[Broker, Callable[[], None] | None]:
        from ..adapters.mt5 import MT5Broker

        data_paths = dict(t.data_paths)
        if t.kind == "module":
            modules: dict[str, Any] = {}
            for instance_id, name in t.modules.items():
                try:
                    modules[instance_id] = importlib.import_module(name)
                except ImportError as exc:
                    raise CliError(
                        f"[terminals.modules] {instance_id}: cannot import {name!r}: {exc}",
                        EXIT_UNAVAILABLE,
                    ) from None
            return MT5Broker(modules, data_paths=data_paths), None
        if t.kind == "process":
            try:
                from ..adapters.mt5_process import ProcessTerminals  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                raise CliError(
                    '[terminals] kind = "process" needs mt5lifecycle.adapters.mt5_process, '
                    "which this installation does not have",
                    EXIT_UNAVAILABLE,
                ) from None
            options: dict[str, Any] = {"module": t.module, "start_method": t.start_method}
            if t.call_timeout is not None:
                options["call_timeout"] = t.call_timeout
            terminals = ProcessTerminals(dict(t.paths), **options)
            broker = MT5Broker(terminals, data_paths=data_paths, terminal_paths=dict(t.paths))
            return broker, terminals.close
        if t.kind == "mt5linux":
            mt5linux = driver("mt5linux", "mt5linux")
            return MT5Broker(_mt5linux_clients(mt5linux, t.hosts), data_paths=data_paths), None
        return MT5Broker(_fake_terminals(credentials)), None

    def _notifier(self) -> Notifier:
        notifiers: list[Notifier] = []
        for settings in self.config.notifiers:
            if settings.kind == "log":
                notifiers.append(LoggingNotifier())
                continue
            try:
                from ..adapters.apprise import AppriseNotifier  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                raise CliError(
                    'a [[notifiers]] kind = "apprise" needs mt5lifecycle.adapters.apprise and '
                    "the apprise package: pip install 'mt5lifecycle[apprise]'",
                    EXIT_UNAVAILABLE,
                ) from None
            notifiers.append(AppriseNotifier([url.value for url in settings.urls]))
        return notifiers[0] if len(notifiers) == 1 else Notifiers(notifiers)

    def _app(self, backends: Backends, fleet: Fleet) -> Any:
        tokens = {t.name: (t.secret.value, t.role) for t in self.config.http.tokens}
        try:
            from ..web import create_app  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            log.warning(
                "mt5lifecycle.web is not in this installation: serving /metrics, /healthz "
                "and /readyz only, without the API and the console"
            )
            return _health_app(backends)
        return create_app(backends, tokens=tokens, fleet=fleet)

    def _start_http(self, app: Any, sock: Any) -> threading.Thread:
        uvicorn = driver("uvicorn", "web")
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="auto")
        server = uvicorn.Server(config)
        self.server = server
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="mt5lifecycle-serve-http"
        )
        thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline or self.stopping.is_set():
                self._stop()
                thread.join(_SLICE)
                raise CliError("the HTTP server did not start (see the log above)", EXIT_INTERNAL)
            thread.join(0.05)
        return thread


def _join(thread: threading.Thread, abandon: threading.Event, limit: float | None = None) -> None:
    """Wait for ``thread`` in slices, so that signals keep being answered."""
    deadline = None if limit is None else time.monotonic() + limit
    while thread.is_alive() and not abandon.is_set():
        if deadline is not None and time.monotonic() > deadline:
            log.warning("%s did not stop within %g s", thread.name, limit)
            return
        thread.join(_SLICE)


def _few(ids: list[str], shown: int = 5) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _mt5linux_clients(mt5linux: Any, hosts: Mapping[str, tuple[str, int]]) -> Callable[[str], Any]:
    from ..adapters.mt5 import TerminalNotConfigured

    def client(instance_id: str) -> Any:
        if instance_id not in hosts:
            raise TerminalNotConfigured(instance_id)
        host, port = hosts[instance_id]
        return mt5linux.MetaTrader5(host=host, port=port)

    return client


def _fake_terminals(credentials: CredentialStore) -> Callable[[str], Any]:
    """``kind = "fake"``: a fake terminal per instance whose broker knows its account.

    For trying a configuration (and for the tests) without a terminal: every stored
    account logs in, with the password it was stored with.
    """
    from ..testing.fake_mt5 import FakeMetaTrader5

    def terminal(instance_id: str) -> Any:
        mt5 = FakeMetaTrader5()
        stored = credentials.get(instance_id)
        if stored is not None:
            mt5.add_account(stored.login, stored.password, stored.server)
        return mt5

    return terminal


def _health_app(backends: Backends) -> Any:
    """``/metrics``, ``/healthz`` and ``/readyz`` alone, until ``mt5lifecycle.web`` is there."""
    driver("starlette", "web")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    registry: Any = getattr(backends.metrics, "registry", None)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def probe() -> dict[str, str]:
        checks: dict[str, str] = {}
        for name, call in (
            ("state", lambda: backends.state.load("readyz-probe")),
            ("credentials", lambda: backends.credentials.get("readyz-probe")),
            ("archive", lambda: backends.archive.is_confirmed("readyz-probe")),
        ):
            try:
                call()
            except StoreUnavailable:
                checks[name] = "unavailable"
            else:
                checks[name] = "ok"
        return checks

    async def readyz(_: Request) -> JSONResponse:
        import anyio.to_thread

        checks = await anyio.to_thread.run_sync(probe)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "backends": checks},
            status_code=200 if ready else 503,
        )

    async def metrics(_: Request) -> Response:
        import prometheus_client as pc

        return Response(pc.generate_latest(registry), media_type=pc.CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )
