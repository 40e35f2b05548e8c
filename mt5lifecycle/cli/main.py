"""The ``mt5lifecycle`` command: the demo, and the operator's actions on live instances.

Every failure an operator can meet (a server down, an unknown or malformed id, an
action the transition table refuses) ends in one line on stderr and a documented
exit code, never a traceback: the command runs in shells, cron jobs and runbooks,
where a traceback is noise and an exit code is what a script can act on.

Operator commands change the stored state only. The process that drives an
instance (a ``Fleet`` or the host's own loop) owns its terminal and carries out what
the new state asks for; this command never talks to a terminal.

Drivers (redis, psycopg, duckdb) are imported when a command needs them, so the
command works with the core alone for ``demo --instant``, ``diagram`` and ``rules``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import attrs

from .. import __version__
from ..builtin.clock import ScaledClock, SystemClock
from ..builtin.memory import MemoryArchive, MemoryCredentialStore, MemoryStateStore, NullArchive
from ..builtin.metrics import NullMetrics
from ..core.ids import check_instance_id
from ..core.records import Notification, Order, Position, TradeResult
from ..core.snapshot import Snapshot, utc
from ..core.states import Due, State, TerminalStatus
from ..errors import (
    CorruptState,
    CredentialsUndecryptable,
    InvalidInstanceId,
    InvalidTransition,
    LifecycleError,
    StoreUnavailable,
)
from ..runtime.backends import Backends
from ..runtime.lifecycle import Lifecycle

if TYPE_CHECKING:
    from ..adapters.duckdb import DuckDBArchive
    from ..adapters.postgres import PostgresCredentialStore
    from ..adapters.redis.store import RedisStateStore
    from ..core.credentials import Credentials
    from ..ports import Archive, Clock, CredentialStore, StateStore

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_UNKNOWN = 4
EXIT_CORRUPT = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

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
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

DEMO_ARCHIVE = "mt5lifecycle-demo.duckdb"
DEMO_SECONDS = 6.0
"""Roughly how long the demo takes in real time at the default speed."""

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


def _need(what: str, value: str | None, flag: str, env: str, command: str) -> str:
    if value is None:
        raise CliError(
            f"{command} needs {what}: pass {flag} or set {env}",
            EXIT_UNAVAILABLE,
        )
    return value


def _driver(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise CliError(
            f"the {module} package is not installed: pip install 'mt5lifecycle[{extra}]'",
            EXIT_UNAVAILABLE,
        ) from None


def open_redis(url: str, prefix: str) -> RedisStateStore:
    """A state store on ``url``; short timeouts, so a dead server fails fast."""
    redis = _driver("redis", "redis")
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
    _driver("psycopg", "postgres")
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
    _driver("duckdb", "duckdb")
    from ..adapters.duckdb import DuckDBArchive

    if must_exist and not Path(path).is_file():
        raise CliError(f"archive unavailable: {path} does not exist", EXIT_UNAVAILABLE)
    return DuckDBArchive(path, background=False)


# --- what the operator's Backends stand on -------------------------------------------


class HandsOffBroker:
    """The broker port of a process that does not own the terminals.

    Stopping and restarting are left to the process that drives the instance: it
    reads the new state and acts on it. Nothing here logs in or trades.
    """

    def login(self, instance_id: str, credentials: Credentials, *, logged_in_before: bool) -> Any:
        raise RuntimeError("the mt5lifecycle command does not log terminals in")

    def status(self, instance_id: str) -> TerminalStatus:
        return TerminalStatus.DOWN

    def restart(self, instance_id: str) -> None:
        pass

    def stop(self, instance_id: str) -> None:
        pass

    def positions(self, instance_id: str) -> list[Position]:
        return []

    def orders(self, instance_id: str) -> list[Order]:
        return []

    def close_position(self, instance_id: str, position: Position, volume: float) -> TradeResult:
        return TradeResult(retcode=None, comment="not this process's terminal")

    def cancel_order(self, instance_id: str, order: Order) -> TradeResult:
        return TradeResult(retcode=None, comment="not this process's terminal")


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


def _iso(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).isoformat()


def _due_text(snapshot: Snapshot) -> str:
    if snapshot.next_due is None or snapshot.due is None:
        return "-"
    return f"{snapshot.due.value} at {utc(snapshot.next_due).isoformat()}"


def _name(value: Any) -> str:
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
        "login_failure_reason": _name(snapshot.login_failure_reason)
        if snapshot.login_failure_reason
        else None,
        "last_failure_reason": _name(snapshot.last_failure_reason)
        if snapshot.last_failure_reason
        else None,
        "restart_count": snapshot.restart_count,
        "next_due": snapshot.next_due,
        "due": None if snapshot.due is None else snapshot.due.value,
    }


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


# --- commands ---------------------------------------------------------------------


@attrs.define
class Context:
    args: argparse.Namespace
    settings: Settings
    out: TextIO
    err: TextIO
    stdin: TextIO
    closers: list[Callable[[], None]] = attrs.field(factory=list)

    def later(self, close: Callable[[], None]) -> None:
        self.closers.append(close)


def cmd_diagram(ctx: Context) -> int:
    from ..core.machine import mermaid

    ctx.out.write(mermaid())
    return EXIT_OK


def cmd_rules(ctx: Context) -> int:
    resource = importlib.resources.files("mt5lifecycle").joinpath("rules/alerts.yml")
    try:
        text = resource.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise CliError(
            "the packaged rules file mt5lifecycle/rules/alerts.yml is missing from this "
            "installation",
            EXIT_INTERNAL,
        ) from None
    ctx.out.write(text)
    return EXIT_OK


def _state_store(ctx: Context, command: str) -> RedisStateStore:
    s = ctx.settings
    url = _need("the Redis state store", s.redis_url, "--redis URL", ENV_REDIS, command)
    return open_redis(url, s.prefix)


def _operator_archive(ctx: Context, *, required: bool, command: str) -> Archive | None:
    path = ctx.settings.archive
    if path is None:
        if required:
            _need("the archive", None, "--archive PATH", ENV_ARCHIVE, command)
        return None
    archive = open_archive(path)
    ctx.later(archive.close)
    return archive


def cmd_status(ctx: Context) -> int:
    args = ctx.args
    if args.all == (args.instance_id is not None):
        raise CliError("status takes an instance id or --all (one of them)", EXIT_USAGE)
    if args.instance_id is not None:
        instance_id = check_instance_id(args.instance_id)
    store = _state_store(ctx, "status")
    if args.all:
        loaded = store.load_many(sorted(store.ids()))
        if args.json:
            ctx.out.write(
                json.dumps([snapshot_dict(i, s.snapshot) for i, s in loaded.items()], indent=2)
                + "\n"
            )
            return EXIT_OK
        if not loaded:
            ctx.out.write(f"no instances under the prefix {ctx.settings.prefix!r}\n")
            return EXIT_OK
        rows = [
            (
                i,
                s.snapshot.status.value,
                s.snapshot.connection_state.value,
                str(s.snapshot.login_attempt_count),
                _name(s.snapshot.last_failure_reason),
                str(s.snapshot.restart_count),
                _due_text(s.snapshot),
            )
            for i, s in loaded.items()
        ]
        _table(
            ctx.out,
            ("instance", "status", "connection", "attempts", "last failure", "restarts", "next"),
            rows,
        )
        return EXIT_OK
    stored = store.load(instance_id)
    if stored is None:
        if _confirmed_in_archive(ctx, instance_id):
            ctx.out.write(
                f"{instance_id}: INACTIVE, its account closure was confirmed; its live state "
                "and credentials are deleted, its history is in the archive\n"
            )
            return EXIT_OK
        raise _unknown(ctx, instance_id)
    fields = snapshot_dict(instance_id, stored.snapshot)
    if args.json:
        ctx.out.write(json.dumps(fields, indent=2) + "\n")
        return EXIT_OK
    fields["next_due"] = _due_text(stored.snapshot)
    del fields["due"]
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        ctx.out.write(f"{key:<{width}}  {'-' if value is None else value}\n")
    return EXIT_OK


def _confirmed_in_archive(ctx: Context, instance_id: str) -> bool:
    """Whether the archive, if one is configured and readable, remembers a closure."""
    try:
        archive = _operator_archive(ctx, required=False, command="status")
        return archive is not None and archive.is_confirmed(instance_id)
    except (CliError, StoreUnavailable):
        return False


def _unknown(ctx: Context, instance_id: str) -> CliError:
    return CliError(
        f"unknown instance {instance_id!r}: nothing is stored for it under the prefix "
        f"{ctx.settings.prefix!r}",
        EXIT_UNKNOWN,
    )


def _operator_lifecycle(ctx: Context, command: str, *, closure: bool = False) -> Lifecycle:
    """A ``Lifecycle`` over the real stores that acts on the stored state only."""
    instance_id = check_instance_id(ctx.args.instance_id)
    state = _state_store(ctx, command)
    credentials: CredentialStore = UnconfiguredCredentials()
    if closure:
        s = ctx.settings
        dsn = _need("the PostgreSQL credential store", s.postgres_dsn, "--postgres DSN",
                    ENV_POSTGRES, command)  # fmt: skip
        pg = open_postgres(dsn, s.keys, s.schema)
        ctx.later(pg.close)
        credentials = pg
    archive = _operator_archive(ctx, required=closure, command=command)
    backends = Backends(
        state=state,
        credentials=credentials,
        broker=HandsOffBroker(),
        clock=SystemClock(),
        archive=archive if archive is not None else NullArchive(),
        notifier=PrintingNotifier(ctx.out),
        metrics=NullMetrics(),
    )
    lifecycle = Lifecycle(instance_id, backends)
    if lifecycle.snapshot() is None:
        if archive is not None and archive.is_confirmed(instance_id):
            raise InvalidTransition(
                instance_id=instance_id,
                event=command.replace("-", "_"),
                state=State.INACTIVE.value,
                detail="its account closure was confirmed; a closed account never comes back",
            )
        raise _unknown(ctx, instance_id)
    return lifecycle


def _describe(snapshot: Snapshot | None) -> str:
    if snapshot is None:
        return "-"
    reason = snapshot.last_failure_reason
    if snapshot.status in (State.CONNECTED, State.CONNECTING) or reason is None:
        return snapshot.status.value
    return f"{snapshot.status.value} ({reason.value})"


def _archive_check(ctx: Context, lifecycle: Lifecycle) -> None:
    """After a stored action: say so if its record did not reach an archive."""
    archive = lifecycle.backends.archive
    if isinstance(archive, NullArchive):
        ctx.err.write(
            f"warning: no archive configured (--archive or {ENV_ARCHIVE}): this action "
            "is not recorded in the history\n"
        )
        return
    archive.flush()
    pending = getattr(archive, "pending", 0)
    if pending:
        ctx.err.write(
            f"warning: the action is stored, but {pending} archive record(s) could not be "
            "written (is another process holding the archive file?)\n"
        )


def cmd_reset(ctx: Context) -> int:
    lifecycle = _operator_lifecycle(ctx, "reset")
    before = _describe(lifecycle.snapshot())
    lifecycle.reset()
    _archive_check(ctx, lifecycle)
    ctx.out.write(
        f"{lifecycle.instance_id}: {before} -> {_describe(lifecycle.snapshot())}; counters "
        "cleared, login due now (the process that drives the instance logs it in)\n"
    )
    return EXIT_OK


def cmd_disable(ctx: Context) -> int:
    lifecycle = _operator_lifecycle(ctx, "disable")
    before = _describe(lifecycle.snapshot())
    lifecycle.disable()
    _archive_check(ctx, lifecycle)
    ctx.out.write(
        f"{lifecycle.instance_id}: {before} -> {_describe(lifecycle.snapshot())}; the process "
        "that drives the instance stops its terminal\n"
    )
    return EXIT_OK


def cmd_confirm_closure(ctx: Context) -> int:
    instance_id = check_instance_id(ctx.args.instance_id)
    interactive = bool(getattr(ctx.stdin, "isatty", lambda: False)())
    if not ctx.args.yes and not interactive:
        raise CliError(
            f"refusing to delete the credentials of {instance_id!r} without confirmation: "
            "stdin is not a terminal, pass --yes",
            EXIT_USAGE,
        )
    lifecycle = _operator_lifecycle(ctx, "confirm-closure", closure=True)
    snapshot = lifecycle.snapshot()
    closing = snapshot is not None and (
        snapshot.status is State.ACCOUNT_CLOSED or snapshot.due is Due.CLEANUP
    )
    if not closing:
        lifecycle.confirm_closure()  # refused: raises InvalidTransition, naming the state
    if not ctx.args.yes:
        ctx.out.write(
            f"{instance_id} is {_describe(snapshot)}. Confirming deletes its credentials and "
            "its live state for good (the history stays in the archive).\n"
            f"Type the instance id to confirm: "
        )
        ctx.out.flush()
        answer = ctx.stdin.readline().strip()
        if answer != instance_id:
            raise CliError("not confirmed: nothing was changed", EXIT_REFUSED)
    lifecycle.confirm_closure()
    _archive_check(ctx, lifecycle)
    ctx.out.write(
        f"{instance_id}: closure confirmed; credentials and live state deleted, final state "
        "archived as INACTIVE\n"
    )
    return EXIT_OK


def cmd_history(ctx: Context) -> int:
    instance_id = check_instance_id(ctx.args.instance_id)
    path = _need("the archive", ctx.settings.archive, "--archive PATH", ENV_ARCHIVE, "history")
    archive = open_archive(path)
    ctx.later(archive.close)
    events: list[tuple[datetime, int, str]] = []
    for t in archive.history(instance_id):
        reason = f" ({t.reason.value})" if t.reason is not None else ""
        source = t.source.value if t.source is not None else "new"
        events.append((t.at, 0, f"{source} -> {t.dest.value}  {t.event}{reason}"))
    for f in archive.failures(instance_id):
        events.append(
            (
                f.at,
                1,
                f"   login failed: {f.reason.value}, {f.attempt} in a row "
                f"(terminal: {f.code} {f.message})",
            )
        )
    for o in archive.outcomes(instance_id):
        volume = f" {o.volume:g} lots" if o.kind == "position" else ""
        events.append(
            (
                o.at,
                2,
                f"   {o.kind} {o.ticket} {o.symbol}{volume}: {o.outcome.value} "
                f"(retcode {o.retcode})",
            )
        )
    for c in archive.closed_accounts():
        if c.instance_id == instance_id:
            events.append((c.closed_at, 3, "   closure confirmed: final state archived, INACTIVE"))
    if not events:
        raise CliError(f"unknown instance {instance_id!r}: no history in {path}", EXIT_UNKNOWN)
    events.sort(key=lambda e: (e[0], e[1]))
    for at, _, text in events:
        ctx.out.write(f"{_iso(at)}  {text}\n")
    return EXIT_OK


# --- the demo -----------------------------------------------------------------------


def _replaceable_demo_archive(path: Path) -> None:
    """Let the demo replace ``path`` only if it holds nothing but a previous demo."""
    from .demo import FLOWS

    if not path.exists():
        return
    duckdb = _driver("duckdb", "duckdb")
    demo_ids = {flow.instance_id for flow in FLOWS}
    try:
        con = duckdb.connect(str(path), read_only=True)
        try:
            found = {
                row[0]
                for row in con.execute(
                    "SELECT instance_id FROM transitions UNION SELECT instance_id FROM instances"
                ).fetchall()
            }
        finally:
            con.close()
    except duckdb.Error:
        found = {"?"}
    if not found <= demo_ids:
        raise CliError(
            f"{path} exists and is not a demo archive; the demo replaces its archive, so "
            "pass another --archive path",
            EXIT_USAGE,
        )
    path.unlink()
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        wal.unlink()


@attrs.define
class _DemoStores:
    state: StateStore
    credentials: CredentialStore
    archive: Archive
    lines: list[str]


def _demo_stores(ctx: Context, clock: Clock) -> _DemoStores:
    args = ctx.args
    lines: list[str] = []
    if (args.redis is None) != (args.postgres is None):
        raise CliError("demo on real servers needs both --redis URL and --postgres DSN", EXIT_USAGE)
    state: StateStore
    credentials: CredentialStore
    if args.redis is not None:
        run = uuid.uuid4().hex[:8]
        prefix = f"mt5lifecycle-demo-{run}"
        schema = f"mt5lifecycle_demo_{run}"
        redis_store = open_redis(args.redis, prefix)
        redis_store.load("probe")  # fail fast, before a schema is made in PostgreSQL
        # A key made for this run only: the demo's passwords are made up anyway.
        _driver("psycopg", "postgres")
        from ..adapters.postgres import PostgresCredentialStore

        pg = open_postgres(args.postgres, [PostgresCredentialStore.generate_key()], schema)
        ctx.later(pg.close)
        state, credentials = redis_store, pg
        lines.append(f"state: Redis (prefix {prefix})   credentials: PostgreSQL (schema {schema})")
        if args.keep:
            lines.append("kept after the run (--keep): inspect with mt5lifecycle status --all "
                         f"--redis URL --prefix {prefix}")  # fmt: skip
        else:
            ctx.later(lambda: _drop_demo(redis_store, pg, args.postgres, schema))
    else:
        state, credentials = MemoryStateStore(clock), MemoryCredentialStore()
        lines.append("state: in memory   credentials: in memory")
    archive: Archive
    try:
        _driver("duckdb", "duckdb")
    except CliError:
        archive = MemoryArchive()
        lines.append("archive: in memory (duckdb is not installed: pip install "
                     "'mt5lifecycle[duckdb]' for a DuckDB file)")  # fmt: skip
    else:
        path = Path(args.archive).absolute()
        _replaceable_demo_archive(path)
        duck = open_archive(str(path), must_exist=False)
        ctx.later(duck.close)
        archive = duck
        lines.append(f"archive: DuckDB file {path}")
    return _DemoStores(state, credentials, archive, lines)


def _drop_demo(store: RedisStateStore, pg: PostgresCredentialStore, dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    from .demo import FLOWS

    # Each step on its own: a server that went down must not keep the other's data.
    try:
        for flow in FLOWS:
            store.delete(flow.instance_id)
    finally:
        pg.close()
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            conn.execute(drop)


def cmd_demo(ctx: Context) -> int:
    from . import demo

    args = ctx.args
    if args.speed is not None and not args.speed > 0:
        raise CliError(f"--speed must be a positive number, not {args.speed}", EXIT_USAGE)
    clock: Clock
    if args.instant:
        from ..testing.clock import FakeClock

        clock = FakeClock()
        pace = "instant (a fake clock jumps from one due time to the next)"
    else:
        speed = args.speed if args.speed is not None else demo.SPAN / DEMO_SECONDS
        clock = ScaledClock(speed=speed)
        pace = (
            f"{speed:g}x real time ({demo.SPAN:g} simulated s in about {demo.SPAN / speed:.0f} s)"
        )
    stores = _demo_stores(ctx, clock)
    color = demo.use_color(ctx.out) and not args.no_color
    out = ctx.out
    out.write(
        f"mt5lifecycle demo: {len(demo.FLOWS)} instances in one Fleet, one per flow, on the "
        "default Policy\n"
    )
    for line in [*stores.lines, "broker: FakeBroker (simulated terminals)", f"clock: {pace}"]:
        out.write(f"  {line}\n")
    out.write("\n")
    rows = demo.run_demo(
        out,
        clock=clock,
        state=stores.state,
        credentials=stores.credentials,
        archive=stores.archive,
        color=color,
    )
    demo.print_summary(out, rows, color=color)
    stores.archive.flush()
    archive_path = getattr(stores.archive, "path", None)
    if archive_path is not None:
        out.write(
            f"\nThe history is in {archive_path}; try:\n"
            f"  mt5lifecycle history account-closed --archive {archive_path}\n"
        )
    if not all(row.expected for row in rows):
        ctx.err.write("demo: some instances did not end in the expected state\n")
        return EXIT_REFUSED
    return EXIT_OK


# --- the parser -----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)", EXIT_USAGE)


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    return (
        "settings (flags win over the environment):\n"
        f"  {ENV_REDIS}     Redis URL of the state store (--redis)\n"
        f"  {ENV_POSTGRES}  PostgreSQL connection string of the credentials (--postgres)\n"
        f"  {ENV_KEYS}          credential encryption keys, comma-separated, encrypting key "
        "first\n"
        f"  {ENV_ARCHIVE}       path of the DuckDB archive (--archive)\n"
        f"  {ENV_PREFIX}        Redis key prefix, default instance_state (--prefix)\n"
        f"  {ENV_SCHEMA}        PostgreSQL schema, default mt5lifecycle (--schema)\n"
        "  The demo reads none of them: it uses only its own flags.\n\n"
        f"exit codes:\n{codes}\n"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mt5lifecycle",
        description="The login and connection lifecycle of MetaTrader 5 terminals: "
        "a demo, and the operator's actions on live instances.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mt5lifecycle {__version__}")

    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log what the library does")

    servers = _Parser(add_help=False)
    servers.add_argument("--redis", metavar="URL", help=f"Redis URL (or {ENV_REDIS})")
    servers.add_argument("--postgres", metavar="DSN", help=f"PostgreSQL DSN (or {ENV_POSTGRES})")
    servers.add_argument("--archive", metavar="PATH", help=f"DuckDB archive (or {ENV_ARCHIVE})")
    servers.add_argument("--prefix", help=f"Redis key prefix (or {ENV_PREFIX})")
    servers.add_argument("--schema", help=f"PostgreSQL schema (or {ENV_SCHEMA})")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="watch a simulated fleet go through every flow",
        description="A simulated fleet goes through every flow of the lifecycle on the "
        "default policy, with a fake broker and an accelerated clock.",
    )
    pace = demo.add_mutually_exclusive_group()
    pace.add_argument("--instant", action="store_true", help="no waiting at all (a fake clock)")
    pace.add_argument(
        "--speed",
        type=float,
        metavar="X",
        help=f"simulated seconds per real second (default: the demo takes ~{DEMO_SECONDS:g} s)",
    )
    demo.add_argument(
        "--archive",
        default=DEMO_ARCHIVE,
        metavar="PATH",
        help=f"the DuckDB archive file, replaced on each run (default ./{DEMO_ARCHIVE})",
    )
    demo.add_argument("--redis", metavar="URL", help="run the state store on this Redis")
    demo.add_argument("--postgres", metavar="DSN", help="run the credentials on this PostgreSQL")
    demo.add_argument(
        "--keep", action="store_true", help="keep the run's Redis keys and schema afterwards"
    )
    demo.add_argument("--no-color", action="store_true", help="plain text, no ANSI colours")
    demo.set_defaults(handler=cmd_demo)

    status = sub.add_parser(
        "status", parents=[common, servers], help="the stored state of one instance or all"
    )
    status.add_argument("instance_id", nargs="?", metavar="ID")
    status.add_argument("--all", action="store_true", help="every instance under the prefix")
    status.add_argument("--json", action="store_true", help="JSON instead of text")
    status.set_defaults(handler=cmd_status)

    for name, handler, text in (
        ("reset", cmd_reset, "clear the counters of a FAILED or INACTIVE instance, log in again"),
        ("disable", cmd_disable, "take an instance out of service (INACTIVE, MANUAL)"),
        ("confirm-closure", cmd_confirm_closure,
         "confirm a closed account: delete its credentials and live state"),
        ("history", cmd_history, "an instance's history from the archive"),
    ):  # fmt: skip
        command = sub.add_parser(name, parents=[common, servers], help=text, description=text)
        command.add_argument("instance_id", metavar="ID")
        if name == "confirm-closure":
            command.add_argument("--yes", action="store_true", help="do not ask")
        command.set_defaults(handler=handler)

    diagram = sub.add_parser(
        "diagram", parents=[common], help="the transition table as a Mermaid state diagram"
    )
    diagram.set_defaults(handler=cmd_diagram)
    rules = sub.add_parser("rules", parents=[common], help="the packaged Prometheus alert rules")
    rules.set_defaults(handler=cmd_rules)
    return parser


# --- main -----------------------------------------------------------------------------


@contextlib.contextmanager
def _logging(verbose: bool, err: TextIO) -> Iterator[None]:
    """Library log lines only with --verbose: otherwise each failure is one line of ours.

    Without a handler anywhere, Python would print warnings through its last-resort
    handler; a ``NullHandler`` on the root stops that, and is removed afterwards so
    that a host calling ``main()`` keeps its own logging as it was.
    """
    root = logging.getLogger()
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    level = root.level
    added = verbose or not root.handlers
    if added:
        root.addHandler(handler)
    if verbose:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        if added:
            root.removeHandler(handler)
        root.setLevel(level)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Run the command line; return its exit code (see ``EXIT_CODES``)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except CliError as exc:
        err.write(f"mt5lifecycle: error: {_one_line(str(exc))}\n")
        return exc.code
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    ctx = Context(
        args=args,
        settings=Settings.from_args(args, dict(os.environ) if env is None else env)
        if hasattr(args, "redis") and args.command != "demo"
        else Settings(),
        out=out,
        err=err,
        stdin=stdin if stdin is not None else sys.stdin,
    )
    verbose = bool(getattr(args, "verbose", False))
    code = EXIT_OK
    message: str | None = None
    with _logging(verbose, err):
        try:
            code = args.handler(ctx)
        except CliError as exc:
            code, message = exc.code, str(exc)
        except InvalidInstanceId as exc:
            code, message = EXIT_USAGE, str(exc)
        except InvalidTransition as exc:
            code, message = EXIT_REFUSED, f"refused: {exc}"
        except StoreUnavailable as exc:
            code, message = EXIT_UNAVAILABLE, str(exc)
        except (CorruptState, CredentialsUndecryptable) as exc:
            code, message = EXIT_CORRUPT, str(exc)
        except LifecycleError as exc:
            code, message = EXIT_REFUSED, str(exc)
        except KeyboardInterrupt:
            code, message = EXIT_INTERRUPTED, "interrupted"
        except Exception as exc:
            if verbose:
                logging.getLogger("mt5lifecycle.cli").exception("unexpected error")
            code = EXIT_INTERNAL
            message = f"unexpected {type(exc).__name__}: {exc} (run with --verbose for details)"
        finally:
            for close in reversed(ctx.closers):
                try:
                    close()
                except Exception as exc:
                    if message is None:
                        err.write(f"mt5lifecycle: warning: cleanup failed: {_one_line(str(exc))}\n")
    if message is not None:
        err.write(f"mt5lifecycle: error: {_one_line(message)}\n")
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
