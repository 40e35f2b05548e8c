"""Who is asking: bearer tokens, their roles, and what a console session is bound to.

A token's secret is never kept. ``TokenBook`` keeps two keyed digests of each one:

- an HMAC-SHA-256 under a key drawn at random for this process, to recognise a
  presented token. A fast hash is the right tool here, unlike for passwords: a token
  is at least 32 random characters (about 190 bits from ``secrets.token_urlsafe``),
  so there is no dictionary to try and nothing a slow KDF would protect; scrypt
  would only add ~50 ms to every API call. The random key means the digests in memory
  match nothing outside this process either.
- an HMAC under the session key, which a console session carries. Changing or
  removing a token's secret changes it, so every session signed in with the old
  secret ends at its next request, even with a session key that outlives restarts.

Every presented token is compared with every known digest with
``hmac.compare_digest`` and no early exit: how long the check takes says nothing
about which token, or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import attrs
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.requests import HTTPConnection

__all__ = [
    "MIN_SECRET_LENGTH",
    "ROLES",
    "BearerAuth",
    "ConsoleAuth",
    "Principal",
    "Role",
    "TokenBook",
]

Role = Literal["viewer", "operator"]
ROLES: Final = ("viewer", "operator")
MIN_SECRET_LENGTH: Final = 32
"""Characters; ``secrets.token_urlsafe(32)`` gives 43."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SECRET = re.compile(r"[!-~]+")  # printable ASCII without spaces: what a header can carry


@attrs.frozen
class Principal(BaseUser):
    """A signed-in token: its name (the audit's "who") and its role."""

    name: str
    role: Role
    via: Literal["token", "session"] = "token"

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return self.name

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


@attrs.frozen
class _Entry:
    name: str
    role: Role
    digest: bytes = attrs.field(repr=False)
    binding: str = attrs.field(repr=False)


class TokenBook:
    """The configured tokens, as keyed digests only (see the module's docstring)."""

    __slots__ = ("_by_name", "_entries", "_key", "_session_key")

    def __init__(self, tokens: Mapping[str, tuple[str, str]], session_key: bytes) -> None:
        if not isinstance(tokens, Mapping):
            raise TypeError(
                f"tokens must map a name to (secret, role), not {type(tokens).__name__}"
            )
        self._key = os.urandom(32)
        self._session_key = session_key
        entries: list[_Entry] = []
        seen: set[bytes] = set()
        for name, value in tokens.items():
            if not isinstance(name, str) or _NAME.fullmatch(name) is None:
                raise ValueError(
                    f"token name {name!r}: expected 1 to 64 characters of [A-Za-z0-9._@-], "
                    "starting with a letter or a digit"
                )
            if not isinstance(value, tuple) or len(value) != 2:
                raise ValueError(f"token {name!r}: expected a (secret, role) pair")
            secret, role = value
            # Never echo the secret: this message may be logged.
            if not isinstance(secret, str) or _SECRET.fullmatch(secret) is None:
                raise ValueError(
                    f"token {name!r}: the secret must be printable ASCII without spaces"
                )
            if len(secret) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"token {name!r}: the secret is {len(secret)} characters; at least "
                    f'{MIN_SECRET_LENGTH} are needed (python -c "import secrets; '
                    'print(secrets.token_urlsafe(32))")'
                )
            if role not in ROLES:
                raise ValueError(
                    f"token {name!r}: role must be 'viewer' or 'operator', not {role!r}"
                )
            checked: Role = "operator" if role == "operator" else "viewer"
            digest = self._digest(secret.encode("ascii"))
            if digest in seen:
                raise ValueError(f"token {name!r} has the same secret as another token")
            seen.add(digest)
            binding = hmac.new(
                session_key, b"session\x00" + name.encode() + b"\x00" + secret.encode(), "sha256"
            ).hexdigest()[:32]
            entries.append(_Entry(name, checked, digest, binding))
        self._entries = tuple(entries)
        self._by_name = {entry.name: entry for entry in entries}

    def __repr__(self) -> str:
        names = ", ".join(f"{e.name}:{e.role}" for e in self._entries)
        return f"TokenBook({names})"

    def __len__(self) -> int:
        return len(self._entries)

    def _digest(self, secret: bytes) -> bytes:
        return hmac.new(self._key, secret, hashlib.sha256).digest()

    def identify(self, secret: str) -> Principal | None:
        """The token whose secret this is, or ``None``; in constant time."""
        presented = self._digest(secret.encode("utf-8", "surrogateescape"))
        found: _Entry | None = None
        for entry in self._entries:
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        return None if found is None else Principal(found.name, found.role)

    def binding(self, name: str) -> str | None:
        """What a session signed in as ``name`` must carry; ``None`` for no such token."""
        entry = self._by_name.get(name)
        return None if entry is None else entry.binding

    def from_session(self, name: object, binding: object) -> Principal | None:
        """The session's principal while its token still exists with the same secret."""
        if not isinstance(name, str) or not isinstance(binding, str):
            return None
        entry = self._by_name.get(name)
        if entry is None or not hmac.compare_digest(binding.encode(), entry.binding.encode()):
            return None
        return Principal(entry.name, entry.role, via="session")


def bearer(conn: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer`` header; ``""`` for another scheme."""
    header = conn.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


class BearerAuth(AuthenticationBackend):
    """The API's authentication: a bearer token, nothing else (no cookie, so no CSRF)."""

    def __init__(self, book: TokenBook) -> None:
        self.book = book

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        token = bearer(conn)
        if token is None:
            return None
        principal = self.book.identify(token) if token else None
        if principal is None:
            raise AuthenticationError("the bearer token is not valid")
        return _credentials(principal), principal


class ConsoleAuth(BearerAuth):
    """The console's: a bearer token when one is sent, else the signed-in session."""

    def __init__(self, book: TokenBook, session_alive: Callable[[Mapping[str, Any]], bool]) -> None:
        super().__init__(book)
        self.session_alive = session_alive

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if "authorization" in conn.headers:
            return await super().authenticate(conn)
        session = conn.session
        if not self.session_alive(session):
            return None
        principal = self.book.from_session(session.get("name"), session.get("bind"))
        if principal is None:
            return None
        return _credentials(principal), principal


def _credentials(principal: Principal) -> AuthCredentials:
    return AuthCredentials(["read", "operate"] if principal.can_act else ["read"])
