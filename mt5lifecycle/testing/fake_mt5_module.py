"""The fake ``MetaTrader5`` as a module, for the worker processes of ``ProcessTerminals``.

A worker imports its module by name, so a test gives this one instead of the package::

    terminals = ProcessTerminals(
        {"acct-1": r"C:\\MT5\\acct-1\\terminal64.exe"},
        module="mt5lifecycle.testing.fake_mt5_module",
    )
    mt5 = terminals["acct-1"]
    mt5.add_account(5012345, "secret", "Broker-Demo")
    mt5.initialize(login=5012345, password="secret", server="Broker-Demo")

Its top-level names are those of one ``FakeMetaTrader5`` made at import: every function
and constant of the package, and the fake's scripting (``add_account``,
``fail_logins``, ``crash``, ...). Through a proxy the scripting runs in the worker, on
that worker's terminal. The fake's attributes ``calls``, ``requests`` and
``logged_in`` are functions here: a module's names cannot follow an object's changing
attributes.

A worker's fake dies with the worker, as a terminal's Python session does. The
broker's side outlives terminals: the accounts that :func:`write_setup` writes to a
file, named by the environment variable ``MT5LIFECYCLE_FAKE_MT5``, are added to the
fake of every worker that starts while it is set (workers inherit the environment).

Scripting that only a process can show:

* :func:`hang_on`: a function that takes longer, or never returns;
* :func:`exit_on`: a function that ends the whole process, as a crash in native code;
* :func:`answer_as`: ``account_info()`` names another login (cross-wired terminals);
* :func:`process_id` and :func:`initialize_paths`: which process answers, and the
  ``path`` each ``initialize()`` was given.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .fake_mt5 import FakeMetaTrader5

__all__ = [
    "SETUP_VARIABLE",
    "answer_as",
    "exit_on",
    "hang_on",
    "initialize_paths",
    "process_id",
    "terminal",
    "write_setup",
]

SETUP_VARIABLE = "MT5LIFECYCLE_FAKE_MT5"
"""The environment variable naming the setup file every worker's fake reads at import."""

_ATTRIBUTES = ("calls", "requests", "logged_in")

_hangs: dict[str, float | None] = {}
_exits: dict[str, int] = {}
_identity: tuple[int, str | None] | None = None
_paths: list[str | None] = []
_entered: dict[str, str] = {}

terminal = FakeMetaTrader5()
"""This process's fake terminal: for scripting it directly when the module runs in-process."""


def write_setup(path: str | os.PathLike[str], *, accounts: Iterable[tuple[int, str, str]]) -> Path:
    """Write the broker's accounts, ``(login, password, server)`` each, for every worker.

    Point ``MT5LIFECYCLE_FAKE_MT5`` at the returned path before the workers start.
    """
    listed = []
    for login, password, server in accounts:
        if isinstance(login, bool) or not isinstance(login, int):
            raise TypeError(f"an account's login must be an int, not {login!r}")
        listed.append({"login": login, "password": password, "server": server})
    target = Path(path)
    target.write_text(json.dumps({"accounts": listed}), encoding="utf-8")
    return target


def hang_on(function: str, *, seconds: float | None = None, entered: str | None = None) -> None:
    """From now on, ``function`` takes ``seconds`` longer (``None``: it never returns).

    ``entered`` names a file created each time a call starts waiting: a test's sign
    that the worker is stuck.
    """
    _check_function(function)
    _hangs[function] = seconds
    if entered is not None:
        _entered[function] = entered


def exit_on(function: str, *, code: int = 3) -> None:
    """From now on, calling ``function`` ends this process at once with ``code``."""
    _check_function(function)
    _exits[function] = code


def answer_as(login: int, server: str | None = None) -> None:
    """``account_info()`` names ``login`` (and ``server``) whoever is logged in."""
    global _identity
    _identity = (login, server)


def process_id() -> int:
    """The id of the process this module runs in."""
    return os.getpid()


def initialize_paths() -> list[str | None]:
    """The ``path`` given to each ``initialize()`` call, in order (``None``: none given)."""
    return list(_paths)


def _check_function(function: str) -> None:
    if not callable(getattr(terminal, function, None)) or function.startswith("_"):
        raise ValueError(f"the fake MetaTrader5 has no function {function!r}")


def _api(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if name in _exits:
            os._exit(_exits[name])
        if name in _hangs:
            mark = _entered.get(name)
            if mark is not None:
                Path(mark).touch()
            threading.Event().wait(_hangs[name])
        if name == "initialize":
            _paths.append(args[0] if args else kwargs.get("path"))
        result = method(*args, **kwargs)
        if name == "account_info" and _identity is not None and result is not None:
            login, server = _identity
            result = result._replace(login=login, server=server or result.server)
        return result

    return call


def _attribute(name: str) -> Callable[[], Any]:
    def read() -> Any:
        value = getattr(terminal, name)
        return list(value) if isinstance(value, list) else value

    read.__name__ = read.__qualname__ = name
    return read


def _bind() -> None:
    names = globals()
    for name in dir(FakeMetaTrader5):
        if name in _ATTRIBUTES:
            names[name] = _attribute(name)
        elif name.isupper() or name in ("__version__", "__author__"):
            names[name] = getattr(FakeMetaTrader5, name)
        elif not name.startswith("_") and name not in names:
            names[name] = _api(name, getattr(terminal, name))
    for name in _ATTRIBUTES:  # instance attributes, not on the class
        names[name] = _attribute(name)


def _load_setup() -> None:
    given = os.environ.get(SETUP_VARIABLE)
    if not given:
        return
    setup = json.loads(Path(given).read_text(encoding="utf-8"))
    for account in setup.get("accounts", []):
        terminal.add_account(int(account["login"]), account["password"], account["server"])


_bind()
_load_setup()
