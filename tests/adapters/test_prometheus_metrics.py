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

from mt5lifecycle import Backends, Credentials, Lifecycle
from mt5lifecycle.adapters.prometheus import PrometheusMetrics
from mt5lifecycle.core.records import Notification
from mt5lifecycle.core.states import AlertKind, Reason, State
from mt5lifecycle.errors import InvalidInstanceId
from mt5lifecycle.ports import Metrics
from mt5lifecycle.testing import FakeBroker, memory_backends, run_for

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


def test_it_is_a_metrics_port(metrics: PrometheusMetrics) -> None:
    assert isinstance(metrics, Metrics)


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
    for i in range(50):
        exercise(metrics, f"acc-{i}")
        metrics.transition(f"live-{i}", None, State.CONNECTING, None)
    found = list(samples(registry))
    assert found
    assert not [s for s in found if "instance_id" in s[1]]
    assert value(registry, "exporter_info", per_instance="false") == 1
    assert value(registry, "instances", state="CONNECTING") == 50
    assert value(registry, "credential_deletions_total") == 50
    # Series are bounded by the vocabulary, not by the 100 instances seen.
    assert len(found) < 100


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
