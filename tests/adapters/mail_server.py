"""A real SMTP server for the notifier's tests: aiosmtpd on a free loopback port.

It runs in this process on aiosmtpd's own thread, keeps every message it accepts,
and, given a password, accepts AUTH only with it (over plain SMTP: the test is on
loopback), so a channel that logs in does so with its real password.
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["MailServer", "mail_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MailServer:
    """What the server received, and a bounded wait for it (never a sleep)."""

    def __init__(self, user: str | None, password: str | None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = user
        self.password = password
        self.messages: list[EmailMessage] = []
        self.logins: list[str] = []
        self._changed = threading.Condition()

    def url(self, *, to: str = "desk@example.com") -> str:
        """An apprise ``mailto://`` URL for this server."""
        auth = f"{self.user}:{self.password}@" if self.user and self.password else ""
        # The SMTP host goes in smtp=: apprise 1.x reads the URL's host as the mail domain.
        return (
            f"mailto://{auth}example.com:{self.port}?smtp={self.host}&from=mt5@example.com&to={to}"
        )

    def wait_for(self, count: int, timeout: float = 2.0) -> list[EmailMessage]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(
                    f"the SMTP server got {len(self.messages)} messages within {timeout} s, "
                    f"expected {count}"
                )
            return list(self.messages)

    # --- aiosmtpd's handler and authenticator ---------------------------------

    async def handle_DATA(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()
        return "250 OK"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.user
            and data.password.decode() == self.password
        )
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok)


@contextmanager
def mail_server(*, user: str | None = None, password: str | None = None) -> Iterator[MailServer]:
    """Started on entry, stopped on exit, whatever the test did."""
    server = MailServer(user, password)
    options: dict[str, Any] = {}
    if password is not None:
        options = {"authenticator": server.authenticate, "auth_require_tls": False}
    controller = Controller(server, hostname=server.host, port=server.port, **options)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()
