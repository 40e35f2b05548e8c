"""AppriseNotifier against a real SMTP server (aiosmtpd) and a real HTTP receiver.

No mocks: every channel is an apprise URL that reaches a server this test started on
a free loopback port (or a port where nothing listens, for a channel that is down).
Nothing sleeps: the tests wait on the servers' own conditions, a second or two at
most, and the lifecycle runs on a fake clock.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import attrs
import pytest

from mt5lifecycle import AlertKind, Credentials, Lifecycle, Reason, State
from mt5lifecycle.adapters._alert_text import console_links, render, render_group
from mt5lifecycle.adapters.apprise import AppriseNotifier, NotificationNotDelivered
from mt5lifecycle.core.records import Notification
from mt5lifecycle.testing import memory_backends, run_for
from tests.adapters.http_receiver import http_receiver
from tests.adapters.mail_server import free_port, mail_server

AT = datetime(2026, 1, 1, 9, 30, tzinfo=UTC)
CONSOLE = "https://console.example.com"
ACCOUNT_PASSWORD = "Tr4d3r-Pa55word!"
MAIL_PASSWORD = "Ma1l-S3cret-pw"
HOOK_PASSWORD = "H00k-S3cret-pw"
HEADER_TOKEN = "Bearer-h3ader-t0ken"
API_TOKEN = "ApiT0kenInThePath42"
QUERY_TOKEN = "Qu3ry-t0ken-value"

REASONS: dict[AlertKind, Reason | None] = {
    AlertKind.LOGIN_FAILURE: Reason.LOGIN_ATTEMPTS_EXHAUSTED,
    AlertKind.REPEATED_LOGIN_FAILURE: Reason.AUTH_FAILED,
    AlertKind.LOGIN_RECOVERED: None,
    AlertKind.ACCOUNT_BANNED: Reason.ACCOUNT_BANNED,
    AlertKind.ACCOUNT_CLOSED: Reason.ACCOUNT_CLOSED,
    AlertKind.AUTO_RECOVERY_FAILURE: Reason.RECOVERY_EXHAUSTED,
    AlertKind.CREDENTIALS_DELETED: None,
    AlertKind.BROKER_SERVER_DOWN: Reason.NETWORK,
    AlertKind.BROKER_SERVER_RECOVERED: None,
}


def notification(
    kind: AlertKind = AlertKind.ACCOUNT_CLOSED,
    instance_id: str = "acc-1",
    reason: Reason | None = None,
    message: str = "the broker closed the account",
    at: datetime = AT,
) -> Notification:
    return Notification(
        kind=kind,
        instance_id=instance_id,
        reason=reason if reason is not None else REASONS[kind],
        message=message,
        at=at,
    )


def mail_text(message: EmailMessage) -> str:
    """Subject and plain body, spaces collapsed: apprise 1.x sends e-mail as HTML with a
    plain part made from it, which keeps the words and drops the column alignment."""
    body = message.get_body(("plain", "html"))
    assert body is not None
    return " ".join(f"{message['Subject']}\n{body.get_content()}".split())


# --- the seed's case, end to end ------------------------------------------------


def test_a_closed_account_with_open_trades_sends_one_mail_and_one_json_post(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with mail_server(user="ops", password=MAIL_PASSWORD) as smtp, http_receiver() as hook:
        notifier = AppriseNotifier([smtp.url(), hook.url("/alerts", auth=f"mt5:{HOOK_PASSWORD}@")])
        backends = attrs.evolve(memory_backends(), notifier=notifier)
        broker = backends.broker
        backends.credentials.put("acc-7", Credentials(5550007, "Broker-Live", ACCOUNT_PASSWORD))
        lc = Lifecycle("acc-7", backends)
        lc.start()
        run_for(lc, backends.clock, 10)
        connected = lc.snapshot()
        assert connected is not None and connected.status is State.CONNECTED
        broker.open_position("acc-7", 101, "EURUSD", 0.5)  # type: ignore[attr-defined]
        broker.pending_order("acc-7", 202, "GBPUSD")  # type: ignore[attr-defined]
        broker.close_account("acc-7")  # type: ignore[attr-defined]

        run_for(lc, backends.clock, 300)

        assert lc.state is State.ACCOUNT_CLOSED
        (mail,) = smtp.wait_for(1)
        (post,) = hook.wait_for(1)
        assert smtp.logins == ["ops"]  # the channel logged in with its real password
        expected = "Basic " + base64.b64encode(f"mt5:{HOOK_PASSWORD}".encode()).decode()
        assert post.headers["Authorization"] == expected

    text = mail_text(mail)
    assert mail["Subject"] == "ACCOUNT_CLOSED: acc-7 (account closed by the broker)"
    assert "Instance: acc-7" in text
    assert "mt5lifecycle add NEW-ID --login N --server S" in text
    assert "mt5lifecycle confirm-closure acc-7" in text
    body = post.json()
    assert body["title"] == "ACCOUNT_CLOSED: acc-7 (account closed by the broker)"
    assert body["type"] == "failure"
    assert "acc-7" in body["message"]
    assert "mt5lifecycle add NEW-ID --login N --server S" in body["message"]
    assert body["kind"] == "ACCOUNT_CLOSED"
    assert body["instance_id"] == "acc-7"
    assert body["reason"] == "ACCOUNT_CLOSED"
    assert body["add_account"].startswith("Add a new account: mt5lifecycle add NEW-ID")
    assert datetime.fromisoformat(body["at"]).tzinfo is not None
    assert body["notification_id"] in text  # the same notification on both channels
    for secret in (ACCOUNT_PASSWORD, MAIL_PASSWORD, HOOK_PASSWORD):
        assert secret not in text
        assert secret not in post.body.decode()
        assert secret not in caplog.text
    assert any(r.name == "apprise" for r in caplog.records)  # apprise did log, at DEBUG


# --- at least once, never twice to a channel that took it ---------------------------


def test_a_channel_that_fails_then_works_gets_the_retry_and_the_others_do_not() -> None:
    with http_receiver() as hook:
        hook.fail("/pager", times=2)
        notifier = AppriseNotifier({"desk": hook.url("/desk"), "pager": hook.url("/pager")})
        desk, pager = notifier.channels
        n = notification()

        for attempt in (1, 2):
            with pytest.raises(NotificationNotDelivered) as raised:
                notifier.notify(n)
            assert list(raised.value.failed) == [pager]
            assert raised.value.delivered == (desk,)
            assert raised.value.notification_ids == (n.id,)
            assert raised.value.instance_id == "acc-1"
            assert f"not delivered to 1 of 2 channels: {pager}" in str(raised.value)
            assert len(hook.answered("/desk")) == 1, f"attempt {attempt} went to the desk again"
            assert len(hook.answered("/pager", ok=False)) == attempt

        notifier.notify(n)  # the third try works, and goes to the pager only
        assert len(hook.answered("/pager", ok=True)) == 1
        assert len(hook.answered("/desk")) == 1

        notifier.notify(n)  # delivered everywhere: a redelivery of the id sends nothing
        assert len(hook.answered()) == 4
        assert hook.answered("/pager", ok=True)[0].json()["notification_id"] == n.id


def test_a_channel_that_is_down_raises_naming_it_and_a_new_id_is_sent_again() -> None:
    closed = free_port()  # nothing listens there
    with http_receiver() as hook:
        notifier = AppriseNotifier([hook.url("/ok"), f"json://127.0.0.1:{closed}/down"])
        with pytest.raises(NotificationNotDelivered) as raised:
            notifier.notify(notification())
        assert list(raised.value.failed) == [f"JSON json://127.0.0.1:{closed}"]
        with pytest.raises(NotificationNotDelivered):
            notifier.notify(notification())  # another id: the working channel gets it too
        assert len(hook.answered("/ok")) == 2


def test_the_memory_of_deliveries_is_bounded() -> None:
    with http_receiver() as hook:
        notifier = AppriseNotifier([hook.url()], remember=2)
        first, second, third = (notification(instance_id=f"acc-{i}") for i in (1, 2, 3))
        for n in (first, second, third):
            notifier.notify(n)
        notifier.notify(third)  # remembered
        assert len(hook.answered()) == 3
        notifier.notify(first)  # forgotten: the oldest goes first
        assert len(hook.answered()) == 4


# --- grouping ---------------------------------------------------------------------


def test_notify_many_sends_one_message_per_kind_listing_the_accounts() -> None:
    closures = [
        notification(instance_id=f"acc-{i:03}", at=AT + timedelta(seconds=i)) for i in range(500)
    ]
    failure = notification(AlertKind.LOGIN_FAILURE, "bot-9", message="5 failures in a row")
    with http_receiver() as hook:
        notifier = AppriseNotifier([hook.url()], console_url=CONSOLE)
        notifier.notify_many([*closures, failure, closures[0]])
        posts = hook.answered()

    assert len(posts) == 2
    grouped, single = posts[0].json(), posts[1].json()
    assert grouped["title"] == "ACCOUNT_CLOSED: 500 accounts"
    assert grouped["count"] == "500"
    assert grouped["instance_ids"].split(",") == [n.instance_id for n in closures]
    assert grouped["notification_ids"].split(",") == [n.id for n in closures]
    assert grouped["first_at"] == "2026-01-01T09:30:00+00:00"
    assert grouped["last_at"] == "2026-01-01T09:38:19+00:00"
    text = grouped["message"]
    assert "acc-000  ACCOUNT_CLOSED  2026-01-01T09:30:00+00:00" in text
    assert "acc-019" in text
    assert "acc-020" not in text
    assert "and 480 more" in text
    assert f"{CONSOLE}/instances/new" in text
    assert len(text) < 4096  # one Telegram message
    assert single["title"] == "LOGIN_FAILURE: bot-9 (login given up)"
    assert single["count"] == "1"


def test_notify_many_sends_a_channel_only_what_it_has_not_taken() -> None:
    batch = [notification(instance_id=f"acc-{i}") for i in range(3)]
    with http_receiver() as hook:
        hook.fail("/pager", times=1)
        notifier = AppriseNotifier({"desk": hook.url("/desk"), "pager": hook.url("/pager")})
        with pytest.raises(NotificationNotDelivered):
            notifier.notify(batch[0])  # the desk takes the first one; the pager fails it
        desk_first = hook.answered("/desk")[0].json()
        notifier.notify_many(batch)

        desk = [p.json() for p in hook.answered("/desk")]
        pager = [p.json() for p in hook.answered("/pager", ok=True)]

    assert desk_first["instance_id"] == "acc-0"
    assert [d["title"] for d in desk] == [
        "ACCOUNT_CLOSED: acc-0 (account closed by the broker)",
        "ACCOUNT_CLOSED: 2 accounts",
    ]
    assert desk[1]["instance_ids"] == "acc-1,acc-2"
    assert [p["title"] for p in pager] == ["ACCOUNT_CLOSED: 3 accounts"]


def test_notify_many_raises_naming_what_was_not_delivered() -> None:
    batch = [notification(instance_id=f"acc-{i}") for i in range(3)]
    with http_receiver() as hook:
        hook.fail("/pager", times=1)
        notifier = AppriseNotifier({"desk": hook.url("/desk"), "pager": hook.url("/pager")})
        with pytest.raises(NotificationNotDelivered) as raised:
            notifier.notify_many(batch)
        notifier.notify_many(batch)
        assert len(hook.answered("/desk")) == 1
        assert len(hook.answered("/pager", ok=True)) == 1

    error = raised.value
    assert error.notification_ids == tuple(n.id for n in batch)
    assert error.kinds == (AlertKind.ACCOUNT_CLOSED,)
    assert error.instance_id is None
    assert str(error).startswith("3 of 3 notifications (ACCOUNT_CLOSED) were not delivered")


def test_notify_many_keeps_each_instance_in_order_and_stops_a_failing_channel() -> None:
    a_failing = notification(AlertKind.REPEATED_LOGIN_FAILURE, "acc-a")
    a_back = notification(AlertKind.LOGIN_RECOVERED, "acc-a")
    b_back = notification(AlertKind.LOGIN_RECOVERED, "acc-b")
    b_failing = notification(AlertKind.REPEATED_LOGIN_FAILURE, "acc-b")
    batch = [a_failing, a_back, b_back, b_failing]
    in_order = [
        "REPEATED_LOGIN_FAILURE: acc-a (repeated login failures)",
        "LOGIN_RECOVERED: 2 accounts",
        "REPEATED_LOGIN_FAILURE: acc-b (repeated login failures)",
    ]
    with http_receiver() as hook:
        hook.fail("/pager", times=1)
        notifier = AppriseNotifier({"desk": hook.url("/desk"), "pager": hook.url("/pager")})
        with pytest.raises(NotificationNotDelivered) as raised:
            notifier.notify_many(batch)
        assert [p.json()["title"] for p in hook.answered("/desk")] == in_order
        assert len(hook.answered("/pager")) == 1  # it refused the first: nothing after it
        assert raised.value.notification_ids == tuple(n.id for n in batch)

        notifier.notify_many(batch)
        assert [p.json()["title"] for p in hook.answered("/pager", ok=True)] == in_order
        assert len(hook.answered("/desk")) == 3


# --- every kind -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(AlertKind))
@pytest.mark.parametrize("console", [None, CONSOLE])
def test_every_alert_kind_renders_what_to_do(kind: AlertKind, console: str | None) -> None:
    n = notification(kind, message=f"what the lifecycle said about {kind.value}")
    message = render(n, console_links(console))

    assert message.title.startswith(f"{kind.value}: acc-1 (")
    for fact in (
        "Instance:      acc-1",
        f"Reason:        {n.reason.value if n.reason else '-'}",
        f"Message:       what the lifecycle said about {kind.value}",
        "Time (UTC):    2026-01-01T09:30:00+00:00",
        f"Notification:  {n.id}",
        "What to do next:\n1. ",
        "Runbook: docs/operations/alerts.md#mt5",
    ):
        assert fact in message.body
    assert message.fields["kind"] == kind.value
    assert message.fields["notification_id"] == n.id
    if console is not None:
        assert f"Instance page: {CONSOLE}/instances/acc-1" in message.body
    group = render_group([n, notification(kind, "acc-2")], console_links(console), 20)
    assert group.title.startswith(f"{kind.value}: 2 ")


def test_the_steps_name_the_commands_and_the_console_pages() -> None:
    def body(kind: AlertKind, reason: Reason | None = None, console: str | None = None) -> str:
        return render(notification(kind, reason=reason), console_links(console)).body

    exhausted = body(AlertKind.LOGIN_FAILURE)
    assert "Check the password" in exhausted
    assert "mt5lifecycle reset acc-1" in exhausted
    assert "mt5lifecycle credentials put acc-1 --login N --server S" in exhausted
    assert "credentials worked before" in exhausted
    missing = body(AlertKind.LOGIN_FAILURE, Reason.CREDENTIALS_MISSING)
    assert "Store the credentials" in missing
    closed = body(AlertKind.ACCOUNT_CLOSED)
    assert "mt5lifecycle add NEW-ID --login N --server S" in closed
    assert "mt5lifecycle confirm-closure acc-1" in closed
    assert "mt5lifecycle history acc-1" in closed
    on_console = body(AlertKind.ACCOUNT_CLOSED, console=CONSOLE + "/")
    assert f"Add a new account on the console: {CONSOLE}/instances/new" in on_console
    assert f"Confirm closure on {CONSOLE}/instances/acc-1" in on_console
    assert "NEW-ID" not in on_console
    assert "mt5lifecycle reset acc-1" in body(AlertKind.ACCOUNT_BANNED)
    assert "nothing to reset" in body(AlertKind.BROKER_SERVER_DOWN)

    mixed = render_group(
        [
            notification(AlertKind.LOGIN_FAILURE, "acc-1"),
            notification(AlertKind.LOGIN_FAILURE, "acc-2", Reason.CREDENTIALS_MISSING),
        ],
        None,
        20,
    )
    assert "With reason LOGIN_ATTEMPTS_EXHAUSTED:\n1. Read the failed attempts" in mixed.body
    assert "With reason CREDENTIALS_MISSING:\n1. Store the credentials" in mixed.body
    assert mixed.fields["reasons"] == "LOGIN_ATTEMPTS_EXHAUSTED,CREDENTIALS_MISSING"


def test_every_kind_reaches_a_json_webhook() -> None:
    batch = [notification(kind, instance_id=f"acc-{i}") for i, kind in enumerate(AlertKind)]
    with http_receiver() as hook:
        AppriseNotifier([hook.url()]).notify_many(batch)
        posts = [p.json() for p in hook.answered(ok=True)]
    assert [p["kind"] for p in posts] == [k.value for k in AlertKind]
    assert [p["type"] for p in posts] == [
        "failure", "warning", "success", "failure", "failure", "failure", "info", "failure",
        "success",
    ]  # fmt: skip


# --- secrets ----------------------------------------------------------------------


def test_no_secret_reaches_an_exception_a_log_line_or_the_repr(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    closed = free_port()
    with http_receiver() as hook:
        hook.fail("/hook", times=1)
        hook.fail(f"/notify/{API_TOKEN}", times=1)
        urls = [
            f"mailto://ops:{MAIL_PASSWORD}@example.com:{closed}?smtp=127.0.0.1&to=b@example.com",
            hook.url("/hook", auth=f"mt5:{HOOK_PASSWORD}@")
            + f"?+X-Api-Token={HEADER_TOKEN}&-key={QUERY_TOKEN}",
            hook.url(f"/{API_TOKEN}", scheme="apprise") + "?version=1",
        ]
        notifier = AppriseNotifier(urls)
        with pytest.raises(NotificationNotDelivered) as raised:
            notifier.notify(notification())
        # The secrets were used: the receiver saw them, so apprise and urllib3 had them
        # in hand while logging at DEBUG.
        token_post = hook.answered(f"/notify/{API_TOKEN}")
        hook_post = hook.answered("/hook")
    assert token_post and hook_post
    assert {k.lower(): v for k, v in hook_post[0].headers.items()}["x-api-token"] == HEADER_TOKEN
    assert hook_post[0].path == f"/hook?key={QUERY_TOKEN}"

    shown = [
        str(raised.value),
        repr(raised.value),
        repr(raised.value.args),
        repr(raised.value.failed),
        repr(notifier),
        repr(notifier.channels),
        caplog.text,
        *(r.getMessage() for r in caplog.records),
    ]
    for secret in (MAIL_PASSWORD, HOOK_PASSWORD, HEADER_TOKEN, QUERY_TOKEN, API_TOKEN):
        for text in shown:
            assert secret not in text
    assert len(raised.value.failed) == 3
    assert any(r.name == "apprise" and "/notify/****" in r.getMessage() for r in caplog.records), (
        "apprise logs the token's URL at DEBUG: the mask is what hides it"
    )
    assert any(r.name.startswith("urllib3") and "****" in r.getMessage() for r in caplog.records)
    assert notifier.channels == (
        f"E-Mail mailto://ops:****@example.com:{closed}",
        f"JSON json://mt5:****@127.0.0.1:{hook.port}",
        f"Apprise API apprise://127.0.0.1:{hook.port}",
    )


# --- bad input and the optional extra ---------------------------------------------------


def test_bad_arguments_raise_naming_what_is_wrong_without_the_url() -> None:
    with pytest.raises(ValueError, match="at least one apprise URL"):
        AppriseNotifier([])
    with pytest.raises(TypeError, match="not one string"):
        AppriseNotifier("json://127.0.0.1/hook")
    with pytest.raises(TypeError, match="URL 1 must be a str"):
        AppriseNotifier([42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_listed must be an int of at least 1"):
        AppriseNotifier(["json://127.0.0.1/hook"], max_listed=0)
    with pytest.raises(ValueError, match="console_url must be the console's http"):
        AppriseNotifier(["json://127.0.0.1/hook"], console_url="console.example.com")
    with pytest.raises(ValueError, match="must not carry a user or password"):
        AppriseNotifier(["json://127.0.0.1/hook"], console_url="https://u:p@console.example.com")
    with pytest.raises(ValueError, match="cannot use URL 2 of 2") as raised:
        AppriseNotifier(["json://127.0.0.1/hook", "nosuchservice://user:Hidd3nPw@host/x"])
    assert "apprise cannot use URL 2 of 2 (scheme nosuchservice://)" in str(raised.value)
    assert "Hidd3nPw" not in str(raised.value)


def test_a_notifier_refuses_what_is_not_a_notification() -> None:
    with http_receiver() as hook:
        notifier = AppriseNotifier([hook.url()])
        with pytest.raises(TypeError, match="expected a Notification, got str"):
            notifier.notify_many([notification(), "ACCOUNT_CLOSED"])  # type: ignore[list-item]
        assert hook.answered() == []


BLOCK_APPRISE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "apprise":
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
from mt5lifecycle.adapters.apprise import AppriseNotifier
try:
    AppriseNotifier(["json://127.0.0.1/hook"])
except ModuleNotFoundError as e:
    print(e)
"""


def test_the_module_imports_without_apprise_and_building_names_the_extra() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_APPRISE], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "AppriseNotifier needs the apprise library: pip install 'mt5lifecycle[apprise]'"
    )


def test_the_example_in_the_docs_is_what_the_notifier_renders() -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "operations" / "alerts.md"
    shown = docs.read_text().split("```text\nACCOUNT_CLOSED: acc-7", 1)[1].split("```", 1)[0]
    n = Notification(
        kind=AlertKind.ACCOUNT_CLOSED,
        instance_id="acc-7",
        reason=Reason.ACCOUNT_CLOSED,
        message="the broker closed the account; open positions are being closed and orders "
        "cancelled. Confirm the closure to delete the credentials, and add a new account to "
        "go on trading",
        at=datetime(2026, 1, 1, 0, 1, 10, tzinfo=UTC),
        id="26607cab1ff7c36c0",
    )
    message = render(n, None)
    assert f"ACCOUNT_CLOSED: acc-7{shown}" == f"{message.title}\n\n{message.body}\n"
