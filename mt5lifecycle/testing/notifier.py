"""``RecordingNotifier``: keeps every notification for a test to look at."""

from __future__ import annotations

from ..core.records import Notification
from ..core.states import AlertKind

__all__ = ["RecordingNotifier"]


class RecordingNotifier:
    """Every notification, in order, in ``.notifications``."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []

    def notify(self, notification: Notification) -> None:
        self.notifications.append(notification)

    def kinds(self, instance_id: str | None = None) -> list[AlertKind]:
        """The kinds notified so far, for one instance or all."""
        return [
            n.kind
            for n in self.notifications
            if instance_id is None or n.instance_id == instance_id
        ]

    def clear(self) -> None:
        self.notifications.clear()
