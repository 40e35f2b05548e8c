"""The vocabulary of the lifecycle (SPEC section 2).

Every enum's value equals its name, so a value read back from Redis or DuckDB is
the member's name and ``State("FAILED") is State.FAILED``. They subclass ``str`` so
that they serialise as themselves in JSON, logs and metric labels.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["AlertKind", "ConnectionState", "Due", "Reason", "State", "TerminalStatus"]


class State(str, Enum):
    """The value of ``instance_state:<id>:status``."""

    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    FAILED = "FAILED"
    INACTIVE = "INACTIVE"
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"

    def __str__(self) -> str:
        return self.value


class ConnectionState(str, Enum):
    """The value of ``instance_state:<id>:connection_state``."""

    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value


class Reason(str, Enum):
    """Why a login failed or why an instance left service."""

    AUTH_FAILED = "AUTH_FAILED"
    NETWORK = "NETWORK"
    TERMINAL = "TERMINAL"
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"
    ACCOUNT_BANNED = "ACCOUNT_BANNED"
    LOGIN_ATTEMPTS_EXHAUSTED = "LOGIN_ATTEMPTS_EXHAUSTED"
    RECOVERY_EXHAUSTED = "RECOVERY_EXHAUSTED"
    CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
    MANUAL = "MANUAL"

    def __str__(self) -> str:
        return self.value


class AlertKind(str, Enum):
    """One notification each; the Prometheus rules mirror them."""

    LOGIN_FAILURE = "LOGIN_FAILURE"
    REPEATED_LOGIN_FAILURE = "REPEATED_LOGIN_FAILURE"
    LOGIN_RECOVERED = "LOGIN_RECOVERED"
    ACCOUNT_BANNED = "ACCOUNT_BANNED"
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"
    AUTO_RECOVERY_FAILURE = "AUTO_RECOVERY_FAILURE"
    CREDENTIALS_DELETED = "CREDENTIALS_DELETED"
    BROKER_SERVER_DOWN = "BROKER_SERVER_DOWN"
    """Many accounts of one broker server failed together: the server is taken as down."""
    BROKER_SERVER_RECOVERED = "BROKER_SERVER_RECOVERED"
    """Logins to a server taken as down succeed again."""

    def __str__(self) -> str:
        return self.value


class Due(str, Enum):
    """What an instance will do at its ``next_due`` time.

    Persisting the pending action next to its time turns every wait into data: a
    process that dies while a retry, a restart or a closure cleanup is pending
    leaves it in the state store, and whoever resumes the instance carries it out.
    """

    LOGIN = "LOGIN"
    """Log in (a first login, a retry after backoff, a login after a restart)."""
    CHECK = "CHECK"
    """Ask a ``CONNECTED`` terminal whether it is still connected, and to whom."""
    RECONNECT_CHECK = "RECONNECT_CHECK"
    """After a network loss: take the terminal's own reconnection, else log in."""
    RESTART = "RESTART"
    """Restart the terminal from a recoverable ``FAILED``."""
    CLOSE_TRADES = "CLOSE_TRADES"
    """List a closed account's positions and orders: the closing plan (SPEC section 8)."""
    SETTLE_TRADE = "SETTLE_TRADE"
    """Close or cancel the first ticket of the plan, or read from the terminal's history
    how it ended when it is already gone (a worker died after sending it)."""
    CLEANUP = "CLEANUP"
    """Finish a confirmed closure: delete the credentials, archive the final state."""
    PURGE = "PURGE"
    """Delete the live state once the closure's last notifications are handed over."""

    def __str__(self) -> str:
        return self.value


class TerminalStatus(str, Enum):
    """What a terminal answers when asked whether it is still connected."""

    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    """The terminal runs but has lost its broker connection."""
    DOWN = "DOWN"
    """The terminal does not answer: crashed, stopped or never started."""

    def __str__(self) -> str:
        return self.value
