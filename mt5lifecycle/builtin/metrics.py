"""The no-op metrics port; the Prometheus one is ``adapters.prometheus``."""

from __future__ import annotations

from ..core.records import Notification
from ..core.states import Reason, State

__all__ = ["NullMetrics"]


class NullMetrics:
    """Counts nothing: the default."""

    __slots__ = ()

    def transition(
        self, instance_id: str, source: State | None, dest: State | None, reason: Reason | None
    ) -> None:
        pass

    def login(self, instance_id: str, failure: Reason | None, consecutive_failures: int) -> None:
        pass

    def alert(self, notification: Notification) -> None:
        pass

    def restart(self, instance_id: str, restart_count: int) -> None:
        pass

    def error(self, component: str, instance_id: str | None) -> None:
        pass

    def set_aside(self, notification: Notification) -> None:
        pass
