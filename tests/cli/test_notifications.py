"""``mt5lifecycle notifications``: the set-aside alerts on the real Redis, listed and
redelivered, each redelivery archived with the OS user who ran it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from mt5lifecycle import AlertKind, Reason
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.cli.common import operator_name
from mt5lifecycle.core.records import Notification

from .conftest import REDIS_URL, Run, Servers, one_error_line

HOOK = "https://hooks.slack.com/services/T000/B000/hook-secret-9c1d"


def set_aside(servers: Servers, instance_id: str, kind: AlertKind, error: str) -> Notification:
    """A notification of ``instance_id`` that the relay set aside after its tries: stored
    with a write of the instance, then moved aside, as the relay does."""
    store = RedisStateStore(servers.client, prefix=servers.prefix)
    stored = store.load(instance_id)
    assert stored is not None
    note = Notification(
        kind=kind,
        instance_id=instance_id,
        reason=Reason.AUTH_FAILED,
        message="3 authentication failures in a row",
        at=datetime(2026, 1, 1, 0, 0, 16, tzinfo=UTC),
    )
    store.commit(instance_id, stored.snapshot, expected_version=stored.version, outbox=[note])
    store.set_aside(instance_id, note.id, error)
    return note


@pytest.fixture
def aside(servers: Servers) -> tuple[Notification, Notification]:
    """acc-1 with two alerts set aside (one naming its webhook), acc-2 with none."""
    for instance_id in ("acc-1", "acc-2"):
        servers.play(servers.drive(instance_id), 1)
        servers.release()
    first = set_aside(
        servers, "acc-1", AlertKind.REPEATED_LOGIN_FAILURE, f"ConnectionError: POST {HOOK}"
    )
    second = set_aside(servers, "acc-1", AlertKind.LOGIN_FAILURE, "SMTP 550: mailbox unavailable")
    return first, second


def outbox_ids(servers: Servers, instance_id: str) -> list[str]:
    store = RedisStateStore(servers.client, prefix=servers.prefix)
    found = store.outbox([instance_id]).get(instance_id)
    return [] if found is None else [n.id for n in found.notifications]


def test_the_list_shows_them_oldest_first_without_the_webhooks_secret(
    servers: Servers, aside: tuple[Notification, Notification]
) -> None:
    first, second = aside
    run = Run("notifications", env=servers.env)
    assert run.code == 0, run.stderr
    header, *rows = run.stdout.splitlines()
    assert header.split()[:3] == ["instance", "notification", "kind"]
    assert [row.split()[:3] for row in rows] == [
        ["acc-1", first.id, "REPEATED_LOGIN_FAILURE"],
        ["acc-1", second.id, "LOGIN_FAILURE"],
    ]
    assert "ConnectionError: POST https://..." in rows[0]
    assert "SMTP 550: mailbox unavailable" in rows[1]
    assert "hook-secret" not in run.stdout


def test_the_list_as_json_has_the_apis_fields(
    servers: Servers, aside: tuple[Notification, Notification]
) -> None:
    first, _ = aside
    run = Run("notifications", "--json", env=servers.env)
    assert run.code == 0, run.stderr
    body = json.loads(run.stdout)
    assert len(body) == 2
    assert body[0] == {
        "instance_id": "acc-1",
        "notification_id": first.id,
        "kind": "REPEATED_LOGIN_FAILURE",
        "reason": "AUTH_FAILED",
        "message": "3 authentication failures in a row",
        "at": "2026-01-01T00:00:16+00:00",
        "set_aside_at": body[0]["set_aside_at"],
        "error": "ConnectionError: POST https://...",
    }
    assert datetime.fromisoformat(body[0]["set_aside_at"]).utcoffset() is not None


def test_the_list_filters_by_instance_and_says_when_there_is_none(
    servers: Servers, aside: tuple[Notification, Notification]
) -> None:
    none = Run("notifications", "--instance", "acc-2", env=servers.env)
    assert none.code == 0
    assert (
        none.stdout == f"no set-aside notifications of acc-2 under the prefix '{servers.prefix}'\n"
    )
    both = Run("notifications", "--instance", "acc-2", "--instance", "acc-1", "--json",
               env=servers.env)  # fmt: skip
    assert len(json.loads(both.stdout)) == 2
    empty = Run("notifications", "--prefix", servers.prefix + "-none", "--json", env=servers.env)
    assert empty.code == 0 and json.loads(empty.stdout) == []
    bad = Run("notifications", "--instance", "a/b", env=servers.env)
    assert bad.code == 2
    assert "instance id" in one_error_line(bad.stderr)


def test_redeliver_puts_them_all_back_and_is_archived(
    servers: Servers, aside: tuple[Notification, Notification]
) -> None:
    first, second = aside
    run = Run("notifications", "redeliver", "acc-1", env=servers.env)
    assert run.code == 0, run.stderr
    assert run.stdout.startswith("acc-1: 2 set-aside notification(s) put back for delivery")
    assert run.stderr == ""
    assert outbox_ids(servers, "acc-1") == [first.id, second.id]
    assert json.loads(Run("notifications", "--json", env=servers.env).stdout) == []
    with DuckDBArchive.reader(servers.archive_path) as archive:
        [audit] = [a for a in archive.audits("acc-1") if a.action == "redeliver"]
    assert (audit.actor, audit.outcome) == (operator_name(), "done")
    assert audit.detail == "2 set-aside notification(s) put back for delivery (all)"
    again = Run("notifications", "redeliver", "acc-1", env=servers.env)
    assert again.code == 0
    assert again.stdout == "acc-1: nothing to redeliver, nothing was changed\n"


def test_redeliver_some_by_id_and_name_the_ids_not_set_aside(
    servers: Servers, aside: tuple[Notification, Notification]
) -> None:
    first, second = aside
    run = Run(
        "notifications", "redeliver", "acc-1", "--id", second.id, "--id", "no-such-id",
        env=servers.env,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert run.stdout.startswith("acc-1: 1 set-aside notification(s)")
    assert run.stderr == (
        "warning: not set aside for acc-1 (redelivered already, or no such id): no-such-id\n"
    )
    assert outbox_ids(servers, "acc-1") == [second.id]
    left = json.loads(Run("notifications", "--json", env=servers.env).stdout)
    assert [n["notification_id"] for n in left] == [first.id]


def test_flags_may_come_before_or_after_redeliver(
    servers: Servers, aside: tuple[Notification, Notification]
) -> None:
    before = Run("notifications", "--redis", REDIS_URL, "--prefix", servers.prefix, "-v",
                 "redeliver", "acc-1", "--id", aside[0].id)  # fmt: skip
    assert before.code == 0, before.stderr
    after = Run("notifications", "redeliver", "acc-1", "--redis", REDIS_URL,
                "--prefix", servers.prefix)  # fmt: skip
    assert after.code == 0, after.stderr
    assert "1 set-aside notification(s)" in before.stdout
    assert "1 set-aside notification(s)" in after.stdout
    # Without an archive the redelivery is done, and the missing record said.
    assert after.stderr.startswith("warning: no archive configured")


def test_redeliver_for_an_unknown_instance_exits_4_and_without_redis_3(
    servers: Servers,
) -> None:
    unknown = Run("notifications", "redeliver", "nobody", "--redis", REDIS_URL,
                  "--prefix", servers.prefix)  # fmt: skip
    assert unknown.code == 4
    assert "unknown instance 'nobody'" in one_error_line(unknown.stderr)
    bad = Run("notifications", "redeliver", "a/b", env=servers.env)
    assert bad.code == 2
    no_redis = Run("notifications")
    assert no_redis.code == 3
    assert "notifications needs the Redis state store" in one_error_line(no_redis.stderr)
    usage = Run("notifications", "redeliver", env=servers.env)
    assert usage.code == 2


def test_a_store_without_an_outbox_is_named() -> None:
    from mt5lifecycle.cli.common import CliError
    from mt5lifecycle.cli.operator import _outbox

    with pytest.raises(CliError) as refused:
        _outbox(object())
    assert refused.value.code == 3
    assert "keeps no outbox" in str(refused.value)
