"""Broker credentials: a value whose password never shows."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import attrs

__all__ = ["Credentials", "fingerprint"]


def _login(value: Any) -> int:
    # bool is an int to Python, never an account number to a broker.
    if isinstance(value, bool):
        raise ValueError(f"Credentials.login must be an account number, not {value!r}")
    if isinstance(value, int):
        login = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        login = int(value)
    else:
        shown = type(value).__name__ if isinstance(value, (bytes, bytearray)) else repr(value)
        raise ValueError(
            f"Credentials.login must be an account number (an int or a string of digits), "
            f"not {shown}"
        )
    if login <= 0:
        raise ValueError(f"Credentials.login must be a positive account number, not {login}")
    return login


def _server(_: object, __: attrs.Attribute[str], value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"Credentials.server must be a non-empty string, not {value!r}")
    if "\x00" in value:
        raise ValueError("Credentials.server must not contain NUL characters")


def _password(_: object, __: attrs.Attribute[str], value: Any) -> None:
    # Never echo the value: this message may be logged.
    if not isinstance(value, str):
        raise ValueError(f"Credentials.password must be a string, not a {type(value).__name__}")
    if not value:
        raise ValueError("Credentials.password must not be empty")
    if "\x00" in value:
        raise ValueError("Credentials.password must not contain NUL characters")


def _redacted(_: object) -> str:
    return "'***'"


@attrs.frozen
class Credentials:
    """An account number, the broker's server name and the password.

    The password is redacted in ``repr`` and ``str``, and left out of pickles'
    human-readable forms; reading ``.password`` is the only way to see it.
    """

    login: int = attrs.field(converter=_login)
    server: str = attrs.field(validator=_server)
    password: str = attrs.field(validator=_password, repr=_redacted)

    def __str__(self) -> str:
        return repr(self)


def fingerprint(credentials: Credentials, key: bytes) -> bytes:
    """A keyed fingerprint of the credentials: equal for equal credentials, and useless
    to anyone without ``key`` (HMAC-SHA256, so the password cannot be tried offline).

    The server name is compared as the terminal does, whatever its case or spacing, so
    retyping it is not a change of credentials.
    """
    message = "\x00".join(
        (str(credentials.login), credentials.server.strip().casefold(), credentials.password)
    ).encode()
    return hmac.new(key, message, hashlib.sha256).digest()
