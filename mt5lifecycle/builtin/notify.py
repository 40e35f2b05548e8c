"""Notifiers: where alerts go. The recording one for tests is in ``testing``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..core.records import Notification

__all__ = ["CallbackNotifier", "LoggingNotifier", "NullNotifier"]


class NullNotifier:
    """Drops every notification: the default, so an idle fleet keeps nothing."""

    __slots__ = ()

    def notify(self, notification: Notification) -> None:
        pass


class LoggingNotifier:
    """Logs each notification on ``mt5lifecycle.alerts`` at WARNING."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger("mt5lifecycle.alerts")

    def notify(self, notification: Notification) -> None:
        self._logger.warning(
            "%s for instance %s (%s): %s",
            notification.kind.value,
            notification.instance_id,
            notification.reason.value if notification.reason else "-",
            notification.message,
        )


class CallbackNotifier:
    """Hands each notification to a function of the host's (send an email, post to a UI)."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[Notification], object]) -> None:
        self._callback = callback

    def notify(self, notification: Notification) -> None:
        self._callback(notification)
