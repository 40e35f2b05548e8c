"""The password, after every flow, is nowhere it should not be.

Every world of the e2e suite already checks the log (every logger at DEBUG), the
notifications, the scrape text, the Redis values under its prefix and the DuckDB
file when it closes (``conftest.World.assert_no_secret``). This module runs every
flow once more with a terminal that puts the password in its own error messages and
journal, then adds what the others do not: ``pg_dump`` of the database, the archive's
tables as text, exceptions and reprs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import psycopg
import pytest

from mt5lifecycle import (
    InvalidTransition,
    Lifecycle,
    LifecycleError,
    Policy,
    State,
    StoreUnavailable,
)
from mt5lifecycle.adapters.postgres import PostgresCredentialStore

from .conftest import CREDS, LOGIN, PASSWORD, SECRET, World


def every_flow(world: World) -> list[Lifecycle]:
    """Exhaustion, recovery, network loss, crash, closure with trades, ban, disable."""
    done = []
    exhausted = world.terminal("exhausted")
    # A terminal whose error message echoes what it was given.
    exhausted.fail_logins(message=f"Authorization failed for {PASSWORD}", times=None)
    recovered = world.terminal("recovered")
    recovered.fail_logins(times=2, journal="Invalid account")
    for iid in ("exhausted", "recovered", "network", "crashed", "closed", "banned", "off"):
        lc = world.lifecycle(iid)
        lc.start()
        done.append(lc)
    for lc in done:
        world.play(lc, 1)
    world.terminal("network").drop_connection()
    world.terminal("crashed").crash()
    closed = world.terminal("closed")
    closed.open_position(7001, "EURUSD", 1.0, close_retcodes=[10010, 10009])
    closed.pending_order(8001, "EURUSD")
    closed.write_journal(f"a line that quotes the password {PASSWORD}")
    world.terminal("banned").disable_account(LOGIN)
    for lc in done:
        world.play(lc, 400)
    by_id = {lc.instance_id: lc for lc in done}
    by_id["off"].disable()
    by_id["closed"].account_closed()
    by_id["closed"].confirm_closure()
    return done


def test_the_password_is_in_no_dump_table_exception_or_repr(world: World, pg_database: str) -> None:
    lifecycles = every_flow(world)
    states = {lc.instance_id: lc.state for lc in lifecycles}
    assert states["exhausted"] is State.FAILED
    assert states["banned"] is State.INACTIVE
    assert states["closed"] is State.INACTIVE
    failures = world.sql("SELECT message FROM login_failures")
    assert failures, "the echoing terminal's failures were archived"

    # The archive as text, every table.
    for (table,) in world.sql("SELECT table_name FROM information_schema.tables"):
        for row in world.sql(f"SELECT * FROM {table}"):
            assert PASSWORD not in repr(row), table

    # PostgreSQL: the whole database as pg_dump writes it.
    name = psycopg.conninfo.conninfo_to_dict(pg_database)["dbname"]
    dump = subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "--no-password", str(name)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert b"mt5lifecycle" in dump and str(LOGIN).encode() in dump, "the rows are in the dump"
    assert SECRET not in dump

    # Exceptions and reprs.
    exhausted = lifecycles[0]
    with pytest.raises(InvalidTransition) as refused:
        exhausted.confirm_closure()
    assert PASSWORD not in str(refused.value) and PASSWORD not in repr(refused.value)
    for value in (
        CREDS,
        world.credentials,
        world.state,
        world.archive,
        world.broker,
        world.metrics,
    ):
        assert PASSWORD not in repr(value) and PASSWORD not in str(value)
    for lc in lifecycles:
        assert PASSWORD not in repr(lc) and PASSWORD not in repr(lc.snapshot())
    assert PASSWORD not in repr(world.terminal("closed").requests)


def test_a_conninfo_password_stays_out_of_errors_and_reprs(pg_key: str) -> None:
    # A closed port: the connection fails, and its error must not quote the conninfo.
    conninfo = f"host=127.0.0.1 port=1 user=postgres password={PASSWORD} dbname=x"
    store = PostgresCredentialStore(conninfo, keys=[pg_key], timeout=0.5)
    try:
        assert PASSWORD not in repr(store)
        with pytest.raises(StoreUnavailable) as caught:
            store.get("acc-1")
        assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)
        cause = caught.value.__cause__
        assert cause is None or PASSWORD not in str(cause)
    finally:
        store.close()
    with pytest.raises(ValueError, match="conninfo") as bad:
        PostgresCredentialStore(f"password={PASSWORD} = =", keys=[pg_key])
    assert PASSWORD not in str(bad.value)


def test_a_policy_or_a_store_error_never_carries_it(make_world: Callable[..., World]) -> None:
    world = make_world(policy=Policy(max_login_attempts=1))
    world.terminal("one").fail_logins(message=PASSWORD, times=None)
    lc = world.lifecycle("one")
    lc.start()
    world.play(lc, 1)
    assert lc.state is State.FAILED
    errors: list[LifecycleError] = []
    for action in (lc.disable, lc.account_closed, lc.confirm_closure, lc.reset):
        try:
            action()
        except LifecycleError as exc:
            errors.append(exc)
    for error in errors:
        assert PASSWORD not in str(error) and PASSWORD not in repr(error)
