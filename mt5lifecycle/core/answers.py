"""What a broker answers: logins, accounts, positions, orders, trade results.

Plain frozen values, so that the terminal's words (``last_error()``, ``order_send``
results, ``account_info()``) are turned into the library's once, in the broker
adapter, and everything after that reasons about these alone. None of them has a
field that could hold a password.
"""

from __future__ import annotations

import attrs

from .states import Reason

__all__ = [
    "LOGIN_REASONS",
    "Account",
    "LoginResult",
    "Order",
    "Position",
    "Ticket",
    "TradeResult",
]


@attrs.frozen(kw_only=True)
class Position:
    """An open position as the broker reports it."""

    ticket: int
    symbol: str
    volume: float


@attrs.frozen(kw_only=True)
class Order:
    """A pending order as the broker reports it."""

    ticket: int
    symbol: str
    volume: float = 0.0


@attrs.frozen(kw_only=True)
class TradeResult:
    """The broker's answer to one close or cancel request."""

    retcode: int | None
    """A ``TRADE_RETCODE_*`` value; ``None`` when no answer came back."""
    remaining: float = 0.0
    """Volume still open after this call (a partial fill leaves some)."""
    comment: str = ""


@attrs.frozen(kw_only=True)
class Ticket:
    """A position or pending order in a closed account's closing plan.

    Stored in the live state before it is touched (SPEC section 12), so a worker that
    dies mid-way leaves the next owner enough to finish without sending it twice.
    """

    kind: str
    """``"position"`` or ``"order"``."""
    ticket: int
    symbol: str
    volume: float
    """The volume when closing began (0 for an order)."""


@attrs.frozen
class Account:
    """Which account a terminal is logged in to: its login on its broker server.

    Not a secret: it is what the terminal shows in its title bar. The password is never
    part of it.
    """

    login: int
    server: str

    def matches(self, other: Account) -> bool:
        """Same login on the same server; server names are compared case-insensitively,
        as the terminal's server list does."""
        return self.login == other.login and (
            self.server.strip().casefold() == other.server.strip().casefold()
        )


@attrs.frozen(kw_only=True)
class LoginResult:
    """The broker's answer to one login call, already classified."""

    ok: bool
    reason: Reason | None = None
    """Why it failed: ``AUTH_FAILED``, ``NETWORK``, ``TERMINAL``, ``ACCOUNT_CLOSED`` or
    ``ACCOUNT_BANNED``; ``None`` on success."""
    code: int | None = None
    """The terminal's own error code (``last_error()[0]`` for MetaTrader 5)."""
    message: str = ""
    """The terminal's own words; never holds the password."""
    account: Account | None = None
    """On success, the account the terminal says it is logged in to (``account_info()``),
    when the broker can tell; the lifecycle checks it against the credentials."""

    @classmethod
    def success(cls, account: Account | None = None) -> LoginResult:
        return cls(ok=True, account=account)

    @classmethod
    def failure(cls, reason: Reason, code: int | None = None, message: str = "") -> LoginResult:
        if reason not in LOGIN_REASONS:
            raise ValueError(f"a login cannot fail with reason {reason}")
        return cls(ok=False, reason=reason, code=code, message=message)


LOGIN_REASONS = frozenset(
    {
        Reason.AUTH_FAILED,
        Reason.NETWORK,
        Reason.TERMINAL,
        Reason.ACCOUNT_CLOSED,
        Reason.ACCOUNT_BANNED,
    }
)
"""The reasons a broker may give for a failed login (``login_failure_reason``)."""
