"""What goes wrong, as an HTTP answer: one error type, and the library's errors mapped.

Every error answer of the API is ``{"error": "<code>", "message": "<sentence>"}``
(422s add ``"field"``). Messages never repeat what the client sent: a value typed in
the wrong field may be a password.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from ..errors import (
    ConcurrentUpdate,
    CorruptState,
    CredentialsRejected,
    InvalidInstanceId,
    InvalidTransition,
    LifecycleError,
    LockLost,
    StoreUnavailable,
)

__all__ = ["JSON", "WebError", "from_library", "json_bytes"]

log = logging.getLogger("mt5lifecycle.web")

JSON: Final = "application/json"


class WebError(Exception):
    """An answer other than success: its status, a stable code and a sentence."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out

    # The answers of SPEC section 13, one constructor each.

    @classmethod
    def unauthorized(cls, message: str = "a valid bearer token is needed") -> WebError:
        return cls(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})

    @classmethod
    def forbidden(cls, name: str, role: str, action: str) -> WebError:
        return cls(403, "forbidden", f"token {name!r} is a {role}: it may read, not {action}")

    @classmethod
    def not_found(cls, instance_id: str) -> WebError:
        return cls(404, "not_found", f"no instance {instance_id!r} is stored")

    @classmethod
    def conflict(cls, message: str, error: str = "conflict") -> WebError:
        return cls(409, error, message)

    @classmethod
    def invalid(cls, field: str, why: str) -> WebError:
        return cls(422, "invalid", f"{field}: {why}", field=field)

    @classmethod
    def unavailable(cls, message: str) -> WebError:
        return cls(503, "unavailable", message)

    @classmethod
    def unsupported(cls, message: str) -> WebError:
        """What this deployment's backends cannot do at all: trying again will not help
        (unlike a 503), a different backend would."""
        return cls(501, "not_supported", message)


_ID_RULE: Final = (
    "expected 1 to 128 characters of [A-Za-z0-9._-], starting with a letter or a digit"
)


def from_library(exc: LifecycleError) -> WebError:
    """The answer to a library error; the library's messages never hold a password."""
    if isinstance(exc, CredentialsRejected):
        return WebError.conflict(str(exc), "credentials_rejected")
    if isinstance(exc, InvalidTransition):
        return WebError.conflict(str(exc))
    if isinstance(exc, InvalidInstanceId):
        return WebError.invalid("id", _ID_RULE)
    if isinstance(exc, StoreUnavailable):
        return WebError.unavailable(f"{exc}; nothing was changed, try again")
    if isinstance(exc, (ConcurrentUpdate, LockLost)):
        return WebError.conflict(f"{exc}; read the instance again and retry", "changed_meanwhile")
    if isinstance(exc, CorruptState):
        log.error("%s", exc)
        return WebError(
            500,
            "corrupt_state",
            f"the stored state of instance {exc.instance_id!r} is corrupt (key {exc.key!r}); "
            "see the server's log",
        )
    log.error("unexpected library error: %s", exc)
    return WebError(500, "internal", f"{type(exc).__name__}: see the server's log")


def json_bytes(content: Any) -> bytes:
    """Compact ASCII JSON: a lone surrogate read back from a store cannot fail the
    answer's encoding, and the C encoder's ASCII path is its fastest."""
    return json.dumps(content, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode(
        "ascii"
    )
