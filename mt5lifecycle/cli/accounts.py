"""Accounts from the command line: ``add``, ``credentials put/delete/rotate``, ``generate-key``.

A password never comes from an argument: arguments show in ``ps``, in the shell's
history and in a service manager's logs. It is read from the console without echo
(``getpass``, typed twice), or as one line from stdin when stdin is not a console
(a pipe from a secrets manager: ``vault read -field=pw ... | mt5lifecycle
credentials put ...``).

``add`` stores the credentials and starts the instance on the state store
(``CONNECTING``, its login due now); the ``serve`` process that watches the store
picks it up and logs it in. Each command archives what it did, or that it was
refused, with the OS user who ran it.
"""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING

from ..builtin.brokers import HandsOffBroker
from ..builtin.clock import SystemClock
from ..builtin.metrics import NullMetrics
from ..core.credentials import Credentials
from ..core.ids import check_instance_id
from ..core.states import State
from ..errors import InvalidTransition
from ..runtime.backends import Backends
from ..runtime.lifecycle import Lifecycle
from .common import (
    ENV_ARCHIVE,
    ENV_POSTGRES,
    ENV_REDIS,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    Context,
    PrintingNotifier,
    need,
    open_archive,
    open_postgres,
    open_redis,
    write_audit,
)
from .console import is_console

if TYPE_CHECKING:
    from ..adapters.duckdb import DuckDBArchive
    from ..adapters.postgres import PostgresCredentialStore
    from ..adapters.redis.store import RedisStateStore

__all__ = [
    "cmd_add",
    "cmd_credentials_delete",
    "cmd_credentials_put",
    "cmd_credentials_rotate",
    "cmd_generate_key",
]


def cmd_generate_key(ctx: Context) -> int:
    from ..adapters.postgres import PostgresCredentialStore

    ctx.out.write(PostgresCredentialStore.generate_key() + "\n")
    return EXIT_OK


def _postgres(ctx: Context, command: str) -> PostgresCredentialStore:
    s = ctx.settings
    dsn = need("the PostgreSQL credential store", s.postgres_dsn, "--postgres DSN",
               ENV_POSTGRES, command)  # fmt: skip
    store = open_postgres(dsn, s.keys, s.schema)
    ctx.later(store.close)
    return store


def _archive(ctx: Context) -> DuckDBArchive | None:
    path = ctx.settings.archive
    if path is None:
        return None
    archive = open_archive(path)
    ctx.later(archive.close)
    return archive


def _redis(ctx: Context, command: str, *, required: bool) -> RedisStateStore | None:
    url = ctx.settings.redis_url
    if url is None:
        if required:
            need("the Redis state store", None, "--redis URL", ENV_REDIS, command)
        return None
    return open_redis(url, ctx.settings.prefix)


def _state_of(store: RedisStateStore | None, instance_id: str) -> State | None:
    if store is None:
        return None
    stored = store.load(instance_id)
    return None if stored is None else stored.snapshot.status


def read_password(ctx: Context, instance_id: str) -> str:
    """The password: typed twice without echo at a console, else one line of stdin."""
    stdin = ctx.stdin
    if stdin is sys.stdin and is_console(stdin):
        first = getpass.getpass(f"Password for {instance_id}: ", stream=ctx.err)
        again = getpass.getpass("Type it again: ", stream=ctx.err)
        if first != again:
            raise CliError("the two passwords differ: nothing was stored", EXIT_REFUSED)
        password = first
    else:
        line = stdin.readline()
        # Only the line ending goes: spaces may be part of a password.
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    if not password:
        raise CliError(
            "no password given: type it at the prompt, or pipe it on stdin (one line)",
            EXIT_USAGE,
        )
    return password


def _account(ctx: Context) -> Credentials:
    """``--login`` and ``--server`` checked before any I/O (the password comes later)."""
    args = ctx.args
    try:
        # A placeholder password: the real one is asked for once the stores answer.
        return Credentials(login=args.login, server=args.server, password="-")  # noqa: S106
    except ValueError as exc:
        raise CliError(str(exc).replace("Credentials.", "--"), EXIT_USAGE) from None


def _credentials(ctx: Context, instance_id: str, account: Credentials) -> Credentials:
    password = read_password(ctx, instance_id)
    try:
        return Credentials(login=account.login, server=account.server, password=password)
    except ValueError as exc:
        raise CliError(str(exc).replace("Credentials.", ""), EXIT_USAGE) from None


def cmd_credentials_put(ctx: Context) -> int:
    instance_id = check_instance_id(ctx.args.instance_id)
    account = _account(ctx)
    store = _postgres(ctx, "credentials put")
    state = _redis(ctx, "credentials put", required=False)
    archive = _archive(ctx)
    credentials = _credentials(ctx, instance_id, account)
    before = _state_of(state, instance_id)
    store.put(instance_id, credentials)
    write_audit(ctx, archive, instance_id, "put_credentials", before, before, "done",
           f"login {credentials.login} on {credentials.server}")  # fmt: skip
    after = "" if before is None else f" (the instance is {before.value})"
    ctx.out.write(
        f"{instance_id}: credentials stored for login {credentials.login} on "
        f"{credentials.server}{after}; the next login uses them\n"
    )
    return EXIT_OK


def cmd_credentials_delete(ctx: Context) -> int:
    instance_id = check_instance_id(ctx.args.instance_id)
    if not ctx.args.yes and not is_console(ctx.stdin):
        raise CliError(
            f"refusing to delete the credentials of {instance_id!r} without confirmation: "
            "stdin is not a console, pass --yes",
            EXIT_USAGE,
        )
    store = _postgres(ctx, "credentials delete")
    state = _redis(ctx, "credentials delete", required=False)
    archive = _archive(ctx)
    before = _state_of(state, instance_id)
    if not ctx.args.yes:
        ctx.out.write(
            f"Deleting the credentials of {instance_id} stops its next login (it goes "
            "FAILED, CREDENTIALS_MISSING). Type the instance id to confirm: "
        )
        ctx.out.flush()
        if ctx.stdin.readline().strip() != instance_id:
            write_audit(ctx, archive, instance_id, "delete_credentials", before, before,
                   "refused", "not confirmed at the prompt")  # fmt: skip
            raise CliError("not confirmed: nothing was changed", EXIT_REFUSED)
    store.delete(instance_id)
    write_audit(ctx, archive, instance_id, "delete_credentials", before, before, "done")
    ctx.out.write(f"{instance_id}: credentials deleted\n")
    return EXIT_OK


def cmd_credentials_rotate(ctx: Context) -> int:
    store = _postgres(ctx, "credentials rotate")
    changed = store.rotate()
    ctx.out.write(
        f"re-encrypted {changed} credential row(s) with the first key; once this says 0, "
        "the other keys can be retired\n"
    )
    return EXIT_OK


def cmd_add(ctx: Context) -> int:
    instance_id = check_instance_id(ctx.args.instance_id)
    account = _account(ctx)
    state = _redis(ctx, "add", required=True)
    assert state is not None
    store = _postgres(ctx, "add")
    # A confirmed closure must never come back under its id: the archive is the one
    # that remembers, so add does not run without it (nor on a mistyped path, which
    # would remember nothing). ``serve`` creates the file when it starts.
    need("the archive", ctx.settings.archive, "--archive PATH", ENV_ARCHIVE, "add")
    archive = _archive(ctx)
    assert archive is not None
    credentials = _credentials(ctx, instance_id, account)
    before = _state_of(state, instance_id)
    refusal: str | None = None
    if before is not None:
        refusal = (
            f"it already exists ({before.value}); replace its credentials with "
            "mt5lifecycle credentials put"
        )
    elif archive.is_confirmed(instance_id):
        refusal = "its account closure was confirmed; a closed account never comes back"
    if refusal is not None:
        write_audit(ctx, archive, instance_id, "add", before, before, "refused", refusal)
        raise InvalidTransition(
            instance_id=instance_id,
            event="add",
            state=None if before is None else before.value,
            detail=refusal,
        )
    store.put(instance_id, credentials)
    backends = Backends(
        state=state,
        credentials=store,
        broker=HandsOffBroker("the mt5lifecycle command"),
        clock=SystemClock(),
        archive=archive,
        notifier=PrintingNotifier(ctx.out),
        metrics=NullMetrics(),
    )
    lifecycle = Lifecycle(instance_id, backends)
    lifecycle.start()
    after = lifecycle.state
    write_audit(ctx, archive, instance_id, "add", None, after, "done",
           f"login {credentials.login} on {credentials.server}")  # fmt: skip
    ctx.out.write(
        f"{instance_id}: added, {after.value if after else '-'}; login due now (the serve "
        "process that watches this state store logs it in)\n"
    )
    return EXIT_OK
