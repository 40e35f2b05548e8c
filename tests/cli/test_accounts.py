"""``add``, ``credentials put/delete/rotate`` and ``generate-key`` on the real servers."""

from __future__ import annotations

import base64
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mt5lifecycle import Credentials, State
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.cli.common import operator_name

from .conftest import PG_DSN, ROOT, Run, Servers, one_error_line, run_cli

PASSWORD = "c0rrect 'horse\" battery"


def creds(servers: Servers, *keys: str) -> PostgresCredentialStore:
    return PostgresCredentialStore(PG_DSN, keys=list(keys or [servers.key]), schema=servers.schema)


def stored(servers: Servers, instance_id: str) -> Credentials | None:
    with creds(servers) as store:
        return store.get(instance_id)


def audits(servers: Servers, instance_id: str) -> list[tuple[str, str, str]]:
    with DuckDBArchive.reader(servers.archive_path) as archive:
        return [(a.action, a.actor, a.outcome) for a in archive.audits(instance_id)]


def make_archive(servers: Servers) -> None:
    with DuckDBArchive(servers.archive_path, background=False) as archive:
        archive.is_confirmed("probe")  # creates the file, as serve does


def run_with_stdin(servers: Servers, *argv: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MT5LIFECYCLE_")}
    env.update(servers.env)
    return subprocess.run(
        [sys.executable, "-m", "mt5lifecycle", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_generate_key_prints_a_new_32_byte_key() -> None:
    first, second = Run("generate-key"), Run("generate-key")
    assert first.code == 0
    key = first.stdout.strip()
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert key != second.stdout.strip()


def test_credentials_put_reads_the_password_from_stdin(servers: Servers) -> None:
    make_archive(servers)
    done = run_with_stdin(
        servers, "credentials", "put", "acc-1", "--login", "7001", "--server", "Demo-1",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "credentials stored for login 7001 on Demo-1" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    assert stored(servers, "acc-1") == Credentials(7001, "Demo-1", PASSWORD)
    assert audits(servers, "acc-1") == [("put_credentials", operator_name(), "done")]


def test_credentials_put_never_takes_an_empty_password_or_a_bad_login(servers: Servers) -> None:
    make_archive(servers)
    empty = run_with_stdin(
        servers, "credentials", "put", "acc-1", "--login", "7001", "--server", "S", stdin=""
    )
    assert empty.returncode == 2
    assert "no password given" in one_error_line(empty.stderr)
    bad = run_with_stdin(
        servers, "credentials", "put", "acc-1", "--login", "seven", "--server", "S", stdin="pw\n"
    )
    assert bad.returncode == 2
    assert "--login must be an account number" in one_error_line(bad.stderr)
    assert stored(servers, "acc-1") is None


def test_credentials_put_at_a_console_asks_twice_without_echo(servers: Servers) -> None:
    if sys.platform == "win32":
        pytest.skip("a POSIX pseudo-terminal")
    import fcntl
    import termios

    make_archive(servers)

    def typed(first: str, second: str) -> subprocess.CompletedProcess[str]:
        master, slave = os.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MT5LIFECYCLE_")}
        env.update(servers.env)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mt5lifecycle", "credentials", "put", "acc-2",
             "--login", "7002", "--server", "Demo-2"],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            # The pty becomes the controlling terminal, the /dev/tty getpass opens.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )  # fmt: skip
        os.close(slave)
        assert proc.stderr is not None
        seen = b""
        try:
            for answer, prompt in ((first, b"Password for acc-2: "), (second, b"again: ")):
                deadline = time.monotonic() + 30
                while prompt not in seen:
                    ready, _, _ = select.select([proc.stderr], [], [], 1.0)
                    if ready:
                        chunk = os.read(proc.stderr.fileno(), 1024)
                        assert chunk, seen  # the command ended without asking
                        seen += chunk
                    assert time.monotonic() < deadline, seen
                seen = b""
                # Only once the prompt is shown: getpass flushes what was typed before.
                os.write(master, answer.encode() + b"\n")
            out, err = proc.communicate(timeout=30)
        finally:
            os.close(master)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())

    differ = typed(PASSWORD, PASSWORD + "x")
    assert differ.returncode == 1
    assert "the two passwords differ" in differ.stderr
    assert stored(servers, "acc-2") is None
    done = typed(PASSWORD, PASSWORD)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert stored(servers, "acc-2") == Credentials(7002, "Demo-2", PASSWORD)


def test_credentials_delete_asks_for_yes_without_a_console(servers: Servers) -> None:
    make_archive(servers)
    with creds(servers) as store:
        store.put("acc-3", Credentials(7003, "Demo", "pw"))
    refused = run_cli("credentials", "delete", "acc-3", env=servers.env)
    assert refused.returncode == 2
    assert "pass --yes" in one_error_line(refused.stderr)
    assert stored(servers, "acc-3") is not None
    done = run_cli("credentials", "delete", "acc-3", "--yes", env=servers.env)
    assert done.returncode == 0, done.stderr
    assert stored(servers, "acc-3") is None
    assert audits(servers, "acc-3") == [("delete_credentials", operator_name(), "done")]


def test_credentials_rotate_re_encrypts_with_the_first_key(servers: Servers) -> None:
    old = servers.key
    with creds(servers, old) as store:
        store.put("acc-4", Credentials(7004, "Demo", "pw-4"))
    new = PostgresCredentialStore.generate_key()
    env = {**servers.env, "MT5LIFECYCLE_KEYS": f"{new},{old}"}
    done = Run("credentials", "rotate", env=env)
    assert done.code == 0, done.stderr
    assert done.stdout.startswith("re-encrypted 1 credential row(s)")
    with creds(servers, new) as store:
        assert store.get("acc-4") == Credentials(7004, "Demo", "pw-4")
    again = Run("credentials", "rotate", env=env)
    assert again.stdout.startswith("re-encrypted 0")


def test_add_stores_the_credentials_and_starts_the_instance(servers: Servers) -> None:
    make_archive(servers)
    done = run_with_stdin(
        servers, "add", "acc-5", "--login", "7005", "--server", "Demo", stdin=PASSWORD + "\n"
    )
    assert done.returncode == 0, done.stderr
    assert "acc-5: added, CONNECTING" in done.stdout
    state = RedisStateStore(servers.client, prefix=servers.prefix).load("acc-5")
    assert state is not None and state.snapshot.status is State.CONNECTING
    assert stored(servers, "acc-5") == Credentials(7005, "Demo", PASSWORD)

    again = run_with_stdin(
        servers, "add", "acc-5", "--login", "7005", "--server", "Demo", stdin="other\n"
    )
    assert again.returncode == 1
    assert "already exists (CONNECTING)" in one_error_line(again.stderr)
    assert stored(servers, "acc-5") == Credentials(7005, "Demo", PASSWORD)
    user = operator_name()
    assert audits(servers, "acc-5") == [("add", user, "done"), ("add", user, "refused")]
    history = Run("history", "acc-5", env=servers.env)
    assert f"add by {user}: refused, in CONNECTING: it already exists" in history.stdout


def test_add_refuses_a_confirmed_closure_and_needs_an_archive(servers: Servers) -> None:
    lifecycle = servers.drive("acc-6")
    servers.play(lifecycle, 1)
    lifecycle.account_closed()
    lifecycle.confirm_closure()
    servers.release()
    refused = run_with_stdin(
        servers, "add", "acc-6", "--login", "7006", "--server", "Demo", stdin="pw\n"
    )
    assert refused.returncode == 1
    assert "closure was confirmed" in one_error_line(refused.stderr)
    assert stored(servers, "acc-6") is None
    no_archive = {k: v for k, v in servers.env.items() if k != "MT5LIFECYCLE_ARCHIVE"}
    run = Run("add", "acc-7", "--login", "7007", "--server", "Demo", env=no_archive, stdin="pw\n")
    assert run.code == 3
    assert "needs the archive" in one_error_line(run.stderr)


def test_add_of_a_missing_archive_file_is_refused(servers: Servers, tmp_path: Path) -> None:
    env = {**servers.env, "MT5LIFECYCLE_ARCHIVE": str(tmp_path / "typo.duckdb")}
    run = Run("add", "acc-8", "--login", "7008", "--server", "Demo", env=env, stdin="pw\n")
    assert run.code == 3
    assert "does not exist" in one_error_line(run.stderr)
    assert not (tmp_path / "typo.duckdb").exists()
