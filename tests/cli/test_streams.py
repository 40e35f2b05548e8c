"""The command line on pipes, non-UTF-8 consoles and ports: what Windows and `| head` meet."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.builtin.listen import PortInUse, bind_exclusive
from mt5lifecycle.cli.console import GuardedOutput, OutputClosed, is_console
from mt5lifecycle.core.records import LoginFailureRecord, TransitionRecord
from mt5lifecycle.core.states import Reason, State

from .conftest import ROOT, TtyInput

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MESSAGE = "Autorisierung fehlgeschlagen \u2717 \u8a8d\u8a3c\u5931\u6557"
"""A terminal's message with characters cp1252 does not have."""


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MT5LIFECYCLE_", "PYTHONIO"))}
    clean.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "mt5lifecycle", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean,
        cwd=ROOT,
    )


def long_history(path: Path, lines: int) -> None:
    with DuckDBArchive(path, background=False) as archive:
        archive.write(
            [
                TransitionRecord(
                    instance_id="acc-1",
                    at=T0 + timedelta(seconds=i),
                    event="connection_lost",
                    source=State.CONNECTED,
                    dest=State.CONNECTING,
                    reason=None,
                )
                for i in range(lines)
            ]
        )


def test_history_into_a_pipe_closed_early_exits_141_quietly(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    long_history(path, 5000)  # far more than a pipe's buffer holds
    proc = cli("history", "acc-1", "--archive", str(path))
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert b"new -> CONNECTING" in first or b"CONNECTED -> CONNECTING" in first
    proc.stdout.close()  # what `| head -1` does
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert stderr == b""


def test_history_to_a_cp1252_stdout_never_fails_on_a_character(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    with DuckDBArchive(path, background=False) as archive:
        archive.write(
            [
                LoginFailureRecord(
                    instance_id="acc-1",
                    at=T0,
                    attempt=1,
                    reason=Reason.AUTH_FAILED,
                    code=-6,
                    message=MESSAGE,
                )
            ]
        )
    proc = cli("history", "acc-1", "--archive", str(path), env={"PYTHONIOENCODING": "cp1252"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == b""
    text = out.decode("cp1252")
    assert "Autorisierung fehlgeschlagen \\u2717 \\u8a8d\\u8a3c\\u5931\\u6557" in text


def test_an_error_naming_a_non_cp1252_path_is_still_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "\u2717-archive.duckdb"
    proc = cli("history", "acc-1", "--archive", str(missing), env={"PYTHONIOENCODING": "cp1252"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    lines = err.decode("cp1252").splitlines()
    assert len(lines) == 1 and "\\u2717-archive.duckdb does not exist" in lines[0]


def test_a_closed_pipe_is_output_closed_and_other_errors_pass() -> None:
    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    out = GuardedOutput(Closed())
    with pytest.raises(OutputClosed):
        out.write("x")

    class Full(io.StringIO):
        def flush(self) -> None:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        GuardedOutput(Full()).flush()


def test_only_a_real_terminal_is_a_console(tmp_path: Path) -> None:
    assert not is_console(io.StringIO())
    assert is_console(TtyInput())
    with open(os.devnull, encoding="utf-8") as null:
        assert not is_console(null)
    if sys.platform != "win32":
        master, slave = os.openpty()
        try:
            with os.fdopen(slave, encoding="utf-8", closefd=False) as tty:
                assert is_console(tty)
        finally:
            os.close(master)
            os.close(slave)


def test_a_port_in_use_is_a_clear_error() -> None:
    first = bind_exclusive("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port} is already in use"):
            bind_exclusive("127.0.0.1", port)
    finally:
        first.close()
    again = bind_exclusive("127.0.0.1", port)  # free again once closed
    again.close()
