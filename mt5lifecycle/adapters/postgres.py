"""Credentials in PostgreSQL, encrypted by the library (SPEC section 6).

The password is sealed with AES-256-GCM before it leaves the process, so neither the
server, its backups nor a ``pg_dump`` ever hold a usable password. The key stays with
the host. The row's instance id, login and server are the associated data of the
seal: a ciphertext copied into another row, or a row whose login was edited, no
longer opens, and reading it raises ``CredentialsUndecryptable`` rather than hand a
terminal someone else's password.

Keys are a list: the first seals, every one opens. A row records which key sealed it
(a short hash, never the key), so the right key is tried first, and ``rotate()``
re-seals the rows still under an older key; once it returns, the old key can go.

The schema is the library's: created and migrated on first use under a transaction
advisory lock, so several workers starting at once do not race on the DDL, and a
store whose schema is already current does no DDL at all (a role with only
``SELECT/INSERT/UPDATE/DELETE`` on the table can run it).

psycopg, psycopg_pool and cryptography are imported when a store is built, so
``import mt5lifecycle`` needs none of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ..core.credentials import Credentials, fingerprint
from ..core.ids import check_instance_id
from ..errors import CredentialsUndecryptable, LifecycleError, StoreUnavailable

if TYPE_CHECKING:
    from types import TracebackType
    from typing import LiteralString

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from psycopg import Connection, sql
    from psycopg_pool import ConnectionPool

__all__ = ["PostgresCredentialStore", "SchemaVersionError"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

_BACKEND: Final = "postgresql"
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
# Passwords are padded to a multiple of this before sealing, so a dump reveals a
# bucket of lengths, not the length itself. Credentials forbid NUL in a password,
# which makes NUL padding unambiguous.
_PAD: Final = 64
_AAD_LABEL: Final = b"mt5lifecycle.credentials.v1\x00"
_KEY_ID_LABEL: Final = b"mt5lifecycle.key-id\x00"
_FINGERPRINT_LABEL: Final = b"mt5lifecycle.rejected-credentials.v1"
_MIGRATE_LOCK_LABEL: Final = b"mt5lifecycle.postgres.migrate\x00"
_MAX_BIGINT: Final = 2**63 - 1
# A stale pooled connection (the server restarted, an idle timeout cut it) fails on
# its first use; the pool discards it and the next try gets a fresh one. Every
# operation here is idempotent, so trying again is safe.
_ATTEMPTS: Final = 3
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

SCHEMA_VERSION: Final = 2

# (version, description, statements). ``{schema}`` is the quoted schema name; a
# literal brace is doubled. Append new versions, never edit a shipped one.
_MIGRATIONS: Final[tuple[tuple[int, str, tuple[LiteralString, ...]], ...]] = (
    (
        1,
        "credentials table",
        (
            """
            CREATE TABLE {schema}.credentials (
                instance_id text PRIMARY KEY
                    CHECK (instance_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$'),
                login bigint NOT NULL CHECK (login > 0),
                server text NOT NULL CHECK (server <> ''),
                key_id text NOT NULL,
                nonce bytea NOT NULL CHECK (octet_length(nonce) = 12),
                ciphertext bytea NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            "CREATE INDEX credentials_key_id ON {schema}.credentials (key_id)",
            """
            COMMENT ON TABLE {schema}.credentials IS
                'mt5lifecycle broker credentials; the password is sealed with AES-256-GCM '
                'by the library, bound to instance_id, login and server'
            """,
            """
            COMMENT ON COLUMN {schema}.credentials.key_id IS
                'which host key sealed the row: 16 hex digits of a hash of the key'
            """,
        ),
    ),
    (
        2,
        "known-bad credentials",
        (
            """
            ALTER TABLE {schema}.credentials
                ADD COLUMN rejected bytea CHECK (octet_length(rejected) = 32),
                ADD COLUMN rejected_key_id text
            """,
            """
            COMMENT ON COLUMN {schema}.credentials.rejected IS
                'HMAC-SHA256 fingerprint of credentials that exhausted their login '
                'attempts (keyed from a host key: useless without it); NULL when none'
            """,
        ),
    ),
)
assert _MIGRATIONS[-1][0] == SCHEMA_VERSION


class SchemaVersionError(LifecycleError):
    """The schema was migrated by a newer mt5lifecycle than this one.

    This store refuses to read or write it rather than guess at its columns.
    """

    def __init__(self, *, schema: str, found: int, known: int) -> None:
        super().__init__(
            f"PostgreSQL schema {schema!r} is at version {found}, but this mt5lifecycle "
            f"knows versions up to {known}; upgrade mt5lifecycle"
        )
        self.schema = schema
        self.found = found
        self.known = known


class _Key:
    """One host key: its id (a hash, safe to store), the cipher and the fingerprint key
    derived from it; no repr of any."""

    __slots__ = ("aead", "fingerprint_key", "key_id")

    def __init__(self, key_id: str, aead: AESGCM, fingerprint_key: bytes) -> None:
        self.key_id = key_id
        self.aead = aead
        self.fingerprint_key = fingerprint_key

    def __repr__(self) -> str:
        return f"<key {self.key_id[:4]}…>"


def _parse_keys(keys: str | Sequence[str]) -> list[_Key]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    given: Sequence[object] = (keys,) if isinstance(keys, str) else keys
    if isinstance(keys, (bytes, bytearray)) or not isinstance(given, Sequence):
        raise ValueError(
            "keys must be a key string or a sequence of them "
            "(from PostgresCredentialStore.generate_key())"
        )
    if not given:
        raise ValueError("keys must hold at least one key (the first one encrypts)")
    parsed: list[_Key] = []
    for position, key in enumerate(given):
        where = f"keys[{position}]"
        # Never echo a key, even a malformed one: this message may be logged.
        if not isinstance(key, str):
            raise ValueError(f"{where} must be a str, not a {type(key).__name__}")
        try:
            raw = base64.b64decode(key.strip(), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"{where} is not URL-safe base64; create keys with "
                "PostgresCredentialStore.generate_key()"
            ) from None
        if len(raw) != _KEY_BYTES:
            raise ValueError(
                f"{where} decodes to {len(raw)} bytes; a key is {_KEY_BYTES} bytes "
                "(create keys with PostgresCredentialStore.generate_key())"
            )
        key_id = hashlib.sha256(_KEY_ID_LABEL + raw).hexdigest()[:16]
        # A key of its own for fingerprints (HKDF), so no value is both a cipher key and
        # an HMAC key.
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_FINGERPRINT_LABEL
        ).derive(raw)
        parsed.append(_Key(key_id, AESGCM(raw), derived))
    return parsed


def _check_schema(schema: object) -> str:
    if not isinstance(schema, str) or _SCHEMA_NAME.fullmatch(schema) is None:
        shown = repr(schema) if len(repr(schema)) <= 80 else repr(schema)[:77] + "..."
        raise ValueError(
            f"invalid schema name {shown}: expected 1 to 63 characters of "
            "[A-Za-z0-9_], not starting with a digit"
        )
    if schema.lower().startswith("pg_"):
        raise ValueError(f"invalid schema name {schema!r}: names starting with pg_ are reserved")
    return schema


def _aad(instance_id: str, login: int, server: str) -> bytes:
    # JSON of a list is an unambiguous encoding: no choice of server name can make two
    # different (id, login, server) triples produce the same bytes.
    return _AAD_LABEL + json.dumps([instance_id, login, server]).encode("ascii")


def _encode(text: str, field: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be stored in PostgreSQL text or typed into a terminal.
        raise ValueError(f"Credentials.{field} is not valid Unicode (a lone surrogate)") from None


class PostgresCredentialStore:
    """The ``CredentialStore`` port on PostgreSQL, with passwords sealed by the library.

    ``conninfo`` is a libpq connection string, in which case the store opens and owns
    a small pool (``close()`` it, or use the store as a context manager), or a
    ``psycopg_pool.ConnectionPool`` that the host owns and closes. ``keys`` is one key
    or a list of keys from ``generate_key()``: the first seals, all open.

    ``timeout`` bounds how long an operation waits for a connection (and, for an
    owned pool, to connect): past it the operation raises ``StoreUnavailable``, which
    the lifecycle treats as transient and never counts as a login attempt.
    """

    __slots__ = (
        "_closed",
        "_keys",
        "_keys_by_id",
        "_lock",
        "_migrated",
        "_owns_pool",
        "_pool",
        "_q_delete",
        "_q_get",
        "_q_put",
        "_q_reject",
        "_q_rejected",
        "_q_rotate_select",
        "_q_rotate_update",
        "_schema",
        "_scrub",
        "_timeout",
    )

    def __init__(
        self,
        conninfo: str | ConnectionPool[Any],
        *,
        keys: str | Sequence[str],
        schema: str = "mt5lifecycle",
        timeout: float = 5.0,
        max_size: int = 4,
    ) -> None:
        self._schema = _check_schema(schema)
        self._keys = _parse_keys(keys)
        self._keys_by_id = {k.key_id: k for k in reversed(self._keys)}
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, not {max_size!r}")
        self._timeout = float(timeout)
        self._lock = threading.Lock()
        self._migrated = False
        self._closed = False
        self._scrub: tuple[str, ...] = ()

        import psycopg
        from psycopg import sql
        from psycopg.conninfo import conninfo_to_dict
        from psycopg_pool import ConnectionPool

        if isinstance(conninfo, ConnectionPool):
            self._pool: ConnectionPool[Any] = conninfo
            self._owns_pool = False
        elif isinstance(conninfo, str):
            try:
                params = conninfo_to_dict(conninfo)
            except psycopg.ProgrammingError:
                # The parser's message quotes the string, which may hold a password.
                raise ValueError("conninfo is not a valid libpq connection string") from None
            if params.get("password"):
                self._scrub = (str(params["password"]),)
            extra: dict[str, Any] = {"autocommit": True}
            if "connect_timeout" not in params:
                extra["connect_timeout"] = max(2, math.ceil(self._timeout))
            if "application_name" not in params:
                extra["application_name"] = "mt5lifecycle"
            self._pool = ConnectionPool(
                conninfo,
                kwargs=extra,
                min_size=1,
                max_size=max_size,
                timeout=self._timeout,
                name="mt5lifecycle-credentials",
                open=False,
            )
            self._pool.open(wait=False)
            self._owns_pool = True
        else:
            raise TypeError(
                "conninfo must be a connection string or a psycopg_pool.ConnectionPool, "
                f"not {type(conninfo).__name__}"
            )

        table = sql.Identifier(self._schema, "credentials")
        self._q_get: sql.Composed = sql.SQL(
            "SELECT login, server, key_id, nonce, ciphertext FROM {} WHERE instance_id = %s"
        ).format(table)
        self._q_put: sql.Composed = sql.SQL(
            "INSERT INTO {} (instance_id, login, server, key_id, nonce, ciphertext)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (instance_id) DO UPDATE SET login = EXCLUDED.login,"
            " server = EXCLUDED.server, key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce,"
            " ciphertext = EXCLUDED.ciphertext, updated_at = now(),"
            # Replacing the credentials clears their mark, unless they are the very ones
            # that were rejected (the fingerprint under the first key is the 7th value).
            " rejected = CASE WHEN {t}.rejected = %s THEN {t}.rejected END,"
            " rejected_key_id = CASE WHEN {t}.rejected = %s THEN {t}.rejected_key_id END"
        ).format(table, t=table)
        self._q_reject: sql.Composed = sql.SQL(
            "UPDATE {} SET rejected = %s, rejected_key_id = %s WHERE instance_id = %s"
        ).format(table)
        self._q_rejected: sql.Composed = sql.SQL(
            "SELECT rejected, rejected_key_id FROM {} WHERE instance_id = %s"
        ).format(table)
        self._q_delete: sql.Composed = sql.SQL("DELETE FROM {} WHERE instance_id = %s").format(
            table
        )
        self._q_rotate_select: sql.Composed = sql.SQL(
            "SELECT instance_id, login, server, key_id, nonce, ciphertext, rejected,"
            " rejected_key_id FROM {}"
            " WHERE (key_id <> %s OR rejected_key_id <> %s) AND instance_id > %s"
            " ORDER BY instance_id LIMIT %s FOR UPDATE"
        ).format(table)
        self._q_rotate_update: sql.Composed = sql.SQL(
            "UPDATE {} SET key_id = %s, nonce = %s, ciphertext = %s, rejected = %s,"
            " rejected_key_id = %s, updated_at = now() WHERE instance_id = %s"
        ).format(table)

    # -- keys ---------------------------------------------------------------------

    @staticmethod
    def generate_key() -> str:
        """A new key: URL-safe base64 of 32 random bytes. Keep it out of the database."""
        return base64.urlsafe_b64encode(os.urandom(_KEY_BYTES)).decode("ascii")

    # -- the port -----------------------------------------------------------------

    def put(self, instance_id: str, credentials: Credentials) -> None:
        """Store (or replace) the instance's credentials, sealed with the first key."""
        check_instance_id(instance_id)
        if not isinstance(credentials, Credentials):
            raise TypeError(f"credentials must be Credentials, not {type(credentials).__name__}")
        if credentials.login > _MAX_BIGINT:
            raise ValueError(
                f"Credentials.login {credentials.login} does not fit PostgreSQL bigint"
            )
        _encode(credentials.server, "server")
        key_id, nonce, sealed = self._seal(instance_id, credentials)
        mark = fingerprint(credentials, self._keys[0].fingerprint_key)
        params = (instance_id, credentials.login, credentials.server, key_id, nonce, sealed)
        self._run(instance_id, lambda conn: conn.execute(self._q_put, (*params, mark, mark)))

    def get(self, instance_id: str) -> Credentials | None:
        """The instance's credentials, ``None`` when none are stored.

        Raises ``CredentialsUndecryptable`` when no configured key opens the row.
        """
        check_instance_id(instance_id)
        row = self._run(
            instance_id, lambda conn: conn.execute(self._q_get, (instance_id,)).fetchone()
        )
        if row is None:
            return None
        login, server, key_id, nonce, sealed = row
        password = self._open(instance_id, login, server, key_id, nonce, sealed)
        return Credentials(login=login, server=server, password=password)

    def delete(self, instance_id: str) -> None:
        """Remove the instance's credentials; nothing happens when there are none."""
        check_instance_id(instance_id)
        self._run(instance_id, lambda conn: conn.execute(self._q_delete, (instance_id,)))

    # -- known-bad credentials (ports.Rejections) -----------------------------------

    def reject(self, instance_id: str, credentials: Credentials) -> None:
        """Remember these credentials as exhausted: a keyed fingerprint, never the password.

        Nothing happens when no credentials are stored for the instance.
        """
        check_instance_id(instance_id)
        key = self._keys[0]
        mark = fingerprint(credentials, key.fingerprint_key)
        self._run(
            instance_id,
            lambda conn: conn.execute(self._q_reject, (mark, key.key_id, instance_id)),
        )

    def rejected(self, instance_id: str, credentials: Credentials) -> bool:
        """Whether these are the credentials remembered as exhausted."""
        check_instance_id(instance_id)
        row = self._run(
            instance_id, lambda conn: conn.execute(self._q_rejected, (instance_id,)).fetchone()
        )
        if row is None or row[0] is None:
            return False
        mark, key_id = bytes(row[0]), row[1]
        tagged = self._keys_by_id.get(key_id)
        # The key the mark names first; the others too, as decryption does.
        candidates = [tagged] if tagged is not None else []
        candidates += [k for k in self._keys if k is not tagged]
        return any(
            hmac.compare_digest(mark, fingerprint(credentials, key.fingerprint_key))
            for key in candidates
        )

    def forgive(self, instance_id: str) -> None:
        """Forget the mark (the credentials logged in after all)."""
        check_instance_id(instance_id)
        self._run(instance_id, lambda conn: conn.execute(self._q_reject, (None, None, instance_id)))

    # -- operations ---------------------------------------------------------------

    def rotate(self, *, batch_size: int = 500) -> int:
        """Re-seal every row not under the first key with it; return how many changed.

        Each batch is its own transaction with its rows locked, so writers carry on
        meanwhile and an interrupted rotation keeps what it did: run it again to
        finish. A row that no key opens stops the rotation with
        ``CredentialsUndecryptable`` naming it (its batch is rolled back), so an old
        key is never retired while something still needs it.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        current = self._keys[0]
        changed = 0
        after = ""

        def one_batch(conn: Connection[Any]) -> list[tuple[Any, ...]]:
            with conn.transaction():
                rows = conn.execute(
                    self._q_rotate_select, (current.key_id, current.key_id, after, batch_size)
                ).fetchall()
                updates = []
                for instance_id, login, server, key_id, nonce, sealed, mark, _ in rows:
                    password = self._open(instance_id, login, server, key_id, nonce, sealed)
                    creds = Credentials(login=login, server=server, password=password)
                    new_id, new_nonce, new_sealed = self._seal(instance_id, creds)
                    # A mark keyed from a key about to be retired is keyed again from
                    # the first one, so the credentials stay known as bad without it.
                    new_mark = None
                    if mark is not None and self.rejected(instance_id, creds):
                        new_mark = fingerprint(creds, current.fingerprint_key)
                    updates.append(
                        (
                            new_id,
                            new_nonce,
                            new_sealed,
                            new_mark,
                            None if new_mark is None else current.key_id,
                            instance_id,
                        )
                    )
                if updates:
                    with conn.cursor() as cur:
                        cur.executemany(self._q_rotate_update, updates)
                return rows

        while True:
            rows = self._run(None, one_batch)
            changed += len(rows)
            if rows:
                after = rows[-1][0]
                _log.info(
                    "re-encrypted %d credential rows in schema %s (%d so far)",
                    len(rows),
                    self._schema,
                    changed,
                )
            if len(rows) < batch_size:
                break
        _log.info("key rotation done in schema %s: %d rows re-encrypted", self._schema, changed)
        return changed

    def migrate(self) -> int:
        """Create or migrate the schema now and return its version.

        Every operation does this on first use; call it at start-up to fail fast.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        with self._lock:
            if not self._migrated:
                self._migrate(None)
                self._migrated = True
        return SCHEMA_VERSION

    def close(self) -> None:
        """Close the pool if the store opened it; a host's pool is left to the host."""
        self._closed = True
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> PostgresCredentialStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        # No conninfo (it may hold the database password) and no key material.
        pool = "owned pool" if self._owns_pool else "host pool"
        state = ", closed" if self._closed else ""
        return (
            f"PostgresCredentialStore(schema={self._schema!r}, keys=<{len(self._keys)}>, "
            f"{pool}{state})"
        )

    @property
    def schema(self) -> str:
        return self._schema

    # -- internals ----------------------------------------------------------------

    def _seal(self, instance_id: str, credentials: Credentials) -> tuple[str, bytes, bytes]:
        key = self._keys[0]
        plain = _encode(credentials.password, "password")
        plain += b"\x00" * (-len(plain) % _PAD)
        nonce = os.urandom(_NONCE_BYTES)
        aad = _aad(instance_id, credentials.login, credentials.server)
        return key.key_id, nonce, key.aead.encrypt(nonce, plain, aad)

    def _open(
        self,
        instance_id: str,
        login: int,
        server: str,
        key_id: str,
        nonce: bytes,
        sealed: bytes,
    ) -> str:
        from cryptography.exceptions import InvalidTag

        aad = _aad(instance_id, login, server)
        tagged = self._keys_by_id.get(key_id)
        # The key the row names first; the others too, in case a key id was edited.
        candidates = [tagged] if tagged is not None else []
        candidates += [k for k in self._keys if k is not tagged]
        for key in candidates:
            try:
                plain = key.aead.decrypt(bytes(nonce), bytes(sealed), aad)
            except (InvalidTag, ValueError):
                continue
            try:
                return plain.rstrip(b"\x00").decode("utf-8")
            except UnicodeDecodeError:
                break
        raise CredentialsUndecryptable(instance_id=instance_id)

    def _ensure_schema(self, instance_id: str | None) -> None:
        if self._migrated:
            return
        with self._lock:
            if not self._migrated:
                self._migrate(instance_id)
                self._migrated = True

    def _migrate(self, instance_id: str | None) -> None:
        from psycopg import sql

        schema = sql.Identifier(self._schema)
        migrations_table = sql.Identifier(self._schema, "schema_migrations")

        def current(conn: Connection[Any]) -> int | None:
            exists = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_class c"
                " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = 'schema_migrations'",
                (self._schema,),
            ).fetchone()
            if exists is None:
                return None
            row = conn.execute(
                sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(migrations_table)
            ).fetchone()
            return int(row[0]) if row is not None else 0

        def upgrade(conn: Connection[Any]) -> list[int]:
            applied: list[int] = []
            with conn.transaction():
                # Two workers starting together would both see the schema missing;
                # the lock makes the second wait and then find it done.
                lock_key = int.from_bytes(
                    hashlib.sha256(_MIGRATE_LOCK_LABEL + self._schema.encode()).digest()[:8],
                    "big",
                    signed=True,
                )
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} ("
                        " version integer PRIMARY KEY,"
                        " description text NOT NULL,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(migrations_table)
                )
                found = current(conn) or 0
                if found > SCHEMA_VERSION:
                    raise SchemaVersionError(schema=self._schema, found=found, known=SCHEMA_VERSION)
                for version, description, statements in _MIGRATIONS:
                    if version <= found:
                        continue
                    for statement in statements:
                        conn.execute(sql.SQL(statement).format(schema=schema))
                    conn.execute(
                        sql.SQL("INSERT INTO {} (version, description) VALUES (%s, %s)").format(
                            migrations_table
                        ),
                        (version, description),
                    )
                    applied.append(version)
            return applied

        found = self._run_raw(instance_id, current)
        if found == SCHEMA_VERSION:
            return
        if found is not None and found > SCHEMA_VERSION:
            raise SchemaVersionError(schema=self._schema, found=found, known=SCHEMA_VERSION)
        applied = self._run_raw(instance_id, upgrade)
        for version in applied:
            _log.info("migrated PostgreSQL schema %s to version %d", self._schema, version)

    def _run(self, instance_id: str | None, work: Callable[[Connection[Any]], _T]) -> _T:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        self._ensure_schema(instance_id)
        return self._run_raw(instance_id, work)

    def _run_raw(self, instance_id: str | None, work: Callable[[Connection[Any]], _T]) -> _T:
        import psycopg

        for attempt in range(1, _ATTEMPTS + 1):
            conn: Connection[Any] | None = None
            try:
                with self._pool.connection() as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:
                if conn is not None and conn.broken and attempt < _ATTEMPTS:
                    _log.debug("retrying on a fresh connection after a broken one")
                    continue
                raise StoreUnavailable(
                    backend=_BACKEND, instance_id=instance_id, detail=self._describe(exc)
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _describe(self, exc: BaseException) -> str:
        lines = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {lines[0] if lines else 'no detail'}"
        for secret in self._scrub:
            text = text.replace(secret, "***")
        return text if len(text) <= 300 else text[:297] + "..."
