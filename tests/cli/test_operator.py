"""The operator's commands on the real servers: status, reset, disable, confirm-closure, history."""

from __future__ import annotations

import io

from mt5lifecycle import Reason, State
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.cli import main
from mt5lifecycle.cli.common import operator_name
from mt5lifecycle.core.states import Due

from .conftest import PG_DSN, REDIS_URL, Run, Servers, TtyInput, one_error_line


def test_status_and_reset_of_an_exhausted_instance(servers: Servers) -> None:
    servers.broker.fail_logins("acc-1", Reason.AUTH_FAILED, times=5)
    lifecycle = servers.drive("acc-1")
    servers.play(lifecycle, 200)
    assert lifecycle.state is State.FAILED
    servers.release()

    status = Run("status", "acc-1", env=servers.env)
    assert status.code == 0, status.stderr
    assert "status                FAILED" in status.stdout
    assert "last_failure_reason   LOGIN_ATTEMPTS_EXHAUSTED" in status.stdout
    assert "login_attempt_count   5" in status.stdout

    # The credentials exhausted their attempts and have not changed: refused (SPEC 15),
    # and nothing changes; --force tries them once more.
    refused = Run("reset", "acc-1", env=servers.env)
    assert refused.code == 1
    assert "have not changed since" in one_error_line(refused.stderr)
    assert servers.load("acc-1").snapshot.status is State.FAILED  # type: ignore[attr-defined]

    reset = Run("reset", "acc-1", "--force", env=servers.env)
    assert reset.code == 0, reset.stderr
    assert "FAILED (LOGIN_ATTEMPTS_EXHAUSTED) -> CONNECTING" in reset.stdout
    stored = servers.load("acc-1")
    snapshot = stored.snapshot  # type: ignore[attr-defined]
    assert snapshot.status is State.CONNECTING
    assert snapshot.forced_try  # one more try, then FAILED again if it fails
    assert "one more try with the same credentials" in reset.stdout
    assert snapshot.due is Due.LOGIN

    again = Run("reset", "acc-1", env=servers.env)
    assert again.code == 1
    assert "refuses 'reset' in state CONNECTING" in one_error_line(again.stderr)

    history = Run("history", "acc-1", env=servers.env)
    assert history.code == 0, history.stderr
    assert "FAILED -> CONNECTING  reset" in history.stdout
    user = operator_name()
    audits = [line.split("  ", 1)[1] for line in history.stdout.splitlines() if " by " in line]
    assert audits == [
        f"   reset by {user}: refused, in FAILED: instance 'acc-1': its credentials exhausted "
        "their login attempts and have not changed since; replace them, or reset with force "
        "to try them once more",
        f"   reset by {user}: done, FAILED -> CONNECTING",
        f"   reset by {user}: refused, in CONNECTING: the transition table has no such transition",
    ]


def test_status_all_and_json(servers: Servers) -> None:
    for instance_id in ("b-1", "a-1"):
        lifecycle = servers.drive(instance_id)
        servers.play(lifecycle, 1)
        servers.release()
    run = Run("status", "--all", env=servers.env)
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["instance", "status", "connection"]
    assert [line.split()[:2] for line in lines[1:]] == [["a-1", "CONNECTED"], ["b-1", "CONNECTED"]]
    as_json = Run("status", "a-1", "--json", env=servers.env)
    assert '"status": "CONNECTED"' in as_json.stdout
    empty = Run("status", "--all", "--prefix", servers.prefix + "-none", env=servers.env)
    assert empty.code == 0
    assert empty.stdout.startswith("no instances")


def test_unknown_instance_exits_4(servers: Servers) -> None:
    run = Run("status", "nobody", env=servers.env)
    assert run.code == 4
    assert "unknown instance 'nobody'" in one_error_line(run.stderr)
    reset = Run("reset", "nobody", "--redis", REDIS_URL, "--prefix", servers.prefix)
    assert reset.code == 4
    assert "unknown instance 'nobody'" in one_error_line(reset.stderr)


def test_a_corrupt_key_exits_5_naming_it(servers: Servers) -> None:
    servers.client.set(f"{servers.prefix}:acc-9:status", "BOGUS")
    run = Run("status", "acc-9", env=servers.env)
    assert run.code == 5
    line = one_error_line(run.stderr)
    assert f"key '{servers.prefix}:acc-9:status' holds 'BOGUS'" in line


def test_disable_then_reset_from_inactive(servers: Servers) -> None:
    lifecycle = servers.drive("acc-2")
    servers.play(lifecycle, 1)
    servers.release()
    disabled = Run("disable", "acc-2", env=servers.env)
    assert disabled.code == 0, disabled.stderr
    assert "CONNECTED -> INACTIVE (MANUAL)" in disabled.stdout
    assert disabled.stderr == ""
    no_archive = {k: v for k, v in servers.env.items() if k != "MT5LIFECYCLE_ARCHIVE"}
    reset = Run("reset", "acc-2", env=no_archive)
    assert reset.code == 0
    assert reset.stderr.startswith("warning: no archive configured")


def test_confirm_closure_deletes_credentials_and_state(servers: Servers) -> None:
    lifecycle = servers.drive("acc-3")
    servers.play(lifecycle, 1)
    servers.broker.open_position("acc-3", 9001, "EURUSD", 0.3)
    lifecycle.account_closed()
    assert lifecycle.state is State.ACCOUNT_CLOSED
    servers.release()

    declined = main(
        ["confirm-closure", "acc-3"],
        stdout=io.StringIO(),
        stderr=(err := io.StringIO()),
        stdin=TtyInput("no\n"),
        env=servers.env,
    )
    assert declined == 1
    assert "not confirmed" in one_error_line(err.getvalue())
    assert servers.load("acc-3") is not None

    out = io.StringIO()
    code = main(
        ["confirm-closure", "acc-3"],
        stdout=out,
        stderr=(err := io.StringIO()),
        stdin=TtyInput("acc-3\n"),
        env=servers.env,
    )
    assert code == 0, err.getvalue()
    assert "Type the instance id to confirm" in out.getvalue()
    assert "alert CREDENTIALS_DELETED for acc-3" in out.getvalue()
    assert servers.load("acc-3") is None
    creds = PostgresCredentialStore(PG_DSN, keys=[servers.key], schema=servers.schema)
    try:
        assert creds.get("acc-3") is None
    finally:
        creds.close()

    with DuckDBArchive.reader(servers.archive_path) as archive:
        assert [(a.action, a.outcome, a.detail) for a in archive.audits("acc-3")] == [
            ("confirm_closure", "refused", "not confirmed at the prompt"),
            ("confirm_closure", "done", ""),
        ]
    status = Run("status", "acc-3", env=servers.env)
    assert status.code == 0
    assert "closure was confirmed" in status.stdout
    reset = Run("reset", "acc-3", env=servers.env)
    assert reset.code == 1
    assert "closure was confirmed" in one_error_line(reset.stderr)


def test_confirm_closure_of_an_open_account_is_refused_without_asking(servers: Servers) -> None:
    lifecycle = servers.drive("acc-4")
    servers.play(lifecycle, 1)
    servers.release()
    run = Run("confirm-closure", "acc-4", "--yes", env=servers.env)
    assert run.code == 1
    assert "refuses 'confirm_closure' in state CONNECTED" in one_error_line(run.stderr)
    assert run.stdout == ""
    servers.drive("acc-5")  # CONNECTING, its login due: still no question
    servers.release()
    out = io.StringIO()
    code = main(
        ["confirm-closure", "acc-5"],
        stdout=out,
        stderr=io.StringIO(),
        stdin=TtyInput("acc-5\n"),
        env=servers.env,
    )
    assert code == 1
    assert out.getvalue() == ""
