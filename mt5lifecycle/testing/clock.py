"""``FakeClock``: time that moves only when a test says so."""

from __future__ import annotations

import asyncio
import math

__all__ = ["FakeClock"]

JAN_1_2026 = 1767225600.0


class FakeClock:
    """A clock for tests: ``advance`` jumps, ``sleep`` jumps, nothing waits.

    ``run()`` and ``arun()`` of a ``Fleet`` on a fake clock therefore play a
    simulated week in milliseconds, every due time in order.
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = JAN_1_2026) -> None:
        self._now = _finite(start, "start")

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward; returns the new now."""
        seconds = _finite(seconds, "seconds")
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, not by {seconds} s")
        self._now += seconds
        return self._now

    def advance_to(self, when: float) -> float:
        """Jump to ``when`` if it is later than now; returns the new now."""
        when = _finite(when, "when")
        if when > self._now:
            self._now = when
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
        # Let other tasks run, as a real sleep would.
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now})"


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"FakeClock {name} must be a finite number of seconds, not {value!r}")
    return float(value)
