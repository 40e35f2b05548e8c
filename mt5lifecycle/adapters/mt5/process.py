"""Many terminals from one process: each terminal's ``MetaTrader5`` in a worker of its own.

The ``MetaTrader5`` package drives one terminal per process, and a call into a stuck
terminal (an ``initialize()`` that never returns) can only be abandoned in-process,
never stopped. ``ProcessTerminals`` gives each terminal a worker process that imports
the package and runs that terminal's calls, one at a time; the caller gets a proxy with
the package's API. ``MT5Broker(ProcessTerminals(...))`` then drives every terminal of a
Windows host from one ``Fleet``.

What a call through a proxy answers:

* what the module answered, shaped as the package shapes it (named tuples with the
  package's type and field names), or the module's own exception, raised again;
* ``DeadlineExceeded`` when the worker has not answered within ``call_timeout``: the
  worker is ended (a killed process stops; an abandoned call does not), the next call
  starts a new one, and ``last_error()`` says ``(-10005, 'IPC timeout')`` until then;
* for a worker that died (killed, crashed in native code) what the package itself
  answers once its terminal is gone: ``None``, or ``False`` from the functions that
  answer a bool, and ``last_error()`` ``(-10004, 'No IPC connection')``. ``MT5Broker``
  reads that as it reads a crashed terminal: ``status`` is ``DOWN``, a login is
  ``NETWORK``, never a password try. The next call starts a new worker;
* for a worker that cannot import its module, the same with ``last_error()``
  ``(-10003, 'IPC initialize failed, ...')`` naming the import error: the terminal
  cannot be started, which a login reads as ``TERMINAL``.

Calls for one terminal are serialised (``last_error()`` belongs to the terminal); calls
for different terminals run in parallel, from any number of threads. A call is never
sent twice: a worker that died under a call takes the call's outcome with it, and the
caller hears "down", not a retry. Arguments are never logged: ``login()`` carries a
password.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from types import TracebackType
from typing import Any

import attrs

from ...core.ids import check_instance_id
from ._process_job import contain
from ._process_worker import FAILED, RAISED, READY, Catalogue, is_constant_name, serve
from .broker import DeadlineExceeded, TerminalNotConfigured, TerminalUnavailable

__all__ = ["ProcessTerminals", "TerminalProxy"]

log = logging.getLogger("mt5lifecycle.adapters.mt5.process")

END_GRACE = 1.0
"""Seconds a worker is given to exit once asked, and again once killed."""

_NO_IPC = (-10004, "No IPC connection")
_IPC_TIMEOUT = (-10005, "IPC timeout")
_INIT_FAILED = -10003
# The package's functions that answer a bool; every other one answers None on failure.
_BOOL_FUNCTIONS = frozenset(
    {"initialize", "login", "symbol_select", "market_book_add", "market_book_release"}
)


@attrs.frozen
class _Settings:
    module: str
    call_timeout: float
    start_timeout: float
    start_method: str
    # Any: each start method's context has its own Process type, BaseContext none.
    context: Any


@attrs.define
class _Shared:
    """What every proxy of one ``ProcessTerminals`` shares."""

    settings: _Settings
    closed: bool = False
    catalogue: Catalogue | None = None


@attrs.define(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    pid: int
    exit_code: int | None = None
    ended: bool = False
    # end() (by the thread holding the terminal's call lock) and kill() (by close(),
    # from any thread) must not act on a process object the other has closed.
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def end(self, *, ask_first: bool) -> int | None:
        """Stop the process (asked by closing its connection, else killed); its exit code.

        Idempotent: a worker ended at its deadline may be ended again on the way out.
        """
        with self.lock:
            if self.ended:
                return self.exit_code
            if ask_first:
                self.conn.close()
                self.process.join(END_GRACE)
            if self.process.exitcode is None:
                self.process.kill()
                self.process.join(END_GRACE)
            if not self.conn.closed:
                self.conn.close()
            self.exit_code = self.process.exitcode
            if self.exit_code is not None:
                self.process.close()
            self.ended = True
            return self.exit_code

    def ask(self) -> None:
        """Ask the process to exit (EOF on its connection), without waiting for it."""
        with self.lock:
            if not self.ended:
                self.conn.close()

    def kill(self) -> None:
        """Kill the process, leaving the rest to ``end()`` by whoever holds the call."""
        with self.lock:
            if not self.ended:
                self.process.kill()


class TerminalProxy:
    """One terminal's ``MetaTrader5`` API, each call answered by the terminal's worker.

    Get one from :class:`ProcessTerminals` (``terminals[instance_id]``). Every public
    function of the module is a method here; its constants (``TIMEFRAME_M1``,
    ``__version__``) are attributes, read once from the first worker. Nothing else is
    public, so no name of the module is ever hidden.
    """

    __slots__ = ("_callers", "_calls", "_error", "_id", "_path", "_shared", "_state", "_worker")

    def __init__(self, instance_id: str, path: str, shared: _Shared) -> None:
        self._id = instance_id
        self._path = path
        self._shared = shared
        self._calls = threading.Lock()  # one call at a time: last_error() is the terminal's
        self._state = threading.Lock()  # guards _worker, which close() reads from any thread
        self._worker: _Worker | None = None
        self._error: tuple[int, str] | None = None  # last_error() answered here, not by a worker
        self._callers: dict[str, Callable[..., Any]] = {}

    def __repr__(self) -> str:
        worker = self._worker
        pid = None if worker is None else worker.pid
        return f"<TerminalProxy {self._id!r} module={self._shared.settings.module!r} worker={pid}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") and not is_constant_name(name):
            raise AttributeError(name)
        caller = self._callers.get(name)
        if caller is not None:
            return caller
        catalogue = self._shared.catalogue
        if is_constant_name(name):
            if catalogue is None:
                catalogue = self._learn(name)
            try:
                return catalogue.constants[name]
            except KeyError:
                raise self._no_such(name) from None
        if catalogue is not None and name not in catalogue.functions:
            raise self._no_such(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        self._callers[name] = call
        return call

    # -- a call ------------------------------------------------------------------------

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._calls:
            if self._shared.closed:
                raise TerminalUnavailable(
                    self._id, f"answer {name}()", None, "its ProcessTerminals was closed"
                )
            if name == "last_error" and self._error is not None:
                return self._error
            if name == "initialize" and not args and "path" not in kwargs:
                # The package takes the path as its only unnamed argument.
                args = (self._path,)
            try:
                # bytes, not dumps()'s view of a BytesIO: a view kept alive by a
                # raised call's traceback breaks that BytesIO's collection.
                request = bytes(ForkingPickler.dumps((name, args, kwargs)))
            except Exception as exc:
                # Before anything was sent: the worker and the terminal are untouched.
                raise TypeError(
                    f"the arguments of {name}() cannot be sent to a worker process "
                    f"({type(exc).__name__}); give the package's own types"
                ) from None
            self._error = None  # from here on, the terminal answers for itself
            worker = self._worker
            if worker is None:
                if name == "shutdown":
                    return None  # no worker: nothing to shut down, nothing to start
                worker = self._start()
                if worker is None:
                    assert self._error is not None  # why it could not start
                    return self._down(name, self._error)
            try:
                answer = self._exchange(worker, name, request)
            except BaseException:
                # Interrupted (Ctrl+C) with the call under way: its late answer would be
                # read as the next call's. The worker goes with the call.
                self._retire(worker, ask_first=False)
                raise
            if answer is None:
                return self._lost(worker, name)
            kind, value = answer
            if name == "shutdown" or self._worker is not worker:
                # shutdown() leaves nothing for the worker to hold; a worker taken away
                # meanwhile (close()) is this call's to end.
                self._retire(worker, ask_first=True)
        if kind == RAISED:
            raise value
        return value

    def _exchange(self, worker: _Worker, name: str, request: Any) -> tuple[str, Any] | None:
        """The worker's answer to ``request``; ``None`` when the worker is gone."""
        try:
            worker.conn.send_bytes(request)
            answered = worker.conn.poll(self._shared.settings.call_timeout)
        except OSError:
            return None
        if not answered:
            self._past_deadline(worker, name)
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            return None
        return kind, value

    def _down(self, name: str, error: tuple[int, str] = _NO_IPC) -> Any:
        """What the package answers when its terminal is gone."""
        self._error = error
        if name == "last_error":
            return error
        return False if name in _BOOL_FUNCTIONS else None

    def _lost(self, worker: _Worker, name: str) -> Any:
        code = self._retire(worker, ask_first=False)
        # Ended by close() under this very call, the worker is no news.
        level = logging.INFO if self._shared.closed else logging.WARNING
        log.log(
            level,
            "instance %s: worker process %d is gone (exit code %s) during %s(); "
            "answering as a terminal that is down",
            self._id,
            worker.pid,
            code,
            name,
        )
        return self._down(name)

    def _past_deadline(self, worker: _Worker, name: str) -> None:
        self._retire(worker, ask_first=False)
        self._error = _IPC_TIMEOUT
        seconds = self._shared.settings.call_timeout
        log.warning(
            "instance %s: %s() did not answer within %g s; its worker process %d was ended",
            self._id,
            name,
            seconds,
            worker.pid,
        )
        raise DeadlineExceeded(
            f"{name}()",
            seconds,
            instance_id=self._id,
            detail="its worker process was ended; the next call starts a new one",
        )

    def _retire(self, worker: _Worker, *, ask_first: bool) -> int | None:
        with self._state:
            if self._worker is worker:
                self._worker = None
        return worker.end(ask_first=ask_first)

    # -- a worker ----------------------------------------------------------------------

    def _start(self) -> _Worker | None:
        """A new worker, ready; ``None`` when its module cannot be started (``_error`` says why)."""
        settings = self._shared.settings
        ours, theirs = settings.context.Pipe()
        process = settings.context.Process(
            target=serve,
            args=(theirs, settings.module),
            name=f"mt5lifecycle-terminal-{self._id}",
            daemon=True,  # never joined at exit: interpreter shutdown ends it
        )
        began = time.monotonic()
        try:
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the worker has its own copy; ours would hide its EOF
        assert process.pid is not None  # set by start()
        contain(process.pid)
        worker = _Worker(process, ours, process.pid)
        try:
            ready = self._ready(worker)
        except BaseException:
            worker.end(ask_first=False)  # interrupted: a worker nobody holds must not run on
            raise
        if ready is None:
            worker.end(ask_first=False)
            self._error = _IPC_TIMEOUT
            log.warning(
                "instance %s: worker process %d did not start within %g s; it was ended",
                self._id,
                worker.pid,
                settings.start_timeout,
            )
            raise DeadlineExceeded(
                "the start of its worker process",
                settings.start_timeout,
                instance_id=self._id,
                detail="the worker was ended",
            )
        if not ready:
            code = worker.end(ask_first=False)
            self._unstartable(f"the worker process exited with code {code} while starting")
            return None
        kind, payload = ready
        if kind == FAILED:
            worker.end(ask_first=True)
            self._unstartable(f"the worker could not import {settings.module!r}: {payload}")
            return None
        if kind != READY:  # pragma: no cover - a worker of another version
            worker.end(ask_first=False)
            self._unstartable(f"the worker answered {kind!r} instead of being ready")
            return None
        self._shared.catalogue = payload
        with self._state:
            # close() sets closed before it reads _worker under this lock: either it
            # sees this worker, or this sees closed.
            published = not self._shared.closed
            if published:
                self._worker = worker
        if not published:
            worker.end(ask_first=True)
            raise TerminalUnavailable(self._id, "start", None, "its ProcessTerminals was closed")
        log.info(
            "instance %s: worker process %d (%s) started in %.2f s",
            self._id,
            worker.pid,
            settings.start_method,
            time.monotonic() - began,
        )
        return worker

    def _ready(self, worker: _Worker) -> tuple[str, Any] | tuple[()] | None:
        """The worker's first word; ``()`` if it died first, ``None`` past the deadline."""
        try:
            if not worker.conn.poll(self._shared.settings.start_timeout):
                return None
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            return ()
        return kind, payload

    def _unstartable(self, why: str) -> None:
        self._error = (_INIT_FAILED, f"IPC initialize failed, {why}")
        log.error("instance %s: the terminal's worker cannot start: %s", self._id, why)

    def _learn(self, name: str) -> Catalogue:
        """The module's catalogue, from a worker started for it if none has been yet."""
        with self._calls:
            catalogue = self._shared.catalogue
            if catalogue is None and self._worker is None and not self._shared.closed:
                # An attribute read answers a value or AttributeError, nothing else.
                with contextlib.suppress(DeadlineExceeded, OSError):
                    self._start()
                catalogue = self._shared.catalogue
        if catalogue is None:
            raise AttributeError(
                f"{name}: the constants of {self._shared.settings.module!r} are read from a "
                f"worker process, and the one of instance {self._id!r} could not start"
            )
        return catalogue

    def _no_such(self, name: str) -> AttributeError:
        return AttributeError(f"module {self._shared.settings.module!r} has no attribute {name!r}")

    # -- for ProcessTerminals ----------------------------------------------------------

    @property
    def _pid(self) -> int | None:
        worker = self._worker
        return None if worker is None else worker.pid

    def _leave(self) -> _Worker | None:
        """Take the worker away (after ``closed`` is set); the caller ends an idle one."""
        idle = self._calls.acquire(blocking=False)
        try:
            with self._state:
                worker, self._worker = self._worker, None
        finally:
            if idle:
                # Released at once: a later call sees closed, never this worker.
                self._calls.release()
        if worker is not None and not idle:
            # A call is waiting on this worker: ending the process answers it at once
            # (as a terminal that is down), and that call ends the rest.
            worker.kill()
            return None
        return worker


class ProcessTerminals(Mapping[str, TerminalProxy]):
    """One worker process per terminal, each behind a proxy with the ``MetaTrader5`` API.

    ``terminal_paths`` maps each instance id to its terminal's ``terminal64.exe``; the
    worker gives that path to ``initialize()`` when the caller gives none, so each
    instance always reaches its own terminal. ``module`` is the module each worker
    imports; ``call_timeout`` bounds every call, ``start_timeout`` the start of a
    worker (a call may have to start one first: :attr:`longest_call` is the sum, with
    the time to end a worker). ``start_method`` is multiprocessing's: ``spawn`` (the
    default, and the only one on Windows) or ``forkserver``.

    It is a read-only mapping from instance id to :class:`TerminalProxy` and a callable
    returning the same proxy, so ``MT5Broker(ProcessTerminals(...))`` takes it either
    way. Workers start at their terminal's first call, and :meth:`close` (or leaving a
    ``with`` block) stops them all; a parent that dies takes its workers with it.
    """

    def __init__(
        self,
        terminal_paths: Mapping[str, str | os.PathLike[str]],
        *,
        module: str = "MetaTrader5",
        call_timeout: float = 30.0,
        start_timeout: float = 15.0,
        start_method: str = "spawn",
    ) -> None:
        paths = _check_paths(terminal_paths)
        _check_module(module)
        settings = _Settings(
            module=module,
            call_timeout=_check_seconds("call_timeout", call_timeout),
            start_timeout=_check_seconds("start_timeout", start_timeout),
            start_method=_check_start_method(start_method),
            context=multiprocessing.get_context(start_method),
        )
        self._shared = _Shared(settings)
        self._proxies = {
            instance_id: TerminalProxy(instance_id, path, self._shared)
            for instance_id, path in paths.items()
        }

    # -- the mapping, and the callable MT5Broker takes ---------------------------------

    def __getitem__(self, instance_id: str) -> TerminalProxy:
        check_instance_id(instance_id)
        try:
            return self._proxies[instance_id]
        except KeyError:
            raise TerminalNotConfigured(instance_id) from None

    def __call__(self, instance_id: str) -> TerminalProxy:
        return self[instance_id]

    def __contains__(self, instance_id: object) -> bool:
        return isinstance(instance_id, str) and instance_id in self._proxies

    def __iter__(self) -> Iterator[str]:
        return iter(self._proxies)

    def __len__(self) -> int:
        return len(self._proxies)

    def __repr__(self) -> str:
        s = self._shared.settings
        running = sum(1 for p in self._proxies.values() if p._pid is not None)
        state = "closed" if self._shared.closed else f"{running} running"
        return (
            f"<ProcessTerminals {len(self)} terminals ({state}) module={s.module!r} "
            f"call_timeout={s.call_timeout:g} start_method={s.start_method!r}>"
        )

    # -- what MT5Broker and operators read ---------------------------------------------

    @property
    def module(self) -> str:
        return self._shared.settings.module

    @property
    def call_timeout(self) -> float:
        """Seconds a call may take in its worker before the worker is ended."""
        return self._shared.settings.call_timeout

    @property
    def start_timeout(self) -> float:
        """Seconds a new worker may take to import its module and say it is ready."""
        return self._shared.settings.start_timeout

    @property
    def start_method(self) -> str:
        return self._shared.settings.start_method

    @property
    def longest_call(self) -> float:
        """The most seconds one call through a proxy takes, whatever the terminal does.

        Starting a worker first, the call itself, then ending a worker that did not
        answer (asked, then killed).
        """
        s = self._shared.settings
        return s.start_timeout + s.call_timeout + 2 * END_GRACE

    @property
    def closed(self) -> bool:
        return self._shared.closed

    def terminal_path(self, instance_id: str) -> str:
        """The ``terminal64.exe`` of ``instance_id``: what its worker gives ``initialize()``."""
        return self[instance_id]._path

    def worker_pid(self, instance_id: str) -> int | None:
        """The process id of the worker of ``instance_id``, ``None`` while none runs."""
        return self[instance_id]._pid

    # -- stopping ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop every worker. Idempotent; later calls raise ``TerminalUnavailable``.

        An idle worker is asked to exit, then killed if it has not within a second; one
        in the middle of a call is killed at once, and that call answers as a terminal
        that is down. The terminals themselves keep running.
        """
        self._shared.closed = True
        leaving = [w for w in (p._leave() for p in self._proxies.values()) if w is not None]
        for worker in leaving:
            worker.ask()  # all at once: their interpreters wind down side by side
        for worker in leaving:
            worker.end(ask_first=True)

    def __enter__(self) -> ProcessTerminals:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- checking what we are given --------------------------------------------------------


def _check_paths(terminal_paths: object) -> dict[str, str]:
    if not isinstance(terminal_paths, Mapping):
        raise TypeError(
            "terminal_paths must be a mapping of instance id to terminal64.exe path, "
            f"not {type(terminal_paths).__name__}"
        )
    paths: dict[str, str] = {}
    seen: dict[str, str] = {}
    for instance_id, given in terminal_paths.items():
        check_instance_id(instance_id)
        field = f"terminal_paths[{instance_id!r}]"
        if not isinstance(given, str | os.PathLike):
            raise TypeError(f"{field} must be a path (str or os.PathLike), not {given!r}")
        path = os.fspath(given)
        if not isinstance(path, str):
            raise TypeError(f"{field} must be a text path, not {path!r}")
        if not path.strip() or "\x00" in path:
            raise ValueError(f"{field} must be a terminal64.exe path, not {path!r}")
        key = os.path.normcase(os.path.normpath(path))
        other = seen.setdefault(key, instance_id)
        if other != instance_id:
            raise ValueError(
                f"{field} is also the terminal of instance {other!r}: a terminal logs in "
                "to one account at a time, so give each instance its own terminal "
                "(a portable install per account)"
            )
        paths[instance_id] = path
    return paths


def _check_module(module: object) -> None:
    if not isinstance(module, str):
        raise TypeError(f"module must be the name of a module to import, not {module!r}")
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(
            f"module must be a dotted module name such as 'MetaTrader5', not {module!r}"
        )
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        # Caught here rather than in every worker, where it would read as a terminal
        # that does not start.
        hint = " (pip install MetaTrader5)" if module == "MetaTrader5" else ""
        raise ModuleNotFoundError(
            f"module {module!r}, which every worker process imports, is not installed "
            f"for this Python{hint}",
            name=module,
        )


def _check_seconds(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{field} must be a positive, finite number of seconds, not {value!r}")
    return seconds


def _check_start_method(start_method: object) -> str:
    usable = [m for m in multiprocessing.get_all_start_methods() if m != "fork"]
    if start_method == "fork":
        # A forked worker inherits the parent's threads' locks and every other worker's
        # pipe ends: a worker could deadlock at birth, and would not see its parent die.
        raise ValueError(f"start_method 'fork' is not supported; use one of {usable}")
    if start_method not in usable:
        raise ValueError(f"start_method must be one of {usable}, not {start_method!r}")
    assert isinstance(start_method, str)
    return start_method
