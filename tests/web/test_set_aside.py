"""Set-aside notifications in the API and the console (SPEC section 14), over a real
uvicorn: listed for a viewer, redelivered by an operator, every redelivery audited.

The notifier is down for real (it raises), the relay sets the alerts aside after its
tries on the fleet's fake clock, and the redelivered ones reach the notifier once it
is back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import attrs
import pytest

from mt5lifecycle import AlertKind, Credentials, Fleet, Lifecycle, Policy, Reason, State
from mt5lifecycle.builtin.memory import MemoryStateStore
from mt5lifecycle.core.records import Notification
from mt5lifecycle.core.snapshot import Snapshot
from mt5lifecycle.ports import LockToken, Stored
from mt5lifecycle.testing import RecordingNotifier, memory_backends, run_for
from mt5lifecycle.web import create_app

from .conftest import OPERATOR, PASSWORD, TOKENS, VIEWER, World, serving
from .test_api import closed, error_of, operator_client
from .test_console_security import csrf_of, signed_in

MakeWorld = Callable[..., World]

HOOK = "https://hooks.example.com/services/T000/B000/hook-secret-7f3a"
FIELDS = {
    "instance_id", "notification_id", "kind", "reason", "message", "at", "set_aside_at",
    "error",
}  # fmt: skip
QUICK = Policy(max_delivery_attempts=2, delivery_backoff=1.0, delivery_backoff_max=2.0)
"""Two tries a second apart: set aside within seconds of the fleet's time."""


class Channel(RecordingNotifier):
    """A notifier that is down (it raises, quoting its webhook URL) until ``up``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def notify(self, notification: Notification) -> None:
        if self.down:
            raise ConnectionError(f"POST {HOOK} failed: connection refused")
        super().notify(notification)


@pytest.fixture
def channel() -> Channel:
    return Channel()


@pytest.fixture
def down(make_world: MakeWorld, channel: Channel) -> World:
    """acc-1 exhausted its password while the channel was down: two alerts set aside
    (REPEATED_LOGIN_FAILURE, then LOGIN_FAILURE); acc-2 is connected and has none."""
    world = make_world(notifier=channel, fleet_policy=QUICK)
    world.account("acc-2")
    world.broker.fail_logins("acc-1", Reason.AUTH_FAILED)
    world.account("acc-1")
    world.run(300)
    assert aside_kinds(world) == [AlertKind.REPEATED_LOGIN_FAILURE, AlertKind.LOGIN_FAILURE]
    return world


def store_of(world: World) -> MemoryStateStore:
    state = world.backends.state
    assert isinstance(state, MemoryStateStore)
    return state


def aside_kinds(world: World) -> list[AlertKind]:
    return [s.notification.kind for s in store_of(world).set_aside_notifications()]


# --- GET /api/notifications/set-aside -------------------------------------------------


def test_a_viewer_lists_the_set_aside_notifications(down: World) -> None:
    with down.client(VIEWER) as viewer:
        response = viewer.get("/api/notifications/set-aside")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    first, second = body["notifications"]
    assert set(first) == FIELDS
    assert (first["instance_id"], first["kind"]) == ("acc-1", "REPEATED_LOGIN_FAILURE")
    assert (second["kind"], second["reason"]) == ("LOGIN_FAILURE", "LOGIN_ATTEMPTS_EXHAUSTED")
    assert first["set_aside_at"] <= second["set_aside_at"]  # oldest set aside first
    ids = {s.notification.id for s in store_of(down).set_aside_notifications()}
    assert {first["notification_id"], second["notification_id"]} == ids
    # The notifier's words, with the webhook's URL (its secret) cut to the scheme.
    assert first["error"] == "ConnectionError: POST https://... failed: connection refused"
    assert "hook-secret" not in response.text
    assert PASSWORD not in response.text


def test_the_list_filters_by_instance(down: World) -> None:
    with down.client(VIEWER) as viewer:
        mine = viewer.get("/api/notifications/set-aside", params={"instance": "acc-1"}).json()
        none = viewer.get("/api/notifications/set-aside?instance=acc-2&instance=acc-9").json()
        bad = viewer.get("/api/notifications/set-aside", params={"instance": "-x"})
    assert mine["count"] == 2
    assert none == {"notifications": [], "count": 0}
    assert error_of(bad, 422, "invalid").startswith("instance")
    assert bad.json()["field"] == "instance"


def test_nothing_set_aside_is_an_empty_list(world: World) -> None:
    world.account("acc-1")
    world.run(1)
    with world.client(VIEWER) as viewer:
        assert viewer.get("/api/notifications/set-aside").json() == {
            "notifications": [],
            "count": 0,
        }
        error_of(viewer.get("/api/notifications/set-aside", headers={"Authorization": ""}), 401)


# --- POST /api/instances/{id}/redeliver --------------------------------------------------


def test_redelivering_all_hands_them_to_the_notifier_at_once(down: World, channel: Channel) -> None:
    channel.down = False
    with down.client() as client:
        response = client.post("/api/instances/acc-1/redeliver")
        after = client.get("/api/notifications/set-aside").json()
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "acc-1", "redelivered": 2}
    # The fleet here drives acc-1: it read the instance back and delivered, no waiting.
    assert channel.kinds("acc-1") == [AlertKind.REPEATED_LOGIN_FAILURE, AlertKind.LOGIN_FAILURE]
    assert after["count"] == 0
    [audit] = down.archive.audits
    assert (audit.actor, audit.action, audit.outcome) == ("alice", "redeliver", "done")
    assert (audit.source, audit.dest) == (State.FAILED, State.FAILED)
    assert audit.detail == "2 set-aside notification(s) put back for delivery (all)"


def test_redelivering_some_leaves_the_others_set_aside(down: World, channel: Channel) -> None:
    channel.down = False
    first, second = store_of(down).set_aside_notifications()
    with down.client() as client:
        response = client.post(
            "/api/instances/acc-1/redeliver", json={"ids": [second.notification.id, "gone"]}
        )
        again = client.post(
            "/api/instances/acc-1/redeliver", json={"ids": [second.notification.id]}
        )
    assert response.json() == {"id": "acc-1", "redelivered": 1}
    assert again.json() == {"id": "acc-1", "redelivered": 0}
    assert channel.kinds("acc-1") == [AlertKind.LOGIN_FAILURE]
    assert [s.notification for s in store_of(down).set_aside_notifications()] == [
        first.notification
    ]
    assert [a.detail for a in down.archive.audits] == [
        "1 set-aside notification(s) put back for delivery (2 asked)",
        "0 set-aside notification(s) put back for delivery (1 asked)",
    ]


def test_a_notifier_still_down_sets_them_aside_again(down: World, channel: Channel) -> None:
    with down.client() as client:
        assert client.post("/api/instances/acc-1/redeliver").json()["redelivered"] == 2
    down.run(30)
    assert aside_kinds(down) == [AlertKind.REPEATED_LOGIN_FAILURE, AlertKind.LOGIN_FAILURE]
    assert channel.notifications == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"ids": []}, "at least one"),
        ({"ids": "abc"}, "a list"),
        ({"ids": ["has space"]}, "printable ASCII"),
        ({"ids": [7]}, "printable ASCII"),
        ({"ids": ["x" * 129]}, "printable ASCII"),
        ({"ids": ["a"] * 1001}, "more than 1000"),
        ({"all": True}, "unknown field"),
    ],
)
def test_redelivering_with_bad_input_is_422_and_changes_nothing(
    down: World, body: dict[str, object], why: str
) -> None:
    with down.client() as client:
        response = client.post("/api/instances/acc-1/redeliver", json=body)
    assert why in error_of(response, 422, "invalid")
    assert len(aside_kinds(down)) == 2
    assert down.archive.audits == []


def test_a_viewer_may_not_redeliver_and_the_refusal_is_audited(down: World) -> None:
    with down.client(VIEWER) as viewer:
        message = error_of(viewer.post("/api/instances/acc-1/redeliver"), 403, "forbidden")
    assert "bob" in message and "redeliver" in message
    assert len(aside_kinds(down)) == 2
    [audit] = down.archive.audits
    assert (audit.actor, audit.action, audit.outcome) == ("bob", "redeliver", "refused")


def test_redelivering_for_an_unknown_instance_is_404(world: World) -> None:
    with world.client() as client:
        error_of(client.post("/api/instances/nobody/redeliver"), 404, "not_found")
        error_of(client.post("/api/instances/-bad/redeliver"), 422, "invalid")


def test_redelivering_for_a_confirmed_closure_is_409_as_nothing_drives_it(world: World) -> None:
    closed(world)
    with world.client() as client:
        client.post("/api/instances/acc-1/confirm-closure", json={"confirm": "acc-1"})
        response = client.post("/api/instances/acc-1/redeliver")
    assert "closure was confirmed" in error_of(response, 409, "conflict")
    assert [(a.action, a.outcome) for a in world.archive.audits][-1] == ("redeliver", "refused")


def test_without_a_fleet_the_driving_fleet_delivers_them(
    make_world: MakeWorld, channel: Channel
) -> None:
    world = make_world(with_fleet=False, notifier=channel)
    driver = Fleet(world.backends, QUICK, workers=1)  # another process's, on the same stores
    world.broker.fail_logins("acc-1", Reason.AUTH_FAILED)
    world.backends.credentials.put("acc-1", Credentials(5012345, "Broker-Demo", PASSWORD))
    driver.add("acc-1")
    run_for(driver, world.clock, 300)
    assert len(aside_kinds(world)) == 2
    channel.down = False
    with world.client() as client:
        assert client.post("/api/instances/acc-1/redeliver").json()["redelivered"] == 2
    assert channel.notifications == []  # stored; the web process delivers nothing itself
    run_for(driver, world.clock, 120)  # the driver reads the instance back
    driver.close()
    assert channel.kinds("acc-1") == [AlertKind.REPEATED_LOGIN_FAILURE, AlertKind.LOGIN_FAILURE]


# --- a store without an outbox -------------------------------------------------------------


class NoOutbox:
    """A state store with the ``StateStore`` port only: no outbox, nothing set aside."""

    def __init__(self, inner: MemoryStateStore) -> None:
        self.inner = inner

    def load(self, instance_id: str) -> Stored | None:
        return self.inner.load(instance_id)

    def load_many(self, instance_ids: Iterable[str]) -> dict[str, Stored]:
        return self.inner.load_many(instance_ids)

    def ids(self) -> Iterator[str]:
        return self.inner.ids()

    def commit(
        self,
        instance_id: str,
        snapshot: Snapshot,
        *,
        expected_version: int,
        lock: LockToken | None = None,
    ) -> int:
        return self.inner.commit(
            instance_id, snapshot, expected_version=expected_version, lock=lock
        )

    def delete(self, instance_id: str) -> None:
        self.inner.delete(instance_id)

    def acquire_lock(self, instance_id: str, ttl: float) -> LockToken | None:
        return self.inner.acquire_lock(instance_id, ttl)

    def release_lock(self, lock: LockToken) -> None:
        self.inner.release_lock(lock)


def test_a_store_without_an_outbox_is_501_naming_it() -> None:
    memory = memory_backends()
    inner = memory.state
    assert isinstance(inner, MemoryStateStore)
    backends = attrs.evolve(memory, state=NoOutbox(inner))
    backends.credentials.put("acc-1", Credentials(1, "S", PASSWORD))
    Lifecycle("acc-1", backends).start()
    app = create_app(backends, tokens=TOKENS)
    with serving(app) as url, operator_client(url) as client:
        listed = client.get("/api/notifications/set-aside")
        redelivered = client.post("/api/instances/acc-1/redeliver")
        console = signed_in(url, OPERATOR)
        page = console.get("/")
        confirm = console.get("/instances/acc-1/redeliver")
        console.close()
    message = error_of(listed, 501, "not_supported")
    assert "NoOutbox" in message and "keeps no outbox" in message
    assert "keeps no outbox" in error_of(redelivered, 501, "not_supported")
    audits = memory.archive.audits  # type: ignore[attr-defined]
    assert [(a.action, a.outcome) for a in audits] == [("redeliver", "refused")]
    assert page.status_code == 200 and "keeps no outbox" in page.text
    assert confirm.status_code == 501


# --- the console ------------------------------------------------------------------------


def test_the_console_lists_them_and_an_operator_redelivers_with_confirmation(
    down: World, channel: Channel
) -> None:
    client = signed_in(down.url)
    fleet = client.get("/")
    assert "Notifications set aside" in fleet.text
    assert '<span class="pill" data-set-aside-total>2</span>' in fleet.text
    assert "REPEATED_LOGIN_FAILURE" in fleet.text and "hook-secret" not in fleet.text
    first, second = store_of(down).set_aside_notifications()
    link = f"/instances/acc-1/redeliver?nid={second.notification.id}"
    assert f'href="{link}"' in fleet.text
    live = client.get("/live").json()["set_aside"]
    assert live["total"] == 2 and [r["kind"] for r in live["rows"]] == [
        "LOGIN_FAILURE", "REPEATED_LOGIN_FAILURE",
    ]  # fmt: skip
    assert live["rows"][0]["live"] is True

    # The confirmation lists them, the one followed from the fleet page ticked alone.
    confirm = client.get(link)
    assert confirm.status_code == 200
    assert f'name="nid" value="{second.notification.id}" checked' in confirm.text
    assert f'name="nid" value="{first.notification.id}">' in confirm.text

    # Without the CSRF token nothing happens.
    forged = client.post("/instances/acc-1/redeliver", data={"nid": second.notification.id})
    assert forged.status_code == 403
    assert len(aside_kinds(down)) == 2

    # Nothing ticked: nothing changes.
    empty = client.post("/instances/acc-1/redeliver", data={"csrf": csrf_of(confirm)})
    assert empty.status_code == 303
    assert len(aside_kinds(down)) == 2
    assert "Nothing chosen" in client.get("/instances/acc-1").text

    channel.down = False
    done = client.post(
        "/instances/acc-1/redeliver",
        data={"csrf": csrf_of(confirm), "nid": second.notification.id},
    )
    assert done.status_code == 303 and done.headers["location"] == "/instances/acc-1"
    page = client.get("/instances/acc-1")
    assert "1 notification(s) of acc-1 put back for delivery" in page.text
    assert channel.kinds("acc-1") == [AlertKind.LOGIN_FAILURE]
    assert aside_kinds(down) == [AlertKind.REPEATED_LOGIN_FAILURE]
    # The instance's page lists what is left, with its own redeliver dialog.
    assert 'data-dialog="dlg-redeliver"' in page.text
    assert '<dialog id="dlg-redeliver"' in page.text
    assert client.get("/instances/acc-1/live").json()["set_aside"]["total"] == 1
    [audit] = down.archive.audits
    assert (audit.actor, audit.action, audit.outcome) == ("alice", "redeliver", "done")
    client.close()


def test_a_viewer_sees_them_without_a_redeliver_button_and_is_refused(down: World) -> None:
    client = signed_in(down.url, VIEWER)
    fleet = client.get("/")
    assert "REPEATED_LOGIN_FAILURE" in fleet.text
    assert "/redeliver" not in fleet.text
    page = client.get("/instances/acc-1")
    assert "LOGIN_FAILURE" in page.text and "dlg-redeliver" not in page.text
    refused = client.post("/instances/acc-1/redeliver", data={"csrf": csrf_of(page)})
    assert refused.status_code == 403
    assert client.get("/instances/acc-1/redeliver").status_code == 403
    assert len(aside_kinds(down)) == 2
    assert [(a.actor, a.outcome) for a in down.archive.audits] == [("bob", "refused")]
    client.close()


def test_an_instance_with_nothing_set_aside_says_so(world: World) -> None:
    world.account("acc-1")
    world.run(1)
    client = signed_in(world.url)
    page = client.get("/instances/acc-1")
    assert "No notification is set aside" in page.text
    confirm = client.get("/instances/acc-1/redeliver")
    assert "Nothing of acc-1 is set aside now" in confirm.text
    client.close()
