"""The command line's demo, diagram, rules, help and one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import psycopg
import pytest
import redis

from mt5lifecycle import Backends, Lifecycle
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.builtin.memory import MemoryArchive, MemoryCredentialStore, MemoryStateStore
from mt5lifecycle.cli import EXIT_CODES
from mt5lifecycle.cli.demo import FLOWS, run_demo
from mt5lifecycle.core.machine import EVENTS
from mt5lifecycle.testing import FakeBroker, FakeClock

from .conftest import PG_DSN, REDIS_URL, ROOT, Run, one_error_line, run_cli


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


class LateClock(FakeClock):
    """Wakes up 25 s (simulated) after each wait: a loaded machine on a real-time clock
    runs every due step late."""

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds + 25.0)


def test_demo_ends_every_flow_right_when_every_step_runs_late() -> None:
    rows = run_demo(
        io.StringIO(),
        clock=LateClock(),
        state=MemoryStateStore(),
        credentials=MemoryCredentialStore(),
        archive=MemoryArchive(),
    )
    assert {r.instance_id: r.expected for r in rows} == {f.instance_id: True for f in FLOWS}
