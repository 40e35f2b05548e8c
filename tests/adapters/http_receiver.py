"""A real HTTP receiver for the notifier's tests: ``http.server`` on a free loopback port.

It records every request it answers (path, headers, body, the status it gave) and
can be told to answer the next requests on a path with an error, which is how a
channel "fails N times, then works" without any mock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs

__all__ = ["Post", "Receiver", "http_receiver"]


@attrs.frozen
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.posts: list[Post] = []
        self._failures: dict[str, list[int]] = {}
        self._changed = threading.Condition()
        self.port = 0

    def url(self, path: str = "/hook", *, scheme: str = "json", auth: str = "") -> str:
        return f"{scheme}://{auth}127.0.0.1:{self.port}{path}"

    def fail(self, path: str, times: int, status: int = 500) -> None:
        """Answer the next ``times`` requests on ``path`` with ``status``."""
        with self._changed:
            self._failures.setdefault(path, []).extend([status] * times)

    def answered(self, path: str | None = None, *, ok: bool | None = None) -> list[Post]:
        with self._changed:
            return [
                p
                for p in self.posts
                if (path is None or p.path.split("?")[0] == path)
                and (ok is None or (200 <= p.status < 300) == ok)
            ]

    def wait_for(self, count: int, timeout: float = 2.0, **match: Any) -> list[Post]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.answered(**match)) >= count, timeout):
                raise AssertionError(
                    f"the receiver answered {len(self.answered(**match))} requests matching "
                    f"{match} within {timeout} s, expected {count}"
                )
            return self.answered(**match)

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._changed:
            pending = self._failures.get(path.split("?")[0], [])
            status = pending.pop(0) if pending else 200
            self.posts.append(Post(path, headers, body, status))
            self._changed.notify_all()
            return status


@contextmanager
def http_receiver() -> Iterator[Receiver]:
    """Started on entry on its own thread, shut down and closed on exit."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            status = receiver._answer(self.path, dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads what it needs from the receiver

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="http-receiver",
        daemon=True,
    )
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
