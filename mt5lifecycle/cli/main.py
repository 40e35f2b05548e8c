"""The ``mt5lifecycle`` command: the demo, the operator's actions, ``serve``.

Every failure an operator can meet (a server down, an unknown or malformed id, an
action the transition table refuses, a closed pipe) ends in at most one line on
stderr and a documented exit code, never a traceback: the command runs in shells,
cron jobs, scheduled tasks and runbooks, where a traceback is noise and an exit code
is what a script can act on.

This module only parses and dispatches; each command group lives in its own module
(``operator``, ``accounts``, ``serve``, ``demo_command``). Drivers (redis, psycopg,
duckdb, uvicorn) are imported when a command needs them, so the command works with
the core alone for ``demo --instant``, ``diagram``, ``rules`` and ``generate-key``
needs only ``cryptography``'s sibling, the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn, TextIO, cast

from .. import __version__
from ..errors import (
    CorruptState,
    CredentialsUndecryptable,
    InvalidInstanceId,
    InvalidTransition,
    LifecycleError,
    StoreUnavailable,
)
from . import accounts, operator
from .common import (
    ENV_ARCHIVE,
    ENV_KEYS,
    ENV_POSTGRES,
    ENV_PREFIX,
    ENV_REDIS,
    ENV_SCHEMA,
    EXIT_CODES,
    EXIT_CORRUPT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    Context,
    Settings,
)
from .console import GuardedOutput, OutputClosed, prepare_streams, silence
from .demo_command import DEMO_ARCHIVE, DEMO_SECONDS, cmd_demo

__all__ = ["EXIT_CODES", "build_parser", "main"]


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
        "  The demo reads none of them: it uses only its own flags; serve reads its "
        "configuration file.\n\n"
        f"exit codes:\n{codes}\n"
    )


def _serve(ctx: Context) -> int:
    from .serve import cmd_serve  # uvicorn and the drivers only when serving

    code: int = cmd_serve(ctx)
    return code


def _shared_flags(*, nested: bool = False) -> tuple[_Parser, _Parser]:
    """The flags every command takes, and the servers' flags.

    ``nested`` is for a command's own subcommand (``notifications redeliver``): its
    flags default to absent, so that a flag given before the subcommand is not
    overwritten by the subcommand's default (argparse copies a subparser's defaults
    over what its parent parsed).
    """
    default: object = argparse.SUPPRESS if nested else None
    common = _Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help="log what the library does",
    )
    servers = _Parser(add_help=False)
    for flag, metavar, text in (
        ("--redis", "URL", f"Redis URL (or {ENV_REDIS})"),
        ("--postgres", "DSN", f"PostgreSQL DSN (or {ENV_POSTGRES})"),
        ("--archive", "PATH", f"DuckDB archive (or {ENV_ARCHIVE})"),
        ("--prefix", None, f"Redis key prefix (or {ENV_PREFIX})"),
        ("--schema", None, f"PostgreSQL schema (or {ENV_SCHEMA})"),
    ):
        servers.add_argument(flag, metavar=metavar, default=default, help=text)
    return common, servers


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mt5lifecycle",
        description="The login and connection lifecycle of MetaTrader 5 terminals: "
        "a demo, the operator's actions on live instances, and serve, which runs a "
        "production fleet from one configuration file.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mt5lifecycle {__version__}")

    common, servers = _shared_flags()

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
    status.set_defaults(handler=operator.cmd_status)

    for name, handler, text in (
        ("reset", operator.cmd_reset,
         "clear the counters of a FAILED or INACTIVE instance, log in again"),
        ("disable", operator.cmd_disable, "take an instance out of service (INACTIVE, MANUAL)"),
        ("confirm-closure", operator.cmd_confirm_closure,
         "confirm a closed account: delete its credentials and live state"),
        ("history", operator.cmd_history,
         "an instance's history from the archive (also while a fleet writes it)"),
    ):  # fmt: skip
        command = sub.add_parser(name, parents=[common, servers], help=text, description=text)
        command.add_argument("instance_id", metavar="ID")
        if name == "confirm-closure":
            command.add_argument("--yes", action="store_true", help="do not ask")
        if name == "reset":
            command.add_argument(
                "--force",
                action="store_true",
                help="try credentials once more that exhausted their attempts",
            )
        command.set_defaults(handler=handler)

    notes = sub.add_parser(
        "notifications",
        parents=[common, servers],
        help="the alerts set aside after every try: list them, or redeliver them",
        description="List the notifications the relay set aside after every try "
        "(Policy.max_delivery_attempts), oldest first; 'notifications redeliver ID' puts "
        "them back for delivery.",
    )
    notes.add_argument(
        "--instance",
        action="append",
        dest="instances",
        metavar="ID",
        help="only this instance's (repeatable)",
    )
    notes.add_argument("--json", action="store_true", help="JSON instead of text")
    notes.set_defaults(handler=operator.cmd_notifications)
    notes_sub = notes.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    nested_common, nested_servers = _shared_flags(nested=True)
    redeliver_text = (
        "put an instance's set-aside notifications back for delivery (all, or --id ones); "
        "the process that drives the instance delivers them"
    )
    redeliver = notes_sub.add_parser(
        "redeliver",
        parents=[nested_common, nested_servers],
        help=redeliver_text,
        description=redeliver_text,
    )
    redeliver.add_argument("instance_id", metavar="ID")
    redeliver.add_argument(
        "--id",
        action="append",
        dest="ids",
        metavar="NOTIFICATION",
        help="only this notification id (repeatable; default: all of the instance's)",
    )
    redeliver.set_defaults(handler=operator.cmd_redeliver)

    def account(command: argparse.ArgumentParser) -> None:
        command.add_argument("instance_id", metavar="ID")
        command.add_argument("--login", required=True, metavar="N", help="the account number")
        command.add_argument("--server", required=True, metavar="S", help="the broker's server")

    add = sub.add_parser(
        "add",
        parents=[common, servers],
        help="add a new account: store its credentials and start it",
        description="Store the credentials of a new account and start it on the state "
        "store; the serve process that watches the store logs it in. The password is "
        "asked for at a console (typed twice, not echoed), else read as one line from "
        "stdin; never an argument.",
    )
    account(add)
    add.set_defaults(handler=accounts.cmd_add)

    creds = sub.add_parser(
        "credentials",
        parents=[common],
        help="store, delete or re-encrypt credentials in PostgreSQL",
        description="Credentials in the PostgreSQL store.",
    )
    creds_sub = creds.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    creds_sub.required = True
    put = creds_sub.add_parser(
        "put",
        parents=[common, servers],
        help="store or replace an instance's credentials (password from a prompt or stdin)",
        description="Store or replace an instance's credentials. The password is asked "
        "for at a console (typed twice, not echoed), else read as one line from stdin.",
    )
    account(put)
    put.set_defaults(handler=accounts.cmd_credentials_put)
    delete = creds_sub.add_parser(
        "delete", parents=[common, servers], help="delete an instance's credentials"
    )
    delete.add_argument("instance_id", metavar="ID")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    delete.set_defaults(handler=accounts.cmd_credentials_delete)
    rotate = creds_sub.add_parser(
        "rotate",
        parents=[common, servers],
        help=f"re-encrypt every row with the first key of {ENV_KEYS}",
    )
    rotate.set_defaults(handler=accounts.cmd_credentials_rotate)

    key = sub.add_parser(
        "generate-key",
        parents=[common],
        help="print a new credential encryption key (for the front of the key list)",
    )
    key.set_defaults(handler=accounts.cmd_generate_key)

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run a production fleet, its HTTP API, console and metrics from a TOML file",
        description="Run a production fleet from one TOML configuration file: resume "
        "every stored instance, pick up instances added later, serve /metrics, /healthz, "
        "/readyz, the API and the console; on SIGTERM, SIGINT or Ctrl-Break finish the "
        "pass, hand the leases back, flush the archive and exit 0. See "
        "docs/operations/serve.md.",
    )
    serve.add_argument("config", metavar="CONFIG", help="the TOML configuration file")
    serve.add_argument(
        "--check",
        action="store_true",
        help="only validate CONFIG: name every wrong field, exit 0 or 2",
    )
    serve.set_defaults(handler=_serve)

    diagram = sub.add_parser(
        "diagram", parents=[common], help="the transition table as a Mermaid state diagram"
    )
    diagram.set_defaults(handler=operator.cmd_diagram)
    rules = sub.add_parser("rules", parents=[common], help="the packaged Prometheus alert rules")
    rules.set_defaults(handler=operator.cmd_rules)
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
    if stdout is None and stderr is None:
        prepare_streams()
    raw_out = stdout if stdout is not None else sys.stdout
    out = GuardedOutput(raw_out)
    err = stderr if stderr is not None else sys.stderr
    try:
        return _main(argv, out, err, stdin, env)
    except OutputClosed:
        if raw_out is sys.stdout:
            silence(raw_out)
        return EXIT_PIPE


def _main(
    argv: Sequence[str] | None,
    out: GuardedOutput,
    err: TextIO,
    stdin: TextIO | None,
    env: dict[str, str] | None,
) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except CliError as exc:
        err.write(f"mt5lifecycle: error: {_one_line(str(exc))}\n")
        return exc.code
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    environ = dict(os.environ) if env is None else env
    ctx = Context(
        args=args,
        settings=Settings.from_args(args, environ)
        if hasattr(args, "redis") and args.command != "demo"
        else Settings(),
        # GuardedOutput is a text stream, though not of typing's TextIO class.
        out=cast(TextIO, out),
        err=err,
        stdin=stdin if stdin is not None else sys.stdin,
        env=environ,
    )
    verbose = bool(getattr(args, "verbose", False))
    code = EXIT_OK
    message: str | None = None
    with _logging(verbose, err):
        try:
            code = args.handler(ctx)
            out.flush()
        except OutputClosed:
            raise
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
