"""Clocks: the time port's shipped implementations (the fake one is in ``testing``)."""

from __future__ import annotations

import asyncio
import time

import attrs

__all__ = ["ScaledClock", "SystemClock"]


class SystemClock:
    """Wall-clock time: what production uses."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


@attrs.define
class ScaledClock:
    """Time that runs ``speed`` times faster than the wall clock, from ``start``.

    For demonstrations: a minute of backoff passes in a blink, yet every wait still
    happens in order and the program really runs, unlike a fake clock's jumps.
    """

    speed: float = 60.0
    start: float = attrs.field(factory=time.time)
    _origin: float = attrs.field(init=False, factory=time.monotonic)

    def now(self) -> float:
        return self.start + (time.monotonic() - self._origin) * self.speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0) / self.speed)
