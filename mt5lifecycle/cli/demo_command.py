"""``mt5lifecycle demo``: the simulated fleet of ``demo.py`` on the chosen stores."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from ..builtin.clock import ScaledClock
from ..builtin.memory import MemoryArchive, MemoryCredentialStore, MemoryStateStore
from .common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    Context,
    driver,
    open_archive,
    open_postgres,
    open_redis,
)

if TYPE_CHECKING:
    from ..adapters.postgres import PostgresCredentialStore
    from ..adapters.redis.store import RedisStateStore
    from ..ports import Archive, Clock, CredentialStore, StateStore

DEMO_ARCHIVE = "mt5lifecycle-demo.duckdb"
DEMO_SECONDS = 6.0
"""Roughly how long the demo takes in real time at the default speed."""

# --- the demo -----------------------------------------------------------------------


def _replaceable_demo_archive(path: Path) -> None:
    """Let the demo replace ``path`` only if it holds nothing but a previous demo."""
    from .demo import FLOWS

    if not path.exists():
        return
    duckdb = driver("duckdb", "duckdb")
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
        driver("psycopg", "postgres")
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
        driver("duckdb", "duckdb")
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
