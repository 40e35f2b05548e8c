"""The broker of a process that owns no terminal: the command line, an API apart.

Such a process acts on the stored state (a reset, a disable, a confirmation) and the
process that drives the instance reads the new state and carries it out at its
terminal. Its broker port never logs in or trades: a call that would is refused, and
the rest answer "not here".
"""

from __future__ import annotations

from ..core.answers import LoginResult, Order, Position, TradeResult
from ..core.credentials import Credentials
from ..core.states import TerminalStatus

__all__ = ["HandsOffBroker"]


class HandsOffBroker:
    """The broker port of a process that does not own the terminals."""

    def __init__(self, who: str = "this process") -> None:
        self._who = who

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        raise RuntimeError(f"{self._who} does not log terminals in")

    def status(self, instance_id: str) -> TerminalStatus:
        return TerminalStatus.DOWN

    def restart(self, instance_id: str) -> None:
        """Left to the process that drives the instance."""

    def stop(self, instance_id: str) -> None:
        """Left to the process that drives the instance."""

    def positions(self, instance_id: str) -> list[Position]:
        return []

    def orders(self, instance_id: str) -> list[Order]:
        return []

    def close_position(self, instance_id: str, position: Position, volume: float) -> TradeResult:
        return TradeResult(retcode=None, comment="not this process's terminal")

    def cancel_order(self, instance_id: str, order: Order) -> TradeResult:
        return TradeResult(retcode=None, comment="not this process's terminal")
