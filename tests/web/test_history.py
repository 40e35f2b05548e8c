"""Reading an instance's history back: MemoryArchive, DuckDBArchive, and archives that cannot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs

from mt5lifecycle import Credentials, Fleet, Reason
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.builtin.memory import NullArchive
from mt5lifecycle.testing import FakeBroker, FakeClock, memory_backends, run_for
from mt5lifecycle.web import create_app
from mt5lifecycle.web.history import read_history

from .conftest import OPERATOR, PASSWORD, T0, TOKENS, World, serving

MakeWorld = Callable[..., World]


def test_the_duckdb_archive_is_read_while_the_fleet_writes_it(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    archive = DuckDBArchive(tmp_path / "archive.duckdb", clock=clock, background=False)
    backends = attrs.evolve(memory_backends(broker=FakeBroker(clock), clock=clock), archive=archive)
    fleet = Fleet(backends, workers=1)
    backends.broker.fail_logins("acc-1", Reason.AUTH_FAILED, times=2)  # type: ignore[attr-defined]
    backends.credentials.put("acc-1", Credentials(5012345, "Broker-Demo", PASSWORD))
    fleet.add("acc-1")
    run_for(fleet, clock, 60)
    import httpx

    with serving(create_app(backends, tokens=TOKENS, fleet=fleet)) as url:
        body = httpx.get(
            f"{url}/api/instances/acc-1", headers={"Authorization": f"Bearer {OPERATOR}"}
        ).json()
    fleet.close()
    archive.close()
    history = body["history"]
    assert [f["attempt"] for f in history["login_failures"]] == [1, 2]
    assert history["login_failures"][0]["message"] == "Terminal: Authorization failed"
    assert [t["to"] for t in history["transitions"]][-1] == "CONNECTED"
    assert history["trade_outcomes"] == []
    if history["audits"] is None:  # until the DuckDB archive reads audit records
        assert "audits" in history["unavailable"]


def test_an_archive_that_keeps_nothing_says_so() -> None:
    history = read_history(NullArchive(), "acc-1", 10)
    assert history.transitions is None and history.audits is None
    assert set(history.unavailable) == {"transitions", "login_failures", "trade_outcomes", "audits"}
    assert "NullArchive" in history.unavailable["transitions"]


def test_the_listing_follows_every_change(world: World) -> None:
    world.account("acc-1")
    with world.client() as client:
        first = client.get("/api/instances").json()["instances"]
        world.run(1)
        second = client.get("/api/instances").json()["instances"]
        client.post("/api/instances/acc-1/disable")
        third = client.get("/api/instances", params={"status": "INACTIVE"}).json()["instances"]
        fourth = client.get("/api/instances").json()["instances"]
    assert [r["status"] for r in (*first, *second, *third, *fourth)] == [
        "CONNECTING",
        "CONNECTED",
        "INACTIVE",
        "INACTIVE",
    ]
