"""Why a MetaTrader 5 login failed: the default, replaceable classification (SPEC section 11).

The ``MetaTrader5`` package answers a wrong password, a disabled account and a deleted
one with the same ``(-6, 'Terminal: Authorization failed')``. Only the terminal's
journal tells them apart, and brokers and terminal builds word it differently, so this
is a plain function a host can replace (``MT5Broker(..., classify=...)``) without
touching the adapter. It does no I/O: the adapter hands it the journal line.

The one rule that must survive any replacement: a ``-6`` alone is never a closure. A
closure deletes credentials in the end, and a mistyped password must not lead there.
"""

from __future__ import annotations

from typing import Protocol

from ...core.states import Reason

__all__ = [
    "AUTH_FAILED_CODE",
    "NETWORK_CODES",
    "TERMINAL_INIT_CODE",
    "Classifier",
    "classify_login_failure",
]

AUTH_FAILED_CODE = -6
"""``RES_E_AUTH_FAILED``."""

TERMINAL_INIT_CODE = -10003
"""``RES_E_INTERNAL_FAIL_INIT``: ``'IPC initialize failed, MetaTrader 5 x64 not found'``."""

NETWORK_CODES = frozenset({-10000, -10001, -10002, -10004, -10005})
"""``RES_E_INTERNAL_FAIL`` (general), ``_SEND``, ``_RECEIVE``, ``_CONNECT`` (``'No IPC
connection'``) and ``_TIMEOUT`` (``'IPC timeout'``): the link to the terminal, or the
terminal's to the broker, broke; nothing was learnt about the credentials."""

_DISABLED = "account disabled"
_INVALID = "invalid account"


class Classifier(Protocol):
    """The shape of a replacement for :func:`classify_login_failure`.

    Called with four positional arguments; it must answer one of the login reasons
    (``AUTH_FAILED``, ``NETWORK``, ``TERMINAL``, ``ACCOUNT_CLOSED``,
    ``ACCOUNT_BANNED``).
    """

    def __call__(
        self,
        code: int | None,
        message: str,
        journal_line: str | None,
        logged_in_before: bool,
        /,
    ) -> Reason: ...


def classify_login_failure(
    code: int | None,
    message: str,
    journal_line: str | None,
    logged_in_before: bool,
) -> Reason:
    """Map a failed ``initialize``/``login`` to a ``Reason``.

    ``code`` and ``message`` are ``last_error()``; ``journal_line`` is the newest
    authorization line for this login in the newest journal file, or ``None``.
    ``logged_in_before`` tells a deleted account (it worked once) from a mistyped
    login (it never did): the broker says ``Invalid account`` for both.

    Codes this table does not know (``-1`` call failed, ``-5`` incompatible versions,
    ...) are ``TERMINAL``: something is wrong with the terminal rather than with the
    credentials, and a restart is the remedy that might work. That also covers the
    SPEC's "``initialize()`` failing otherwise".
    """
    said = message.lower()
    journal = (journal_line or "").lower()
    if _DISABLED in said or (code == AUTH_FAILED_CODE and _DISABLED in journal):
        return Reason.ACCOUNT_BANNED
    if _INVALID in said or (code == AUTH_FAILED_CODE and _INVALID in journal):
        return Reason.ACCOUNT_CLOSED if logged_in_before else Reason.AUTH_FAILED
    if code == AUTH_FAILED_CODE:
        return Reason.AUTH_FAILED
    if code in NETWORK_CODES:
        return Reason.NETWORK
    return Reason.TERMINAL
