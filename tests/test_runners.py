"""A batched pass's tasks on as few runners as keep up with them (runners.py).

The pool cases run on a real eight-thread pool; the one-worker case runs each runner
inline, as a fleet of one worker does. Nothing sleeps: a task that must last a while
waits on a barrier or an event (with a timeout, so a bug fails instead of hanging),
or computes until a deadline.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from mt5lifecycle.runtime import _runners as runners
from mt5lifecycle.runtime._runners import FIRST, TICK, Pace, Submit, Task, run_all


def never(task: Task) -> None:
    raise AssertionError("no task may be abandoned here")


def inline(fn: Callable[[], None]) -> Future[None]:
    """A pool of one: run the runner here and now, as ``Fleet._submit`` does."""
    done: Future[None] = Future()
    try:
        fn()
    except BaseException as exc:
        done.set_exception(exc)
    else:
        done.set_result(None)
    return done


class Counting:
    """A ``submit`` that counts the runners it was asked for."""

    def __init__(self, submit: Submit) -> None:
        self.submit = submit
        self.runners = 0
        self.lock = threading.Lock()
        self.third = threading.Event()
        """Set once a runner beyond the first ``FIRST`` is asked for."""

    def __call__(self, fn: Callable[[], None]) -> Future[None]:
        with self.lock:
            self.runners += 1
            if self.runners > FIRST:
                self.third.set()
        return self.submit(fn)


@pytest.fixture
def pool() -> Iterator[Submit]:
    executor = ThreadPoolExecutor(max_workers=8)
    try:
        yield executor.submit
    finally:
        executor.shutdown(wait=True)


def appending(into: list[int], n: int) -> list[Task]:
    """``n`` tasks, each appending its index to ``into``."""

    def task(i: int) -> Task:
        return lambda pace: into.append(i)

    return [task(i) for i in range(n)]


def threads(into: list[int], n: int) -> list[Task]:
    """``n`` tasks, each appending its thread's ident to ``into``."""
    return [lambda pace: into.append(threading.get_ident()) for _ in range(n)]


def barrier_tasks(n: int, parties: int, idents: list[int]) -> list[Task]:
    """``n`` tasks that each wait, in a blocking call, for ``parties`` tasks at once."""
    barrier = threading.Barrier(parties)

    def task(pace: Pace) -> None:
        idents.append(threading.get_ident())
        started = pace.begin()
        try:
            barrier.wait(timeout=5)
        finally:
            pace.end(started)

    return [task] * n


# --- Pace ---------------------------------------------------------------------------------


def test_pace_starts_idle() -> None:
    pace = Pace()
    assert pace.since == 0.0
    assert pace.waited == 0.0


def test_pace_begin_end_accumulates_waited_and_resets_since(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(runners, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    pace = Pace()

    started = pace.begin()
    assert started == 100.0
    assert pace.since == 100.0
    now[0] = 101.5
    pace.end(started)
    assert pace.since == 0.0
    assert pace.waited == 1.5

    now[0] = 110.0
    started = pace.begin()
    assert pace.since == 110.0
    assert pace.waited == 1.5  # a call under way is not counted until it ends
    now[0] = 110.25
    pace.end(started)
    assert pace.since == 0.0
    assert pace.waited == 1.75


def test_pace_on_the_real_clock() -> None:
    pace = Pace()
    started = pace.begin()
    assert pace.since == started > 0
    pace.end(started)
    assert pace.since == 0.0
    assert pace.waited >= 0.0
    pace.end(pace.begin() - 1.0)  # a call that began a second earlier
    assert pace.since == 0.0
    assert pace.waited >= 1.0


# --- every task, once ---------------------------------------------------------------------


def test_no_tasks_starts_no_runner(pool: Submit) -> None:
    submit = Counting(pool)
    assert run_all([], submit, 8, never) == []
    assert submit.runners == 0


def test_every_task_runs_once_inline() -> None:
    ran: list[int] = []
    assert run_all(appending(ran, 50), inline, 1, never) == []
    assert ran == list(range(50))  # one runner: in order


def test_every_task_runs_once_on_the_pool(pool: Submit) -> None:
    ran: list[int] = []
    assert run_all(appending(ran, 50), pool, 8, never) == []
    assert sorted(ran) == list(range(50))


def test_every_task_runs_once_when_runners_are_added(pool: Submit) -> None:
    ran: list[int] = []
    idents: list[int] = []
    tasks = barrier_tasks(8, 8, idents) + appending(ran, 50)
    assert run_all(tasks, pool, 8, never) == []
    assert sorted(ran) == list(range(50))
    assert len(idents) == 8


def test_one_worker_runs_everything_in_the_calling_thread() -> None:
    idents: list[int] = []
    submit = Counting(inline)
    assert run_all(threads(idents, 20), submit, 1, never) == []
    assert idents == [threading.get_ident()] * 20
    assert submit.runners == 1


# --- as few runners as keep up ------------------------------------------------------------


def test_fast_tasks_run_on_at_most_first_threads(pool: Submit) -> None:
    idents: list[int] = []
    submit = Counting(pool)
    assert run_all(threads(idents, 50), submit, 8, never) == []
    assert len(idents) == 50
    assert len(set(idents)) <= FIRST
    assert submit.runners == FIRST


def test_time_outside_blocking_calls_adds_no_runner(pool: Submit) -> None:
    """Runners busy for several ticks, but computing, not waiting: no runner is added."""
    deadline = time.perf_counter() + 4 * TICK
    idents: list[int] = []

    def compute(pace: Pace) -> None:
        idents.append(threading.get_ident())
        while time.perf_counter() < deadline:
            pass

    submit = Counting(pool)
    assert run_all([compute] * 20, submit, 8, never) == []
    assert len(idents) == 20
    assert submit.runners == FIRST
    assert len(set(idents)) <= FIRST


def test_fewer_tasks_than_first_start_fewer_runners(pool: Submit) -> None:
    idents: list[int] = []
    submit = Counting(pool)
    assert run_all(threads(idents, 1), submit, 8, never) == []
    assert len(idents) == 1
    assert submit.runners == 1


def test_most_below_first_caps_the_first_runners(pool: Submit) -> None:
    idents: list[int] = []
    submit = Counting(pool)
    assert run_all(threads(idents, 10), submit, 1, never) == []
    assert len(idents) == 10
    assert len(set(idents)) == 1
    assert submit.runners == 1


# --- more runners while they wait -------------------------------------------------------------


def test_stuck_calls_add_runners_up_to_most(pool: Submit) -> None:
    """Eight tasks that only finish together: without added runners, the barrier breaks."""
    idents: list[int] = []
    submit = Counting(pool)
    assert run_all(barrier_tasks(8, 8, idents), submit, 8, never) == []
    assert len(idents) == 8
    assert len(set(idents)) == 8
    assert submit.runners == 8


def test_stuck_calls_never_add_runners_beyond_most(pool: Submit) -> None:
    idents: list[int] = []
    submit = Counting(pool)
    assert run_all(barrier_tasks(8, 4, idents), submit, 4, never) == []
    assert len(idents) == 8
    assert len(set(idents)) == 4
    assert submit.runners == 4


def test_most_time_in_blocking_calls_adds_a_runner(pool: Submit) -> None:
    """Runners that report more than half their time waiting get company, though none is stuck.

    Each task reports a blocking call that lasted a second (and has ended, so no runner
    is stuck), then waits, outside any blocking call, for a third runner to be asked
    for: only the waited share can bring it.
    """
    submit = Counting(pool)
    helped: list[bool] = []

    def task(pace: Pace) -> None:
        pace.end(pace.begin() - 1.0)
        helped.append(submit.third.wait(timeout=2))

    assert run_all([task] * 8, submit, 8, never) == []
    assert helped == [True] * 8
    assert FIRST < submit.runners <= 8


# --- failures -----------------------------------------------------------------------------


def test_a_failing_task_does_not_stop_the_others_inline() -> None:
    ran: list[int] = []
    boom = RuntimeError("boom")
    tasks = appending(ran, 20)

    def fail(pace: Pace) -> None:
        raise boom

    tasks.insert(5, fail)
    assert run_all(tasks, inline, 1, never) == [boom]
    assert ran == list(range(20))


def test_a_failing_task_does_not_stop_the_others_on_the_pool(pool: Submit) -> None:
    ran: list[int] = []
    boom = RuntimeError("boom")
    tasks = appending(ran, 50)

    def fail(pace: Pace) -> None:
        raise boom

    tasks.insert(0, fail)
    tasks.insert(25, fail)
    errors = run_all(tasks, pool, 8, never)
    assert errors == [boom, boom]  # exceptions compare by identity
    assert sorted(ran) == list(range(50))


def test_every_failure_is_returned(pool: Submit) -> None:
    errors = [ValueError(str(i)) for i in range(10)]

    def failing(exc: Exception) -> Task:
        def task(pace: Pace) -> None:
            raise exc

        return task

    returned = run_all([failing(exc) for exc in errors], pool, 8, never)
    assert len(returned) == len(errors)
    assert {id(exc) for exc in returned} == {id(exc) for exc in errors}


# --- interruptions and a pool that goes away ----------------------------------------------


def test_an_interrupt_stops_the_runners_and_hands_back_the_tasks_not_started() -> None:
    ran: list[int] = []
    abandoned: list[Task] = []
    tasks = appending(ran, 5)

    def interrupted(pace: Pace) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_all([tasks[0], interrupted, *tasks[1:]], inline, 1, abandoned.append)

    assert ran == [0]
    assert abandoned == tasks[1:]


def test_an_interrupt_on_the_pool_hands_back_every_task_not_started(pool: Submit) -> None:
    ran: list[int] = []
    abandoned: list[Task] = []
    tasks = appending(ran, 50)

    def interrupted(pace: Pace) -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        run_all([interrupted, *tasks], pool, 8, abandoned.append)

    assert sorted([*ran, *(tasks.index(t) for t in abandoned)]) == list(range(50))


def test_a_pool_that_refuses_more_runners_leaves_the_pass_to_those_it_has(
    pool: Submit,
) -> None:
    asked = 0

    def submit(fn: Callable[[], None]) -> Future[None]:
        nonlocal asked
        asked += 1
        if asked > 1:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        return pool(fn)

    ran: list[int] = []
    assert run_all(appending(ran, 6), submit, 8, never) == []
    assert sorted(ran) == list(range(6))


def test_a_pool_that_runs_nothing_raises_with_nothing_started() -> None:
    def submit(fn: Callable[[], None]) -> Future[None]:
        raise RuntimeError("the pool is shut down")

    ran: list[int] = []
    with pytest.raises(RuntimeError, match="shut down"):
        run_all(appending(ran, 3), submit, 8, never)
    assert ran == []


def test_at_least_one_runner() -> None:
    with pytest.raises(ValueError, match="at least one runner"):
        run_all([], inline, 0, never)
