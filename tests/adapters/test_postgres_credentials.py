"""PostgresCredentialStore against the real PostgreSQL at 127.0.0.1:5432.

The module creates its own database and drops it at the end; each test works in its
own schema inside it. A missing server fails these tests, it never skips them.
"""

from __future__ import annotations

import base64
import logging
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import ConnectionPool

from mt5lifecycle.adapters.postgres import (
    SCHEMA_VERSION,
    PostgresCredentialStore,
    SchemaVersionError,
)
from mt5lifecycle.core.credentials import Credentials
from mt5lifecycle.errors import (
    CredentialsUndecryptable,
    InvalidInstanceId,
    LifecycleError,
    StoreUnavailable,
)
from mt5lifecycle.ports import CredentialStore

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


MIGRATIONS = [(1, "credentials table"), (2, "known-bad credentials")]


def _create_database(prefix: str = "mt5l_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(
                sql.Identifier(name)
            )
        )
    return name


def _drop_database(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _dead_port() -> int:
    # A port that was free a moment ago: connecting to it is refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = _create_database()
    try:
        yield name
    finally:
        _drop_database(name)


@pytest.fixture
def conninfo(database: str) -> str:
    return f"host=127.0.0.1 port=5432 user=postgres dbname={database}"


@pytest.fixture
def schema() -> str:
    return f"s_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def key() -> str:
    return PostgresCredentialStore.generate_key()


@pytest.fixture
def store(conninfo: str, schema: str, key: str) -> Iterator[PostgresCredentialStore]:
    with PostgresCredentialStore(conninfo, keys=key, schema=schema) as s:
        yield s


@pytest.fixture(scope="module")
def shared_store(database: str) -> Iterator[PostgresCredentialStore]:
    conninfo = f"host=127.0.0.1 port=5432 user=postgres dbname={database}"
    keys = PostgresCredentialStore.generate_key()
    with PostgresCredentialStore(conninfo, keys=keys, schema="shared") as s:
        yield s


def _sql(
    conninfo: str, query: sql.SQL | sql.Composed, params: tuple[object, ...] = ()
) -> list[tuple[object, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


CREDS = Credentials(login=51234567, server="MetaQuotes-Demo", password="s3cr3t-Pa55")


# -- the port ------------------------------------------------------------------


def test_store_fits_the_credential_store_port(store: PostgresCredentialStore) -> None:
    assert isinstance(store, CredentialStore)


def test_put_then_get_round_trips(store: PostgresCredentialStore) -> None:
    store.put("acct-1", CREDS)
    got = store.get("acct-1")
    assert got == CREDS
    assert got is not None
    assert got.password == CREDS.password


def test_get_absent_is_none(store: PostgresCredentialStore) -> None:
    assert store.get("nobody") is None


def test_put_upserts(store: PostgresCredentialStore, conninfo: str, schema: str) -> None:
    store.put("acct-1", CREDS)
    newer = Credentials(login=7, server="Other-Live", password="changed")
    store.put("acct-1", newer)
    assert store.get("acct-1") == newer
    rows = _sql(
        conninfo, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "credentials"))
    )
    assert rows == [(1,)]


def test_delete_is_idempotent(store: PostgresCredentialStore) -> None:
    store.delete("never-stored")
    store.put("acct-1", CREDS)
    store.put("acct-2", CREDS)
    store.delete("acct-1")
    store.delete("acct-1")
    assert store.get("acct-1") is None
    assert store.get("acct-2") == CREDS


def test_login_given_as_digits_reads_back_as_int(store: PostgresCredentialStore) -> None:
    store.put("acct-1", Credentials(login="1234", server="S", password="p"))
    got = store.get("acct-1")
    assert got is not None
    assert got.login == 1234


def test_login_beyond_bigint_is_refused_before_io(store: PostgresCredentialStore) -> None:
    with pytest.raises(ValueError, match="bigint"):
        store.put("acct-1", Credentials(login=2**63, server="S", password="p"))
    assert store.get("acct-1") is None


def test_password_with_lone_surrogate_is_refused_without_echo(
    store: PostgresCredentialStore,
) -> None:
    with pytest.raises(ValueError, match="password") as info:
        store.put("acct-1", Credentials(login=1, server="S", password="ab\ud800cd"))
    assert "ab" not in str(info.value)
    assert store.get("acct-1") is None


def test_put_refuses_what_is_not_credentials(store: PostgresCredentialStore) -> None:
    with pytest.raises(TypeError, match="Credentials"):
        store.put("acct-1", ("1", "S", "p"))  # type: ignore[arg-type]


# -- schema and migrations -------------------------------------------------------


def _migrations(conninfo: str, schema: str) -> list[tuple[object, ...]]:
    return _sql(
        conninfo,
        sql.SQL("SELECT version, description FROM {} ORDER BY version").format(
            sql.Identifier(schema, "schema_migrations")
        ),
    )


def test_migration_runs_once_and_twice_is_harmless(conninfo: str, schema: str, key: str) -> None:
    with PostgresCredentialStore(conninfo, keys=key, schema=schema) as first:
        assert first.migrate() == SCHEMA_VERSION
        assert first.migrate() == SCHEMA_VERSION
        first.put("acct-1", CREDS)
    with PostgresCredentialStore(conninfo, keys=key, schema=schema) as second:
        assert second.migrate() == SCHEMA_VERSION
        assert second.get("acct-1") == CREDS
    assert _migrations(conninfo, schema) == MIGRATIONS


def test_concurrent_migrations_from_several_threads_are_safe(
    conninfo: str, schema: str, key: str
) -> None:
    stores = [PostgresCredentialStore(conninfo, keys=key, schema=schema) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def run(s: PostgresCredentialStore, n: int) -> None:
        try:
            barrier.wait()
            s.put(f"acct-{n}", CREDS)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s, n)) for n, s in enumerate(stores)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert _migrations(conninfo, schema) == MIGRATIONS
        assert all(stores[0].get(f"acct-{n}") == CREDS for n in range(len(stores)))
    finally:
        for s in stores:
            s.close()


def test_schema_name_is_configurable_and_isolates(conninfo: str, key: str) -> None:
    a, b = f"a_{uuid.uuid4().hex[:8]}", f"B_{uuid.uuid4().hex[:8]}"
    with (
        PostgresCredentialStore(conninfo, keys=key, schema=a) as sa,
        PostgresCredentialStore(conninfo, keys=key, schema=b) as sb,
    ):
        sa.put("acct-1", CREDS)
        assert sb.get("acct-1") is None
        assert sa.schema == a
    tables = _sql(
        conninfo,
        sql.SQL(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN (%s, %s) ORDER BY 1, 2"
        ),
        (a, b),
    )
    assert tables == sorted(
        [(a, "credentials"), (a, "schema_migrations"), (b, "credentials"), (b, "schema_migrations")]
    )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1starts_with_digit",
        "has-dash",
        "has space",
        'x"; DROP SCHEMA public CASCADE; --',
        "x'y",
        "pg_catalog",
        "PG_mine",
        "a" * 64,
        "schéma",
        None,
        42,
    ],
)
def test_invalid_schema_names_are_refused(bad: object, key: str) -> None:
    # A port where nothing listens: a refusal must come before any I/O is tried.
    conninfo = f"host=127.0.0.1 port={_dead_port()} user=postgres dbname=x"
    with pytest.raises(ValueError, match="schema name"):
        PostgresCredentialStore(conninfo, keys=key, schema=bad)  # type: ignore[arg-type]


def test_a_schema_from_a_newer_library_is_refused(conninfo: str, schema: str, key: str) -> None:
    with PostgresCredentialStore(conninfo, keys=key, schema=schema) as s:
        s.put("acct-1", CREDS)
    _sql(
        conninfo,
        sql.SQL("INSERT INTO {} (version, description) VALUES (99, 'future')").format(
            sql.Identifier(schema, "schema_migrations")
        ),
    )
    with (
        PostgresCredentialStore(conninfo, keys=key, schema=schema) as s,
        pytest.raises(SchemaVersionError, match="version 99"),
    ):
        s.get("acct-1")


# -- what PostgreSQL holds -----------------------------------------------------------


def test_pg_dump_holds_no_password_and_no_key(
    database: str, conninfo: str, schema: str, key: str
) -> None:
    passwords = [f"Dump-Secret-{uuid.uuid4().hex}" for _ in range(5)]
    with PostgresCredentialStore(conninfo, keys=key, schema=schema) as s:
        for n, password in enumerate(passwords):
            s.put(f"acct-{n}", Credentials(login=9000 + n, server="Dump-Server", password=password))
    dump = subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", database],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    # The dump did include the rows (login and server are in clear by design).
    assert "Dump-Server" in dump
    assert "9004" in dump
    raw_key = base64.urlsafe_b64decode(key)
    for secret in [key, raw_key.hex(), *passwords, *(p.encode().hex() for p in passwords)]:
        assert secret not in dump
    assert "Dump-Secret" not in dump


# -- instance ids and odd values -----------------------------------------------------


INJECTIONS = [
    "x'; DROP TABLE credentials; --",
    "a' OR '1'='1",
    "a b",
    "../etc/passwd",
    "",
    "-leading-dash",
    "x" * 129,
    "acct\x00",
    "acct;",
]


@pytest.mark.parametrize("bad_id", INJECTIONS)
def test_injection_shaped_ids_are_refused_before_any_io(bad_id: str, key: str) -> None:
    # A pool that was never opened fails any I/O at once with StoreUnavailable, so
    # InvalidInstanceId here proves the id was refused before I/O was tried.
    pool: ConnectionPool[psycopg.Connection[tuple[object, ...]]] = ConnectionPool(
        f"host=127.0.0.1 port={_dead_port()}", open=False
    )
    s = PostgresCredentialStore(pool, keys=key)
    with pytest.raises(InvalidInstanceId):
        s.put(bad_id, CREDS)
    with pytest.raises(InvalidInstanceId):
        s.get(bad_id)
    with pytest.raises(InvalidInstanceId):
        s.delete(bad_id)
    with pytest.raises(StoreUnavailable):
        s.get("valid-id")


@pytest.mark.parametrize("bad_id", INJECTIONS[:4])
def test_injection_shaped_ids_leave_the_table_intact(
    store: PostgresCredentialStore, bad_id: str
) -> None:
    store.put("acct-1", CREDS)
    with pytest.raises(InvalidInstanceId):
        store.delete(bad_id)
    assert store.get("acct-1") == CREDS


# Fragments that break naive quoting or formatting, mixed with any NUL-free character.
_ODD_TEXT = st.lists(
    st.one_of(
        st.sampled_from(
            ["'", '"', "\\", "\\\\", "';--", "%s", "%(x)s", "{}", "\n", "\t", "€", "☃"]
        ),
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    ),
    min_size=1,
    max_size=40,
).map("".join)


@settings(max_examples=60, deadline=None)
@given(
    instance_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True),
    login=st.integers(min_value=1, max_value=2**63 - 1),
    server=_ODD_TEXT.filter(lambda s: s.strip() != ""),
    password=_ODD_TEXT,
)
def test_odd_servers_and_passwords_round_trip_exactly(
    shared_store: PostgresCredentialStore, instance_id: str, login: int, server: str, password: str
) -> None:
    creds = Credentials(login=login, server=server, password=password)
    shared_store.put(instance_id, creds)
    got = shared_store.get(instance_id)
    assert got is not None
    assert (got.login, got.server, got.password) == (login, server, password)


# -- binding: a ciphertext only opens in its own row -----------------------------------


def test_a_ciphertext_copied_into_another_row_does_not_decrypt(
    store: PostgresCredentialStore, conninfo: str, schema: str
) -> None:
    store.put("victim", Credentials(login=1, server="S", password="victim-password"))
    store.put("attacker", Credentials(login=1, server="S", password="attacker-password"))
    table = sql.Identifier(schema, "credentials")
    _sql(
        conninfo,
        sql.SQL(
            "UPDATE {t} AS a SET key_id = v.key_id, nonce = v.nonce, ciphertext = v.ciphertext"
            " FROM {t} AS v WHERE a.instance_id = 'attacker' AND v.instance_id = 'victim'"
        ).format(t=table),
    )
    with pytest.raises(CredentialsUndecryptable) as info:
        store.get("attacker")
    assert info.value.instance_id == "attacker"
    assert "'attacker'" in str(info.value)
    assert isinstance(info.value, LifecycleError)
    assert store.get("victim") is not None


@pytest.mark.parametrize(
    "edit", ["login = login + 1", "server = 'Evil-Server'", "key_id = 'ffffffffffffffff'"]
)
def test_an_edited_row_does_not_decrypt_unless_only_the_key_id_changed(
    store: PostgresCredentialStore, conninfo: str, schema: str, edit: str
) -> None:
    store.put("acct-1", CREDS)
    _sql(
        conninfo,
        sql.SQL("UPDATE {} SET " + edit).format(sql.Identifier(schema, "credentials")),
    )
    if edit.startswith("key_id"):
        # The key id is a hint of which key to try first, not part of the seal.
        assert store.get("acct-1") == CREDS
    else:
        with pytest.raises(CredentialsUndecryptable):
            store.get("acct-1")


def test_a_flipped_ciphertext_bit_does_not_decrypt(
    store: PostgresCredentialStore, conninfo: str, schema: str
) -> None:
    store.put("acct-1", CREDS)
    _sql(
        conninfo,
        sql.SQL(
            "UPDATE {} SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1)"
        ).format(sql.Identifier(schema, "credentials")),
    )
    with pytest.raises(CredentialsUndecryptable):
        store.get("acct-1")


# -- keys and rotation ------------------------------------------------------------------


def test_generate_key_is_urlsafe_base64_of_32_random_bytes() -> None:
    keys = {PostgresCredentialStore.generate_key() for _ in range(20)}
    assert len(keys) == 20
    for k in keys:
        assert isinstance(k, str)
        assert len(base64.urlsafe_b64decode(k)) == 32
        assert "+" not in k
        assert "/" not in k


def test_rotation(conninfo: str, schema: str) -> None:
    old, new = PostgresCredentialStore.generate_key(), PostgresCredentialStore.generate_key()
    creds = {
        f"acct-{n}": Credentials(login=100 + n, server="S", password=f"pw-{n}") for n in range(7)
    }
    with PostgresCredentialStore(conninfo, keys=[old], schema=schema) as s:
        for instance_id, c in creds.items():
            s.put(instance_id, c)
    with PostgresCredentialStore(conninfo, keys=[new, old], schema=schema) as s:
        # Before rotation, rows under the old key still read back.
        assert all(s.get(i) == c for i, c in creds.items())
        # A write under [new, old] seals with the new key: rotation skips that row.
        s.put("acct-0", creds["acct-0"])
        assert s.rotate(batch_size=3) == 6
        assert s.rotate() == 0
    with PostgresCredentialStore(conninfo, keys=new, schema=schema) as s:
        assert all(s.get(i) == c for i, c in creds.items())
    with (
        PostgresCredentialStore(conninfo, keys=old, schema=schema) as s,
        pytest.raises(CredentialsUndecryptable),
    ):
        s.get("acct-3")
    wrong = PostgresCredentialStore.generate_key()
    with PostgresCredentialStore(conninfo, keys=wrong, schema=schema) as s:
        with pytest.raises(CredentialsUndecryptable) as info:
            s.get("acct-3")
        assert info.value.instance_id == "acct-3"


def test_rotation_stops_on_a_row_no_key_opens(conninfo: str, schema: str) -> None:
    lost, old, new = (PostgresCredentialStore.generate_key() for _ in range(3))
    with PostgresCredentialStore(conninfo, keys=lost, schema=schema) as s:
        s.put("acct-b", CREDS)
    with PostgresCredentialStore(conninfo, keys=old, schema=schema) as s:
        s.put("acct-a", CREDS)
        s.put("acct-c", CREDS)
    with PostgresCredentialStore(conninfo, keys=[new, old], schema=schema) as s:
        with pytest.raises(CredentialsUndecryptable) as info:
            s.rotate(batch_size=1)
        assert info.value.instance_id == "acct-b"
        # The batch before it was kept; the one that failed was rolled back.
        s.delete("acct-b")
        assert s.rotate() == 1
    with PostgresCredentialStore(conninfo, keys=new, schema=schema) as s:
        assert s.get("acct-a") == CREDS
        assert s.get("acct-c") == CREDS


def test_rotate_refuses_a_bad_batch_size(store: PostgresCredentialStore) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        store.rotate(batch_size=0)


GOOD = "q" * 43 + "="


@pytest.mark.parametrize(
    ("keys", "where"),
    [
        ([], "at least one key"),
        ([GOOD, "not base64 at all!"], r"keys\[1\] is not URL-safe base64"),
        (
            [base64.urlsafe_b64encode(b"short-key-16byte").decode()],
            r"keys\[0\] decodes to 16 bytes",
        ),
        (
            [GOOD, GOOD, base64.urlsafe_b64encode(b"k" * 33).decode()],
            r"keys\[2\] decodes to 33 bytes",
        ),
        ([GOOD, b"bytes-key"], r"keys\[1\] must be a str"),
        (b"q" * 32, "sequence"),
        (None, "sequence"),
    ],
)
def test_bad_keys_are_refused_naming_the_position_without_echo(keys: object, where: str) -> None:
    conninfo = f"host=127.0.0.1 port={_dead_port()} user=postgres dbname=x"
    with pytest.raises(ValueError, match=where) as info:
        PostgresCredentialStore(conninfo, keys=keys)  # type: ignore[arg-type]
    message = str(info.value)
    assert "not base64 at all" not in message
    assert "short-key" not in message
    assert base64.urlsafe_b64encode(b"short-key-16byte").decode() not in message


# -- secrets never leak ------------------------------------------------------------------


def test_password_and_key_never_reach_logs_errors_or_reprs(
    caplog: pytest.LogCaptureFixture, conninfo: str, schema: str
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("psycopg", "psycopg.pool", "mt5lifecycle"):
        caplog.set_level(logging.DEBUG, logger=name)
    old, new = PostgresCredentialStore.generate_key(), PostgresCredentialStore.generate_key()
    password = f"Log-Secret-{uuid.uuid4().hex}"
    creds = Credentials(login=4242, server="Log-Server", password=password)
    seen: list[str] = []
    with PostgresCredentialStore(conninfo, keys=[old], schema=schema) as s:
        s.put("acct-1", creds)
        seen += [repr(s), str(s), repr(s.get("acct-1")), str(s.get("acct-1"))]
    with PostgresCredentialStore(conninfo, keys=[new, old], schema=schema) as s:
        seen.append(repr(s))
        s.rotate()
        s.put("acct-2", creds)
    with PostgresCredentialStore(conninfo, keys=[old], schema=schema) as s:
        try:
            s.get("acct-1")
        except CredentialsUndecryptable as exc:
            seen += [str(exc), repr(exc), repr(exc.args)]
    dead = PostgresCredentialStore(
        f"host=127.0.0.1 port={_dead_port()} user=postgres dbname=x password={password}",
        keys=[new],
        timeout=0.2,  # real time: how long a pool waits for a connection that never comes
    )
    try:
        dead.put("acct-1", creds)
    except StoreUnavailable as exc:
        seen += [str(exc), repr(exc), str(exc.__cause__)]
    finally:
        seen.append(repr(dead))
        dead.close()
    assert len(seen) == 12
    text = "\n".join([*seen, caplog.text, *(repr(r.args) for r in caplog.records)])
    for secret in (password, old, new):
        assert secret not in text
    assert "acct-1" in text


# -- failures ------------------------------------------------------------------------------


def test_unreachable_postgresql_is_store_unavailable(key: str) -> None:
    conninfo = f"host=127.0.0.1 port={_dead_port()} user=postgres dbname=x connect_timeout=1"
    # Real time: the pool waits up to `timeout` for a connection before giving up.
    with PostgresCredentialStore(conninfo, keys=key, timeout=0.2) as s:
        ops: list[Callable[[], object]] = [
            lambda: s.get("acct-1"),
            lambda: s.put("acct-1", CREDS),
            lambda: s.delete("acct-1"),
        ]
        for op in ops:
            with pytest.raises(StoreUnavailable) as info:
                op()
            assert info.value.backend == "postgresql"
            assert info.value.instance_id == "acct-1"
            assert "postgresql unavailable for instance 'acct-1'" in str(info.value)
        with pytest.raises(StoreUnavailable) as info:
            s.migrate()
        assert info.value.instance_id is None


def test_a_database_refusing_connections_is_store_unavailable(key: str) -> None:
    name = _create_database("mt5l_test_outage")
    conninfo = f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    try:
        with PostgresCredentialStore(conninfo, keys=key, timeout=0.2) as s:
            s.put("acct-1", CREDS)
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                        sql.Identifier(name)
                    )
                )
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            with pytest.raises(StoreUnavailable):
                s.get("acct-1")
    finally:
        _drop_database(name)


def test_connections_cut_by_the_server_are_replaced_transparently(
    conninfo: str, schema: str, key: str
) -> None:
    app = f"mt5l-{uuid.uuid4().hex[:8]}"
    with PostgresCredentialStore(
        f"{conninfo} application_name={app}", keys=key, schema=schema
    ) as s:
        s.put("acct-1", CREDS)
        terminated = _sql(
            conninfo,
            sql.SQL(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
            ),
            (app,),
        )
        assert terminated
        assert all(row == (True,) for row in terminated)
        assert s.get("acct-1") == CREDS


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_host_pool_is_used_and_left_open(
    conninfo: str, schema: str, key: str, autocommit: bool
) -> None:
    with ConnectionPool(
        conninfo, min_size=1, max_size=2, open=True, kwargs={"autocommit": autocommit}
    ) as pool:
        with PostgresCredentialStore(pool, keys=key, schema=schema) as s:
            s.put("acct-1", CREDS)
            assert s.get("acct-1") == CREDS
            assert "host pool" in repr(s)
        new = PostgresCredentialStore.generate_key()
        with PostgresCredentialStore(pool, keys=[new, key], schema=schema) as s:
            assert s.rotate() == 1
        with PostgresCredentialStore(pool, keys=new, schema=schema) as s:
            assert s.get("acct-1") == CREDS
            s.delete("acct-1")
            assert s.get("acct-1") is None
        assert not pool.closed
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_closed_store_refuses_work(conninfo: str, schema: str, key: str) -> None:
    s = PostgresCredentialStore(conninfo, keys=key, schema=schema)
    s.close()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.get("acct-1")


def test_a_malformed_conninfo_is_refused_without_echo(key: str) -> None:
    with pytest.raises(ValueError, match="conninfo") as info:
        PostgresCredentialStore("host=127.0.0.1 password='Sekr1t", keys=key)
    assert "Sekr1t" not in str(info.value)


def test_conninfo_of_the_wrong_type_is_refused(key: str) -> None:
    with pytest.raises(TypeError, match="ConnectionPool"):
        PostgresCredentialStore(42, keys=key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"), [("timeout", 0), ("timeout", float("nan")), ("max_size", 0)]
)
def test_bad_pool_settings_are_refused(key: str, field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PostgresCredentialStore("host=127.0.0.1", keys=key, **{field: value})  # type: ignore[arg-type]


def test_a_current_schema_needs_only_dml_privileges(
    database: str, conninfo: str, schema: str, key: str
) -> None:
    # The grants docs/adapters/postgres.md tells a DBA to give the runtime role.
    role = f"mt5l_test_role_{uuid.uuid4().hex[:12]}"
    with PostgresCredentialStore(conninfo, keys=key, schema=schema) as owner:
        owner.put("acct-1", CREDS)
    _sql(ADMIN, sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        for grant in (
            "GRANT USAGE ON SCHEMA {s} TO {r}",
            "GRANT SELECT ON {s}.schema_migrations TO {r}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.credentials TO {r}",
        ):
            _sql(conninfo, sql.SQL(grant).format(s=sql.Identifier(schema), r=sql.Identifier(role)))
        runtime_dsn = f"host=127.0.0.1 port=5432 user={role} dbname={database}"
        with PostgresCredentialStore(runtime_dsn, keys=key, schema=schema) as runtime:
            assert runtime.get("acct-1") == CREDS
            runtime.put("acct-2", CREDS)
            runtime.delete("acct-1")
            assert runtime.get("acct-1") is None
        fresh = f"n_{uuid.uuid4().hex[:12]}"
        # Creating a schema needs CREATE on the database, which this role lacks.
        with (
            PostgresCredentialStore(runtime_dsn, keys=key, schema=fresh) as runtime,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            runtime.get("acct-1")
    finally:
        _sql(conninfo, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        _sql(ADMIN, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
