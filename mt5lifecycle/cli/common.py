"""What every command of the ``mt5lifecycle`` command line shares.

Exit codes, the settings read from flags and the environment, opening the backends
(their drivers imported only when a command needs them), the ports an operator's
process stands on, and the small output helpers. Commands live in their own modules
(``operator``, ``accounts``, ``serve``, ``demo_command``); ``main`` wires them up.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import attrs

from ..builtin.clock import SystemClock
from ..core.records import AuditRecord, Notification
from ..core.snapshot import Snapshot, utc
from ..core.states import State
from ..errors import StoreUnavailable

if TYPE_CHECKING:
    from ..adapters.duckdb import DuckDBArchive
    from ..adapters.postgres import PostgresCredentialStore
    from ..adapters.redis.store import RedisStateStore
    from ..core.credentials import Credentials
    from ..ports import Archive

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_UNKNOWN = 4
EXIT_CORRUPT = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_REFUSED: "refused: the transition table (or you, at the prompt) refused the "
    "action, nothing changed; for demo, an instance did not end as expected",
    EXIT_USAGE: "usage: a bad argument, a malformed instance id, a missing setting",
    EXIT_UNAVAILABLE: "a backend is not configured, not installed, or not reachable",
    EXIT_UNKNOWN: "unknown instance: nothing is stored for that id",
    EXIT_CORRUPT: "stored data the library will not guess at (a corrupt key, "
    "credentials no configured key decrypts)",
    EXIT_INTERNAL: "an unexpected error (run again with --verbose for the traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM, or the console closed)",
    EXIT_PIPE: "the reader of the output went away (e.g. | head): the output was cut, "
    "nothing else is wrong",
}

ENV_REDIS = "MT5LIFECYCLE_REDIS_URL"
ENV_POSTGRES = "MT5LIFECYCLE_POSTGRES_DSN"
ENV_KEYS = "MT5LIFECYCLE_KEYS"
ENV_ARCHIVE = "MT5LIFECYCLE_ARCHIVE"
ENV_PREFIX = "MT5LIFECYCLE_PREFIX"
ENV_SCHEMA = "MT5LIFECYCLE_SCHEMA"


class CliError(Exception):
    """Ends the command with one line on stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- settings -------------------------------------------------------------------------


@attrs.frozen
class Settings:
    """Where the operator's backends are: flags first, then the environment."""

    redis_url: str | None = None
    postgres_dsn: str | None = None
    keys: tuple[str, ...] = ()
    archive: str | None = None
    prefix: str = "instance_state"
    schema: str = "mt5lifecycle"

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: dict[str, str]) -> Settings:
        def pick(flag: str | None, name: str) -> str | None:
            value = flag if flag is not None else env.get(name)
            return value or None

        keys = tuple(k.strip() for k in env.get(ENV_KEYS, "").split(",") if k.strip())
        return cls(
            redis_url=pick(args.redis, ENV_REDIS),
            postgres_dsn=pick(args.postgres, ENV_POSTGRES),
            keys=keys,
            archive=pick(args.archive, ENV_ARCHIVE),
            prefix=pick(args.prefix, ENV_PREFIX) or "instance_state",
            schema=pick(args.schema, ENV_SCHEMA) or "mt5lifecycle",
        )


def need(what: str, value: str | None, flag: str, env: str, command: str) -> str:
    if value is None:
        raise CliError(
            f"{command} needs {what}: pass {flag} or set {env}",
            EXIT_UNAVAILABLE,
        )
    return value


def driver(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise CliError(
            f"the {module} package is not installed: pip install 'mt5lifecycle[{extra}]'",
            EXIT_UNAVAILABLE,
        ) from None


def open_redis(url: str, prefix: str) -> RedisStateStore:
    """A state store on ``url``; short timeouts, so a dead server fails fast."""
    redis = driver("redis", "redis")
    from ..adapters.redis.store import RedisStateStore

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)
    except ValueError:
        # redis-py's message may quote the URL, and the URL may hold a password.
        raise CliError(
            "invalid Redis URL: expected redis://, rediss:// or unix://", EXIT_USAGE
        ) from None
    try:
        return RedisStateStore(client, prefix=prefix)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def open_postgres(dsn: str, keys: Sequence[str], schema: str) -> PostgresCredentialStore:
    driver("psycopg", "postgres")
    from ..adapters.postgres import PostgresCredentialStore

    if not keys:
        raise CliError(
            f"PostgreSQL credentials are encrypted: set {ENV_KEYS} to the key list "
            "(comma-separated, the encrypting key first)",
            EXIT_USAGE,
        )
    try:
        return PostgresCredentialStore(dsn, keys=list(keys), schema=schema, timeout=3.0)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def open_archive(path: str, *, must_exist: bool = True) -> DuckDBArchive:
    """The archive for an operator's action: written at once, the file let go after.

    A fleet that writes the same file holds it only while it flushes, so this
    waits for it (``lock_timeout``) instead of failing.
    """
    driver("duckdb", "duckdb")
    from ..adapters.duckdb import DuckDBArchive

    if must_exist and not Path(path).is_file():
        raise CliError(f"archive unavailable: {path} does not exist", EXIT_UNAVAILABLE)
    return DuckDBArchive(path, background=False)


def read_archive(path: str) -> DuckDBArchive:
    """The archive to read only, while a fleet in another process may write it."""
    driver("duckdb", "duckdb")
    from ..adapters.duckdb import DuckDBArchive

    if not Path(path).is_file():
        raise CliError(f"archive unavailable: {path} does not exist", EXIT_UNAVAILABLE)
    return DuckDBArchive.reader(path)


def operator_name() -> str:
    """Who runs the command, for the audit: the OS user.

    ``getpass.getuser`` reads the environment, then the password database; a
    container without either still gets a name that says what it is.
    """
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        if sys.platform != "win32":
            return f"uid-{os.getuid()}"
        return "unknown-user"


# --- what the operator's Backends stand on -------------------------------------------


class UnconfiguredCredentials:
    """A credential store that is not there: any use is ``StoreUnavailable``.

    Safer than an empty store, which would answer "no credentials" for every id.
    """

    def put(self, instance_id: str, credentials: Credentials) -> None:
        self._fail(instance_id)

    def get(self, instance_id: str) -> Credentials | None:
        self._fail(instance_id)

    def delete(self, instance_id: str) -> None:
        self._fail(instance_id)

    def _fail(self, instance_id: str) -> NoReturn:
        raise StoreUnavailable(
            backend="postgresql",
            instance_id=instance_id,
            detail=f"not configured (pass --postgres or set {ENV_POSTGRES})",
        )


class PrintingNotifier:
    """Alerts raised by an operator's action, shown to the operator."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def notify(self, notification: Notification) -> None:
        self.out.write(
            f"alert {notification.kind.value} for {notification.instance_id}: "
            f"{notification.message}\n"
        )


# --- output helpers ---------------------------------------------------------------


def iso(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).isoformat()


def due_text(snapshot: Snapshot) -> str:
    if snapshot.next_due is None or snapshot.due is None:
        return "-"
    return f"{snapshot.due.value} at {utc(snapshot.next_due).isoformat()}"


def name_of(value: Any) -> str:
    return "-" if value is None else str(getattr(value, "value", value))


def snapshot_dict(instance_id: str, snapshot: Snapshot) -> dict[str, Any]:
    """The SPEC's fields (section 10), as JSON-ready values."""
    return {
        "instance_id": instance_id,
        "status": snapshot.status.value,
        "connection_state": snapshot.connection_state.value,
        "login_attempt_count": snapshot.login_attempt_count,
        "last_login_attempt": None
        if snapshot.last_login_attempt is None
        else snapshot.last_login_attempt.isoformat(),
        "login_failure_reason": name_of(snapshot.login_failure_reason)
        if snapshot.login_failure_reason
        else None,
        "last_failure_reason": name_of(snapshot.last_failure_reason)
        if snapshot.last_failure_reason
        else None,
        "restart_count": snapshot.restart_count,
        "next_due": snapshot.next_due,
        "due": None if snapshot.due is None else snapshot.due.value,
    }


def table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


# --- commands ---------------------------------------------------------------------


@attrs.define
class Context:
    """One run of a command: its arguments, settings, streams and environment."""

    args: argparse.Namespace
    settings: Settings
    out: TextIO
    err: TextIO
    stdin: TextIO
    env: dict[str, str] = attrs.field(factory=lambda: dict(os.environ))
    closers: list[Callable[[], None]] = attrs.field(factory=list)

    def later(self, close: Callable[[], None]) -> None:
        self.closers.append(close)


def write_audit(
    ctx: Context,
    archive: Archive | None,
    instance_id: str,
    action: str,
    before: State | None,
    after: State | None,
    outcome: str,
    detail: str = "",
) -> None:
    """Archive an action the command did itself (not through a ``Lifecycle``)."""
    if archive is None:
        ctx.err.write(
            f"warning: no archive configured (--archive or {ENV_ARCHIVE}): this action "
            "is not recorded in the history\n"
        )
        return
    archive.write(
        [
            AuditRecord(
                instance_id=instance_id,
                at=utc(SystemClock().now()),
                actor=operator_name(),
                action=action,
                source=before,
                dest=after,
                outcome=outcome,
                detail=detail,
            )
        ]
    )
    archive.flush()
    pending = getattr(archive, "pending", 0)
    if pending:
        ctx.err.write(
            f"warning: {pending} archive record(s) could not be written "
            "(the archive file is unavailable)\n"
        )
