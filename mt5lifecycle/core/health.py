"""Health: is an instance fit to trade, and how much of the time has it been (SPEC 15).

Pure: the runtime tells an ``Uptime`` when the instance's connection changed and asks
it for fractions; nothing here reads a clock.

Why a sliding-window counter: exact uptime over the last day would need every state
change of the day; a fleet of 100,000 cannot keep that. Per window the counter keeps
the connected seconds of the current and the previous window-long bucket, and counts
the previous one in proportion to how much of it still lies inside the window (the
estimate Cloudflare's and Redis's rate limiters use). Constant memory per instance,
exact while the state does not change, and off by at most one bucket's share at the
edges otherwise.
"""

from __future__ import annotations

import math
from array import array

import attrs

from .states import Reason

__all__ = ["WINDOWS", "FleetHealth", "Health", "Uptime"]

WINDOWS = (300.0, 3600.0, 86400.0)
"""Five minutes, an hour, a day."""

_FIRST, _LAST, _UP = 0, 1, 2
_BASE = 3


@attrs.frozen(kw_only=True)
class Health:
    """One instance's health."""

    instance_id: str
    healthy: bool
    """Connected, its identity verified (or not checkable), and checked recently."""
    connected: bool
    identity_verified: bool | None
    """The last check found the expected account logged in; ``None``: the broker cannot say."""
    last_check_age: float | None
    """Seconds since the terminal was last asked; ``None`` before the first check."""
    reason: Reason | None
    """Why it is unhealthy (the stored failure reason), when it is."""
    uptime_5m: float
    uptime_1h: float
    uptime_1d: float
    """Fractions of the last 5 minutes, hour and day spent connected (since it started,
    for an instance younger than the window)."""


@attrs.frozen(kw_only=True)
class FleetHealth:
    """The fleet's health: counts, the unhealthy instances, and mean uptime."""

    instances: int
    connected: int
    healthy: int
    unhealthy: tuple[Health, ...]
    uptime_5m: float
    uptime_1h: float
    uptime_1d: float


class Uptime:
    """Connected time over ``WINDOWS``, in constant memory."""

    __slots__ = ("_data",)

    def __init__(self, now: float, connected: bool) -> None:
        # [first seen, last change, connected, then per window: bucket start, the
        # current bucket's connected seconds, the previous bucket's]
        data = array("d", [now, now, float(connected)])
        for window in WINDOWS:
            data.extend((math.floor(now / window) * window, 0.0, 0.0))
        self._data = data

    def observe(self, now: float, connected: bool) -> None:
        """The connection is ``connected`` from ``now`` on."""
        data = self._data
        if now > data[_LAST]:
            if data[_UP]:
                self._add(data[_LAST], now)
            else:
                self._roll(now)
            data[_LAST] = now
        data[_UP] = float(connected)

    def fractions(self, now: float) -> tuple[float, float, float]:
        """The fraction of each window spent connected, as of ``now``."""
        # Fold the time since the last change in, on a copy: asking changes nothing.
        folded = Uptime.__new__(Uptime)
        folded._data = array("d", self._data)
        folded.observe(now, bool(self._data[_UP]))
        data = folded._data
        seen_for = now - data[_FIRST]
        out = []
        for i, window in enumerate(WINDOWS):
            base = _BASE + 3 * i
            seen = min(window, seen_for)
            if seen <= 0:
                out.append(1.0 if data[_UP] else 0.0)
                continue
            into = now - data[base]
            up = data[base + 2] * max(0.0, 1.0 - into / window) + data[base + 1]
            out.append(max(0.0, min(1.0, up / seen)))
        return out[0], out[1], out[2]

    def _add(self, begin: float, end: float) -> None:
        data = self._data
        for i, window in enumerate(WINDOWS):
            base = _BASE + 3 * i
            t = begin
            while t < end:
                start = data[base]
                bucket_end = start + window
                if t >= bucket_end:
                    self._advance(base, window, t)
                    continue
                stop = min(end, bucket_end)
                data[base + 1] += stop - t
                t = stop
            self._advance(base, window, end)

    def _roll(self, now: float) -> None:
        for i, window in enumerate(WINDOWS):
            self._advance(_BASE + 3 * i, window, now)

    def _advance(self, base: int, window: float, t: float) -> None:
        data = self._data
        bucket = math.floor(t / window) * window
        if bucket <= data[base]:
            return
        data[base + 2] = data[base + 1] if bucket - data[base] <= window else 0.0
        data[base + 1] = 0.0
        data[base] = bucket
