"""The ``mt5lifecycle`` command line, in-process (``main([...])``) and as a subprocess.

The operator commands run against the real Redis and PostgreSQL on 127.0.0.1, each
test under its own key prefix and schema, cleaned up afterwards.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from mt5lifecycle import Backends, Credentials, Lifecycle, Reason, State
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.builtin.memory import MemoryCredentialStore, MemoryStateStore
from mt5lifecycle.cli import EXIT_CODES, main
from mt5lifecycle.cli.demo import FLOWS
from mt5lifecycle.core.machine import EVENTS
from mt5lifecycle.core.states import Due
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
ROOT = Path(__file__).resolve().parents[1]


class Run:
    """One in-process run of the command line."""

    def __init__(self, *argv: str, env: dict[str, str] | None = None, stdin: str = "") -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.code = main(
            list(argv),
            stdout=self.out,
            stderr=self.err,
            stdin=io.StringIO(stdin),
            env=env if env is not None else {},
        )
        self.stdout = self.out.getvalue()
        self.stderr = self.err.getvalue()


class TtyInput(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a new process, no TTY on stdin."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MT5LIFECYCLE_")}
    full_env.update(env or {})
    full_env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "mt5lifecycle", *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("mt5lifecycle: error: ")
    return lines[0]


# --- the demo -----------------------------------------------------------------------


def summary(stdout: str) -> dict[str, list[str]]:
    """The closing table's rows, by instance id."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("instance "))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows[line.split()[0]] = line.split()
    return rows


def test_demo_instant_ends_every_flow_in_its_expected_state(tmp_path: Path) -> None:
    archive = tmp_path / "demo.duckdb"
    run = Run("demo", "--instant", "--no-color", "--archive", str(archive))
    assert run.code == 0, run.stderr
    assert run.stderr == ""
    rows = summary(run.stdout)
    assert list(rows) == [flow.instance_id for flow in FLOWS]
    for flow in FLOWS:
        row = rows[flow.instance_id]
        assert flow.expect.value in row, row
        assert (flow.expect_reason.value if flow.expect_reason else "-") in row, row
        assert "<-" not in " ".join(row)
    assert "auth-exhausted  CONNECTING -> FAILED  login_failed (LOGIN_ATTEMPTS_EXHAUSTED)" in (
        run.stdout
    )
    assert "account-closed  ACCOUNT_CLOSED -> INACTIVE  confirm_closure" in run.stdout
    assert "close 1002 GBPUSD 0.8 lots: broker answers 10010 (partial fill), 0.4 left" in (
        run.stdout
    )
    assert "close 1003 USDJPY 0.5 lots: broker answers 10004 (requote)" in run.stdout
    assert "position 1002 GBPUSD 0.8 lots: CLOSED" in run.stdout
    assert "order 2002 XAUUSD: CANCELLED" in run.stdout
    assert f"The history is in {archive}" in run.stdout
    assert "\x1b[" not in run.stdout
    with DuckDBArchive(archive, background=False) as duck:
        assert duck.is_confirmed("account-closed")
        assert {o.outcome.value for o in duck.outcomes("account-closed")} == {
            "CLOSED",
            "CANCELLED",
        }
        assert len(duck.failures("auth-exhausted")) == 5


def test_demo_replaces_its_own_archive_but_not_another(tmp_path: Path) -> None:
    archive = tmp_path / "demo.duckdb"
    assert Run("demo", "--instant", "--archive", str(archive)).code == 0
    again = Run("demo", "--instant", "--archive", str(archive))
    assert again.code == 0, again.stderr  # the confirmed closure did not block a rerun
    other = tmp_path / "production.duckdb"
    with DuckDBArchive(other, background=False) as duck:
        clock = FakeClock()
        backends = Backends(
            state=MemoryStateStore(clock),
            credentials=MemoryCredentialStore(),
            broker=FakeBroker(clock),
            clock=clock,
            archive=duck,
        )
        Lifecycle("live-account", backends).start()
    before = other.read_bytes()
    refused = Run("demo", "--instant", "--archive", str(other))
    assert refused.code == 2
    assert "is not a demo archive" in one_error_line(refused.stderr)
    assert other.read_bytes() == before


def test_demo_as_a_subprocess(tmp_path: Path) -> None:
    done = run_cli("demo", "--instant", "--archive", str(tmp_path / "d.duckdb"))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = summary(done.stdout)
    assert rows["terminal-dead"][1:][-4:] == ["RECOVERY_EXHAUSTED", "1", "AUTO_RECOVERY_FAILURE"][
        -4:
    ] or ("RECOVERY_EXHAUSTED" in rows["terminal-dead"])


def test_demo_on_real_redis_and_postgres_cleans_up(tmp_path: Path) -> None:
    run = Run(
        "demo",
        "--instant",
        "--redis",
        REDIS_URL,
        "--postgres",
        PG_DSN,
        "--archive",
        str(tmp_path / "d.duckdb"),
    )
    assert run.code == 0, run.stderr
    prefix = next(w for w in run.stdout.split() if w.startswith("mt5lifecycle-demo-"))
    schema = prefix.replace("-", "_")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"{prefix}:*")) == []
    finally:
        client.close()
    with psycopg.connect(PG_DSN) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", [schema]
        ).fetchone()
    assert found is None


def test_demo_refuses_redis_without_postgres() -> None:
    run = Run("demo", "--instant", "--redis", REDIS_URL)
    assert run.code == 2
    assert "needs both" in one_error_line(run.stderr)


# --- diagram, rules, help -----------------------------------------------------------


def test_diagram_prints_the_mermaid_table() -> None:
    run = Run("diagram")
    assert run.code == 0
    assert run.stdout.startswith("stateDiagram-v2\n")
    for event in EVENTS:
        assert f": {event}" in run.stdout


def test_rules_prints_the_packaged_rules_file() -> None:
    run = Run("rules")
    assert run.code == 0, run.stderr
    packaged = (ROOT / "mt5lifecycle" / "rules" / "alerts.yml").read_text(encoding="utf-8")
    assert run.stdout == packaged
    assert "groups:" in run.stdout


def test_rules_missing_from_an_installation_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.resources

    monkeypatch.setattr(importlib.resources, "files", lambda _: tmp_path)
    run = Run("rules")
    assert run.code == 70
    assert "rules/alerts.yml is missing" in one_error_line(run.stderr)


def test_help_documents_every_exit_code_and_setting() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for code in EXIT_CODES:
        assert f"\n  {code:>3}  " in done.stdout
    for name in ("MT5LIFECYCLE_REDIS_URL", "MT5LIFECYCLE_POSTGRES_DSN", "MT5LIFECYCLE_KEYS"):
        assert name in done.stdout


def test_unknown_command_is_a_usage_error_on_one_line() -> None:
    run = Run("frobnicate")
    assert run.code == 2
    assert "invalid choice" in one_error_line(run.stderr)


# --- errors: one line, a documented code ------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("status", "bad id!", "--redis", "redis://127.0.0.1:1"),
        ("reset", "../etc/passwd", "--redis", "redis://127.0.0.1:1"),
        ("history", "x" * 129, "--archive", "/nonexistent.duckdb"),
    ],
)
def test_an_invalid_id_exits_2_on_one_line_before_any_io(argv: tuple[str, ...]) -> None:
    run = Run(*argv)
    assert run.code == 2
    assert "invalid instance id" in one_error_line(run.stderr)
    assert run.stdout == ""


def test_an_invalid_id_as_a_subprocess() -> None:
    done = run_cli("status", "no spaces", "--redis", "redis://127.0.0.1:1")
    assert done.returncode == 2
    assert "invalid instance id 'no spaces'" in one_error_line(done.stderr)


def test_unreachable_redis_exits_3_on_one_line() -> None:
    done = run_cli("status", "acc-1", "--redis", "redis://127.0.0.1:1")
    assert done.returncode == 3
    line = one_error_line(done.stderr)
    assert "redis unavailable" in line
    assert done.stdout == ""


def test_unreachable_redis_in_process_for_reset() -> None:
    run = Run("reset", "acc-1", "--redis", "redis://127.0.0.1:1")
    assert run.code == 3
    assert "redis unavailable" in one_error_line(run.stderr)


def test_no_backend_configured_says_so_in_one_line() -> None:
    run = Run("status", "acc-1")
    assert run.code == 3
    assert "MT5LIFECYCLE_REDIS_URL" in one_error_line(run.stderr)
    history = Run("history", "acc-1")
    assert history.code == 3
    assert "--archive" in one_error_line(history.stderr)


def test_a_malformed_redis_url_is_a_usage_error() -> None:
    run = Run("status", "acc-1", "--redis", "http://user:hunter2@example")
    assert run.code == 2
    line = one_error_line(run.stderr)
    assert "invalid Redis URL" in line
    assert "hunter2" not in line


def test_history_of_a_missing_archive_exits_3(tmp_path: Path) -> None:
    run = Run("history", "acc-1", "--archive", str(tmp_path / "none.duckdb"))
    assert run.code == 3
    assert "does not exist" in one_error_line(run.stderr)
    assert not (tmp_path / "none.duckdb").exists()


def test_confirm_closure_without_yes_and_without_a_tty_refuses() -> None:
    run = Run("confirm-closure", "acc-1", "--redis", "redis://127.0.0.1:1")
    assert run.code == 2
    assert "pass --yes" in one_error_line(run.stderr)
    done = run_cli("confirm-closure", "acc-1", env={"MT5LIFECYCLE_REDIS_URL": REDIS_URL})
    assert done.returncode == 2
    assert "stdin is not a terminal" in one_error_line(done.stderr)


# --- operator commands on the real servers ----------------------------------------


class Servers:
    """A unique Redis prefix, PostgreSQL schema and DuckDB file for one test."""

    def __init__(self, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"test-cli-{tag}"
        self.schema = f"test_cli_{tag}"
        self.key = PostgresCredentialStore.generate_key()
        self.archive_path = tmp_path / "archive.duckdb"
        self.client = redis.Redis.from_url(REDIS_URL)
        self.clock = FakeClock()
        self.broker = FakeBroker(self.clock)

    @property
    def env(self) -> dict[str, str]:
        return {
            "MT5LIFECYCLE_REDIS_URL": REDIS_URL,
            "MT5LIFECYCLE_POSTGRES_DSN": PG_DSN,
            "MT5LIFECYCLE_KEYS": self.key,
            "MT5LIFECYCLE_ARCHIVE": str(self.archive_path),
            "MT5LIFECYCLE_PREFIX": self.prefix,
            "MT5LIFECYCLE_SCHEMA": self.schema,
        }

    def drive(self, instance_id: str, *, credentials: bool = True) -> Lifecycle:
        """An instance as a worker left it, on the same servers the command reads."""
        store = RedisStateStore(self.client, prefix=self.prefix)
        creds = PostgresCredentialStore(PG_DSN, keys=[self.key], schema=self.schema)
        archive = DuckDBArchive(self.archive_path, background=False)
        backends = Backends(
            state=store,
            credentials=creds,
            broker=self.broker,
            clock=self.clock,
            archive=archive,
            notifier=RecordingNotifier(),
        )
        if credentials:
            creds.put(instance_id, Credentials(7001234, "Broker-Demo", "pa55word"))
        lifecycle = Lifecycle(instance_id, backends)
        lifecycle.start()
        self._opened = (creds, archive)
        return lifecycle

    def play(self, lifecycle: Lifecycle, seconds: float) -> None:
        end = self.clock.now() + seconds
        lifecycle.run_due()
        while (due := lifecycle.next_due) is not None and due <= end:
            self.clock.advance_to(due)
            lifecycle.run_due()
        self.clock.advance_to(end)

    def release(self) -> None:
        """Let go of the archive file and the pool, as a stopped worker would."""
        creds, archive = self._opened
        archive.close()
        creds.close()

    def load(self, instance_id: str) -> object:
        return RedisStateStore(self.client, prefix=self.prefix).load(instance_id)

    def cleanup(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*"))
        if keys:
            self.client.delete(*keys)
        self.client.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


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

    reset = Run("reset", "acc-1", env=servers.env)
    assert reset.code == 0, reset.stderr
    assert "FAILED (LOGIN_ATTEMPTS_EXHAUSTED) -> CONNECTING" in reset.stdout
    stored = servers.load("acc-1")
    snapshot = stored.snapshot  # type: ignore[attr-defined]
    assert snapshot.status is State.CONNECTING
    assert snapshot.login_attempt_count == 0
    assert snapshot.due is Due.LOGIN

    again = Run("reset", "acc-1", env=servers.env)
    assert again.code == 1
    assert "refuses 'reset' in state CONNECTING" in one_error_line(again.stderr)

    history = Run("history", "acc-1", env=servers.env)
    assert history.code == 0, history.stderr
    assert history.stdout.splitlines()[-1].endswith("FAILED -> CONNECTING  reset")


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
