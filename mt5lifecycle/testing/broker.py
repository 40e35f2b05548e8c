"""``FakeBroker``: a scriptable broker and terminal per instance.

It answers the broker port the way a MetaTrader 5 terminal and its broker would,
with the behaviours the lifecycle must survive: wrong passwords, lost networks,
crashed terminals, closed and banned accounts (the broker ends every live session at
once), requotes, partial fills, locked and frozen positions.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

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
        "active_logins",
        "banned",
        "closed",
        "connected",
        "failures",
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
        self.failures: deque[list[object]] = deque()
        self.restart_failures: int | None = 0
        self.login_times: list[float] = []
        self.positions: dict[int, _Trade] = {}
        self.orders: dict[int, _Trade] = {}
        self.restarts = 0
        self.stops = 0
        self.active_logins = 0
        self.max_active_logins = 0


class FakeBroker:
    """The broker port, scripted per instance id. Unknown ids are terminals that
    run, whose logins succeed, and that hold no trades."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._terminals: dict[str, _Terminal] = {}
        self._guard = threading.Lock()

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
        self._t(instance_id).failures.append([reason, times])

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
        self._t(instance_id).positions[ticket] = _Trade(
            ticket, symbol, float(volume), close_retcode
        )

    def pending_order(
        self,
        instance_id: str,
        ticket: int,
        symbol: str,
        cancel_retcode: int | Sequence[int] = DONE,
    ) -> None:
        """A pending order whose cancel requests get ``cancel_retcode``."""
        self._t(instance_id).orders[ticket] = _Trade(ticket, symbol, 0.0, cancel_retcode)

    # --- inspection ------------------------------------------------------------

    def login_times(self, instance_id: str) -> list[float]:
        """The clock times of every login call, in order."""
        return list(self._t(instance_id).login_times)

    def restarts(self, instance_id: str) -> int:
        return self._t(instance_id).restarts

    def stops(self, instance_id: str) -> int:
        return self._t(instance_id).stops

    def max_concurrent_logins(self, instance_id: str) -> int:
        """The most login calls ever in flight at once for the account."""
        return self._t(instance_id).max_active_logins

    def is_up(self, instance_id: str) -> bool:
        return self._t(instance_id).up

    # --- the broker port -------------------------------------------------------

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        terminal = self._t(instance_id)
        with self._guard:
            terminal.active_logins += 1
            terminal.max_active_logins = max(terminal.max_active_logins, terminal.active_logins)
        try:
            terminal.login_times.append(self.clock.now())
            reason = self._login_failure(terminal)
            if reason is None:
                terminal.connected = True
                return LoginResult.success()
            terminal.connected = False
            code, message = _ANSWERS[reason]
            return LoginResult.failure(reason, code, message)
        finally:
            with self._guard:
                terminal.active_logins -= 1

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
            for t in self._t(instance_id).positions.values()
        ]

    def orders(self, instance_id: str) -> list[Order]:
        return [
            Order(ticket=t.ticket, symbol=t.symbol) for t in self._t(instance_id).orders.values()
        ]

    def close_position(self, instance_id: str, position: Position, volume: float) -> TradeResult:
        terminal = self._t(instance_id)
        trade = terminal.positions.get(position.ticket)
        if trade is None:
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
                return TradeResult(retcode=DONE, remaining=0.0, comment="done")
            return TradeResult(retcode=DONE, remaining=trade.volume, comment="done")
        return TradeResult(retcode=code, remaining=trade.volume, comment=f"retcode {code}")

    def cancel_order(self, instance_id: str, order: Order) -> TradeResult:
        terminal = self._t(instance_id)
        trade = terminal.orders.get(order.ticket)
        if trade is None:
            return TradeResult(retcode=INVALID, comment="no such order")
        code = trade.codes.next()
        if code == DONE:
            del terminal.orders[order.ticket]
        return TradeResult(retcode=code, comment=f"retcode {code}")
