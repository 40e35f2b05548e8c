"""Health in the API and the console (SPEC section 15), over a real uvicorn.

With a fleet, ``GET /api/health`` and an instance's ``health`` are what the fleet
measures; without one, the API says what the stored snapshots can tell and leaves
the rest ``null`` rather than guessing.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from mt5lifecycle import Credentials, Fleet, Reason
from mt5lifecycle.testing import run_for

from .conftest import PASSWORD, VIEWER, World
from .test_api import error_of, exhausted
from .test_console_security import signed_in

MakeWorld = Callable[..., World]

HEALTH_FIELDS = {
    "id", "healthy", "connected", "identity_verified", "last_check_age", "reason",
    "uptime_5m", "uptime_1h", "uptime_1d",
}  # fmt: skip


def test_the_fleet_health_is_the_fleets_and_a_viewer_reads_it(world: World) -> None:
    world.account("acc-1")
    exhausted(world, "acc-2")
    with world.client(VIEWER) as viewer:
        body = viewer.get("/api/health").json()
    assert body["source"] == "fleet"
    assert (body["instances"], body["connected"], body["healthy"]) == (2, 1, 1)
    [unhealthy] = body["unhealthy"]
    assert set(unhealthy) == HEALTH_FIELDS
    assert unhealthy["id"] == "acc-2"
    assert unhealthy["connected"] is False and unhealthy["healthy"] is False
    assert unhealthy["reason"] == "LOGIN_ATTEMPTS_EXHAUSTED"
    assert unhealthy["uptime_1d"] == 0.0
    # One of the two was connected the whole time.
    assert body["uptime_5m"] == pytest.approx(0.5)


def test_an_instance_carries_its_health_as_the_fleet_measures_it(world: World) -> None:
    world.account("acc-1")
    world.run(75)  # its first connection check is at 60 s
    with world.client(VIEWER) as viewer:
        health = viewer.get("/api/instances/acc-1").json()["health"]
    assert set(health) == HEALTH_FIELDS
    assert health["id"] == "acc-1"
    assert health["healthy"] is True and health["connected"] is True
    assert health["identity_verified"] is True
    assert health["reason"] is None
    assert health["last_check_age"] == pytest.approx(15.0)
    assert health["uptime_5m"] == pytest.approx(1.0)


def test_an_instance_the_fleet_lost_says_why_it_is_unhealthy(world: World) -> None:
    world.account("acc-1")
    world.run(1)
    world.broker.drop_connection("acc-1")
    world.broker.fail_logins("acc-1", Reason.NETWORK, times=1000)
    world.run(600)
    with world.client() as client:
        health = client.get("/api/instances/acc-1").json()["health"]
    assert health["healthy"] is False and health["connected"] is False
    assert health["reason"] is not None
    assert health["uptime_5m"] < 0.5


def test_without_a_fleet_health_is_what_the_store_knows(make_world: MakeWorld) -> None:
    world = make_world(with_fleet=False)
    driver = Fleet(world.backends, workers=1)
    for instance_id in ("acc-1", "acc-2"):
        world.backends.credentials.put(instance_id, Credentials(5012345, "Broker-Demo", PASSWORD))
    world.broker.fail_logins("acc-2", Reason.AUTH_FAILED)
    driver.add_many(["acc-1", "acc-2"])
    run_for(driver, world.clock, 200)
    driver.close()
    with world.client(VIEWER) as viewer:
        fleet = viewer.get("/api/health")
        one = viewer.get("/api/instances/acc-1").json()
    assert fleet.status_code == 200
    assert fleet.json() == {
        "source": "store",
        "instances": 2,
        "connected": 1,
        "healthy": None,
        "unhealthy": None,
        "uptime_5m": None,
        "uptime_1h": None,
        "uptime_1d": None,
    }
    assert one["health"] is None
    assert one["instance"]["status"] == "CONNECTED"


def test_health_needs_a_token(world: World) -> None:
    with world.client(None) as anonymous:
        error_of(anonymous.get("/api/health"), 401, "unauthorized")


# --- the console ----------------------------------------------------------------------


def test_the_console_shows_the_healthy_count_and_an_instances_health(world: World) -> None:
    world.account("acc-1")
    exhausted(world, "acc-2")
    client = signed_in(world.url, VIEWER)
    fleet = client.get("/")
    assert fleet.status_code == 200
    assert "<span data-healthy>1</span> of <span data-health-instances>2</span> healthy" in (
        fleet.text
    )
    live = client.get("/live").json()
    assert live["health"] == {"healthy": 1, "instances": 2}

    page = client.get("/instances/acc-1")
    assert '<dd data-health="healthy">yes</dd>' in page.text
    assert '<dd data-health="identity_verified">yes</dd>' in page.text
    assert '<dd data-health="uptime_1h">100.0%</dd>' in page.text
    assert 'data-health="last_check_age">' in page.text
    failed = client.get("/instances/acc-2")
    assert '<dd data-health="reason">LOGIN_ATTEMPTS_EXHAUSTED</dd>' in failed.text
    assert client.get("/instances/acc-2/live").json()["health"]["healthy"] is False
    client.close()


def test_a_console_without_a_fleet_says_where_health_is_measured(make_world: MakeWorld) -> None:
    world = make_world(with_fleet=False)
    world.account("acc-1")
    client = signed_in(world.url)
    assert "data-healthy" not in client.get("/").text
    page = client.get("/instances/acc-1")
    assert "Health is measured by the process that drives this instance" in page.text
    assert "data-health=" not in page.text
    client.close()


def test_the_console_formats_ages_and_fractions() -> None:
    from mt5lifecycle.web.console import _age, _pct, _verdict

    assert [_age(None), _age(0.4), _age(119.9), _age(120), _age(7199), _age(7200)] == [
        "never", "0 s ago", "119 s ago", "2 min ago", "119 min ago", "2 h ago",
    ]  # fmt: skip
    assert [_pct(None), _pct(1.0), _pct(0.12345)] == ["-", "100.0%", "12.3%"]
    assert [_verdict(None), _verdict(True), _verdict(False)] == ["unknown", "yes", "no"]


def test_health_is_answered_in_json_with_the_security_headers(world: World) -> None:
    response = httpx.get(f"{world.url}/api/health", headers={"Authorization": f"Bearer {VIEWER}"})
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
