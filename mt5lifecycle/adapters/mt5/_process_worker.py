"""What runs inside a ``ProcessTerminals`` worker: one terminal's module, one call at a time.

The worker imports the module it was named (``MetaTrader5``, or a stand-in), tells its
parent what the module offers (a :class:`Catalogue`), then answers requests in order
until its connection closes. It never logs and never prints: its requests carry
passwords.

Two things here are less plain than they look:

* **Results go back shaped as the package shapes them.** The real package's results
  are C struct sequences whose types (``TerminalInfo``, ``AccountInfo``, ...) no module
  exports, so pickle cannot send them. Each one is sent as a named tuple with the same
  type name, field names and values (``_asdict()``, ``_fields`` and reading by index
  keep working), rebuilt on the other side by :func:`_rebuild`. Named tuples (the
  fake's) and anything else picklable go as they are.
* **A worker does not outlive its parent.** multiprocessing gives every child a
  sentinel that becomes ready when the parent ends, however it ends (a pipe on POSIX,
  the parent's process handle on Windows). A daemon thread waits on it and ends the
  worker, also in the middle of a call that never returns, as long as that call lets
  other threads run. On Windows a job object covers calls that do not
  (:mod:`._process_job`).
"""

from __future__ import annotations

import collections
import importlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Mapping
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

import attrs

__all__ = ["FAILED", "RAISED", "READY", "RESULT", "Catalogue", "portable", "serve"]

READY = "ready"
FAILED = "failed"
RESULT = "result"
RAISED = "raised"

_CONSTANT_TYPES = (bool, int, float, str)
_DUNDER_CONSTANTS = ("__version__", "__author__")


@attrs.frozen
class Catalogue:
    """What a worker's module offers: its functions, and its constants with their values."""

    functions: frozenset[str]
    constants: Mapping[str, object]

    @classmethod
    def of(cls, module: object) -> Catalogue:
        functions: set[str] = set()
        constants: dict[str, object] = {}
        for name in dir(module):
            value = getattr(module, name, None)
            if is_constant_name(name):
                if isinstance(value, _CONSTANT_TYPES):
                    constants[name] = value
            elif not name.startswith("_") and callable(value):
                functions.add(name)
        return cls(frozenset(functions), constants)


def is_constant_name(name: str) -> bool:
    """``TIMEFRAME_M1`` and ``__version__`` are constants; ``initialize`` and ``Buy`` are not."""
    return name.isupper() or name in _DUNDER_CONSTANTS


def serve(conn: Connection, module_name: str) -> None:
    """The worker's main function: import the module, then answer calls until EOF."""
    # Ctrl+C reaches every process of the console: the parent decides what its
    # workers do then, not the keyboard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent()
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # the parent reports it as a terminal that cannot start
        _send(conn, (FAILED, _describe(exc)))
        return
    if not _send(conn, (READY, Catalogue.of(module))):
        return
    while True:
        try:
            name, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed its end (stop) or is gone
        if not _send(conn, _answer(module, name, args, kwargs)):
            return


def _answer(module: object, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        result = getattr(module, name)(*args, **kwargs)
    except Exception as exc:  # raised again in the parent, as the module raised it
        return (RAISED, exc)
    return (RESULT, portable(result))


def _send(conn: Connection, answer: tuple[str, Any]) -> bool:
    """Send one answer; ``False`` when the parent is gone."""
    try:
        data = bytes(ForkingPickler.dumps(answer))  # not a view that outlives its BytesIO
    except Exception as exc:  # something the module gave that pickle cannot carry
        kind, value = answer
        what = f"an exception {type(value).__qualname__}" if kind == RAISED else "a result"
        said = _describe(value if kind == RAISED else exc)
        error = TypeError(f"the module gave {what} that cannot be sent between processes: {said}")
        data = bytes(ForkingPickler.dumps((RAISED, error)))
    try:
        conn.send_bytes(data)
    except OSError:
        return False
    return True


def portable(value: Any) -> Any:
    """``value`` with every struct sequence in it turned into an equivalent named tuple."""
    if isinstance(value, tuple):
        if hasattr(type(value), "n_sequence_fields"):
            return _record(value)
        items = [portable(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        if hasattr(value, "_fields"):
            return type(value)(*items)  # a named tuple holding a struct sequence
        return tuple(items)
    if type(value) is list:
        return [portable(v) for v in value]
    return value


def _record(value: tuple[Any, ...]) -> Any:
    # The real package gives its types an _asdict(); without one, the sequence's
    # own field names (__match_args__) are the same names.
    as_dict = getattr(value, "_asdict", None)
    if callable(as_dict):
        fields = dict(as_dict())
    else:
        names = getattr(type(value), "__match_args__", ())
        fields = dict(zip(names, value, strict=False))
    values = tuple(portable(v) for v in fields.values())
    return _rebuild(type(value).__name__, tuple(fields), values)


def _rebuild(name: str, fields: tuple[str, ...], values: tuple[Any, ...]) -> Any:
    """A record of type ``name``: how pickle carries one between processes."""
    return record_type(name, fields)(*values)


@cache
def record_type(name: str, fields: tuple[str, ...]) -> type[Any]:
    """The named tuple type standing for the struct sequence type ``name`` with ``fields``."""
    namedtuple: Any = collections.namedtuple  # a type made at run time, as the package's are
    base = namedtuple(name, fields, rename=True)

    def __reduce__(self: tuple[Any, ...]) -> tuple[Any, ...]:  # noqa: N807 - pickle's hook
        # By value, not by reference: the type exists only where it was made.
        return (_rebuild, (name, fields, tuple(self)))

    made: type[Any] = type(name, (base,), {"__slots__": (), "__reduce__": __reduce__})
    return made


def _end_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns once the parent has ended, however it ended
        os._exit(0)

    threading.Thread(target=watch, name="mt5lifecycle-parent-watch", daemon=True).start()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
