"""``FakeBroker``: a scriptable broker and terminal per instance.

It answers the broker port the way a MetaTrader 5 terminal and its broker would,
with the behaviours the lifecycle must survive: wrong passwords, lost networks,
crashed terminals, closed and banned accounts (the broker ends every live session at
once), requotes, partial fills, locked and frozen positions, a terminal logged in to
another account, a whole broker server going down. It also says who a terminal is
logged in to (``ports.AccountReader``) and how a ticket ended (``ports.TradeHistory``).

An instance nobody scripted costs little: its terminal keeps its queues and books
only once something is put in them, so a test of 100,000 idle instances fits.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

from ..core.answers import Account
from ..core.closing import DONE, DONE_PARTIAL, POSITION_CLOSED
from ..core.credentials import Credentials
from ..core.ids import check_instance_id
from ..core.records import LOGIN_REASONS, LoginResult, Order, Position, TradeResult
from ..core.states import Reason, TerminalStatus
from ..ports import Clock

__all__ = ["FakeBroker"]

INVALID = 10013
MIN_VOLUME = 0.01

# What a real terminal says for each reason (MetaTrader5's last_error()).
_ANSWERS: dict[Reason, tuple[int, str]] = {
    Reason.AUTH_FAILED: (-6, "Terminal: Authorization failed"),
    Reason.NETWORK: (-10004, "No IPC connection"),
    Reason.TERMINAL: (-10003, "IPC initialize failed, MetaTrader 5 x64 not found"),
    Reason.ACCOUNT_CLOSED: (-6, "Terminal: Authorization failed (Invalid account)"),
    Reason.ACCOUNT_BANNED: (-6, "Terminal: Authorization failed (Account disabled)"),
}


class _Codes:
    """A return-code script: one code for every call, or a sequence (the last repeats)."""

    __slots__ = ("_codes",)

    def __init__(self, codes: int | Sequence[int]) -> None:
        if isinstance(codes, bool):
            raise ValueError(f"a return code is an int, not {codes!r}")
        script = (codes,) if isinstance(codes, int) else tuple(codes)
        if not script or any(isinstance(c, bool) or not isinstance(c, int) for c in script):
            raise ValueError(f"return codes must be ints, not {codes!r}")
        self._codes = deque(script)

    def next(self) -> int:
        code = self._codes[0]
        if len(self._codes) > 1:
            self._codes.popleft()
        return code


class _Trade:
    __slots__ = ("codes", "symbol", "ticket", "volume")

    def __init__(self, ticket: int, symbol: str, volume: float, codes: int | Sequence[int]) -> None:
        self.ticket = ticket
        self.symbol = symbol
        self.volume = volume
        self.codes = _Codes(codes)


class _Terminal:
    __slots__ = (
        "account",
        "active_logins",
        "banned",
        "closed",
        "connected",
        "elsewhere",
        "failures",
        "history",
        "login_times",
        "max_active_logins",
        "orders",
        "positions",
        "restart_failures",
        "restarts",
        "stops",
        "up",
    )

    def __init__(self) -> None:
        self.up = True
        self.connected = False
        self.closed = False
        self.banned = False
        self.failures: deque[list[object]] | None = None
        self.restart_failures: int | None = 0
        self.login_times: list[float] | None = None
        self.positions: dict[int, _Trade] | None = None
        self.orders: dict[int, _Trade] | None = None
        self.history: dict[tuple[str, int], TradeResult] | None = None
        self.restarts = 0
        self.stops = 0
        self.active_logins = 0
        self.max_active_logins = 0
        self.account: Account | None = None
        """Who the last successful login was for."""
        self.elsewhere: Account | None = None
        """Cross-wired: the account the terminal says it is logged in to instead."""


class FakeBroker:
    """The broker port, scripted per instance id. Unknown ids are terminals that
    run, whose logins succeed, and that hold no trades."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._terminals: dict[str, _Terminal] = {}
        self._guard = threading.Lock()
        self._down: set[str] = set()
        self._server_logins: dict[str, int] = {}
        self._server_peak: dict[str, int] = {}

    def _t(self, instance_id: str) -> _Terminal:
        terminal = self._terminals.get(instance_id)
        if terminal is None:
            terminal = self._terminals[check_instance_id(instance_id)] = _Terminal()
        return terminal

    # --- scripting -------------------------------------------------------------

    def fail_logins(self, instance_id: str, reason: Reason, times: int | None = None) -> None:
        """The next ``times`` logins fail with ``reason`` (``None``: all of them).

        Calls queue one after another: ``fail_logins(i, AUTH_FAILED, 2)`` then
        ``fail_logins(i, NETWORK, 1)`` fails twice on the password, then once on the
        network, then logs in.
        """
        reason = Reason(reason)
        if reason not in LOGIN_REASONS:
            raise ValueError(f"a login cannot fail with {reason}")
        if times is not None and (
            isinstance(times, bool) or not isinstance(times, int) or times < 0
        ):
            raise ValueError(f"times must be a count >= 0 or None, not {times!r}")
        if times == 0:
            return
        terminal = self._t(instance_id)
        if terminal.failures is None:
            terminal.failures = deque()
        terminal.failures.append([reason, times])

    def close_account(self, instance_id: str) -> None:
        """The broker closes the account: the live session ends, every login fails."""
        terminal = self._t(instance_id)
        terminal.closed = True
        terminal.connected = False

    def ban_account(self, instance_id: str) -> None:
        """The broker bans the account: the live session ends, every login fails."""
        terminal = self._t(instance_id)
        terminal.banned = True
        terminal.connected = False

    def lift_ban(self, instance_id: str) -> None:
        self._t(instance_id).banned = False

    def drop_connection(self, instance_id: str) -> None:
        """The terminal loses its broker connection (it keeps running)."""
        self._t(instance_id).connected = False

    def restore_connection(self, instance_id: str) -> None:
        """The terminal reconnected by itself."""
        terminal = self._t(instance_id)
        terminal.up = True
        terminal.connected = not (terminal.closed or terminal.banned)

    def crash_terminal(self, instance_id: str) -> None:
        """The terminal process dies: it answers nothing until restarted."""
        terminal = self._t(instance_id)
        terminal.up = False
        terminal.connected = False

    def fail_restarts(self, instance_id: str, times: int | None = None) -> None:
        """The next ``times`` restarts do not bring the terminal up (``None``: none do)."""
        self._t(instance_id).restart_failures = times

    def cross_wire(self, instance_id: str, login: int, server: str) -> None:
        """The terminal is logged in to another account (two terminals on one IPC
        channel, a terminal shared by mistake): ``account()`` names that one."""
        self._t(instance_id).elsewhere = Account(login, server)

    def uncross(self, instance_id: str) -> None:
        self._t(instance_id).elsewhere = None

    def server_down(self, server: str) -> None:
        """A whole broker server goes down: every session on it ends, and every login
        to it fails with ``NETWORK`` until ``server_up``."""
        name = _server(server)
        self._down.add(name)
        for terminal in self._terminals.values():
            if terminal.account is not None and _server(terminal.account.server) == name:
                terminal.connected = False

    def server_up(self, server: str) -> None:
        """The server is back; the terminals reconnect when they log in again."""
        self._down.discard(_server(server))

    def open_position(
        self,
        instance_id: str,
        ticket: int,
        symbol: str,
        volume: float,
        close_retcode: int | Sequence[int] = DONE,
    ) -> None:
        """An open position whose close requests get ``close_retcode``.

        One code answers every request; a sequence answers them in order, its last
        code repeating. ``10010`` (partial) closes half the remaining volume.
        """
        if volume <= 0:
            raise ValueError(f"volume must be positive, not {volume}")
        terminal = self._t(instance_id)
        if terminal.positions is None:
            terminal.positions = {}
        terminal.positions[ticket] = _Trade(ticket, symbol, float(volume), close_retcode)

    def pending_order(
        self,
        instance_id: str,
        ticket: int,
        symbol: str,
        cancel_retcode: int | Sequence[int] = DONE,
    ) -> None:
        """A pending order whose cancel requests get ``cancel_retcode``."""
        terminal = self._t(instance_id)
        if terminal.orders is None:
            terminal.orders = {}
        terminal.orders[ticket] = _Trade(ticket, symbol, 0.0, cancel_retcode)

    def close_by_broker(self, instance_id: str, ticket: int) -> None:
        """The broker closed the position itself (a stop loss, a stop out): it is gone
        from the terminal and in its history."""
        terminal = self._t(instance_id)
        gone = terminal.positions.pop(ticket, None) if terminal.positions is not None else None
        if gone is not None:
            self._remember(terminal, "position", ticket, "closed by the broker")

    # --- inspection ------------------------------------------------------------

    def login_times(self, instance_id: str) -> list[float]:
        """The clock times of every login call, in order."""
        return list(self._t(instance_id).login_times or ())

    def restarts(self, instance_id: str) -> int:
        return self._t(instance_id).restarts

    def stops(self, instance_id: str) -> int:
        return self._t(instance_id).stops

    def max_concurrent_logins(self, instance_id: str) -> int:
        """The most login calls ever in flight at once for the account."""
        return self._t(instance_id).max_active_logins

    def max_concurrent_logins_on(self, server: str) -> int:
        """The most login calls ever in flight at once to one broker server."""
        return self._server_peak.get(_server(server), 0)

    def is_up(self, instance_id: str) -> bool:
        return self._t(instance_id).up

    # --- the broker port -------------------------------------------------------

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        terminal = self._t(instance_id)
        server = _server(credentials.server)
        with self._guard:
            terminal.active_logins += 1
            terminal.max_active_logins = max(terminal.max_active_logins, terminal.active_logins)
            at_once = self._server_logins.get(server, 0) + 1
            self._server_logins[server] = at_once
            self._server_peak[server] = max(self._server_peak.get(server, 0), at_once)
        try:
            if terminal.login_times is None:
                terminal.login_times = []
            terminal.login_times.append(self.clock.now())
            reason = Reason.NETWORK if server in self._down else self._login_failure(terminal)
            if reason is None:
                terminal.connected = True
                terminal.account = Account(credentials.login, credentials.server)
                return LoginResult.success(terminal.elsewhere or terminal.account)
            terminal.connected = False
            code, message = _ANSWERS[reason]
            return LoginResult.failure(reason, code, message)
        finally:
            with self._guard:
                terminal.active_logins -= 1
                self._server_logins[server] -= 1

    def _login_failure(self, terminal: _Terminal) -> Reason | None:
        if not terminal.up:
            return Reason.TERMINAL
        if terminal.closed:
            return Reason.ACCOUNT_CLOSED
        if terminal.banned:
            return Reason.ACCOUNT_BANNED
        if terminal.failures:
            entry = terminal.failures[0]
            reason, times = entry
            if times is not None:
                assert isinstance(times, int)
                entry[1] = times - 1
                if times - 1 <= 0:
                    terminal.failures.popleft()
            assert isinstance(reason, Reason)
            return reason
        return None

    def status(self, instance_id: str) -> TerminalStatus:
        terminal = self._t(instance_id)
        if not terminal.up:
            return TerminalStatus.DOWN
        return TerminalStatus.CONNECTED if terminal.connected else TerminalStatus.DISCONNECTED

    def account(self, instance_id: str) -> Account | None:
        """Who the terminal is logged in to (``ports.AccountReader``)."""
        terminal = self._t(instance_id)
        if not terminal.up or not terminal.connected:
            return None
        return terminal.elsewhere or terminal.account

    def restart(self, instance_id: str) -> None:
        terminal = self._t(instance_id)
        terminal.restarts += 1
        terminal.connected = False
        failures = terminal.restart_failures
        if failures is None or failures > 0:
            if failures is not None:
                terminal.restart_failures = failures - 1
            terminal.up = False
            raise RuntimeError("the terminal did not start")
        terminal.up = True

    def stop(self, instance_id: str) -> None:
        terminal = self._t(instance_id)
        terminal.stops += 1
        terminal.up = False
        terminal.connected = False

    def positions(self, instance_id: str) -> list[Position]:
        return [
            Position(ticket=t.ticket, symbol=t.symbol, volume=t.volume)
            for t in (self._t(instance_id).positions or {}).values()
        ]

    def orders(self, instance_id: str) -> list[Order]:
        return [
            Order(ticket=t.ticket, symbol=t.symbol)
            for t in (self._t(instance_id).orders or {}).values()
        ]

    def close_position(self, instance_id: str, position: Position, volume: float) -> TradeResult:
        terminal = self._t(instance_id)
        trade = (terminal.positions or {}).get(position.ticket)
        if trade is None or terminal.positions is None:
            return TradeResult(retcode=POSITION_CLOSED, comment="position already closed")
        if volume <= 0 or volume > trade.volume + 1e-9:
            return TradeResult(retcode=INVALID, remaining=trade.volume, comment="invalid volume")
        code = trade.codes.next()
        if code == DONE_PARTIAL:
            half = round(int(volume / 2 / MIN_VOLUME) * MIN_VOLUME, 2)
            if half >= MIN_VOLUME:
                trade.volume = round(trade.volume - half, 2)
                return TradeResult(
                    retcode=DONE_PARTIAL, remaining=trade.volume, comment="partial fill"
                )
            code = DONE
        if code == DONE:
            trade.volume = round(trade.volume - volume, 2)
            if trade.volume < MIN_VOLUME:
                del terminal.positions[position.ticket]
                self._remember(terminal, "position", position.ticket, "closed")
                return TradeResult(retcode=DONE, remaining=0.0, comment="done")
            return TradeResult(retcode=DONE, remaining=trade.volume, comment="done")
        return TradeResult(retcode=code, remaining=trade.volume, comment=f"retcode {code}")

    def cancel_order(self, instance_id: str, order: Order) -> TradeResult:
        terminal = self._t(instance_id)
        trade = (terminal.orders or {}).get(order.ticket)
        if trade is None or terminal.orders is None:
            return TradeResult(retcode=INVALID, comment="no such order")
        code = trade.codes.next()
        if code == DONE:
            del terminal.orders[order.ticket]
            self._remember(terminal, "order", order.ticket, "cancelled")
        return TradeResult(retcode=code, comment=f"retcode {code}")

    def trade_outcome(self, instance_id: str, kind: str, ticket: int) -> TradeResult | None:
        """How a ticket gone from the terminal ended (``ports.TradeHistory``)."""
        return (self._t(instance_id).history or {}).get((kind, ticket))

    @staticmethod
    def _remember(terminal: _Terminal, kind: str, ticket: int, how: str) -> None:
        if terminal.history is None:
            terminal.history = {}
        terminal.history[(kind, ticket)] = TradeResult(
            retcode=DONE, remaining=0.0, comment=f"{kind} {ticket} {how}"
        )


def _server(name: str) -> str:
    return name.strip().casefold()
