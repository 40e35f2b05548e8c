"""What a page's sample assumes has happened before its command: built for real.

A ``<!-- test: setup -->`` comment before a block calls these (as ``worlds.NAME``).
Each builds its state on the servers the docs tests point the environment at
(``MT5LIFECYCLE_REDIS_URL`` and ``MT5LIFECYCLE_PREFIX``, ``MT5LIFECYCLE_POSTGRES_DSN``
and ``MT5LIFECYCLE_KEYS``, ``MT5LIFECYCLE_ARCHIVE``), through the library, on a fake
clock that starts at 2026-01-01T00:00:00Z, so the page's times are reproduced exactly.
``serve`` starts the real ``mt5lifecycle serve`` on those servers for a page's HTTP
calls; the page's test stops it (``stop``) when the page ends.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import redis

from mt5lifecycle import Backends, Credentials, Lifecycle, Reason
from mt5lifecycle.adapters.duckdb import DuckDBArchive
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.core import records
from mt5lifecycle.core.records import AuditRecord, Notification
from mt5lifecycle.core.states import State
from mt5lifecycle.ports import Notifier
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, run_for

LOGIN, SERVER = 7001234, "Broker-Live"


def _env(name: str) -> str:
    return os.environ[f"MT5LIFECYCLE_{name}"]


@contextmanager
def _backends(
    clock: FakeClock, broker: FakeBroker, notifier: Notifier | None = None
) -> Iterator[Backends]:
    client = redis.Redis.from_url(_env("REDIS_URL"))
    credentials = PostgresCredentialStore(_env("POSTGRES_DSN"), keys=_env("KEYS").split(","))
    archive = DuckDBArchive(_env("ARCHIVE"), clock=clock, background=False)
    try:
        yield Backends(
            state=RedisStateStore(client, prefix=_env("PREFIX")),
            credentials=credentials,
            broker=broker,
            clock=clock,
            archive=archive,
            notifier=RecordingNotifier() if notifier is None else notifier,
        )
    finally:
        archive.close()
        credentials.close()
        client.close()


def archive_file() -> None:
    """An empty archive file, as ``serve`` creates it (``add`` wants one)."""
    with DuckDBArchive(_env("ARCHIVE"), background=False) as archive:
        archive.is_confirmed("acct-0")  # the first read creates the file


def exhausted(instance_id: str, *, notifier: Notifier | None = None) -> None:
    """Five wrong passwords in a row: ``FAILED (LOGIN_ATTEMPTS_EXHAUSTED)`` at t = 105 s."""
    clock = FakeClock()
    broker = FakeBroker(clock)
    broker.fail_logins(instance_id, Reason.AUTH_FAILED)
    with _backends(clock, broker, notifier) as backends:
        backends.credentials.put(instance_id, Credentials(LOGIN, SERVER, "wrong"))
        lifecycle = Lifecycle(instance_id, backends)
        lifecycle.start()
        run_for(lifecycle, clock, 600)
        assert lifecycle.state is State.FAILED


HOOK = "https://hooks.example.com/services/T000/B000/hook-secret-7f3a"


class DownChannel:
    """A webhook that is down: every notification raises, quoting the URL (the secret
    the relay cuts from what it stores)."""

    def notify(self, notification: Notification) -> None:
        raise ConnectionError(f"POST {HOOK} failed: connection refused")


IDS = "3f9c0a1b2c4d5e6f"
"""The prefix of the record ids minted in ``set_aside``, instead of a random one."""


@contextmanager
def _fixed_ids(prefix: str) -> Iterator[None]:
    """Record ids ``prefix`` + a counter from 0, so that the ids a page shows (and a
    command names) are reproduced, as the fake clock reproduces its times."""
    saved = records._PROCESS, records._COUNTER
    records._PROCESS, records._COUNTER = prefix, itertools.count()
    try:
        yield
    finally:
        records._PROCESS, records._COUNTER = saved


def set_aside(instance_id: str) -> None:
    """``exhausted`` while the alerts' webhook is down: its two alerts,
    REPEATED_LOGIN_FAILURE (raised at t = 15 s) and LOGIN_FAILURE (t = 105 s), are set
    aside after the policy's 8 tries each. Their ids start with ``IDS``."""
    with _fixed_ids(IDS):
        exhausted(instance_id, notifier=DownChannel())


def closed(instance_id: str, *, confirm_by: str | None = None) -> None:
    """Added by alice, connected, closed by the broker at t = 70 s with a position open.

    With ``confirm_by``, that operator confirms the closure at t = 200 s.
    """
    clock = FakeClock()
    broker = FakeBroker(clock)
    with _backends(clock, broker) as backends:
        backends.credentials.put(instance_id, Credentials(LOGIN, SERVER, "secret"))
        lifecycle = Lifecycle(instance_id, backends)
        lifecycle.start()
        backends.archive.write(
            [
                AuditRecord(
                    instance_id=instance_id,
                    at=datetime.fromtimestamp(clock.now(), UTC),
                    actor="alice",
                    action="add",
                    source=None,
                    dest=State.CONNECTING,
                    outcome="done",
                    detail=f"login {LOGIN} on {SERVER}",
                )
            ]
        )
        run_for(lifecycle, clock, 50)
        broker.open_position(instance_id, 1002, "GBPUSD", 0.8)
        broker.close_account(instance_id)  # seen at the connection check, t = 60 s
        run_for(lifecycle, clock, 20)
        assert lifecycle.state is State.ACCOUNT_CLOSED
        if confirm_by is not None:
            clock.advance(200 - (clock.now() - FakeClock().now()))
            lifecycle.confirm_closure(by=confirm_by)


# --- mt5lifecycle serve ----------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serve.toml"
_KEYS: list[str] = []
"""``MT5LIFECYCLE_KEYS`` while ``serve_toml_with_problems`` has it unset."""


def _token() -> str:
    return secrets.token_urlsafe(32)


def serve_toml_with_problems(path: str = "serve.toml") -> None:
    """``examples/serve.toml`` with three mistakes, written to ``path``: the policy's
    ``max_login_attempts = 0``, the ``ops`` token written inline, and
    ``MT5LIFECYCLE_KEYS`` not set (a service started without its secrets file). The
    dashboard's token is set, so those are the only problems."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in (
        ("max_login_attempts = 5", "max_login_attempts = 0"),
        ('token = {env = "MT5LIFECYCLE_TOKEN_OPS"}', f'token = "{_token()}"'),
    ):
        assert old in text, f"{EXAMPLE} no longer has {old!r}"
        text = text.replace(old, new)
    Path(path).write_text(text, encoding="utf-8")
    _KEYS.append(os.environ.pop("MT5LIFECYCLE_KEYS"))
    os.environ["MT5LIFECYCLE_TOKEN_DASHBOARD"] = _token()


def serve_secrets() -> None:
    """The environment ``examples/serve.toml`` reads its secrets from, as a service's
    secrets file sets it: the credential keys and the two tokens."""
    if _KEYS:
        os.environ["MT5LIFECYCLE_KEYS"] = _KEYS.pop()
    os.environ["MT5LIFECYCLE_TOKEN_OPS"] = _token()
    os.environ["MT5LIFECYCLE_TOKEN_DASHBOARD"] = _token()


_SERVING: list[tuple[subprocess.Popen[bytes], Path]] = []
STARTED = 30.0
"""Seconds ``serve`` may take to say where it listens."""


def serve() -> None:
    """``mt5lifecycle serve`` on this test's servers (``MT5LIFECYCLE_*``), with fake
    terminals, on a free port; its address in ``URL`` and an operator's token in
    ``TOKEN``, for the page's ``curl`` lines. It runs until ``stop()`` (the page's test
    calls it when the page ends)."""
    work = Path(_env("ARCHIVE")).parent / f"serve-{len(_SERVING)}"
    work.mkdir()
    os.environ["TOKEN"] = _token()
    q = json.dumps
    config = work / "serve.toml"
    config.write_text(
        f"""\
[backends.redis]
url = {q(_env("REDIS_URL"))}
prefix = {q(_env("PREFIX"))}

[backends.postgres]
dsn = {q(_env("POSTGRES_DSN"))}
keys = [{{env = "MT5LIFECYCLE_KEYS"}}]

[backends.duckdb]
path = {q(_env("ARCHIVE"))}

[terminals]
kind = "fake"

[http]
port = 0

[http.tokens.ops]
role = "operator"
token = {{env = "TOKEN"}}
""",
        encoding="utf-8",
    )
    log = work / "serve.log"
    with log.open("wb") as err:
        child = subprocess.Popen(
            ["mt5lifecycle", "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    _SERVING.append((child, log))
    assert child.stdout is not None
    line = b""
    deadline = time.monotonic() + STARTED
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([child.stdout], [], [], max(left, 0))
        chunk = os.read(child.stdout.fileno(), 1) if ready else b""
        if not chunk:
            raise AssertionError(
                f"mt5lifecycle serve said nothing of where it listens ({line!r}): "
                f"{log.read_text(errors='replace')}"
            )
        line += chunk
    prefix = "mt5lifecycle serve: listening on "
    text = line.decode()
    assert text.startswith(prefix), text
    os.environ["URL"] = text.removeprefix(prefix).strip()


def stop() -> list[str]:
    """Stop every ``serve`` started here, as ``systemctl stop`` does (SIGTERM); what
    went wrong (an exit other than 0, with its log), if anything."""
    problems = []
    while _SERVING:
        child, log = _SERVING.pop()
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(STARTED)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        if child.stdout is not None:
            child.stdout.close()
        if code != 0:
            problems.append(f"mt5lifecycle serve exited {code}:\n{log.read_text(errors='replace')}")
    return problems
