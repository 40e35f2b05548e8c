"""The operator's commands on live instances: status, reset, disable, confirm-closure,
history, and the set-aside notifications (list, redeliver).

They change the stored state only. The process that drives an instance (``serve``, a
``Fleet`` or the host's own loop) owns its terminal and carries out what the new
state asks for, and delivers what is put back in its outbox; these commands never
talk to a terminal or a notifier. Every action is archived with the OS user who ran
it, refused ones too.
"""

from __future__ import annotations

import importlib.resources
import json
from datetime import datetime
from typing import TYPE_CHECKING

from ..builtin.brokers import HandsOffBroker
from ..builtin.clock import SystemClock
from ..builtin.memory import NullArchive
from ..builtin.metrics import NullMetrics
from ..builtin.set_aside import no_outbox, oldest_first, redelivery_detail, set_aside_dict
from ..core.ids import check_instance_id
from ..core.snapshot import Snapshot
from ..core.states import Due, State
from ..errors import InvalidTransition, StoreUnavailable
from ..ports import OutboxStore
from ..runtime.backends import Backends
from ..runtime.lifecycle import Lifecycle
from .common import (
    ENV_ARCHIVE,
    ENV_POSTGRES,
    ENV_REDIS,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    CliError,
    Context,
    PrintingNotifier,
    UnconfiguredCredentials,
    due_text,
    iso,
    name_of,
    need,
    open_archive,
    open_postgres,
    open_redis,
    operator_name,
    read_archive,
    snapshot_dict,
    table,
    write_audit,
)
from .console import is_console

if TYPE_CHECKING:
    from ..adapters.redis.store import RedisStateStore
    from ..ports import Archive, CredentialStore


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
    url = need("the Redis state store", s.redis_url, "--redis URL", ENV_REDIS, command)
    return open_redis(url, s.prefix)


def _operator_archive(ctx: Context, *, required: bool, command: str) -> Archive | None:
    path = ctx.settings.archive
    if path is None:
        if required:
            need("the archive", None, "--archive PATH", ENV_ARCHIVE, command)
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
                name_of(s.snapshot.last_failure_reason),
                str(s.snapshot.restart_count),
                due_text(s.snapshot),
            )
            for i, s in loaded.items()
        ]
        table(
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
    fields["next_due"] = due_text(stored.snapshot)
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
    s = ctx.settings
    if command == "reset" and s.postgres_dsn:
        # A reset asks the credential store whether the credentials are known to be bad
        # (SPEC 15); without one configured, only a reset that needs that answer fails.
        pg = open_postgres(s.postgres_dsn, s.keys, s.schema)
        ctx.later(pg.close)
        credentials = pg
    if closure:
        dsn = need("the PostgreSQL credential store", s.postgres_dsn, "--postgres DSN",
                    ENV_POSTGRES, command)  # fmt: skip
        pg = open_postgres(dsn, s.keys, s.schema)
        ctx.later(pg.close)
        credentials = pg
    archive = _operator_archive(ctx, required=closure, command=command)
    backends = Backends(
        state=state,
        credentials=credentials,
        broker=HandsOffBroker("the mt5lifecycle command"),
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


def _state_name(state: State | None) -> str:
    return "-" if state is None else state.value


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
    lifecycle.reset(force=bool(ctx.args.force), by=operator_name())
    _archive_check(ctx, lifecycle)
    after = lifecycle.snapshot()
    forced = after is not None and after.forced_try
    what = "one more try with the same credentials" if forced else "counters cleared"
    ctx.out.write(
        f"{lifecycle.instance_id}: {before} -> {_describe(lifecycle.snapshot())}; {what}, "
        "login due now (the process that drives the instance logs it in)\n"
    )
    return EXIT_OK


def cmd_disable(ctx: Context) -> int:
    lifecycle = _operator_lifecycle(ctx, "disable")
    before = _describe(lifecycle.snapshot())
    lifecycle.disable(by=operator_name())
    _archive_check(ctx, lifecycle)
    ctx.out.write(
        f"{lifecycle.instance_id}: {before} -> {_describe(lifecycle.snapshot())}; the process "
        "that drives the instance stops its terminal\n"
    )
    return EXIT_OK


def cmd_confirm_closure(ctx: Context) -> int:
    instance_id = check_instance_id(ctx.args.instance_id)
    # A scheduled task's stdin may be NUL, which isatty() calls a terminal on
    # Windows: only a real console may answer the question.
    if not ctx.args.yes and not is_console(ctx.stdin):
        raise CliError(
            f"refusing to delete the credentials of {instance_id!r} without confirmation: "
            "stdin is not a terminal (a console), pass --yes",
            EXIT_USAGE,
        )
    lifecycle = _operator_lifecycle(ctx, "confirm-closure", closure=True)
    snapshot = lifecycle.snapshot()
    closing = snapshot is not None and (
        snapshot.status is State.ACCOUNT_CLOSED or snapshot.due is Due.CLEANUP
    )
    if not closing:
        # Refused: raises InvalidTransition naming the state, and archives the refusal.
        lifecycle.confirm_closure(by=operator_name())
    if not ctx.args.yes:
        ctx.out.write(
            f"{instance_id} is {_describe(snapshot)}. Confirming deletes its credentials and "
            "its live state for good (the history stays in the archive).\n"
            f"Type the instance id to confirm: "
        )
        ctx.out.flush()
        answer = ctx.stdin.readline().strip()
        if answer != instance_id:
            state = None if snapshot is None else snapshot.status
            write_audit(ctx, lifecycle.backends.archive, instance_id, "confirm_closure", state,
                        state, "refused", "not confirmed at the prompt")  # fmt: skip
            raise CliError("not confirmed: nothing was changed", EXIT_REFUSED)
    lifecycle.confirm_closure(by=operator_name())
    _archive_check(ctx, lifecycle)
    ctx.out.write(
        f"{instance_id}: closure confirmed; credentials and live state deleted, final state "
        "archived as INACTIVE\n"
    )
    return EXIT_OK


def cmd_history(ctx: Context) -> int:
    instance_id = check_instance_id(ctx.args.instance_id)
    path = need("the archive", ctx.settings.archive, "--archive PATH", ENV_ARCHIVE, "history")
    # Read-only, and only for the moment of each read: a fleet that writes the file
    # holds it only while it flushes (docs/adapters/duckdb.md).
    archive = read_archive(path)
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
    for a in archive.audits(instance_id):
        change = (
            f"{_state_name(a.source)} -> {_state_name(a.dest)}"
            if a.outcome == "done"
            else f"in {_state_name(a.source)}"
        )
        why = f": {a.detail}" if a.detail else ""
        events.append((a.at, 4, f"   {a.action} by {a.actor}: {a.outcome}, {change}{why}"))
    for c in archive.closed_accounts():
        if c.instance_id == instance_id:
            events.append((c.closed_at, 3, "   closure confirmed: final state archived, INACTIVE"))
    if not events:
        raise CliError(f"unknown instance {instance_id!r}: no history in {path}", EXIT_UNKNOWN)
    events.sort(key=lambda e: (e[0], e[1]))
    for at, _, text in events:
        ctx.out.write(f"{iso(at)}  {text}\n")
    return EXIT_OK


def _outbox(store: object) -> OutboxStore:
    if not isinstance(store, OutboxStore):
        raise CliError(no_outbox(store), EXIT_UNAVAILABLE)
    return store


def cmd_notifications(ctx: Context) -> int:
    """The set-aside notifications, oldest set aside first."""
    instances = [check_instance_id(i) for i in ctx.args.instances or ()]
    store = _outbox(_state_store(ctx, "notifications"))
    rows = [
        set_aside_dict(i) for i in oldest_first(store.set_aside_notifications(instances or None))
    ]
    if ctx.args.json:
        ctx.out.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    if not rows:
        which = f" of {', '.join(instances)}" if instances else ""
        ctx.out.write(
            f"no set-aside notifications{which} under the prefix {ctx.settings.prefix!r}\n"
        )
        return EXIT_OK
    table(
        ctx.out,
        ("instance", "notification", "kind", "raised", "set aside", "error"),
        [
            (r["instance_id"], r["notification_id"], r["kind"], r["at"], r["set_aside_at"],
             r["error"])
            for r in rows
        ],
    )  # fmt: skip
    return EXIT_OK


def cmd_redeliver(ctx: Context) -> int:
    """Put an instance's set-aside notifications back in its outbox."""
    lifecycle = _operator_lifecycle(ctx, "redeliver")  # unknown: 4; closure confirmed: 1
    instance_id = lifecycle.instance_id
    store = _outbox(lifecycle.backends.state)
    ids = list(dict.fromkeys(ctx.args.ids)) if ctx.args.ids else None
    missing: list[str] = []
    if ids is not None:
        present = {s.notification.id for s in store.set_aside_notifications([instance_id])}
        missing = [i for i in ids if i not in present]
    moved = store.redeliver(instance_id, ids)
    snapshot = lifecycle.snapshot()
    state = None if snapshot is None else snapshot.status
    archive = lifecycle.backends.archive
    write_audit(
        ctx,
        None if isinstance(archive, NullArchive) else archive,
        instance_id,
        "redeliver",
        state,
        state,
        "done",
        redelivery_detail(moved, ids),
    )
    if missing:
        ctx.err.write(
            f"warning: not set aside for {instance_id} (redelivered already, or no such "
            f"id): {', '.join(missing)}\n"
        )
    if not moved:
        ctx.out.write(f"{instance_id}: nothing to redeliver, nothing was changed\n")
        return EXIT_OK
    ctx.out.write(
        f"{instance_id}: {moved} set-aside notification(s) put back for delivery; the "
        "process that drives the instance hands them to its notifiers when it next reads "
        "the instance back\n"
    )
    return EXIT_OK
