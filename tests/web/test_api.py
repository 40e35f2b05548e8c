"""The JSON API of SPEC section 13, row by row, over a real uvicorn, with httpx.

Each row is driven with both roles, without a token and with a wrong one; every error
answer is ``{"error", "message"}`` with the status the SPEC gives it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

import attrs
import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from mt5lifecycle import Backends, Credentials, Fleet, Reason, State, StoreUnavailable
from mt5lifecycle.adapters.prometheus import PrometheusMetrics
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.builtin.memory import MemoryArchive, MemoryCredentialStore, MemoryStateStore
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.errors import CredentialsRejected
from mt5lifecycle.ports import Entry, LockToken
from mt5lifecycle.testing import FakeBroker, FakeClock, memory_backends, run_for
from mt5lifecycle.web import create_app
from mt5lifecycle.web.errors import from_library

from .conftest import OPERATOR, PASSWORD, T0, TOKENS, VIEWER, World, serving

MakeWorld = Callable[..., World]

ACTIONS = [
    ("POST", "/api/instances", {"id": "n-1", "login": 7, "server": "S", "password": "p"}),
    ("PUT", "/api/instances/acc-1/credentials", {"login": 7, "server": "S", "password": "p"}),
    ("POST", "/api/instances/acc-1/reset", {}),
    ("POST", "/api/instances/acc-1/disable", {}),
    ("POST", "/api/instances/acc-1/confirm-closure", {"confirm": "acc-1"}),
]
READS = [("GET", "/api/instances"), ("GET", "/api/instances/acc-1")]


def operator_client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {OPERATOR}"})


def error_of(response: httpx.Response, status: int, error: str | None = None) -> str:
    """The error answer's message, once its status and shape are checked."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message"}
    assert isinstance(body["message"], str) and body["message"]
    if error is not None:
        assert body["error"] == error
    return str(body["message"])


def exhausted(world: World, instance_id: str = "acc-1") -> None:
    """An instance whose password the broker refused five times in a row."""
    world.broker.fail_logins(instance_id, Reason.AUTH_FAILED)
    world.account(instance_id)
    world.run(200)
    assert world.backends.state.load(instance_id).snapshot.status is State.FAILED  # type: ignore[union-attr]


def closed(world: World, instance_id: str = "acc-1") -> None:
    """An instance whose account the broker closed, with one position closed for it."""
    world.account(instance_id)
    world.run(1)
    world.broker.open_position(instance_id, 101, "EURUSD", 1.0)
    world.broker.close_account(instance_id)
    world.run(200)
    assert world.backends.state.load(instance_id).snapshot.status is State.ACCOUNT_CLOSED  # type: ignore[union-attr]


def status_of(world: World, instance_id: str) -> State | None:
    stored = world.backends.state.load(instance_id)
    return None if stored is None else stored.snapshot.status


# --- authentication, for every row ----------------------------------------------------


@pytest.mark.parametrize(("method", "path"), READS + [(m, p) for m, p, _ in ACTIONS])
def test_every_call_needs_a_token(world: World, method: str, path: str) -> None:
    world.account("acc-1")
    with world.client(None) as anonymous:
        response = anonymous.request(method, path, json={})
    error_of(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header", [f"Bearer {OPERATOR}x", f"Bearer {VIEWER[:-1]}", f"Basic {OPERATOR}", "Bearer"]
)
@pytest.mark.parametrize(("method", "path"), READS + [(m, p) for m, p, _ in ACTIONS])
def test_a_wrong_token_is_refused(world: World, method: str, path: str, header: str) -> None:
    world.account("acc-1")
    with httpx.Client(base_url=world.url, headers={"Authorization": header}) as client:
        response = client.request(method, path, json={})
    error_of(response, 401, "unauthorized")


@pytest.mark.parametrize(("method", "path"), READS)
def test_a_viewer_reads(world: World, method: str, path: str) -> None:
    world.account("acc-1")
    with world.client(VIEWER) as viewer:
        assert viewer.request(method, path).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ACTIONS)
def test_a_viewer_may_not_act_and_nothing_changes(
    world: World, method: str, path: str, body: dict[str, object]
) -> None:
    world.account("acc-1")
    world.run(1)
    before = world.backends.state.load("acc-1")
    with world.client(VIEWER) as viewer:
        message = error_of(viewer.request(method, path, json=body), 403, "forbidden")
    assert "bob" in message and "viewer" in message
    assert world.backends.state.load("acc-1") == before
    assert world.backends.state.load("n-1") is None
    assert world.backends.credentials.get("n-1") is None
    assert world.backends.credentials.get("acc-1") == Credentials(5012345, "Broker-Demo", PASSWORD)
    if "acc-1" in path:
        refused = [a for a in world.archive.audits if a.actor == "bob"]
        assert [(a.outcome, a.instance_id) for a in refused] == [("refused", "acc-1")]


# --- GET /api/instances -------------------------------------------------------------


def test_the_list_has_every_instance_with_the_snapshot_fields(world: World) -> None:
    world.account("acc-1")
    exhausted(world, "acc-2")
    with world.client() as client:
        body = client.get("/api/instances").json()
    assert body["count"] == 2
    rows = {row["id"]: row for row in body["instances"]}
    assert set(rows) == {"acc-1", "acc-2"}
    fields = {
        "id", "status", "connection_state", "login_attempt_count", "last_login_attempt",
        "login_failure_reason", "last_failure_reason", "restart_count", "next_due", "due",
        "needs_attention",
    }  # fmt: skip
    assert set(rows["acc-1"]) == fields
    assert rows["acc-1"]["status"] == "CONNECTED"
    assert rows["acc-1"]["connection_state"] == "CONNECTED"
    failed = rows["acc-2"]
    assert failed["status"] == "FAILED"
    assert failed["last_failure_reason"] == "LOGIN_ATTEMPTS_EXHAUSTED"
    assert failed["login_failure_reason"] == "AUTH_FAILED"
    assert failed["login_attempt_count"] == 5
    assert failed["needs_attention"] is True
    when = datetime.fromisoformat(failed["last_login_attempt"])
    assert when.utcoffset() is not None and when.timestamp() == T0 + 105


def test_the_list_filters_by_status(world: World) -> None:
    world.account("acc-1")
    exhausted(world, "acc-2")
    with world.client() as client:
        only = client.get("/api/instances", params={"status": "FAILED"}).json()
        both = client.get("/api/instances?status=FAILED&status=CONNECTED").json()
        none = client.get("/api/instances", params={"status": "INACTIVE"}).json()
        bad = client.get("/api/instances", params={"status": "failed"})
    assert [r["id"] for r in only["instances"]] == ["acc-2"]
    assert both["count"] == 2
    assert none == {"instances": [], "count": 0}
    assert "status" in error_of(bad, 422, "invalid")
    assert bad.json()["field"] == "status"


def test_an_empty_fleet_lists_nothing(world: World) -> None:
    with world.client() as client:
        assert client.get("/api/instances").json() == {"instances": [], "count": 0}


# --- GET /api/instances/{id} -------------------------------------------------------------


def test_one_instance_has_its_snapshot_and_history(world: World) -> None:
    exhausted(world)
    with world.client() as client:
        client.post("/api/instances/acc-1/reset", json={"force": True})
        body = client.get("/api/instances/acc-1").json()
    instance = body["instance"]
    assert instance["id"] == "acc-1" and instance["closure_confirmed"] is False
    history = body["history"]
    assert set(history) == {
        "transitions", "login_failures", "trade_outcomes", "audits", "unavailable", "truncated",
    }  # fmt: skip
    assert history["unavailable"] == {}
    failures = history["login_failures"]
    assert [f["attempt"] for f in failures] == [1, 2, 3, 4, 5]
    assert failures[0]["reason"] == "AUTH_FAILED"
    assert failures[0]["message"] == "Terminal: Authorization failed"
    assert failures[0]["code"] == -6
    events = [(t["event"], t["from"], t["to"]) for t in history["transitions"]]
    assert events[0] == ("start", None, "CONNECTING")
    assert ("reset", "FAILED", "CONNECTING") in events
    audits = history["audits"]
    assert [(a["actor"], a["action"], a["outcome"], a["from"], a["to"]) for a in audits] == [
        ("alice", "reset", "done", "FAILED", "CONNECTING")
    ]
    assert history["trade_outcomes"] == []


def test_the_history_is_cut_to_the_limit_asked(world: World) -> None:
    exhausted(world)
    with world.client() as client:
        body = client.get("/api/instances/acc-1", params={"limit": 2}).json()
        bad = client.get("/api/instances/acc-1", params={"limit": "0"})
        huge = client.get("/api/instances/acc-1", params={"limit": "9" * 5000})
    assert [f["attempt"] for f in body["history"]["login_failures"]] == [4, 5]
    assert body["history"]["truncated"]["login_failures"] == 5
    assert error_of(bad, 422, "invalid").startswith("limit")
    assert error_of(huge, 422, "invalid").startswith("limit")


def test_an_unknown_instance_is_404_and_a_bad_id_422(world: World) -> None:
    with world.client() as client:
        assert "nobody" in error_of(client.get("/api/instances/nobody"), 404, "not_found")
        bad = client.get("/api/instances/-starts-with-a-dash")
        assert error_of(bad, 422, "invalid").startswith("id")
        assert bad.json()["field"] == "id"


def test_a_history_the_archive_cannot_give_is_unavailable_not_an_error(
    make_world: MakeWorld,
) -> None:
    class Broken:
        def history(self, instance_id: str) -> list[object]:
            raise OSError("disk on fire")

    world = make_world(history=Broken())
    world.account("acc-1")
    with world.client() as client:
        body = client.get("/api/instances/acc-1").json()
    history = body["history"]
    assert history["transitions"] is None and history["login_failures"] is None
    assert history["unavailable"]["transitions"] == "the archive could not be read (OSError)"
    assert "cannot read its login_failures back" in history["unavailable"]["login_failures"]
    assert body["instance"]["status"] == "CONNECTING"


# --- POST /api/instances ----------------------------------------------------------------


def test_adding_an_account_stores_it_starts_it_and_audits_it(world: World) -> None:
    with world.client() as client:
        response = client.post(
            "/api/instances",
            json={"id": "new-1", "login": 5550001, "server": "Broker-Live", "password": PASSWORD},
        )
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/api/instances/new-1"
    assert response.json()["status"] == "CONNECTING"
    assert world.backends.credentials.get("new-1") == Credentials(5550001, "Broker-Live", PASSWORD)
    assert world.fleet is not None and "new-1" in world.fleet
    world.run(1)
    assert status_of(world, "new-1") is State.CONNECTED
    [audit] = world.archive.audits
    assert (audit.actor, audit.action, audit.outcome, audit.dest) == (
        "alice", "add", "done", State.CONNECTING,
    )  # fmt: skip
    assert audit.detail == "login 5550001 on server 'Broker-Live'"
    assert PASSWORD not in world.everything_archived()


def test_adding_an_id_that_exists_is_409_and_changes_nothing(world: World) -> None:
    world.account("acc-1")
    before = world.backends.credentials.get("acc-1")
    with world.client() as client:
        response = client.post(
            "/api/instances", json={"id": "acc-1", "login": 1, "server": "Other", "password": "x"}
        )
    assert "already exists" in error_of(response, 409, "conflict")
    assert world.backends.credentials.get("acc-1") == before
    assert [a.outcome for a in world.archive.audits] == ["refused"]


def test_adding_an_id_whose_closure_was_confirmed_is_409(world: World) -> None:
    closed(world)
    with world.client() as client:
        assert (
            client.post(
                "/api/instances/acc-1/confirm-closure", json={"confirm": "acc-1"}
            ).status_code
            == 200
        )
        response = client.post(
            "/api/instances", json={"id": "acc-1", "login": 1, "server": "S", "password": "x"}
        )
    assert "closure confirmed" in error_of(response, 409, "conflict")
    assert world.backends.credentials.get("acc-1") is None
    assert world.backends.state.load("acc-1") is None


GOOD = {"id": "n-1", "login": 5550001, "server": "Broker-Live", "password": "pw"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": None}, "id"),
        ({"id": "-x"}, "id"),
        ({"id": "a" * 129}, "id"),
        ({"id": "a/b"}, "id"),
        ({"id": 7}, "id"),
        ({"login": None}, "login"),
        ({"login": "5550001"}, "login"),
        ({"login": True}, "login"),
        ({"login": 0}, "login"),
        ({"login": -5}, "login"),
        ({"login": 2**63}, "login"),
        ({"login": 1.5}, "login"),
        ({"server": None}, "server"),
        ({"server": ""}, "server"),
        ({"server": "   "}, "server"),
        ({"server": "a\nb"}, "server"),
        ({"server": "x" * 257}, "server"),
        ({"server": 3}, "server"),
        ({"password": None}, "password"),
        ({"password": ""}, "password"),
        ({"password": "a\x00b"}, "password"),
        ({"password": "x" * 1025}, "password"),
        ({"password": ["list"]}, "password"),
        ({"extra": 1}, "body"),
    ],
)
def test_adding_with_bad_input_is_422_naming_the_field(
    world: World, change: dict[str, object], field: str
) -> None:
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with world.client() as client:
        response = client.post("/api/instances", json=body)
    message = error_of(response, 422, "invalid")
    assert response.json()["field"] == field
    assert message.startswith(field)
    assert world.backends.credentials.get("n-1") is None
    assert list(world.backends.state.ids()) == []
    assert world.archive.audits == []


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 5000 + b"]" * 5000]
)
def test_a_body_that_is_not_a_json_object_is_422(world: World, raw: bytes) -> None:
    with world.client() as client:
        response = client.post(
            "/api/instances", content=raw, headers={"Content-Type": "application/json"}
        )
    assert error_of(response, 422, "invalid").startswith("body")


def test_a_body_too_large_is_refused(world: World) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * (40 * 1024)
        yield b"x" * (40 * 1024)

    with world.client() as client:
        declared = client.post("/api/instances", content=b"x" * (65 * 1024))
        streamed = client.post("/api/instances", content=chunks())
    assert "65536 bytes" in error_of(declared, 413, "too_large")
    assert "65536 bytes" in error_of(streamed, 413, "too_large")
    assert list(world.backends.state.ids()) == []


def test_an_account_whose_start_fails_keeps_no_credentials() -> None:
    """Nothing half-done: the credentials of an account that did not start are put back."""
    backends = memory_backends()
    backends.credentials.put("n-1", Credentials(1, "Old", "old-pw"))

    class Refusing(MemoryStateStore):
        """An in-memory store refusing every write, as Redis does when it is down."""

        def commit(
            self,
            instance_id: str,
            snapshot: Snapshot | None,
            *,
            expected_version: int,
            lock: LockToken | None = None,
            outbox: Sequence[Entry] = (),
        ) -> int:
            raise StoreUnavailable(backend="redis", instance_id=instance_id, detail="down")

    store = Refusing(backends.clock)
    app = create_app(attrs.evolve(backends, state=store), tokens=TOKENS)
    with serving(app) as url, operator_client(url) as client:
        response = client.post("/api/instances", json=GOOD)
    assert "nothing was changed" in error_of(response, 503, "unavailable")
    assert backends.credentials.get("n-1") == Credentials(1, "Old", "old-pw")
    assert store.load("n-1") is None


# --- PUT /api/instances/{id}/credentials --------------------------------------------------


def test_replacing_credentials_is_204_and_audited(world: World) -> None:
    exhausted(world)
    with world.client() as client:
        response = client.put(
            "/api/instances/acc-1/credentials",
            json={"login": 5012345, "server": "Broker-Demo", "password": "the-new-one"},
        )
    assert response.status_code == 204 and response.content == b""
    assert world.backends.credentials.get("acc-1") == Credentials(
        5012345, "Broker-Demo", "the-new-one"
    )
    [audit] = world.archive.audits
    assert (audit.action, audit.outcome, audit.source) == ("put_credentials", "done", State.FAILED)
    assert "the-new-one" not in world.everything_archived()


def test_replacing_credentials_of_an_unknown_instance_is_404(world: World) -> None:
    with world.client() as client:
        response = client.put(
            "/api/instances/nobody/credentials", json={"login": 1, "server": "S", "password": "p"}
        )
    error_of(response, 404, "not_found")
    assert world.backends.credentials.get("nobody") is None


def test_replacing_credentials_of_a_closed_account_is_409(world: World) -> None:
    closed(world)
    before = world.backends.credentials.get("acc-1")
    with world.client() as client:
        response = client.put(
            "/api/instances/acc-1/credentials", json={"login": 1, "server": "S", "password": "p"}
        )
    assert "ACCOUNT_CLOSED" in error_of(response, 409, "conflict")
    assert world.backends.credentials.get("acc-1") == before


@pytest.mark.parametrize(
    "body",
    [{}, {"login": 1, "server": "S"}, {"login": "1", "server": "S", "password": "p"}, {"id": "x"}],
)
def test_replacing_credentials_with_bad_input_is_422(world: World, body: dict[str, object]) -> None:
    world.account("acc-1")
    before = world.backends.credentials.get("acc-1")
    with world.client() as client:
        error_of(client.put("/api/instances/acc-1/credentials", json=body), 422, "invalid")
    assert world.backends.credentials.get("acc-1") == before


# --- POST /api/instances/{id}/reset ----------------------------------------------------


def test_reset_logs_in_again_and_is_audited(world: World) -> None:
    world.broker.fail_logins("acc-1", Reason.AUTH_FAILED, times=5)
    world.account("acc-1")
    world.run(200)
    with world.client() as client:
        # Issue 19 refuses known-bad credentials unchanged: force tries them once more.
        response = client.post("/api/instances/acc-1/reset", json={"force": True})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "CONNECTING"
    world.run(1)
    assert status_of(world, "acc-1") is State.CONNECTED
    assert [(a.action, a.outcome, a.actor) for a in world.archive.audits] == [
        ("reset", "done", "alice")
    ]


def test_reset_where_the_table_refuses_it_is_409_with_its_message(world: World) -> None:
    world.account("acc-1")
    world.run(1)
    with world.client() as client:
        message = error_of(client.post("/api/instances/acc-1/reset"), 409, "conflict")
    assert message == (
        "instance 'acc-1' refuses 'reset' in state CONNECTED: "
        "the transition table has no such transition"
    )
    assert status_of(world, "acc-1") is State.CONNECTED
    assert [(a.action, a.outcome) for a in world.archive.audits] == [("reset", "refused")]


@pytest.mark.parametrize("body", [{"force": "yes"}, {"force": 1}, {"forse": True}, [True]])
def test_reset_with_bad_input_is_422(world: World, body: object) -> None:
    exhausted(world)
    with world.client() as client:
        error_of(client.post("/api/instances/acc-1/reset", json=body), 422, "invalid")
    assert status_of(world, "acc-1") is State.FAILED


def test_reset_of_an_unknown_instance_is_404(world: World) -> None:
    with world.client() as client:
        error_of(client.post("/api/instances/nobody/reset"), 404, "not_found")


def test_credentials_rejected_is_409() -> None:
    error = from_library(CredentialsRejected(instance_id="acc-1"))
    assert (error.status, error.error) == (409, "credentials_rejected")
    assert "force" in error.message


def test_reset_without_force_after_exhaustion_is_done_or_refused_whole(world: World) -> None:
    """Issue 19 (the runtime's) refuses known-bad credentials unchanged; either way the
    answer is whole: 200 and logging in, or 409 ``credentials_rejected`` and unchanged."""
    exhausted(world)
    with world.client() as client:
        response = client.post("/api/instances/acc-1/reset")
    if response.status_code == 409:
        assert response.json()["error"] == "credentials_rejected"
        assert status_of(world, "acc-1") is State.FAILED
    else:
        assert response.status_code == 200, response.text
        assert status_of(world, "acc-1") is State.CONNECTING


# --- POST /api/instances/{id}/disable -----------------------------------------------


def test_disable_takes_it_out_of_service(world: World) -> None:
    world.account("acc-1")
    world.run(1)
    with world.client() as client:
        response = client.post("/api/instances/acc-1/disable")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["last_failure_reason"]) == ("INACTIVE", "MANUAL")
    assert world.broker.stops("acc-1") == 1


def test_disable_of_a_closed_account_is_409(world: World) -> None:
    closed(world)
    with world.client() as client:
        error_of(client.post("/api/instances/acc-1/disable"), 409, "conflict")
    assert status_of(world, "acc-1") is State.ACCOUNT_CLOSED


def test_disable_takes_no_body(world: World) -> None:
    world.account("acc-1")
    with world.client() as client:
        error_of(client.post("/api/instances/acc-1/disable", json={"now": True}), 422, "invalid")


# --- POST /api/instances/{id}/confirm-closure -------------------------------------------


def test_confirm_closure_needs_the_id_typed_again(world: World) -> None:
    closed(world)
    with world.client() as client:
        for body in ({}, {"confirm": "acc-2"}, {"confirm": "ACC-1"}, {"confirm": True}):
            response = client.post("/api/instances/acc-1/confirm-closure", json=body)
            assert error_of(response, 422, "invalid").startswith("confirm")
        error_of(client.post("/api/instances/acc-1/confirm-closure"), 422, "invalid")
    assert status_of(world, "acc-1") is State.ACCOUNT_CLOSED
    assert world.backends.credentials.get("acc-1") is not None


def test_confirm_closure_deletes_credentials_and_state_keeping_the_history(world: World) -> None:
    closed(world)
    with world.client() as client:
        response = client.post("/api/instances/acc-1/confirm-closure", json={"confirm": "acc-1"})
        assert response.status_code == 200, response.text
        assert response.json() == {"id": "acc-1", "status": "INACTIVE", "closure_confirmed": True}
        after = client.get("/api/instances/acc-1").json()
        listed = client.get("/api/instances").json()
        again = client.post("/api/instances/acc-1/reset")
    assert world.backends.credentials.get("acc-1") is None
    assert world.backends.state.load("acc-1") is None
    assert world.archive.is_confirmed("acc-1")
    assert after["instance"] == {"id": "acc-1", "status": "INACTIVE", "closure_confirmed": True}
    [outcome] = after["history"]["trade_outcomes"]
    assert (outcome["ticket"], outcome["outcome"], outcome["retcode"]) == (101, "CLOSED", 10009)
    assert listed["count"] == 0
    assert "closure was confirmed" in error_of(again, 409, "conflict")
    actions = [(a.action, a.outcome) for a in world.archive.audits]
    assert actions == [("confirm_closure", "done"), ("reset", "refused")]


def test_confirm_closure_of_an_open_account_is_409(world: World) -> None:
    world.account("acc-1")
    world.run(1)
    with world.client() as client:
        response = client.post("/api/instances/acc-1/confirm-closure", json={"confirm": "acc-1"})
    error_of(response, 409, "conflict")
    assert world.backends.credentials.get("acc-1") is not None


# --- /healthz, /readyz, /metrics ---------------------------------------------------------


def test_healthz_and_readyz_need_no_token(world: World) -> None:
    with world.client(None) as client:
        assert client.get("/healthz").json() == {"alive": True}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "backends": {"state": "ok", "credentials": "ok", "archive": "ok"},
    }


def dead_redis() -> RedisStateStore:
    """A real client pointed at a port where nothing listens: every call fails at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    return RedisStateStore(client, prefix="mt5l-web-dead")


def dead_backends() -> Backends:
    clock = FakeClock(T0)
    return Backends(
        state=dead_redis(),
        credentials=MemoryCredentialStore(),
        broker=FakeBroker(clock),
        clock=clock,
        archive=MemoryArchive(),
    )


def test_readyz_names_the_backend_that_is_down() -> None:
    app = create_app(dead_backends(), tokens=TOKENS)
    with serving(app) as url:
        response = httpx.get(f"{url}/readyz")
    assert "state" in error_of(response, 503, "unavailable")
    assert response.json()["backends"] == {
        "state": "unavailable (StoreUnavailable)",
        "credentials": "ok",
        "archive": "ok",
    }


def test_readyz_gives_up_on_a_backend_that_does_not_answer() -> None:
    release = threading.Event()

    class Hanging(MemoryCredentialStore):
        def get(self, instance_id: str) -> Credentials | None:
            release.wait(5)
            return None

    backends = attrs.evolve(memory_backends(), credentials=Hanging())
    app = create_app(backends, tokens=TOKENS, readiness_timeout=0.2)
    try:
        with serving(app) as url:
            response = httpx.get(f"{url}/readyz")
    finally:
        release.set()
    assert "credentials" in error_of(response, 503, "unavailable")
    assert response.json()["backends"]["credentials"] == "no answer within 0.2 s"
    assert response.json()["backends"]["state"] == "ok"


def test_a_store_that_is_down_is_503_for_reads_and_actions() -> None:
    app = create_app(dead_backends(), tokens=TOKENS)
    with serving(app) as url, operator_client(url) as client:
        error_of(client.get("/api/instances"), 503, "unavailable")
        error_of(client.get("/api/instances/acc-1"), 503, "unavailable")
        error_of(client.post("/api/instances/acc-1/reset"), 503, "unavailable")
        error_of(client.post("/api/instances", json=GOOD), 503, "unavailable")


def test_metrics_serve_the_prometheus_series_without_a_token() -> None:
    backends = attrs.evolve(memory_backends(), metrics=PrometheusMetrics(CollectorRegistry()))
    fleet = Fleet(backends, workers=1)
    backends.credentials.put("acc-1", Credentials(1, "S", PASSWORD))
    fleet.add("acc-1")
    run_for(fleet, backends.clock, 1)
    app = create_app(backends, tokens=TOKENS, fleet=fleet)
    with serving(app) as url:
        response = httpx.get(f"{url}/metrics")
    fleet.close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'mt5lifecycle_instances{state="CONNECTED"} 1.0' in response.text
    assert PASSWORD not in response.text


def test_metrics_can_need_a_token() -> None:
    backends = attrs.evolve(memory_backends(), metrics=PrometheusMetrics(CollectorRegistry()))
    app = create_app(backends, tokens=TOKENS, metrics_token=True)
    with serving(app) as url:
        error_of(httpx.get(f"{url}/metrics"), 401, "unauthorized")
        ok = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {VIEWER}"})
    assert ok.status_code == 200


def test_metrics_without_prometheus_are_404(world: World) -> None:
    error_of(httpx.get(f"{world.url}/metrics"), 404, "not_found")


# --- Starlette's own answers, in the API's shape -----------------------------------------


def test_unknown_routes_and_methods_answer_in_json(world: World) -> None:
    with world.client() as client:
        error_of(client.get("/api/nothing-here"), 404, "not_found")
        error_of(client.delete("/api/instances/acc-1"), 405, "method_not_allowed")
        error_of(client.get("/api/instances/acc-1/reset"), 405, "method_not_allowed")


def test_api_answers_carry_the_security_headers(world: World) -> None:
    with world.client() as client:
        response = client.get("/api/instances")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"


# --- without a fleet: stored, and the driving fleet acts on it ---------------------------


def test_without_a_fleet_actions_are_stored_and_the_driving_fleet_acts(
    make_world: MakeWorld,
) -> None:
    world = make_world(with_fleet=False)
    driver = Fleet(world.backends, workers=1)
    world.broker.fail_logins("acc-1", Reason.AUTH_FAILED, times=5)
    world.backends.credentials.put("acc-1", Credentials(5012345, "Broker-Demo", PASSWORD))
    driver.add("acc-1")
    run_for(driver, world.clock, 200)
    assert status_of(world, "acc-1") is State.FAILED
    logins = len(world.broker.login_times("acc-1"))
    with world.client() as client:
        response = client.post("/api/instances/acc-1/reset", json={"force": True})
        assert response.status_code == 200, response.text
        # The web process stored the reset; it logs nobody in itself.
        assert len(world.broker.login_times("acc-1")) == logins
        added = client.post("/api/instances", json=GOOD)
        assert added.status_code == 201
    # The fleet reads the stored state back at its next interval and logs in.
    run_for(driver, world.clock, 120)
    driver.close()
    assert status_of(world, "acc-1") is State.CONNECTED
    assert status_of(world, "n-1") is State.CONNECTING  # no fleet drives it yet
    assert [(a.actor, a.action, a.outcome) for a in world.archive.audits] == [
        ("alice", "reset", "done"),
        ("alice", "add", "done"),
    ]
