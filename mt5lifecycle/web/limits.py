"""A bound on request bodies, answered in the API's own shape.

Starlette's ``max_body_size`` answers in plain text and turns any answer to an
over-long ``Content-Length`` into its own, so an API client would get two shapes of
error; this one answers ``413 {"error": "too_large", ...}`` before reading a byte
when the length is declared, and from the handler (through the usual error answer)
when a body without one runs past the bound.

A refused body is read to its end (and dropped) up to ``DRAIN`` times the bound
before the answer goes out: a server that answers and closes while the client is
still sending makes the client's TCP stack see a reset, not the answer.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import JSON, WebError, json_bytes

__all__ = ["DRAIN", "BodyLimit"]

DRAIN = 16


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    def error(self) -> WebError:
        return WebError(413, "too_large", f"the body is larger than {self.max_body_size} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_size:
            if len(declared) < 12 and int(declared) <= DRAIN * self.max_body_size:
                await self._drain(receive, 0)
            error = self.error()
            body = json_bytes(error.body())
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_size:
                    if message.get("more_body", False):
                        await self._drain(receive, seen)
                    raise self.error()
            return message

        await self.app(scope, bounded, send)

    async def _drain(self, receive: Receive, seen: int) -> None:
        while seen <= DRAIN * self.max_body_size:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
