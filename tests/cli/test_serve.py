"""``mt5lifecycle serve`` end to end: a real process on the real Redis, PostgreSQL and DuckDB.

Each test writes a config with its own key prefix, schema and archive file, starts
``serve`` on a free loopback port with fake terminals, drives it from the command
line (another process, as an operator would), reads ``/metrics`` and ``/readyz``,
stops it with SIGTERM and checks what it left: exit 0, leases handed back, the
archive flushed, and a restart that loses nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mt5lifecycle import State
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.builtin.listen import bind_exclusive

from .conftest import PG_DSN, REDIS_URL, ROOT, Servers

TOKEN = "serve-test-token-0123456789-abcdefghij"


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling real processes, not waiting on logic


class Serve:
    """One ``serve`` process, its output collected by threads (no pipe ever fills)."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mt5lifecycle", "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
            # Windows delivers Ctrl-Break (SIGBREAK) to a process group of its own.
            creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _collect(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def url(self) -> str:
        wait_until(
            lambda: (
                any("listening on" in line for line in self.out) or self.proc.poll() is not None
            ),
            30,
            "serve to listen",
        )
        line = next((line for line in self.out if "listening on" in line), None)
        assert line is not None, self.stderr
        return line.split("listening on ")[1].strip()

    def stop(self, sig: int | None = None) -> int:
        """Stop as a service manager does: SIGTERM, or Ctrl-Break on Windows."""
        if sig is None:
            if sys.platform == "win32":
                sig = signal.CTRL_BREAK_EVENT
            else:
                sig = signal.SIGTERM
        self.proc.send_signal(sig)
        # Answered at once (the main thread never blocks longer than half a second),
        # though finishing the pass and handing back may take longer.
        name = "SIGBREAK" if sys.platform == "win32" else signal.Signals(sig).name
        wait_until(
            lambda: f"{name}: stopping after the current pass" in self.stderr, 1.5, "an answer"
        )
        code = self.proc.wait(timeout=30)
        self._close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        for reader in self.readers:
            reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def serve_env(servers: Servers) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MT5LIFECYCLE_")}
    env.update(servers.env)
    env["SERVE_TOKEN"] = TOKEN
    return env


def write_config(servers: Servers, tmp_path: Path, port: int = 0) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(
        f"""
[backends.redis]
url = "{REDIS_URL}"
prefix = "{servers.prefix}"
[backends.postgres]
dsn = "{PG_DSN}"
schema = "{servers.schema}"
keys = [{{env = "MT5LIFECYCLE_KEYS"}}]
[backends.duckdb]
path = "{servers.archive_path.name}"
[terminals]
kind = "fake"
[policy]
# The fleet reads back what the command line stored once per interval.
connection_check_interval = 1
network_retry_delay = 0.2
[fleet]
poll_interval = 0.2
lease_ttl = 15
[http]
host = "127.0.0.1"
port = {port}
[http.tokens.ops]
role = "operator"
token = {{env = "SERVE_TOKEN"}}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def started(
    servers: Servers, serve_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[], Serve]]:
    config = write_config(servers, tmp_path)
    running: list[Serve] = []

    def start() -> Serve:
        serve = Serve(config, serve_env)
        running.append(serve)
        return serve

    try:
        yield start
    finally:
        for serve in running:
            serve.kill()
        lease_keys = list(servers.client.scan_iter(match=f"mt5lifecycle:lease:{servers.prefix}:*"))
        if lease_keys:
            servers.client.delete(*lease_keys)


def cli(env: dict[str, str], *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
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


def status(servers: Servers, instance_id: str) -> State | None:
    stored = RedisStateStore(servers.client, prefix=servers.prefix).load(instance_id)
    return None if stored is None else stored.snapshot.status


def leases(servers: Servers) -> list[bytes]:
    return list(servers.client.scan_iter(match=f"mt5lifecycle:lease:{servers.prefix}:*"))


def test_serve_drives_added_instances_and_stops_cleanly_on_sigterm(
    servers: Servers, serve_env: dict[str, str], started: Callable[[], Serve]
) -> None:
    serve = started()
    url = serve.url()
    assert servers.archive_path.exists()  # made at start: `add` needs it

    # Added from another shell while serve runs: picked up within a poll.
    added = cli(serve_env, "add", "acc-1", "--login", "7001", "--server", "Demo", stdin="pw-1\n")
    assert added.returncode == 0, added.stderr
    wait_until(lambda: status(servers, "acc-1") is State.CONNECTED, 30, "acc-1 CONNECTED")
    assert len(leases(servers)) == 1

    # The archive is read while serve writes it (issue 20), at most a flush_interval
    # (1 s) behind.
    def history_shows_the_login() -> bool:
        history = cli(serve_env, "history", "acc-1")
        assert history.returncode == 0, history.stderr
        return "CONNECTING -> CONNECTED  login_succeeded" in history.stdout

    wait_until(history_shows_the_login, 30, "the login in the history")

    # An operator's action through the state store; the fleet acts on it.
    disabled = cli(serve_env, "disable", "acc-1")
    assert disabled.returncode == 0, disabled.stderr
    assert status(servers, "acc-1") is State.INACTIVE
    reset = cli(serve_env, "reset", "acc-1")
    assert reset.returncode == 0, reset.stderr
    wait_until(lambda: status(servers, "acc-1") is State.CONNECTED, 30, "acc-1 back")

    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "mt5lifecycle_" in metrics.text

    assert serve.stop() == 0, serve.stderr
    assert leases(servers) == []
    assert "leases handed back for 1 instance(s)" in serve.stderr
    assert "Traceback" not in serve.stderr
    assert "pw-1" not in serve.stderr
    with DuckDBArchive.reader(servers.archive_path) as archive:
        events = [t.event for t in archive.history("acc-1")]
        actions = [(a.action, a.outcome) for a in archive.audits("acc-1")]
    assert events[:2] == ["start", "login_succeeded"]
    assert "disable" in events and "reset" in events
    assert actions == [("add", "done"), ("disable", "done"), ("reset", "done")]


def test_a_restart_resumes_every_stored_instance(
    servers: Servers, serve_env: dict[str, str], started: Callable[[], Serve]
) -> None:
    first = started()
    first.url()
    for n in (1, 2):
        done = cli(
            serve_env, "add", f"acc-{n}", "--login", f"700{n}", "--server", "D", stdin="pw\n"
        )
        assert done.returncode == 0, done.stderr
    wait_until(
        lambda: all(status(servers, f"acc-{n}") is State.CONNECTED for n in (1, 2)),
        30,
        "both CONNECTED",
    )
    assert first.stop(None if sys.platform == "win32" else signal.SIGINT) == 0, first.stderr
    assert leases(servers) == []

    second = started()
    second.url()
    wait_until(lambda: len(leases(servers)) == 2, 30, "both adopted again")
    assert "resumed 2 stored instance(s)" in second.stderr
    # The new process's terminals are not logged in: its first check finds them down
    # and logs them in again, as after any restart of the host.
    wait_until(
        lambda: all(status(servers, f"acc-{n}") is State.CONNECTED for n in (1, 2)),
        30,
        "both CONNECTED again",
    )
    assert second.stop() == 0, second.stderr
    with DuckDBArchive.reader(servers.archive_path) as archive:
        for n in (1, 2):
            # One start ever: the second process resumed, it did not begin again.
            assert [t.event for t in archive.history(f"acc-{n}")].count("start") == 1


def test_a_port_in_use_exits_3_naming_it(
    servers: Servers, serve_env: dict[str, str], tmp_path: Path
) -> None:
    holder = bind_exclusive("127.0.0.1", 0)
    try:
        port = holder.getsockname()[1]
        config = write_config(servers, tmp_path, port=port)
        done = cli(serve_env, "serve", str(config))
    finally:
        holder.close()
    assert done.returncode == 3
    assert f"[http] port: 127.0.0.1:{port} is already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_backend_down_at_start_exits_3(
    servers: Servers, serve_env: dict[str, str], tmp_path: Path
) -> None:
    config = write_config(servers, tmp_path)
    text = config.read_text(encoding="utf-8").replace(REDIS_URL, "redis://127.0.0.1:1/0")
    config.write_text(text, encoding="utf-8")
    done = cli(serve_env, "serve", str(config))
    assert done.returncode == 3, done.stderr
    assert "redis unavailable" in done.stderr.splitlines()[-1]


def test_the_api_drives_the_serving_fleet(servers: Servers, started: Callable[[], Serve]) -> None:
    # The API and console come from mt5lifecycle.web (SPEC 13), merged separately.
    pytest.importorskip("mt5lifecycle.web")
    serve = started()
    url = serve.url()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/api/instances").status_code == 401
        created = client.post(
            "/api/instances",
            headers=auth,
            json={"id": "api-1", "login": 7101, "server": "Demo", "password": "pw-api-1"},
        )
        assert created.status_code == 201, created.text
        wait_until(lambda: status(servers, "api-1") is State.CONNECTED, 30, "api-1 CONNECTED")
        one = client.get("/api/instances/api-1", headers=auth)
        assert one.status_code == 200 and "pw-api-1" not in one.text
        assert client.post("/api/instances/api-1/disable", headers=auth).status_code == 200
        assert status(servers, "api-1") is State.INACTIVE
        assert client.post("/api/instances/api-1/reset", headers=auth).status_code == 200
        wait_until(lambda: status(servers, "api-1") is State.CONNECTED, 30, "api-1 back")
        refused = client.post("/api/instances/api-1/reset", headers=auth)
        assert refused.status_code == 409
        # Health is the serving fleet's own (SPEC 15); the store keeps the outbox (14).
        health = client.get("/api/health", headers=auth).json()
        assert (health["source"], health["instances"], health["connected"]) == ("fleet", 1, 1)
        assert client.get("/api/instances/api-1", headers=auth).json()["health"]["connected"]
        aside = client.get("/api/notifications/set-aside", headers=auth)
        assert aside.json() == {"notifications": [], "count": 0}
    assert serve.stop() == 0, serve.stderr
    assert leases(servers) == []
    assert "pw-api-1" not in serve.stderr
    with DuckDBArchive.reader(servers.archive_path) as archive:
        actors = {(a.action, a.actor, a.outcome) for a in archive.audits("api-1")}
    assert ("reset", "ops", "refused") in actors
    assert ("disable", "ops", "done") in actors
