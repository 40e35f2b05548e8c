"""A batched pass's tasks on as few of the pool's threads as keep up with them.

Why: the tasks of a batched pass (``batch.py``) mostly compute between round trips,
deciding and encoding, and CPython runs one thread's Python at a time. Eight threads
contending for it spend more on switching than they gain. One already keeps both
Redis and itself busy: each task sends a slice's writes (with the next slice's lock
requests ahead of them) before it works through the next slice, and reads their
answers after. When the tasks wait on terminals instead (a real broker's login takes
a second), more threads do help. So the pass starts one runner, and the thread that
waits for the pass adds one more every ``TICK`` while the runners spend most of
their time in blocking calls, or one of them is stuck in one, up to the pool's size.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence

__all__ = ["FIRST", "TICK", "Pace", "Submit", "Task", "run_all"]

FIRST = 1
"""Runners a pass starts with. (Two were measured 7 % slower with terminals that
answer at once: ``benchmarks/fleet.py``.)"""

TICK = 0.02
"""How often, in seconds, the waiting thread looks at the runners; also how long a
blocking call lasts before its runner counts as stuck."""

Task = Callable[["Pace"], None]
"""One unit of a pass, told its runner's ``Pace``."""

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
    tasks: Sequence[Task],
    submit: Submit,
    most: int,
    abandon: Callable[[Task], None],
) -> list[Exception]:
    """Run every task, each once, on ``FIRST`` to ``most`` runners; their exceptions.

    ``submit`` runs a runner on the pool (at once, in this thread, for a pool of
    one). A task that raises an ``Exception`` does not stop the others. Returns when
    every task has ended. Anything else a task raises (``KeyboardInterrupt``) stops
    the runners taking tasks: each task that has not started is handed to
    ``abandon``, and the first such exception is raised once every runner has
    stopped. Only when no runner could start at all does ``submit``'s error come out
    with every task unstarted and none abandoned.
    """
    if most < 1:
        raise ValueError(f"run_all needs at least one runner, not {most!r}")
    queue = collections.deque(tasks)
    paces: list[Pace] = []
    futures: list[concurrent.futures.Future[None]] = []
    errors: list[Exception] = []
    fatal: list[BaseException] = []

    def runner(pace: Pace) -> None:
        while not fatal:
            try:
                task = queue.popleft()
            except IndexError:
                return
            try:
                task(pace)
            except Exception as exc:  # the others still run: each holds its instances
                errors.append(exc)
            except BaseException as exc:
                fatal.append(exc)
                raise

    def spawn() -> bool:
        pace = Pace()
        try:
            future = submit(lambda: runner(pace))
        except Exception:
            if futures:
                return False  # the runners there are carry on (a pool shutting down)
            raise
        paces.append(pace)
        futures.append(future)
        return True

    for _ in range(min(FIRST, most, len(tasks))):
        if not spawn():
            break
    waited = 0.0
    looked = time.perf_counter()
    grow = True
    while True:
        room = grow and bool(queue) and len(paces) < most and not fatal
        _, pending = concurrent.futures.wait(futures, timeout=TICK if room else None)
        if not pending:
            break
        if not room:
            continue
        now = time.perf_counter()
        total = sum(pace.waited for pace in paces)
        stuck = any(pace.since and now - pace.since > TICK for pace in paces)
        if stuck or total - waited > (now - looked) * len(pending) / 2:
            grow = spawn()
        waited, looked = total, now
    while queue:
        abandon(queue.popleft())
    for future in futures:
        error = future.exception()
        if error is not None and not isinstance(error, Exception) and error not in fatal:
            fatal.append(error)  # raised by the runner itself, outside a task
    if fatal:
        raise fatal[0]
    return errors
