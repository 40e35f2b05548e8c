"""PrometheusMetrics: every port method lands in the right series, on a private registry."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from wsgiref.util import setup_testing_defaults

import attrs
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mt5lifecycle import Backends, Credentials, Fleet, Lifecycle
from mt5lifecycle.adapters.prometheus import PrometheusMetrics
from mt5lifecycle.builtin.listen import PortInUse
from mt5lifecycle.builtin.memory import MemoryStateStore
from mt5lifecycle.core.health import FleetHealth, Health
from mt5lifecycle.core.records import Notification
from mt5lifecycle.core.states import AlertKind, Reason, State
from mt5lifecycle.errors import InvalidInstanceId
from mt5lifecycle.ports import (
    DeliveryMetrics,
    HealthMetrics,
    Metrics,
    Notifier,
    ScheduleMetrics,
    ServerMetrics,
)
from mt5lifecycle.testing import FakeBroker, FakeClock, memory_backends, run_for

P = "mt5lifecycle_"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> PrometheusMetrics:
    return PrometheusMetrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(P + name, labels)


def samples(registry: CollectorRegistry) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name, dict(sample.labels), sample.value


def note(kind: AlertKind, instance_id: str = "acc-1") -> Notification:
    return Notification(
        kind=kind,
        instance_id=instance_id,
        reason=None,
        message="m",
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def exercise(metrics: PrometheusMetrics, instance_id: str = "acc-1") -> None:
    """Every port method once, through a closure from start to deletion."""
    metrics.transition(instance_id, None, State.CONNECTING, None)
    metrics.login(instance_id, Reason.AUTH_FAILED, 1)
    metrics.transition(instance_id, State.CONNECTING, State.CONNECTING, Reason.AUTH_FAILED)
    metrics.login(instance_id, None, 0)
    metrics.transition(instance_id, State.CONNECTING, State.CONNECTED, None)
    metrics.transition(instance_id, State.CONNECTED, State.FAILED, Reason.TERMINAL)
    metrics.restart(instance_id, 1)
    metrics.transition(instance_id, State.FAILED, State.CONNECTING, Reason.TERMINAL)
    metrics.error("archive", instance_id)
    metrics.transition(instance_id, State.CONNECTING, State.ACCOUNT_CLOSED, Reason.ACCOUNT_CLOSED)
    metrics.alert(note(AlertKind.ACCOUNT_CLOSED, instance_id))
    metrics.transition(instance_id, State.ACCOUNT_CLOSED, State.INACTIVE, Reason.ACCOUNT_CLOSED)
    metrics.alert(note(AlertKind.CREDENTIALS_DELETED, instance_id))
    metrics.transition(instance_id, State.INACTIVE, None, None)


def health_of(instance_id: str, *, connected: bool = True, age: float | None = 5.0) -> Health:
    up = 1.0 if connected else 0.0
    return Health(
        instance_id=instance_id,
        healthy=connected,
        connected=connected,
        identity_verified=True if connected else None,
        last_check_age=age,
        reason=None if connected else Reason.NETWORK,
        uptime_5m=up,
        uptime_1h=up,
        uptime_1d=up,
    )


def fleet_health(*reports: Health) -> FleetHealth:
    count = len(reports) or 1
    return FleetHealth(
        instances=len(reports),
        connected=sum(r.connected for r in reports),
        healthy=sum(r.healthy for r in reports),
        unhealthy=tuple(r for r in reports if not r.healthy),
        uptime_5m=sum(r.uptime_5m for r in reports) / count,
        uptime_1h=sum(r.uptime_1h for r in reports) / count,
        uptime_1d=sum(r.uptime_1d for r in reports) / count,
    )


def test_it_is_a_metrics_port(metrics: PrometheusMetrics) -> None:
    assert isinstance(metrics, Metrics)


def test_it_has_every_optional_metrics_capability(metrics: PrometheusMetrics) -> None:
    # The runtime feeds only the capabilities it finds (ports.py): one missing would
    # leave its series at zero without a word.
    for capability in (DeliveryMetrics, HealthMetrics, ScheduleMetrics, ServerMetrics):
        assert isinstance(metrics, capability), capability.__name__


def test_bounded_label_values_start_at_zero(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    for state in State:
        assert value(registry, "instances", state=state.value) == 0
    for kind in AlertKind:
        assert value(registry, "alerts_total", kind=kind.value) == 0
    for result in ("success", "AUTH_FAILED", "NETWORK", "TERMINAL", "ACCOUNT_CLOSED"):
        assert value(registry, "login_attempts_total", result=result) == 0
    for name in ("login_exhaustions", "restarts", "account_closures", "credential_deletions"):
        assert value(registry, name + "_total") == 0
    for kind in AlertKind:
        assert value(registry, "notifications_set_aside_total", kind=kind.value) == 0
    for window in ("5m", "1h", "1d"):
        assert value(registry, "uptime_ratio", window=window) == 0
    assert value(registry, "schedule_lag_seconds_count") == 0
    assert value(registry, "instances_healthy") == 0
    assert value(registry, "instances_connected") == 0
    assert value(registry, "exporter_info", per_instance="true") == 1


def test_a_new_instance_is_counted_in_its_state(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    metrics.transition("acc-1", None, State.CONNECTING, None)
    assert value(registry, "instances", state="CONNECTING") == 1
    assert value(registry, "transitions_total", **{"from": "NEW", "to": "CONNECTING"}) == 1
    assert (
        value(registry, "instance_state", instance_id="acc-1", state="CONNECTING", reason="") == 1
    )


def test_a_transition_moves_the_instance_between_states(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    metrics.transition("acc-1", None, State.CONNECTING, None)
    metrics.transition("acc-2", None, State.CONNECTING, None)
    metrics.transition("acc-1", State.CONNECTING, State.CONNECTED, None)
    assert value(registry, "instances", state="CONNECTING") == 1
    assert value(registry, "instances", state="CONNECTED") == 1
    assert value(registry, "instance_state", instance_id="acc-1", state="CONNECTED", reason="") == 1
    # The old state's series is gone, not left at 0: one series per instance.
    assert (
        value(registry, "instance_state", instance_id="acc-1", state="CONNECTING", reason="")
        is None
    )


def test_a_self_loop_counts_a_transition_but_moves_nothing(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    metrics.transition("acc-1", None, State.CONNECTING, None)
    metrics.transition("acc-1", State.CONNECTING, State.CONNECTING, Reason.AUTH_FAILED)
    assert value(registry, "instances", state="CONNECTING") == 1
    assert value(registry, "transitions_total", **{"from": "CONNECTING", "to": "CONNECTING"}) == 1
    labels = {"instance_id": "acc-1", "state": "CONNECTING", "reason": "AUTH_FAILED"}
    assert value(registry, "instance_state", **labels) == 1


@pytest.mark.parametrize("per_instance", [True, False])
def test_the_state_counts_follow_the_fleet(registry: CollectorRegistry, per_instance: bool) -> None:
    metrics = PrometheusMetrics(registry, per_instance=per_instance)
    for i in range(3):
        metrics.transition(f"acc-{i}", None, State.CONNECTING, None)
    metrics.transition("acc-0", State.CONNECTING, State.FAILED, Reason.LOGIN_ATTEMPTS_EXHAUSTED)
    metrics.transition("acc-1", State.CONNECTING, State.CONNECTED, None)
    metrics.transition("acc-0", State.FAILED, State.CONNECTING, None)
    counts = {s.value: value(registry, "instances", state=s.value) for s in State}
    assert counts == {
        "CONNECTING": 2,
        "CONNECTED": 1,
        "FAILED": 0,
        "INACTIVE": 0,
        "ACCOUNT_CLOSED": 0,
    }


def test_a_resumed_instance_is_not_counted_out_of_a_state_it_was_never_counted_in(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    # A process that resumes an instance from the state store sees its first
    # transition with a source it never counted.
    metrics.transition("acc-1", State.FAILED, State.CONNECTING, None)
    assert value(registry, "instances", state="FAILED") == 0
    assert value(registry, "instances", state="CONNECTING") == 1


def test_logins_count_by_result_and_failures_in_a_row_reset_on_success(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    for attempt in (1, 2, 3):
        metrics.login("acc-1", Reason.AUTH_FAILED, attempt)
    assert value(registry, "login_consecutive_failures", instance_id="acc-1") == 3
    metrics.login("acc-1", Reason.NETWORK, 3)
    assert value(registry, "login_consecutive_failures", instance_id="acc-1") == 3
    metrics.login("acc-1", None, 0)
    assert value(registry, "login_consecutive_failures", instance_id="acc-1") == 0
    assert value(registry, "login_attempts_total", result="AUTH_FAILED") == 3
    assert value(registry, "login_attempts_total", result="NETWORK") == 1
    assert value(registry, "login_attempts_total", result="success") == 1


def test_exhaustions_and_closures_are_counted_from_transitions(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    metrics.transition("acc-1", State.CONNECTING, State.FAILED, Reason.LOGIN_ATTEMPTS_EXHAUSTED)
    metrics.transition("acc-2", State.FAILED, State.FAILED, Reason.RECOVERY_EXHAUSTED)
    metrics.transition("acc-3", State.CONNECTED, State.ACCOUNT_CLOSED, Reason.ACCOUNT_CLOSED)
    metrics.transition("acc-4", State.CONNECTED, State.FAILED, Reason.TERMINAL)
    assert value(registry, "login_exhaustions_total") == 1
    assert value(registry, "recovery_exhaustions_total") == 1
    assert value(registry, "account_closures_total") == 1


def test_restarts_count_and_the_instance_restart_count_clears_on_success(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    metrics.restart("acc-1", 1)
    metrics.restart("acc-1", 2)
    assert value(registry, "restarts_total") == 2
    assert value(registry, "instance_restarts", instance_id="acc-1") == 2
    metrics.login("acc-1", None, 0)
    assert value(registry, "instance_restarts", instance_id="acc-1") == 0


def test_alerts_count_by_kind_and_credential_deletions_have_their_own_counter(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    for kind in AlertKind:
        metrics.alert(note(kind))
    metrics.alert(note(AlertKind.LOGIN_RECOVERED))
    assert value(registry, "alerts_total", kind="LOGIN_RECOVERED") == 2
    assert value(registry, "alerts_total", kind="ACCOUNT_BANNED") == 1
    assert value(registry, "credential_deletions_total") == 1


def test_errors_count_by_component(registry: CollectorRegistry, metrics: PrometheusMetrics) -> None:
    metrics.error("archive", "acc-1")
    metrics.error("archive", None)
    metrics.error("StoreUnavailable", "acc-1")
    assert value(registry, "errors_total", component="archive") == 2
    assert value(registry, "errors_total", component="StoreUnavailable") == 1


def test_set_aside_notifications_count_by_kind(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    metrics.set_aside(note(AlertKind.ACCOUNT_CLOSED))
    metrics.set_aside(note(AlertKind.ACCOUNT_CLOSED, "acc-2"))
    metrics.set_aside(note(AlertKind.LOGIN_FAILURE))
    assert value(registry, "notifications_set_aside_total", kind="ACCOUNT_CLOSED") == 2
    assert value(registry, "notifications_set_aside_total", kind="LOGIN_FAILURE") == 1
    assert value(registry, "notifications_set_aside_total", kind="LOGIN_RECOVERED") == 0
    # Set aside is not raised: the alert counter counted it when it was decided.
    assert value(registry, "alerts_total", kind="ACCOUNT_CLOSED") == 0


def test_lag_is_a_histogram_of_seconds_and_early_is_on_time(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    for seconds in (0.0, 0.003, 0.7, 4.0, 90.0, -2.0):
        metrics.lag(seconds)
    assert value(registry, "schedule_lag_seconds_count") == 6
    assert value(registry, "schedule_lag_seconds_sum") == pytest.approx(94.703)
    assert value(registry, "schedule_lag_seconds_bucket", le="0.01") == 3
    assert value(registry, "schedule_lag_seconds_bucket", le="1.0") == 4
    assert value(registry, "schedule_lag_seconds_bucket", le="5.0") == 5
    assert value(registry, "schedule_lag_seconds_bucket", le="60.0") == 5
    assert value(registry, "schedule_lag_seconds_bucket", le="+Inf") == 6


def test_a_server_is_shown_down_then_up(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    metrics.server("broker-live", False)
    metrics.server("other-server", False)
    metrics.server("broker-live", True)
    assert value(registry, "broker_server_down", server="broker-live") == 1
    assert value(registry, "broker_server_down", server="other-server") == 0
    metrics.server("broker-live", False)
    assert value(registry, "broker_server_down", server="broker-live") == 0
    # One series per server, whatever the number of accounts on it.
    servers = [s for s in samples(registry) if s[0] == P + "broker_server_down"]
    assert len(servers) == 2


@pytest.mark.parametrize("per_instance", [True, False])
def test_the_fleets_health_sets_the_fleet_gauges(
    registry: CollectorRegistry, per_instance: bool
) -> None:
    metrics = PrometheusMetrics(registry, per_instance=per_instance)
    reports = [health_of("acc-1"), health_of("acc-2"), health_of("acc-3", connected=False)]
    metrics.health(fleet_health(*reports))
    assert value(registry, "instances_healthy") == 2
    assert value(registry, "instances_connected") == 2
    for window in ("5m", "1h", "1d"):
        assert value(registry, "uptime_ratio", window=window) == pytest.approx(2 / 3)
    metrics.instance_health(reports)
    per = value(registry, "instance_uptime_ratio", instance_id="acc-3", window="1h")
    assert per == (0.0 if per_instance else None)


def test_instance_health_follows_the_instances_reported(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    metrics.instance_health([health_of("acc-1", age=12.5), health_of("acc-2", connected=False)])
    assert value(registry, "instance_uptime_ratio", instance_id="acc-1", window="5m") == 1
    assert value(registry, "instance_uptime_ratio", instance_id="acc-2", window="1d") == 0
    assert value(registry, "instance_last_check_age_seconds", instance_id="acc-1") == 12.5
    # An instance no longer reported (dropped from the fleet, its lease lost) goes.
    metrics.instance_health([health_of("acc-1", age=None)])
    assert value(registry, "instance_uptime_ratio", instance_id="acc-2", window="1d") is None
    assert value(registry, "instance_last_check_age_seconds", instance_id="acc-2") is None
    # Never checked: no age rather than a made-up one; the last one known stays.
    assert value(registry, "instance_last_check_age_seconds", instance_id="acc-1") == 12.5


def test_a_gone_instance_takes_its_health_series_with_it(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    metrics.transition("acc-1", None, State.CONNECTING, None)
    metrics.instance_health([health_of("acc-1"), health_of("acc-2")])
    metrics.transition("acc-1", State.INACTIVE, None, None)
    ids = {labels.get("instance_id") for _, labels, _ in samples(registry)}
    assert "acc-1" not in ids, "before the fleet's next health report, too"
    assert "acc-2" in ids
    metrics.instance_health([health_of("acc-2")])
    assert value(registry, "instance_uptime_ratio", instance_id="acc-2", window="5m") == 1


def test_a_gone_instance_leaves_no_series(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    exercise(metrics, "acc-1")
    metrics.transition("acc-2", None, State.CONNECTING, None)
    ids = {labels.get("instance_id") for _, labels, _ in samples(registry)}
    assert "acc-1" not in ids
    assert "acc-2" in ids
    assert value(registry, "transitions_total", **{"from": "INACTIVE", "to": "GONE"}) == 1
    assert value(registry, "instances", state="INACTIVE") == 0
    assert value(registry, "credential_deletions_total") == 1


def test_without_per_instance_series_no_sample_has_an_instance_label(
    registry: CollectorRegistry,
) -> None:
    metrics = PrometheusMetrics(registry, per_instance=False)

    def fleet_of(first: int, count: int) -> None:
        ids = [f"live-{i}" for i in range(first, first + count)]
        for instance_id in ids:
            exercise(metrics, f"acc-{instance_id}")
            metrics.transition(instance_id, None, State.CONNECTING, None)
            metrics.set_aside(note(AlertKind.LOGIN_FAILURE, instance_id))
            metrics.lag(0.2)
        metrics.health(fleet_health(*(health_of(i) for i in ids)))
        metrics.instance_health(health_of(i) for i in ids)

    fleet_of(0, 50)
    found = list(samples(registry))
    assert found
    assert not [s for s in found if "instance_id" in s[1]]
    assert value(registry, "exporter_info", per_instance="false") == 1
    assert value(registry, "instances", state="CONNECTING") == 50
    assert value(registry, "credential_deletions_total") == 50
    # Series are bounded by the vocabulary, not by the instances seen: 500 more
    # instances add none.
    fleet_of(50, 500)
    assert len(list(samples(registry))) == len(found)


def test_an_invalid_instance_id_is_refused_and_changes_nothing(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    before = sorted((n, sorted(lab.items()), v) for n, lab, v in samples(registry))
    with pytest.raises(InvalidInstanceId):
        metrics.transition("bad id\n", None, State.CONNECTING, None)
    with pytest.raises(InvalidInstanceId):
        metrics.login('x"}', None, 0)
    with pytest.raises(InvalidInstanceId):
        metrics.restart("", 1)
    after = sorted((n, sorted(lab.items()), v) for n, lab, v in samples(registry))
    assert before == after


def test_a_registry_holds_one_prometheus_metrics(registry: CollectorRegistry) -> None:
    first = PrometheusMetrics(registry)
    with pytest.raises(ValueError, match="already holds mt5lifecycle series"):
        PrometheusMetrics(registry)
    # The failed one registered nothing, and the first still works.
    first.login("acc-1", None, 0)
    assert value(registry, "login_attempts_total", result="success") == 1
    first.unregister()
    assert value(registry, "login_attempts_total", result="success") is None
    PrometheusMetrics(registry, per_instance=False)


def test_the_default_registry_is_prometheus_clients_global_one() -> None:
    metrics = PrometheusMetrics()
    try:
        assert metrics.registry is REGISTRY
        metrics.login("acc-1", None, 0)
        assert REGISTRY.get_sample_value(P + "login_attempts_total", {"result": "success"}) == 1
    finally:
        metrics.unregister()
    assert REGISTRY.get_sample_value(P + "login_attempts_total", {"result": "success"}) is None


def test_per_instance_must_be_a_bool(registry: CollectorRegistry) -> None:
    with pytest.raises(TypeError, match="per_instance"):
        PrometheusMetrics(registry, per_instance="no")  # type: ignore[arg-type]


def test_concurrent_transitions_keep_the_counts_exact(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    def run(worker: int) -> None:
        for i in range(200):
            instance_id = f"w{worker}-{i}"
            metrics.transition(instance_id, None, State.CONNECTING, None)
            metrics.transition(instance_id, State.CONNECTING, State.CONNECTED, None)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert value(registry, "instances", state="CONNECTED") == 800
    assert value(registry, "instances", state="CONNECTING") == 0


def test_a_real_scrape_over_http(registry: CollectorRegistry, metrics: PrometheusMetrics) -> None:
    metrics.transition("acc-1", None, State.CONNECTING, None)
    metrics.login("acc-1", Reason.AUTH_FAILED, 1)
    server = metrics.start_http_server(0, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families[P + "instances"].type == "gauge"
    assert families[P + "login_attempts"].type == "counter"
    scraped = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert scraped[(P + "instances", (("state", "CONNECTING"),))] == 1
    assert scraped[(P + "login_attempts_total", (("result", "AUTH_FAILED"),))] == 1
    assert scraped[(P + "login_consecutive_failures", (("instance_id", "acc-1"),))] == 1
    key = (
        P + "instance_state",
        (("instance_id", "acc-1"), ("reason", ""), ("state", "CONNECTING")),
    )
    assert scraped[key] == 1


def test_the_wsgi_app_serves_this_registry(metrics: PrometheusMetrics) -> None:
    metrics.login("acc-1", None, 0)
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/metrics"
    statuses: list[str] = []
    body = b"".join(metrics.wsgi_app()(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert b'mt5lifecycle_login_attempts_total{result="success"} 1.0' in body


def test_the_asgi_app_serves_this_registry(metrics: PrometheusMetrics) -> None:
    metrics.login("acc-1", None, 0)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "query_string": b"",
        "headers": [],
    }
    asyncio.run(metrics.asgi_app()(scope, receive, send))
    assert sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert b'mt5lifecycle_login_attempts_total{result="success"} 1.0' in body


# --- driven by the real library ---------------------------------------------------


def lifecycle_on(registry: CollectorRegistry, per_instance: bool) -> tuple[Lifecycle, Backends]:
    backends = attrs.evolve(
        memory_backends(), metrics=PrometheusMetrics(registry, per_instance=per_instance)
    )
    backends.credentials.put("acc-1", Credentials(12345, "Demo-Server", "s3cret"))
    return Lifecycle("acc-1", backends), backends


def state_of(lifecycle: Lifecycle) -> State | None:
    return lifecycle.state


@pytest.mark.parametrize("per_instance", [True, False])
def test_a_lifecycle_from_exhaustion_to_deletion(
    registry: CollectorRegistry, per_instance: bool
) -> None:
    lifecycle, backends = lifecycle_on(registry, per_instance)
    assert isinstance(backends.broker, FakeBroker)
    backends.broker.fail_logins("acc-1", Reason.AUTH_FAILED, times=5)
    lifecycle.start()
    run_for(lifecycle, backends.clock, 600)
    assert state_of(lifecycle) is State.FAILED
    assert value(registry, "instances", state="FAILED") == 1
    assert value(registry, "login_attempts_total", result="AUTH_FAILED") == 5
    assert value(registry, "login_exhaustions_total") == 1
    assert value(registry, "alerts_total", kind="REPEATED_LOGIN_FAILURE") == 1
    assert value(registry, "alerts_total", kind="LOGIN_FAILURE") == 1
    if per_instance:
        assert value(registry, "login_consecutive_failures", instance_id="acc-1") == 5
        labels = {"instance_id": "acc-1", "state": "FAILED", "reason": "LOGIN_ATTEMPTS_EXHAUSTED"}
        assert value(registry, "instance_state", **labels) == 1

    # Unchanged credentials that exhausted their attempts are refused (SPEC 15):
    # the right password is stored, then the instance reset.
    backends.credentials.put("acc-1", Credentials(12345, "Demo-Server", "n3w-s3cret"))
    lifecycle.reset()
    run_for(lifecycle, backends.clock, 60)
    assert state_of(lifecycle) is State.CONNECTED
    assert value(registry, "alerts_total", kind="LOGIN_RECOVERED") == 1
    if per_instance:
        assert value(registry, "login_consecutive_failures", instance_id="acc-1") == 0

    backends.broker.close_account("acc-1")
    lifecycle.account_closed()
    lifecycle.confirm_closure()
    assert value(registry, "account_closures_total") == 1
    assert value(registry, "credential_deletions_total") == 1
    assert {value(registry, "instances", state=s.value) for s in State} == {0}
    assert not [s for s in samples(registry) if "instance_id" in s[1]]
    assert "s3cret" not in repr(list(samples(registry)))
    assert "n3w-s3cret" not in repr(list(samples(registry)))


def test_a_resumed_instance_is_exported_in_its_stored_state(registry: CollectorRegistry) -> None:
    lifecycle, backends = lifecycle_on(CollectorRegistry(), per_instance=True)
    assert isinstance(backends.broker, FakeBroker)
    backends.broker.fail_logins("acc-1", Reason.AUTH_FAILED, times=5)
    lifecycle.start()
    run_for(lifecycle, backends.clock, 600)
    # A new process: same stores, fresh metrics.
    resumed = Lifecycle("acc-1", attrs.evolve(backends, metrics=PrometheusMetrics(registry)))
    resumed.start()
    labels = {"instance_id": "acc-1", "state": "FAILED", "reason": "LOGIN_ATTEMPTS_EXHAUSTED"}
    assert value(registry, "instance_state", **labels) == 1
    assert value(registry, "instances", state="FAILED") == 1


# --- a real Fleet: health, set-aside notifications, lag, broker servers ------------


class ChannelDown:
    """A notifier whose channel never takes anything (the SMTP server refuses)."""

    def __init__(self) -> None:
        self.tries = 0

    def notify(self, notification: Notification) -> None:
        self.tries += 1
        raise ConnectionError("the mail server refused the connection")


def fleet_on(
    registry: CollectorRegistry,
    servers: dict[str, str],
    per_instance: bool = True,
    notifier: Notifier | None = None,
) -> tuple[Fleet, Backends, FakeBroker, FakeClock]:
    """A one-worker ``Fleet`` on ``memory_backends``; ``servers`` maps ids to servers."""
    base = memory_backends()
    assert isinstance(base.broker, FakeBroker)
    assert isinstance(base.clock, FakeClock)
    backends = attrs.evolve(
        base,
        metrics=PrometheusMetrics(registry, per_instance=per_instance),
        notifier=base.notifier if notifier is None else notifier,
    )
    for n, (instance_id, server) in enumerate(servers.items()):
        backends.credentials.put(instance_id, Credentials(1000 + n, server, "s3cret"))
    return Fleet(backends, workers=1), backends, base.broker, base.clock


@pytest.mark.parametrize("per_instance", [True, False])
def test_a_fleet_exports_its_health_once_per_check_interval(
    registry: CollectorRegistry, per_instance: bool
) -> None:
    fleet, _, broker, clock = fleet_on(
        registry, {"ok-1": "Demo", "ok-2": "Demo", "bad-1": "Demo"}, per_instance
    )
    broker.fail_logins("bad-1", Reason.AUTH_FAILED)
    fleet.add_many(["ok-1", "ok-2", "bad-1"])
    run_for(fleet, clock, 30)
    # Not yet reported: the first report follows a connection_check_interval.
    assert value(registry, "instances_healthy") == 0
    run_for(fleet, clock, 10 * 60)
    report = fleet.health()
    assert isinstance(report, FleetHealth)
    assert (report.healthy, report.connected) == (2, 2)
    assert value(registry, "instances_healthy") == report.healthy
    assert value(registry, "instances_connected") == report.connected
    assert value(registry, "uptime_ratio", window="5m") == pytest.approx(2 / 3)
    if per_instance:
        assert value(registry, "instance_uptime_ratio", instance_id="ok-1", window="5m") == 1
        assert value(registry, "instance_uptime_ratio", instance_id="bad-1", window="1h") == 0
        age = value(registry, "instance_last_check_age_seconds", instance_id="ok-1")
        assert age is not None and 0 <= age <= fleet.policy.connection_check_interval
        # Never connected, never checked: no age.
        assert value(registry, "instance_last_check_age_seconds", instance_id="bad-1") is None
    else:
        assert not [s for s in samples(registry) if "instance_id" in s[1]]
    assert "s3cret" not in repr(list(samples(registry)))


def test_a_fleet_whose_channel_is_down_counts_what_it_sets_aside(
    registry: CollectorRegistry,
) -> None:
    channel = ChannelDown()
    fleet, backends, broker, clock = fleet_on(registry, {"acc-1": "Demo"}, notifier=channel)
    broker.fail_logins("acc-1", Reason.AUTH_FAILED, times=5)
    fleet.add("acc-1")
    run_for(fleet, clock, 30 * 60)
    # REPEATED_LOGIN_FAILURE and LOGIN_FAILURE, each tried max_delivery_attempts times.
    attempts = fleet.policy.max_delivery_attempts
    assert channel.tries == 2 * attempts
    assert value(registry, "notifications_set_aside_total", kind="LOGIN_FAILURE") == 1
    assert value(registry, "notifications_set_aside_total", kind="REPEATED_LOGIN_FAILURE") == 1
    assert value(registry, "alerts_total", kind="LOGIN_FAILURE") == 1
    state = backends.state
    assert isinstance(state, MemoryStateStore)
    kinds = sorted(a.notification.kind.value for a in state.set_aside_notifications())
    assert kinds == ["LOGIN_FAILURE", "REPEATED_LOGIN_FAILURE"]


def test_a_fleet_that_falls_behind_reports_how_late_its_steps_ran(
    registry: CollectorRegistry,
) -> None:
    ids = {f"acc-{i}": "Demo" for i in range(5)}
    fleet, _, _, clock = fleet_on(registry, ids)
    fleet.add_many(ids)
    run_for(fleet, clock, 5 * 60)
    on_time = value(registry, "schedule_lag_seconds_count")
    assert on_time and value(registry, "schedule_lag_seconds_bucket", le="0.01") == on_time
    # The process stalls for 45 s (a suspended VM, a host out of CPU): the checks
    # due meanwhile run when it comes back, late.
    due = fleet.next_due
    assert due is not None
    clock.advance_to(due + 45)
    fleet.run_due()
    late = value(registry, "schedule_lag_seconds_count")
    assert late == on_time + len(ids)
    assert value(registry, "schedule_lag_seconds_bucket", le="30.0") == on_time
    assert value(registry, "schedule_lag_seconds_bucket", le="60.0") == late
    assert value(registry, "schedule_lag_seconds_sum") == pytest.approx(45 * len(ids))


def two_workers(
    registries: tuple[CollectorRegistry, CollectorRegistry],
) -> tuple[list[Fleet], FakeBroker, FakeClock, dict[int, list[str]]]:
    """Two workers sharing one state store: three accounts each on Broker-Live, one on
    Other. Threshold and window are the Policy's defaults (5 within 60 s)."""
    base = memory_backends()
    assert isinstance(base.broker, FakeBroker)
    assert isinstance(base.clock, FakeClock)
    ids = {k: [f"w{k}-live-{i}" for i in range(3)] for k in (1, 2)}
    fleets = []
    for k, registry in zip((1, 2), registries, strict=True):
        backends = attrs.evolve(base, metrics=PrometheusMetrics(registry))
        for n, instance_id in enumerate(ids[k]):
            backends.credentials.put(instance_id, Credentials(k * 100 + n, "Broker-Live", "pw"))
        backends.credentials.put(f"w{k}-other", Credentials(k * 100 + 9, "Other", "pw"))
        fleet = Fleet(backends, workers=1)
        fleet.add_many([*ids[k], f"w{k}-other"])
        fleets.append(fleet)
    return fleets, base.broker, base.clock, ids


class Both:
    def __init__(self, fleets: list[Fleet]) -> None:
        self.fleets = fleets

    @property
    def next_due(self) -> float | None:
        due = [d for d in (f.next_due for f in self.fleets) if d is not None]
        return min(due) if due else None

    def run_due(self) -> float | None:
        for fleet in self.fleets:
            fleet.run_due()
        return self.next_due


def test_a_broker_server_outage_shows_in_every_worker_then_clears() -> None:
    registries = (CollectorRegistry(), CollectorRegistry())
    fleets, broker, clock, _ = two_workers(registries)
    both = Both(fleets)
    run_for(both, clock, 90)
    for registry in registries:
        assert value(registry, "broker_server_down", server="broker-live") == 0
        assert value(registry, "broker_server_down", server="other") == 0
    broker.server_down("Broker-Live")
    run_for(both, clock, 60)
    # The 5th of 6 failures within the window took the server down; each worker
    # shows it at its next look, and the other server stays up.
    for registry in registries:
        assert value(registry, "broker_server_down", server="broker-live") == 1
        assert value(registry, "broker_server_down", server="other") == 0
    run_for(both, clock, 5 * 60)
    for registry in registries:
        assert value(registry, "broker_server_down", server="broker-live") == 1
    broker.server_up("Broker-Live")
    run_for(both, clock, 2 * fleets[0].policy.server_probe_interval)
    for registry in registries:
        assert value(registry, "broker_server_down", server="broker-live") == 0
    down = sum(value(r, "alerts_total", kind="BROKER_SERVER_DOWN") or 0 for r in registries)
    recovered = sum(
        value(r, "alerts_total", kind="BROKER_SERVER_RECOVERED") or 0 for r in registries
    )
    assert (down, recovered) == (1, 1)
    assert all(f[i].state is State.CONNECTED for f in fleets for i in f)


def test_terminals_that_reconnect_by_themselves_end_the_outage() -> None:
    registries = (CollectorRegistry(), CollectorRegistry())
    fleets, broker, clock, ids = two_workers(registries)
    both = Both(fleets)
    run_for(both, clock, 90)
    broker.server_down("Broker-Live")
    run_for(both, clock, 35)
    assert max(value(r, "broker_server_down", server="broker-live") or 0 for r in registries) == 1
    # Back before the reconnect checks: each terminal is connected when next asked.
    broker.server_up("Broker-Live")
    for instance_id in ids[1] + ids[2]:
        broker.restore_connection(instance_id)
    run_for(both, clock, 10 * 60)
    assert all(f[i].state is State.CONNECTED for f in fleets for i in f)
    for registry in registries:
        assert value(registry, "broker_server_down", server="broker-live") == 0


def test_a_second_server_on_the_same_port_is_refused_naming_it(
    metrics: PrometheusMetrics,
) -> None:
    # prometheus-client's own server sets SO_REUSEADDR, with which Windows would let a
    # second worker share the port and answer half the scrapes.
    first = metrics.start_http_server(0, addr="127.0.0.1")
    try:
        port = first.server_port
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port} is already in use"):
            metrics.start_http_server(port, addr="127.0.0.1")
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    finally:
        first.shutdown()
        first.server_close()


def test_the_error_series_are_there_before_the_first_fault(registry: CollectorRegistry) -> None:
    PrometheusMetrics(registry)
    for component in ("archive", "notifier", "credentials", "state", "redis", "postgresql"):
        assert registry.get_sample_value(P + "errors_total", {"component": component}) == 0.0
