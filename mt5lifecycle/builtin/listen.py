"""A listening socket that only one process can have, on every platform.

On Windows ``SO_REUSEADDR`` (which ``http.server`` and many servers set) lets a
second process bind a port another one listens on, and the two then share its
connections at random: a second ``serve`` would answer half the scrapes with its
own metrics. ``SO_EXCLUSIVEADDRUSE`` is Windows' way to refuse that. On POSIX
``SO_REUSEADDR`` only lets a restarted server bind past connections in TIME_WAIT;
two listeners on one port are refused anyway. Either way a port in use is a
``PortInUse`` naming the address, never a silent share.
"""

from __future__ import annotations

import errno
import socket
import sys

__all__ = ["PortInUse", "bind_exclusive"]

# Winsock's codes: WSAEADDRINUSE, and WSAEACCES for a port an exclusive socket holds.
_IN_USE = {errno.EADDRINUSE, 10048, 10013} if sys.platform == "win32" else {errno.EADDRINUSE}


class PortInUse(OSError):
    """Another process listens on the address already."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"{host}:{port} is already in use by another process (another mt5lifecycle "
            "serve?); stop it or choose another port",
        )
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


def bind_exclusive(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` and listening; ``port=0`` picks a free one."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform == "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno in _IN_USE or getattr(exc, "winerror", None) in _IN_USE:
                raise PortInUse(host, port) from None
            raise
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock
