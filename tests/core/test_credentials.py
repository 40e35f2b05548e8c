"""Credentials: login conversion, and a password that never shows."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest

from mt5lifecycle import Credentials


def test_login_accepts_an_int_or_a_string_of_digits() -> None:
    assert Credentials(123, "srv", "pw").login == 123
    assert Credentials("0456", "srv", "pw").login == 456


@pytest.mark.parametrize("login", ["12a", "", " 12", "-5", 0, -1, True, 1.5, None, b"12", "١٢"])
def test_anything_else_raises_value_error(login: Any) -> None:
    with pytest.raises(ValueError, match=r"Credentials\.login"):
        Credentials(login, "srv", "pw")


@pytest.mark.parametrize("server", ["", "   ", None, 5, "a\x00b"])
def test_bad_server_raises(server: Any) -> None:
    with pytest.raises(ValueError, match=r"Credentials\.server"):
        Credentials(1, server, "pw")


@pytest.mark.parametrize("password", ["", None, 5, "a\x00b"])
def test_bad_password_raises_without_echoing_it(password: Any) -> None:
    with pytest.raises(ValueError, match=r"Credentials\.password") as caught:
        Credentials(1, "srv", password)
    if isinstance(password, str) and password:
        assert password not in str(caught.value)


def test_password_is_redacted_in_repr_str_format_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    c = Credentials(1, "srv", "hunter2-Secret")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").debug("creds %s %r", c, c)
    for text in (repr(c), str(c), f"{c}", f"{c!r}", caplog.text):
        assert "hunter2-Secret" not in text
    assert "***" in repr(c)
    assert c.password == "hunter2-Secret"


def test_credentials_are_frozen_values() -> None:
    c = Credentials(1, "srv", "pw")
    assert c == Credentials(1, "srv", "pw")
    with pytest.raises(AttributeError):
        c.password = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(c)) == c
