"""The broker port over the ``MetaTrader5`` package, or anything with its API.

``MT5Broker`` never imports ``MetaTrader5``: it is handed one module-like object per
instance. On Windows that is the ``MetaTrader5`` module itself, one per process (the
package talks to a single terminal per process); on Linux it is typically an
``mt5linux.MetaTrader5`` client, one per Wine terminal. Everything it uses is the
package's public API (``initialize``, ``login``, ``last_error``, ``terminal_info``,
``account_info``, ``positions_get``, ``orders_get``, ``symbol_info``,
``symbol_info_tick``, ``symbol_select``, ``order_send``, ``shutdown``), so a fake, a
proxy or an RPC client fits alike.

What the terminal says is turned into the library's words here, and only here:
``last_error()`` and the terminal's journal become a ``Reason`` (through a replaceable
``classify`` function, :mod:`mt5lifecycle.adapters.mt5.classify`), ``order_send``
results become ``TradeResult``s. The adapter never retries a trade: the core decides
what a requote or a partial fill leads to (SPEC section 8), so every retry is visible
in one place and bounded by one policy.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...core.credentials import Credentials
from ...core.ids import check_instance_id
from ...core.records import LoginResult, Order, Position, TradeResult
from ...core.states import Reason, TerminalStatus
from ...errors import LifecycleError
from .classify import NETWORK_CODES, Classifier, classify_login_failure

__all__ = [
    "MT5Broker",
    "TerminalNotConfigured",
    "TerminalShared",
    "TerminalUnavailable",
    "read_journal_line",
]

log = logging.getLogger("mt5lifecycle.adapters.mt5")

# The package's constants, copied rather than read from the module object: they are
# fixed by the terminal's protocol, and over mt5linux every attribute read of the
# remote module is a network round trip. tests/adapters/test_mt5_fake_api.py checks
# them against the real wheel.
TRADE_ACTION_DEAL = 1
TRADE_ACTION_REMOVE = 8
ORDER_TYPE_BUY = 0
ORDER_TYPE_SELL = 1
POSITION_TYPE_BUY = 0
ORDER_FILLING_FOK = 0
ORDER_FILLING_IOC = 1
ORDER_FILLING_RETURN = 2
ORDER_TIME_GTC = 0
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_DONE_PARTIAL = 10010
TRADE_RETCODE_POSITION_CLOSED = 10036
RES_E_INTERNAL_FAIL_CONNECT = -10004
# SYMBOL_FILLING_* are MQL5 flags that the Python package does not export, yet
# symbol_info().filling_mode is made of them.
SYMBOL_FILLING_FOK = 1
SYMBOL_FILLING_IOC = 2

_JOURNAL_NAME = re.compile(r"^\d{8}\.log$", re.IGNORECASE)
_JOURNAL_TAIL_BYTES = 4 * 1024 * 1024
_SCRUBBED = "***"

Terminals = Mapping[str, Any] | Callable[[str], Any]


class TerminalNotConfigured(LifecycleError, KeyError):
    """An instance id for which no terminal was given."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(
            f"no MetaTrader 5 terminal is configured for instance {instance_id!r}",
            instance_id=instance_id,
        )

    def __str__(self) -> str:
        # KeyError would quote the whole message again.
        return str(self.args[0])


class TerminalShared(LifecycleError, ValueError):
    """Two instance ids given the same terminal object.

    The ``MetaTrader5`` module drives one terminal per process: two ids on one module
    would log each other out, and close each other's trades at a closure.
    """

    def __init__(self, instance_id: str, other_id: str) -> None:
        super().__init__(
            f"instances {other_id!r} and {instance_id!r} were given the same MetaTrader 5 "
            "terminal object; the MetaTrader5 module drives one terminal per process, so "
            "give each instance its own process (or its own mt5linux connection)",
            instance_id=instance_id,
        )
        self.other_id = other_id


class TerminalUnavailable(LifecycleError):
    """The terminal did not start, or did not answer a question the core must have answered."""

    def __init__(self, instance_id: str, what: str, code: int | None, message: str) -> None:
        said = f"{code}, {message!r}" if code is not None else repr(message)
        super().__init__(
            f"the MetaTrader 5 terminal of instance {instance_id!r} failed to {what}: {said}",
            instance_id=instance_id,
        )
        self.code = code
        self.message = message


class MT5Broker:
    """The ``Broker`` port for MetaTrader 5 terminals.

    ``terminals`` maps each instance id to its ``MetaTrader5``-like object, or is a
    callable returning it for an id (called once per id and kept, until a
    ``restart`` asks for a fresh one). ``data_paths``
    gives a terminal's data folder for its journal when the terminal cannot say
    (it is down, or it runs under Wine and its own path means nothing here).
    ``terminal_paths`` is the ``path=`` given to ``initialize`` (the
    ``terminal64.exe`` to start); ``None`` lets the package find one.
    """

    def __init__(
        self,
        terminals: Terminals,
        *,
        data_paths: Mapping[str, str | Path] | None = None,
        terminal_paths: Mapping[str, str] | None = None,
        classify: Classifier = classify_login_failure,
        login_timeout_ms: int = 60_000,
        deviation: int = 20,
        magic: int = 0,
        comment: str = "mt5lifecycle closure",
    ) -> None:
        if isinstance(login_timeout_ms, bool) or not isinstance(login_timeout_ms, int):
            raise ValueError(f"login_timeout_ms must be an int, not {login_timeout_ms!r}")
        if login_timeout_ms <= 0:
            raise ValueError(f"login_timeout_ms must be positive, not {login_timeout_ms}")
        if isinstance(deviation, bool) or not isinstance(deviation, int) or deviation < 0:
            raise ValueError(f"deviation must be a non-negative int, not {deviation!r}")
        if not isinstance(comment, str) or len(comment) > 31:
            # The terminal truncates or rejects longer request comments.
            raise ValueError(f"comment must be a string of at most 31 characters, not {comment!r}")
        self._data_paths = {check_instance_id(k): Path(v) for k, v in (data_paths or {}).items()}
        self._terminal_paths = {check_instance_id(k): v for k, v in (terminal_paths or {}).items()}
        self._classify = classify
        self._timeout = login_timeout_ms
        self._deviation = deviation
        self._magic = magic
        self._comment = comment
        self._modules: dict[str, Any] = {}
        self._owner: dict[int, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._initialized: set[str] = set()
        self._stopped: set[str] = set()
        self._guard = threading.Lock()
        self._factory: Callable[[str], Any] | None
        if callable(terminals) and not isinstance(terminals, Mapping):
            self._factory = terminals
        else:
            self._factory = None
            for instance_id, module in terminals.items():
                self._bind(check_instance_id(instance_id), module)

    # -- the port -------------------------------------------------------------------

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        with self._terminal(instance_id) as mt5:
            initialize = instance_id not in self._initialized or _info(mt5) is None
            try:
                if initialize:
                    ok = bool(
                        mt5.initialize(
                            *self._path(instance_id),
                            login=credentials.login,
                            password=credentials.password,
                            server=credentials.server,
                            timeout=self._timeout,
                        )
                    )
                else:
                    ok = bool(
                        mt5.login(
                            credentials.login,
                            password=credentials.password,
                            server=credentials.server,
                            timeout=self._timeout,
                        )
                    )
            except Exception as exc:  # any transport fault is checked below
                return self._check_raised(instance_id, mt5, credentials, exc)
            self._stopped.discard(instance_id)
            if ok:
                self._initialized.add(instance_id)
                return LoginResult.success()
            code, message = _last_error(mt5)
            message = _scrub(message, credentials.password)
            if code in NETWORK_CODES or initialize:
                # Either the IPC link is gone or the terminal never came up: the next
                # attempt must start with initialize() again.
                self._initialized.discard(instance_id)
            journal = self._journal_line(instance_id, mt5, credentials.login)
            journal = None if journal is None else _scrub(journal, credentials.password)
            reason = self._classify(code, message, journal, logged_in_before)
            said = message if journal is None else f"{message}; journal: {journal}"
            return LoginResult.failure(reason, code, said)

    def status(self, instance_id: str) -> TerminalStatus:
        with self._terminal(instance_id) as mt5:
            if not self._attach(instance_id, mt5):
                return TerminalStatus.DOWN
            try:
                info = mt5.terminal_info()
            except Exception:  # a transport that raises means no answer
                return TerminalStatus.DOWN
            if info is None:
                return TerminalStatus.DOWN
            return TerminalStatus.CONNECTED if info.connected else TerminalStatus.DISCONNECTED

    def restart(self, instance_id: str) -> None:
        check_instance_id(instance_id)
        if self._factory is not None:
            # An RPC client (mt5linux) whose server went away stays dead: a restart
            # asks the factory for a new one.
            self._forget(instance_id)
        with self._terminal(instance_id) as mt5:
            self._initialized.discard(instance_id)
            self._stopped.discard(instance_id)
            _shutdown(mt5)
            try:
                ok = bool(mt5.initialize(*self._path(instance_id), timeout=self._timeout))
            except Exception as exc:
                raise TerminalUnavailable(instance_id, "start", None, _describe(exc)) from None
            if not ok:
                code, message = _last_error(mt5)
                raise TerminalUnavailable(instance_id, "start", code, message)
            self._initialized.add(instance_id)

    def stop(self, instance_id: str) -> None:
        with self._terminal(instance_id) as mt5:
            self._initialized.discard(instance_id)
            self._stopped.add(instance_id)
            _shutdown(mt5)

    def positions(self, instance_id: str) -> list[Position]:
        with self._terminal(instance_id) as mt5:
            self._attach(instance_id, mt5)
            found = self._ask(instance_id, mt5, "list its positions", lambda: mt5.positions_get())
            return [
                Position(ticket=int(p.ticket), symbol=str(p.symbol), volume=float(p.volume))
                for p in found
            ]

    def orders(self, instance_id: str) -> list[Order]:
        with self._terminal(instance_id) as mt5:
            self._attach(instance_id, mt5)
            found = self._ask(instance_id, mt5, "list its orders", lambda: mt5.orders_get())
            return [
                Order(ticket=int(o.ticket), symbol=str(o.symbol), volume=float(o.volume_current))
                for o in found
            ]

    def close_position(self, instance_id: str, position: Position, volume: float) -> TradeResult:
        with self._terminal(instance_id) as mt5:
            try:
                return self._close(mt5, position, volume)
            except Exception as exc:  # recorded as "no answer", never lost
                return TradeResult(retcode=None, remaining=position.volume, comment=_describe(exc))

    def cancel_order(self, instance_id: str, order: Order) -> TradeResult:
        with self._terminal(instance_id) as mt5:
            request = {
                "action": TRADE_ACTION_REMOVE,
                "order": order.ticket,
                "magic": self._magic,
                "comment": self._comment,
            }
            try:
                result = mt5.order_send(request)
            except Exception as exc:
                return TradeResult(retcode=None, comment=_describe(exc))
            if result is None:
                return TradeResult(retcode=None, comment=_error_text(mt5))
            return TradeResult(retcode=int(result.retcode), comment=str(result.comment))

    # -- closing a position ---------------------------------------------------------

    def _close(self, mt5: Any, position: Position, volume: float) -> TradeResult:
        found = mt5.positions_get(ticket=position.ticket)
        if found is None:
            return TradeResult(retcode=None, remaining=position.volume, comment=_error_text(mt5))
        if not found:
            # Closed meanwhile (stop loss, the broker's own close-out): nothing to send.
            return TradeResult(
                retcode=TRADE_RETCODE_POSITION_CLOSED,
                remaining=0.0,
                comment=f"position {position.ticket} is no longer open",
            )
        live = found[0]
        is_buy = int(live.type) == POSITION_TYPE_BUY
        tick = mt5.symbol_info_tick(live.symbol)
        info = mt5.symbol_info(live.symbol)
        if info is None and mt5.symbol_select(live.symbol, True):
            info = mt5.symbol_info(live.symbol)
        if tick is None or info is None:
            return TradeResult(retcode=None, remaining=float(live.volume), comment=_error_text(mt5))
        request = {
            "action": TRADE_ACTION_DEAL,
            "symbol": live.symbol,
            "volume": float(volume),
            "type": ORDER_TYPE_SELL if is_buy else ORDER_TYPE_BUY,
            "position": position.ticket,
            # A buy closes at the bid, a sell at the ask.
            "price": float(tick.bid if is_buy else tick.ask),
            "deviation": self._deviation,
            "magic": self._magic,
            "comment": self._comment,
            "type_time": ORDER_TIME_GTC,
            "type_filling": filling_for(int(info.filling_mode)),
        }
        result = mt5.order_send(request)
        if result is None:
            return TradeResult(retcode=None, remaining=float(live.volume), comment=_error_text(mt5))
        retcode = int(result.retcode)
        return TradeResult(
            retcode=retcode,
            remaining=_remaining(mt5, position.ticket, float(live.volume), retcode, result),
            comment=str(result.comment),
        )

    # -- plumbing -------------------------------------------------------------------

    def _path(self, instance_id: str) -> tuple[str, ...]:
        # initialize() takes the path as its only unnamed argument and refuses None.
        path = self._terminal_paths.get(instance_id)
        return () if path is None else (path,)

    def _bind(self, instance_id: str, module: Any) -> Any:
        owner = self._owner.get(id(module))
        if owner is not None and owner != instance_id:
            raise TerminalShared(instance_id, owner)
        self._owner[id(module)] = instance_id
        self._modules[instance_id] = module
        self._locks.setdefault(instance_id, threading.Lock())
        return module

    def _forget(self, instance_id: str) -> None:
        with self._guard:
            lock = self._locks.get(instance_id)
        if lock is None:
            return
        with lock, self._guard:
            module = self._modules.pop(instance_id, None)
            if module is not None:
                self._owner.pop(id(module), None)
        if module is not None:
            _shutdown(module)

    @contextmanager
    def _terminal(self, instance_id: str) -> Iterator[Any]:
        check_instance_id(instance_id)
        with self._guard:
            module = self._modules.get(instance_id)
        if module is None:
            if self._factory is None:
                raise TerminalNotConfigured(instance_id)
            # Outside the guard: connecting an RPC client may take seconds, and other
            # instances' calls must not wait for it.
            made = self._factory(instance_id)
            if made is None:
                raise TerminalNotConfigured(instance_id)
            with self._guard:
                module = self._modules.get(instance_id)
                if module is None:
                    module = self._bind(instance_id, made)
        with self._guard:
            lock = self._locks[instance_id]
        # last_error() is global to the terminal: a concurrent call between a failing
        # call and its last_error() would replace the error being classified.
        with lock:
            yield module

    def _check_raised(
        self, instance_id: str, mt5: Any, credentials: Credentials, exc: Exception
    ) -> LoginResult:
        # mt5linux raises "TimeoutError: result expired" for logins that in fact
        # succeeded: ask the terminal who is logged in before counting anything.
        try:
            account = mt5.account_info()
        except Exception:
            account = None
        if account is not None and int(account.login) == credentials.login:
            self._initialized.add(instance_id)
            log.info(
                "instance %s: the login call raised %s, but the terminal is logged in",
                instance_id,
                type(exc).__name__,
            )
            return LoginResult.success()
        self._initialized.discard(instance_id)
        message = _scrub(_describe(exc), credentials.password)
        return LoginResult.failure(Reason.NETWORK, None, f"the login call raised {message}")

    def _attach(self, instance_id: str, mt5: Any) -> bool:
        """Connect this process to a terminal that is already running.

        A worker that resumes an instance (after a restart, or a takeover) has never
        called ``initialize()``: until it does, the package answers every call with
        "No IPC connection" although the terminal runs and is logged in. Without
        credentials, ``initialize()`` attaches to the terminal's current session.
        """
        if instance_id in self._initialized:
            return True
        if instance_id in self._stopped:
            return False  # stopped on purpose: asking must not start it again
        try:
            ok = bool(mt5.initialize(*self._path(instance_id), timeout=self._timeout))
        except Exception:  # a transport that raises means no answer
            return False
        if ok:
            self._initialized.add(instance_id)
        return ok

    def _ask(self, instance_id: str, mt5: Any, what: str, call: Callable[[], Any]) -> Any:
        try:
            found = call()
        except Exception as exc:
            raise TerminalUnavailable(instance_id, what, None, _describe(exc)) from None
        if found is None:
            # None is an error, not "none open": closing trades on it would record an
            # account with open positions as one without.
            code, message = _last_error(mt5)
            raise TerminalUnavailable(instance_id, what, code, message)
        return found

    def _journal_line(self, instance_id: str, mt5: Any, login: int) -> str | None:
        candidates: list[Path] = []
        info = _info(mt5)
        own = getattr(info, "data_path", None) if info is not None else None
        if own:
            candidates.append(Path(str(own)))
        configured = self._data_paths.get(instance_id)
        if configured is not None:
            candidates.append(configured)
        for data_path in candidates:
            if data_path.is_dir():
                try:
                    return read_journal_line(data_path, login)
                except OSError as exc:
                    log.warning("instance %s: cannot read the journal: %s", instance_id, exc)
                    return None
        return None


def filling_for(filling_mode: int) -> int:
    """The ``ORDER_FILLING_*`` to send for a symbol's ``SYMBOL_FILLING_*`` flags.

    Fill-or-kill first (a close is all or nothing, and the core needs no retry), then
    immediate-or-cancel (a partial fill the core retries for the rest); a symbol that
    allows neither takes ``RETURN``, which exchange execution always accepts.
    """
    if filling_mode & SYMBOL_FILLING_FOK:
        return ORDER_FILLING_FOK
    if filling_mode & SYMBOL_FILLING_IOC:
        return ORDER_FILLING_IOC
    return ORDER_FILLING_RETURN


def read_journal_line(data_path: Path, login: int) -> str | None:
    """The newest authorization line for ``login`` in the newest journal file.

    The terminal writes ``logs/YYYYMMDD.log`` in UTF-16, one file a day, lines such as
    ``'5012345': authorization on MetaQuotes-Demo failed (Invalid account)`` or
    ``'5012345': authorized on MetaQuotes-Demo through Access Server #2``. A success
    line newer than a failure hides that failure, as it should: the failure is over.
    """
    logs = next(
        (data_path / name for name in ("logs", "Logs") if (data_path / name).is_dir()), None
    )
    if logs is None:
        return None
    names = sorted(p.name for p in logs.iterdir() if _JOURNAL_NAME.match(p.name))
    if not names:
        return None
    text = _read_utf16_tail(logs / names[-1])
    mark = f"'{login}'"
    for line in reversed(text.splitlines()):
        if mark in line and "authoriz" in line.lower():
            return line.strip()
    return None


def _read_utf16_tail(path: Path) -> str:
    # Journals reach tens of megabytes on a busy terminal; the newest lines are at the end.
    with path.open("rb") as f:
        head = f.read(2)
        encoding = "utf-16-be" if head == b"\xfe\xff" else "utf-16-le"
        start = 2 if head in (b"\xff\xfe", b"\xfe\xff") else 0
        size = f.seek(0, 2)
        offset = max(start, size - _JOURNAL_TAIL_BYTES)
        offset -= (offset - start) % 2
        f.seek(offset)
        return f.read().decode(encoding, errors="replace")


def _remaining(mt5: Any, ticket: int, before: float, retcode: int, result: Any) -> float:
    try:
        after = mt5.positions_get(ticket=ticket)
    except Exception:
        after = None
    if after is not None:
        return float(sum(float(p.volume) for p in after))
    # The terminal would not say: reckon from what the broker reported as filled.
    if retcode in (TRADE_RETCODE_DONE, TRADE_RETCODE_DONE_PARTIAL):
        return max(0.0, before - float(result.volume))
    return before


def _info(mt5: Any) -> Any:
    try:
        return mt5.terminal_info()
    except Exception:
        return None


def _last_error(mt5: Any) -> tuple[int | None, str]:
    try:
        code, message = mt5.last_error()
    except Exception as exc:
        return RES_E_INTERNAL_FAIL_CONNECT, f"last_error() failed: {_describe(exc)}"
    return int(code), str(message)


def _error_text(mt5: Any) -> str:
    code, message = _last_error(mt5)
    return f"{code}, {message}"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shutdown(mt5: Any) -> None:
    try:
        mt5.shutdown()
    except Exception as exc:  # stopping a dead terminal is not an error
        log.debug("shutdown() raised %s", _describe(exc))


def _scrub(text: str, password: str) -> str:
    # The terminal, or an RPC layer's error, may echo the call's arguments.
    return text.replace(password, _SCRUBBED) if password else text
