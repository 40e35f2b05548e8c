"""A batched pass's tasks on as few of the pool's threads as keep up with them.

Why: the tasks of a batched pass (``batch.py``) mostly compute between round trips,
deciding and encoding, and CPython runs one thread's Python at a time. Eight threads
contending for it spend more on switching than they gain; two already keep both
Redis and the deciding thread busy, since each task sends a slice's writes before it
works through the next slice. When the tasks wait on terminals instead (a real
broker's login takes a second), more threads do help. So the pass starts two
runners, and the thread that waits for the pass adds one more every ``TICK`` while
the runners spend most of their time in blocking calls, or one of them is stuck in
one, up to the pool's size.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence

__all__ = ["FIRST", "TICK", "Pace", "Submit", "run_all"]

FIRST = 2
"""Runners a pass starts with."""

TICK = 0.02
"""How often, in seconds, the waiting thread looks at the runners; also how long a
blocking call lasts before its runner counts as stuck."""

Submit = Callable[[Callable[[], None]], "concurrent.futures.Future[None]"]
"""Runs a runner on the fleet's worker pool; a fleet of one worker runs it at once."""


class Pace:
    """One runner's time in blocking calls (a terminal, the credential store)."""

    __slots__ = ("since", "waited")

    def __init__(self) -> None:
        self.since = 0.0
        """When the call under way began (``perf_counter``); 0 between calls."""
        self.waited = 0.0
        """Seconds spent in calls that have ended."""

    def begin(self) -> float:
        self.since = started = time.perf_counter()
        return started

    def end(self, started: float) -> None:
        self.since = 0.0
        self.waited += time.perf_counter() - started


def run_all(
    tasks: Sequence[Callable[[Pace], None]], submit: Submit, most: int
) -> list[BaseException]:
    """Run every task, each once, on ``FIRST`` to ``most`` runners; their exceptions.

    ``submit`` runs a runner on the pool (at once, in this thread, for a pool of
    one). A task that raises does not stop the others. Returns when every task has
    ended.
    """
    queue = collections.deque(tasks)
    paces: list[Pace] = []
    futures: list[concurrent.futures.Future[None]] = []
    errors: list[BaseException] = []

    def runner(pace: Pace) -> None:
        while True:
            try:
                task = queue.popleft()
            except IndexError:
                return
            try:
                task(pace)
            except Exception as exc:  # the others still run: each holds its instances
                errors.append(exc)

    def spawn() -> None:
        pace = Pace()
        paces.append(pace)
        futures.append(submit(lambda: runner(pace)))

    for _ in range(min(FIRST, most, len(tasks))):
        spawn()
    waited = 0.0
    looked = time.perf_counter()
    while True:
        room = bool(queue) and len(paces) < most
        _, pending = concurrent.futures.wait(futures, timeout=TICK if room else None)
        if not pending:
            break
        if not queue or len(paces) >= most:
            continue
        now = time.perf_counter()
        total = sum(pace.waited for pace in paces)
        stuck = any(pace.since and now - pace.since > TICK for pace in paces)
        if stuck or total - waited > (now - looked) * len(pending) / 2:
            spawn()
        waited, looked = total, now
    return errors + [error for future in futures if (error := future.exception()) is not None]
