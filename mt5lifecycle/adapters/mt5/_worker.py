"""One thread per terminal, whose calls each end by a deadline for the caller.

A call into the ``MetaTrader5`` package cannot be interrupted: ``initialize()`` into a
stuck terminal is known never to return. So every call runs on the terminal's own
thread and the caller waits for it only until its deadline; past it, the caller goes
on and the thread is left in the call (*late*) until the call returns by itself, which
ending the terminal process brings about. While a thread is late its terminal takes no
other call: a terminal that did not answer is dead until a restart.

Not a ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so one
call that never returns would keep the host process from ever exiting. These threads
are daemons, abandoned instead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Late", "Worker"]

_T = TypeVar("_T")


class Late(Exception):
    """The call did not end by its deadline, or an earlier one still has not ended."""

    def __init__(self, *, earlier: bool) -> None:
        super().__init__("an earlier call is still running" if earlier else "deadline passed")
        self.earlier = earlier


class _Job(Generic[_T]):
    __slots__ = ("call", "done", "error", "value")

    def __init__(self, call: Callable[[], _T]) -> None:
        self.call = call
        self.done = threading.Event()
        self.value: _T | None = None
        self.error: BaseException | None = None

    def execute(self) -> None:
        try:
            self.value = self.call()
        except BaseException as exc:  # handed to the caller, whatever it is
            self.error = exc
        finally:
            self.done.set()

    def outcome(self) -> _T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # set when there is no error


class Worker:
    """The thread of one terminal: one call at a time, in order."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job[object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._late: _Job[object] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def late(self) -> bool:
        """A call passed its deadline and has not returned yet."""
        with self._lock:
            return self._late is not None

    def run(self, call: Callable[[], _T], seconds: float) -> _T:
        """``call()`` on this thread; raises ``Late`` when it takes more than ``seconds``."""
        job: _Job[_T] = _Job(call)
        with self._lock:
            if self._late is not None:
                raise Late(earlier=True)
            if seconds <= 0:
                raise Late(earlier=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._jobs.put(job)  # type: ignore[arg-type]  # the queue holds jobs of any type
        if not job.done.wait(seconds):
            with self._lock:
                if not job.done.is_set():
                    self._late = job  # type: ignore[assignment]
                    raise Late(earlier=False)
        return job.outcome()

    def wait_settled(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a late call to return; whether none is late now."""
        with self._settled:
            return self._settled.wait_for(lambda: self._late is None, timeout=max(0.0, seconds))

    def close(self) -> None:
        """End the thread once it is done with the call it is in (if any)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job.execute()
            with self._settled:
                if self._late is job:
                    self._late = None
                    self._settled.notify_all()
