"""The metrics port on prometheus-client: the series behind ``rules/alerts.yml``.

Two families of series, because a fleet of ten terminals and a fleet of fifty
thousand want different things from Prometheus:

* Fleet series carry no instance label at all (instances per state, login attempts
  by result, exhaustions, restarts, closures, credential deletions, alerts by kind,
  transitions, errors). Their label values come from the library's own enums, so
  their number is fixed by the vocabulary, never by the size of the fleet.
* Per-instance series (``per_instance=True``, the default) add one ``instance_id``
  label: the instance's state and reason, its consecutive login failures and its
  restart count, and, where a ``Fleet`` reports its health, its uptime over three
  windows and the age of its last connection check. That is three to seven series
  per live instance, and an instance that is gone (its closure confirmed) takes its
  series with it, so deleted accounts leave nothing behind in the scrape. With
  ``per_instance=False`` none of them exists and this object keeps no per-instance
  memory either.

The label is ``instance_id`` rather than ``instance`` because ``instance`` is the
label Prometheus itself gives every scrape target.

The alert rules work with either family: a rule prefers the per-instance series
(it then fires and resolves per account, following its state) and falls back to
the fleet counters only on targets whose ``mt5lifecycle_exporter_info`` says
``per_instance="false"``, so one target never raises the same alert twice.

prometheus-client is imported when a ``PrometheusMetrics`` is built, so that
``import mt5lifecycle`` works without it (``pip install mt5lifecycle[prometheus]``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from ..core.health import Health
from ..core.ids import check_instance_id
from ..core.records import LOGIN_REASONS, Notification
from ..core.states import AlertKind, Reason, State

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

    from ..core.health import FleetHealth

__all__ = ["GONE", "NEW", "SUCCESS", "PrometheusMetrics"]

_WINDOWS = ("5m", "1h", "1d")

NEW = "NEW"
"""The ``from`` label of an instance's first transition (``source`` is ``None``)."""
GONE = "GONE"
"""The ``to`` label of the transition that removes an instance (``dest`` is ``None``)."""
SUCCESS = "success"
"""The ``result`` label of a successful login; a failed one carries its ``Reason``."""


class PrometheusMetrics:
    """The ``Metrics`` port as Prometheus series (see ``docs/adapters/prometheus.md``).

    ``registry`` defaults to prometheus-client's global ``REGISTRY``, which is what
    ``prometheus_client.start_http_server`` and most web-framework integrations
    already expose. A registry holds one ``PrometheusMetrics``: a second one on the
    same registry raises ``ValueError`` (the series would collide), so give each its
    own ``CollectorRegistry`` (tests do) or share one object between lifecycles, as a
    ``Fleet`` does through its ``Backends``. ``unregister()`` gives the names back.
    """

    __slots__ = (
        "_account_closures",
        "_alerts",
        "_collectors",
        "_consecutive_failures",
        "_credential_deletions",
        "_errors",
        "_exporter_info",
        "_fleet_connected",
        "_fleet_healthy",
        "_fleet_uptime",
        "_instance_check_age",
        "_instance_restarts",
        "_instance_state",
        "_instance_uptime",
        "_instances",
        "_lag",
        "_lock",
        "_login_attempts",
        "_login_exhaustions",
        "_recovery_exhaustions",
        "_registry",
        "_restarts",
        "_servers_down",
        "_set_aside",
        "_state_of",
        "_transitions",
        "_uptime_of",
        "per_instance",
    )

    def __init__(
        self, registry: CollectorRegistry | None = None, *, per_instance: bool = True
    ) -> None:
        import prometheus_client as pc

        if not isinstance(per_instance, bool):
            raise TypeError(f"per_instance must be a bool, not {per_instance!r}")
        self._registry: CollectorRegistry = pc.REGISTRY if registry is None else registry
        self.per_instance = per_instance
        # One lock for the read-modify-write pairs (the per-state gauge and the
        # per-instance labels): lifecycles on several threads may share this object.
        self._lock = threading.Lock()
        self._state_of: dict[str, tuple[str, str]] = {}
        collectors: list[Any] = []

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            metric = pc.Counter(name, doc, labels, registry=None)
            collectors.append(metric)
            return metric

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            metric = pc.Gauge(name, doc, labels, registry=None)
            collectors.append(metric)
            return metric

        p = "mt5lifecycle_"
        self._instances = gauge(p + "instances", "Instances per state.", ("state",))
        self._transitions = counter(
            p + "transitions",
            "Transitions by source and destination state (NEW: first, GONE: removed).",
            ("from", "to"),
        )
        self._login_attempts = counter(
            p + "login_attempts",
            "Login calls by result: success, or the reason the broker gave.",
            ("result",),
        )
        self._login_exhaustions = counter(
            p + "login_exhaustions",
            "Instances that used up their login attempts (FAILED, LOGIN_ATTEMPTS_EXHAUSTED).",
        )
        self._recovery_exhaustions = counter(
            p + "recovery_exhaustions",
            "Instances whose automatic restarts ran out (FAILED, RECOVERY_EXHAUSTED).",
        )
        self._restarts = counter(p + "restarts", "Automatic terminal restarts (recoveries).")
        self._account_closures = counter(
            p + "account_closures", "Accounts the broker closed (entries into ACCOUNT_CLOSED)."
        )
        self._credential_deletions = counter(
            p + "credential_deletions", "Credentials deleted after a confirmed closure."
        )
        self._alerts = counter(p + "alerts", "Notifications raised, by AlertKind.", ("kind",))
        self._errors = counter(
            p + "errors",
            "Backend faults the runtime absorbed (archive, state store, ...), by component.",
            ("component",),
        )
        # Present at 0 from the start: an alert on rate(...) needs the series before
        # the first fault, and the docs list the fleet's series as always there.
        for component in ERROR_COMPONENTS:
            self._errors.labels(component=component)
        self._set_aside = counter(
            p + "notifications_set_aside",
            "Notifications the relay set aside after they kept failing, by AlertKind.",
            ("kind",),
        )
        lag: Histogram = pc.Histogram(
            p + "schedule_lag_seconds",
            "How late due steps ran after their due time (does the runtime keep up?).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=None,
        )
        collectors.append(lag)
        self._lag = lag
        self._servers_down = gauge(
            p + "broker_server_down",
            "1 while this process takes the broker server as down (SPEC 15), else 0.",
            ("server",),
        )
        self._fleet_healthy = gauge(p + "instances_healthy", "Instances that are healthy.")
        self._fleet_connected = gauge(p + "instances_connected", "Instances CONNECTED.")
        self._fleet_uptime = gauge(
            p + "uptime_ratio",
            "Mean fraction of the window the fleet's instances were connected.",
            ("window",),
        )
        info: Info = pc.Info(
            p + "exporter", "How this process exports mt5lifecycle series.", registry=None
        )
        collectors.append(info)
        self._exporter_info = info
        self._instance_state: Gauge | None = None
        self._consecutive_failures: Gauge | None = None
        self._instance_restarts: Gauge | None = None
        self._instance_uptime: Gauge | None = None
        self._instance_check_age: Gauge | None = None
        self._uptime_of: set[str] = set()
        if per_instance:
            self._instance_uptime = gauge(
                p + "instance_uptime_ratio",
                "Fraction of the window the instance was connected.",
                ("instance_id", "window"),
            )
            self._instance_check_age = gauge(
                p + "instance_last_check_age_seconds",
                "Seconds since the instance's terminal was last asked whether it is connected.",
                ("instance_id",),
            )
            self._instance_state = gauge(
                p + "instance_state",
                "1 for each instance, labelled with its state and last failure reason.",
                ("instance_id", "state", "reason"),
            )
            self._consecutive_failures = gauge(
                p + "login_consecutive_failures",
                "Authentication failures in a row (login_attempt_count); 0 after a success.",
                ("instance_id",),
            )
            self._instance_restarts = gauge(
                p + "instance_restarts",
                "Automatic restarts since the instance's last successful login.",
                ("instance_id",),
            )

        # Every bounded label value starts at 0: increase() over a counter that is
        # born at 1 sees nothing, and a rule that reads an absent series is silent.
        for state in State:
            self._instances.labels(state=state.value)
        for kind in AlertKind:
            self._alerts.labels(kind=kind.value)
            self._set_aside.labels(kind=kind.value)
        for window in _WINDOWS:
            self._fleet_uptime.labels(window=window)
        self._login_attempts.labels(result=SUCCESS)
        for reason in sorted(LOGIN_REASONS):
            self._login_attempts.labels(result=reason.value)
        self._exporter_info.info({"per_instance": "true" if per_instance else "false"})

        self._collectors = tuple(collectors)
        self._register()

    def _register(self) -> None:
        done = []
        try:
            for collector in self._collectors:
                self._registry.register(collector)
                done.append(collector)
        except ValueError as exc:
            for collector in done:
                self._registry.unregister(collector)
            raise ValueError(
                "this registry already holds mt5lifecycle series (another "
                "PrometheusMetrics?): share that object, call its unregister(), or pass "
                f"registry=prometheus_client.CollectorRegistry() ({exc})"
            ) from None

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the series live in (what an HTTP endpoint must expose)."""
        return self._registry

    def unregister(self) -> None:
        """Remove every series from the registry; this object must not be used again."""
        for collector in self._collectors:
            self._registry.unregister(collector)

    # -- the Metrics port ------------------------------------------------------------

    def transition(
        self,
        instance_id: str,
        source: State | None,
        dest: State | None,
        reason: Reason | None,
    ) -> None:
        check_instance_id(instance_id)
        with self._lock:
            self._transitions.labels(
                **{"from": NEW if source is None else source.value},
                to=GONE if dest is None else dest.value,
            ).inc()
            if self._instance_state is None:
                if source != dest:
                    if source is not None:
                        self._instances.labels(state=source.value).dec()
                    if dest is not None:
                        self._instances.labels(state=dest.value).inc()
            else:
                # Per instance, count out what was counted in, not ``source``: an
                # instance this process resumed from the state store was never
                # counted in, and must not drive its old state's count below zero.
                previous = self._state_of.get(instance_id)
                counted = None if previous is None else previous[0]
                target = None if dest is None else dest.value
                if counted != target:
                    if counted is not None:
                        self._instances.labels(state=counted).dec()
                    if target is not None:
                        self._instances.labels(state=target).inc()
            if dest is State.FAILED and reason is Reason.LOGIN_ATTEMPTS_EXHAUSTED:
                self._login_exhaustions.inc()
            elif dest is State.FAILED and reason is Reason.RECOVERY_EXHAUSTED:
                self._recovery_exhaustions.inc()
            if dest is State.ACCOUNT_CLOSED and source is not State.ACCOUNT_CLOSED:
                self._account_closures.inc()
            if self._instance_state is not None:
                if dest is None:
                    self._forget(instance_id)
                else:
                    self._set_state(instance_id, dest, reason)

    def login(self, instance_id: str, failure: Reason | None, consecutive_failures: int) -> None:
        check_instance_id(instance_id)
        self._login_attempts.labels(result=SUCCESS if failure is None else failure.value).inc()
        if self._consecutive_failures is not None and self._instance_restarts is not None:
            with self._lock:
                # A success zeroes the series the login alerts read, so they resolve
                # at the next scrape rather than when some window runs out.
                failures = 0 if failure is None else consecutive_failures
                self._consecutive_failures.labels(instance_id=instance_id).set(failures)
                if failure is None:
                    self._instance_restarts.labels(instance_id=instance_id).set(0)

    def alert(self, notification: Notification) -> None:
        self._alerts.labels(kind=notification.kind.value).inc()
        if notification.kind is AlertKind.CREDENTIALS_DELETED:
            self._credential_deletions.inc()

    def restart(self, instance_id: str, restart_count: int) -> None:
        check_instance_id(instance_id)
        self._restarts.inc()
        if self._instance_restarts is not None:
            with self._lock:
                self._instance_restarts.labels(instance_id=instance_id).set(restart_count)

    def error(self, component: str, instance_id: str | None) -> None:
        # The instance is deliberately not a label: faults are counted per backend,
        # and the log line of the runtime names the instance.
        if instance_id is not None:
            check_instance_id(instance_id)
        self._errors.labels(component=component).inc()

    # -- optional capabilities (ports.DeliveryMetrics, ScheduleMetrics, ...) -----------

    def set_aside(self, notification: Notification) -> None:
        self._set_aside.labels(kind=notification.kind.value).inc()

    def lag(self, seconds: float) -> None:
        self._lag.observe(max(0.0, seconds))

    def server(self, server: str, down: bool) -> None:
        """Whether this process takes ``server`` as down (a bounded label: the servers)."""
        self._servers_down.labels(server=server).set(1 if down else 0)

    def health(self, report: FleetHealth) -> None:
        """The fleet's health (``Fleet.health()``), exported for dashboards and rules."""
        self._fleet_healthy.set(report.healthy)
        self._fleet_connected.set(report.connected)
        for window, value in zip(
            _WINDOWS, (report.uptime_5m, report.uptime_1h, report.uptime_1d), strict=True
        ):
            self._fleet_uptime.labels(window=window).set(value)

    def instance_health(self, reports: Iterable[Health]) -> None:
        """Per-instance uptime and check age (``per_instance`` only)."""
        if self._instance_uptime is None or self._instance_check_age is None:
            return
        seen: set[str] = set()
        with self._lock:
            for report in reports:
                instance_id = report.instance_id
                seen.add(instance_id)
                for window, value in zip(
                    _WINDOWS, (report.uptime_5m, report.uptime_1h, report.uptime_1d), strict=True
                ):
                    self._instance_uptime.labels(instance_id, window).set(value)
                if report.last_check_age is not None:
                    self._instance_check_age.labels(instance_id).set(report.last_check_age)
            for gone in self._uptime_of - seen:
                self._drop_health(gone)
            self._uptime_of = seen

    # -- per-instance series ---------------------------------------------------------

    def _set_state(self, instance_id: str, state: State, reason: Reason | None) -> None:
        assert self._instance_state is not None
        labels = (state.value, "" if reason is None else reason.value)
        previous = self._state_of.get(instance_id)
        if previous == labels:
            return
        if previous is not None:
            self._instance_state.remove(instance_id, *previous)
        self._instance_state.labels(instance_id, *labels).set(1)
        self._state_of[instance_id] = labels

    def _forget(self, instance_id: str) -> None:
        assert self._instance_state is not None
        assert self._consecutive_failures is not None
        assert self._instance_restarts is not None
        previous = self._state_of.pop(instance_id, None)
        if previous is not None:
            self._instance_state.remove(instance_id, *previous)
        for gauge in (self._consecutive_failures, self._instance_restarts):
            # remove() raises KeyError for a child that was never created.
            with contextlib.suppress(KeyError):
                gauge.remove(instance_id)
        # Its health series too, now rather than at the fleet's next health report
        # (up to a connection_check_interval later), which no longer lists it.
        self._drop_health(instance_id)
        self._uptime_of.discard(instance_id)

    def _drop_health(self, instance_id: str) -> None:
        assert self._instance_uptime is not None
        assert self._instance_check_age is not None
        for window in _WINDOWS:
            with contextlib.suppress(KeyError):
                self._instance_uptime.remove(instance_id, window)
        with contextlib.suppress(KeyError):
            self._instance_check_age.remove(instance_id)

    # -- exposure --------------------------------------------------------------------

    def start_http_server(self, port: int = 0, addr: str = "0.0.0.0") -> WSGIServer:  # noqa: S104
        """Serve ``/metrics`` from a daemon thread; returns the server.

        ``port=0`` takes a free port (read it from ``server.server_port``). Stop it
        with ``server.shutdown()`` then ``server.server_close()``. The default
        address is prometheus-client's own: every interface, because Prometheus
        scrapes from another host; pass ``addr="127.0.0.1"`` to keep it local.

        The port is this process's alone: prometheus-client's own server sets
        ``SO_REUSEADDR``, with which Windows lets a second worker bind the same port
        and answer half the scrapes; here a port in use raises ``PortInUse``.
        """
        import prometheus_client as pc

        from ..builtin.listen import bind_exclusive

        server = _MetricsServer(bind_exclusive(addr, port), pc.make_wsgi_app(self._registry))
        threading.Thread(
            target=server.serve_forever, name="mt5lifecycle-metrics", daemon=True
        ).start()
        return server

    def wsgi_app(self) -> Callable[..., Any]:
        """A WSGI app serving this registry, to mount in a host's WSGI application."""
        import prometheus_client as pc

        app: Callable[..., Any] = pc.make_wsgi_app(self._registry)
        return app

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI app serving this registry (e.g. ``app.mount("/metrics", ...)``)."""
        import prometheus_client as pc

        app: Callable[..., Any] = pc.make_asgi_app(self._registry)
        return app

    def __repr__(self) -> str:
        return f"PrometheusMetrics(per_instance={self.per_instance})"


# The components the runtime and the adapters count faults of.
ERROR_COMPONENTS: Final = ("archive", "notifier", "credentials", "state", "redis", "postgresql")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a line each on stderr."""


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """prometheus-client's threading WSGI server, around a socket bound exclusively."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, app: Callable[..., Any]) -> None:
        super().__init__(sock.getsockname()[:2], _Quiet, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        host, port = self.server_address[:2]
        self.server_name = socket.getfqdn(str(host))
        self.server_port = port
        self.setup_environ()
        self.set_app(app)
