"""The broker port over the ``MetaTrader5`` package, or anything with its API.

``MT5Broker`` never imports ``MetaTrader5``: it is handed one module-like object per
instance. On Windows that is the ``MetaTrader5`` module itself, one per process (the
package talks to a single terminal per process), or a ``ProcessTerminals`` proxy; on
Linux it is typically an ``mt5linux.MetaTrader5`` client, one per Wine terminal.
Everything it uses is the package's public API (``initialize``, ``login``,
``last_error``, ``terminal_info``, ``account_info``, ``positions_get``,
``orders_get``, ``history_deals_get``, ``history_orders_get``, ``symbol_info``,
``symbol_info_tick``, ``symbol_select``, ``order_send``, ``shutdown``), so a fake, a
proxy or an RPC client fits alike.

Three rules hold whatever the bridge underneath does (SPEC section 12):

- **One submission per attempt.** The credentials go to exactly one call, ``login()``,
  once per attempt. ``initialize()`` is only ever called without them: it attaches to
  (or starts) the terminal, and bridges retry it by themselves (mt5linux 1.1 sends
  ``initialize(..., server=)`` up to four times).
- **Deadlines.** Every broker method ends by its deadline (``call_timeout``; a login
  or a restart by ``login_timeout_ms`` plus ``call_timeout``), whatever the terminal
  does: each terminal's calls run on a thread of its own (``_worker``), which a caller
  leaves behind at the deadline. A terminal that did not answer in time is dead until
  a restart, which ends its process (``terminal_paths``) so that the stuck call returns.
- **Identity.** The account a terminal logged in to is the only one traded on: a close,
  a cancel or a listing on a terminal that now says another account is refused.

What the terminal says is turned into the library's words here, and only here:
``last_error()`` and the terminal's journal become a ``Reason`` (through a replaceable
``classify`` function, :mod:`mt5lifecycle.adapters.mt5.classify`), ``order_send``
results and the history become ``TradeResult``s. The adapter never retries a trade:
the core decides what a requote or a partial fill leads to (SPEC section 8), so every
retry is visible in one place and bounded by one policy.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ...core.credentials import Credentials
from ...core.ids import check_instance_id
from ...core.records import Account, LoginResult, Order, Position, TradeResult
from ...core.states import Reason, TerminalStatus
from ...errors import LifecycleError
from ._worker import Late, Worker
from .classify import AUTH_FAILED_CODE, NETWORK_CODES, Classifier, classify_login_failure
from .history import order_outcome, position_outcome
from .journal import JournalMark, journal_mark, read_failure_line, read_journal_line
from .terminal_process import end_terminal_process, same_executable

__all__ = [
    "DeadlineExceeded",
    "MT5Broker",
    "TerminalNotConfigured",
    "TerminalShared",
    "TerminalUnavailable",
    "filling_for",
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

_SCRUBBED = "***"
# The history is asked from 2000-01-01 to two days ahead: deal times are the trade
# server's clock, often hours ahead of UTC. Seconds, not datetimes: mt5linux sends
# its arguments as their repr, and a datetime's needs ``datetime`` imported remotely,
# which mt5linux 0.1 does not do.
_HISTORY_FROM = 946_684_800
_HISTORY_AHEAD = 2 * 86_400
# Left at the end of a call's deadline for what follows the terminal's own timeout (the
# answer crossing the bridge, last_error(), account_info()).
_MARGIN = 0.5
# How long an ended terminal process may take to go, at most.
_END_WAIT = 5.0

_T = TypeVar("_T")

Terminals = Mapping[str, Any] | Callable[[str], Any]


class DeadlineExceeded(LifecycleError, TimeoutError):
    """A terminal call that did not return by its deadline: the terminal is taken for dead.

    ``MT5Broker`` raises it when its own deadline passes, ``ProcessTerminals`` when it
    kills a worker process at its ``call_timeout``; ``MT5Broker`` maps either the same
    way (a login is ``TERMINAL``, ``status`` is ``DOWN``, ``restart``, ``positions``
    and ``orders`` raise ``TerminalUnavailable``, a close or cancel answers
    ``retcode=None``). Never a password try, and never followed by a question to the
    terminal: there is none to ask.
    """

    def __init__(
        self,
        what: str,
        seconds: float,
        *,
        instance_id: str | None = None,
        detail: str = "",
    ) -> None:
        subject = (
            "the MetaTrader 5 terminal"
            if instance_id is None
            else f"the MetaTrader 5 terminal of instance {instance_id!r}"
        )
        message = f"{subject} did not answer {what} within {seconds:g} s"
        if detail:
            message += f" ({detail})"
        super().__init__(message, instance_id=instance_id)
        self.what = what
        self.seconds = seconds
        self.detail = detail


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


class _Unreachable(LifecycleError):
    """The ``terminals`` callable could not build a client (its bridge is down)."""

    def __init__(self, instance_id: str, detail: str) -> None:
        super().__init__(
            f"the MetaTrader 5 terminal of instance {instance_id!r} cannot be reached: {detail}",
            instance_id=instance_id,
        )
        self.detail = detail


@attrs.define(eq=False)
class _Terminal:
    """What the adapter knows of one instance's terminal."""

    worker: Worker
    module: Any = None
    """``None`` until the ``terminals`` callable has built it."""
    lock: threading.Lock = attrs.Factory(threading.Lock)
    """One broker call at a time: ``last_error()`` belongs to the whole terminal."""
    building: bool = False
    initialized: bool = False
    """This process has an IPC connection to the terminal (``initialize()`` answered)."""
    stopped: bool = False
    """Stopped on purpose: asking must not start it again."""
    expected: Account | None = None
    """The account of the last successful login: the only one traded on."""


class MT5Broker:
    """The ``Broker`` port for MetaTrader 5 terminals (also ``AccountReader``,
    ``TradeHistory`` and ``Deadlined``).

    ``terminals`` maps each instance id to its ``MetaTrader5``-like object, or is a
    callable returning it for an id (called once per id and kept, until a ``restart``
    asks for a fresh one). ``data_paths`` gives a terminal's data folder for its
    journal when the terminal cannot say (it is down, or it runs under Wine and its own
    path means nothing here). ``terminal_paths`` is the ``path=`` given to
    ``initialize`` (the ``terminal64.exe`` to start; ``None`` lets the package find
    one), and the executable a restart or a stop ends (``end_terminal_processes``,
    with psutil). ``portable`` names the instances whose terminal is a portable
    install (``initialize(portable=True)``).

    Deadlines: ``call_timeout`` seconds for every call, ``login_timeout_ms`` (the
    terminal's own ``timeout=``) plus ``call_timeout`` for a login and a restart; that
    sum is ``longest_call``, which a ``Lifecycle`` checks against its lock.
    ``journal_retry`` are the waits between reads of a journal the terminal writes
    late (``sleep`` waits them; inject one in tests).
    """

    def __init__(
        self,
        terminals: Terminals,
        *,
        data_paths: Mapping[str, str | Path] | None = None,
        terminal_paths: Mapping[str, str] | None = None,
        portable: Collection[str] | Mapping[str, bool] = (),
        classify: Classifier = classify_login_failure,
        call_timeout: float = 20.0,
        login_timeout_ms: int = 30_000,
        end_terminal_processes: bool = True,
        journal_retry: Sequence[float] = (0.1, 0.2, 0.3, 0.4),
        sleep: Callable[[float], None] = time.sleep,
        deviation: int = 20,
        magic: int = 0,
        comment: str = "mt5lifecycle closure",
    ) -> None:
        if isinstance(login_timeout_ms, bool) or not isinstance(login_timeout_ms, int):
            raise ValueError(f"login_timeout_ms must be an int, not {login_timeout_ms!r}")
        if login_timeout_ms <= 0:
            raise ValueError(f"login_timeout_ms must be positive, not {login_timeout_ms}")
        if not _positive(call_timeout):
            raise ValueError(
                f"call_timeout must be a positive number of seconds, not {call_timeout!r}"
            )
        if isinstance(journal_retry, str) or not all(_positive(d) or d == 0 for d in journal_retry):
            raise ValueError(
                f"journal_retry must be non-negative numbers of seconds, not {journal_retry!r}"
            )
        if isinstance(deviation, bool) or not isinstance(deviation, int) or deviation < 0:
            raise ValueError(f"deviation must be a non-negative int, not {deviation!r}")
        if not isinstance(comment, str) or len(comment) > 31:
            # The terminal truncates or rejects longer request comments.
            raise ValueError(f"comment must be a string of at most 31 characters, not {comment!r}")
        self._data_paths = {check_instance_id(k): Path(v) for k, v in (data_paths or {}).items()}
        self._terminal_paths = {check_instance_id(k): v for k, v in (terminal_paths or {}).items()}
        _check_paths_apart(self._terminal_paths)
        chosen = (
            [k for k, v in portable.items() if v] if isinstance(portable, Mapping) else portable
        )
        if isinstance(chosen, str):
            raise ValueError(f"portable must be a collection of instance ids, not {chosen!r}")
        self._portable = frozenset(check_instance_id(k) for k in chosen)
        self._classify = classify
        self._timeout_ms = login_timeout_ms
        self._call_timeout = float(call_timeout)
        self._login_deadline = login_timeout_ms / 1000 + self._call_timeout
        self._bridge_timeout = _bridge_timeout(terminals)
        self._end_processes = end_terminal_processes
        self._journal_retry = tuple(float(d) for d in journal_retry)
        self._sleep = sleep
        self._deviation = deviation
        self._magic = magic
        self._comment = comment
        self._records: dict[str, _Terminal] = {}
        self._owner: dict[int, str] = {}
        self._guard = threading.Lock()
        self._factory: Callable[[str], Any] | None
        if callable(terminals) and not isinstance(terminals, Mapping):
            self._factory = terminals
        else:
            self._factory = None
            for instance_id, module in terminals.items():
                checked = check_instance_id(instance_id)
                self._bind(checked, module)
                self._records[checked] = _Terminal(worker=_worker(checked), module=module)

    # -- deadlines --------------------------------------------------------------------

    @property
    def call_timeout(self) -> float:
        """Seconds any call but a login or a restart may take."""
        return self._call_timeout

    @property
    def longest_call(self) -> float:
        """Seconds the longest call may take: a login or a restart (``login_timeout_ms``
        plus ``call_timeout``), or the ``call_timeout`` of the ``terminals`` object
        (``ProcessTerminals``) if that is longer."""
        return max(self._login_deadline, self._bridge_timeout)

    # -- the port -----------------------------------------------------------------------

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        check_instance_id(instance_id)

        def job(mt5: Any, rec: _Terminal, deadline: float) -> LoginResult:
            return self._login(instance_id, credentials, logged_in_before, mt5, rec, deadline)

        try:
            return self._call(instance_id, self._login_deadline, "a login", job)
        except DeadlineExceeded as exc:
            # No account_info() question: the terminal did not answer, there is none to ask.
            return LoginResult.failure(Reason.TERMINAL, None, str(exc))
        except _Unreachable as exc:
            return LoginResult.failure(
                Reason.NETWORK, None, _scrub(exc.detail, credentials.password)
            )

    def status(self, instance_id: str) -> TerminalStatus:
        check_instance_id(instance_id)

        def job(mt5: Any, rec: _Terminal, deadline: float) -> TerminalStatus:
            if not self._attach(instance_id, mt5, rec, deadline):
                return TerminalStatus.DOWN
            try:
                info = mt5.terminal_info()
            except DeadlineExceeded:
                raise
            except Exception:  # a transport that raises means no answer
                return TerminalStatus.DOWN
            if info is None:
                return TerminalStatus.DOWN
            return TerminalStatus.CONNECTED if info.connected else TerminalStatus.DISCONNECTED

        try:
            return self._call(instance_id, self._call_timeout, "terminal_info()", job)
        except (DeadlineExceeded, _Unreachable):
            return TerminalStatus.DOWN

    def account(self, instance_id: str) -> Account | None:
        """The account the terminal says it is logged in to (``account_info()``).

        ``None`` when it cannot say: not logged in, stopped, down, past its deadline.
        """
        check_instance_id(instance_id)

        def job(mt5: Any, rec: _Terminal, deadline: float) -> Account | None:
            if not self._attach(instance_id, mt5, rec, deadline):
                return None
            return _account(mt5)

        try:
            return self._call(instance_id, self._call_timeout, "account_info()", job)
        except (DeadlineExceeded, _Unreachable):
            return None

    def expect_account(self, instance_id: str, account: Account | None) -> None:
        """The account this terminal must be logged in to for anything to be traded on it.

        Every successful login sets it; a process that takes an instance over without
        logging in (a closing resumed by the next worker) has none, and then trades on
        the session it finds. The lifecycle, which knows the credentials, can say it
        here; ``None`` forgets it.
        """
        check_instance_id(instance_id)
        self._record(instance_id).expected = account

    def restart(self, instance_id: str) -> None:
        """End the terminal process (if its path is known), then start it again.

        ``shutdown()`` alone only closes this process's IPC connection: the terminal
        would stay as it was, stuck or not. With a callable ``terminals``, a fresh
        client is asked for too: an mt5linux client whose server went away stays dead.
        """
        check_instance_id(instance_id)
        deadline = time.monotonic() + self._login_deadline
        ended = self._end_process(instance_id, deadline)
        if self._factory is not None:
            self._renew(instance_id)

        def job(mt5: Any, rec: _Terminal, deadline: float) -> None:
            rec.initialized = False
            rec.stopped = False
            _shutdown(mt5)
            try:
                ok = bool(
                    mt5.initialize(
                        *self._path(instance_id), **self._init_options(instance_id, deadline)
                    )
                )
            except DeadlineExceeded:
                raise
            except Exception as exc:
                raise TerminalUnavailable(instance_id, "start", None, _describe(exc)) from None
            if not ok:
                code, message = _last_error(mt5)
                raise TerminalUnavailable(instance_id, "start", code, message)
            rec.initialized = True

        try:
            self._call(instance_id, deadline - time.monotonic(), "a restart", job, settle=ended)
        except DeadlineExceeded as exc:
            raise TerminalUnavailable(instance_id, "start", None, str(exc)) from None
        except _Unreachable as exc:
            raise TerminalUnavailable(instance_id, "connect", None, exc.detail) from None

    def stop(self, instance_id: str) -> None:
        """Close the IPC connection, and end the terminal process if its path is known:
        a terminal only disconnected from stays logged in, and reconnects by itself."""
        check_instance_id(instance_id)
        deadline = time.monotonic() + self._call_timeout
        ended = self._end_process(instance_id, deadline)
        rec = self._record(instance_id)
        rec.stopped = True
        rec.initialized = False
        if rec.module is None:
            return  # never built: nothing to disconnect from

        def job(mt5: Any, rec: _Terminal, _deadline: float) -> None:
            rec.stopped = True
            rec.initialized = False
            _shutdown(mt5)

        try:
            self._call(instance_id, deadline - time.monotonic(), "shutdown()", job, settle=ended)
        except (DeadlineExceeded, _Unreachable) as exc:
            log.warning("instance %s: stopping the terminal: %s", instance_id, exc)

    def positions(self, instance_id: str) -> list[Position]:
        what = "list its positions"

        def job(mt5: Any, rec: _Terminal, deadline: float) -> list[Position]:
            self._attach(instance_id, mt5, rec, deadline)
            self._refuse_another_account(instance_id, mt5, rec, what)
            found = self._ask(instance_id, mt5, what, lambda: mt5.positions_get())
            return [
                Position(ticket=int(p.ticket), symbol=str(p.symbol), volume=float(p.volume))
                for p in found
            ]

        return self._answer(instance_id, what, "positions_get()", job)

    def orders(self, instance_id: str) -> list[Order]:
        what = "list its orders"

        def job(mt5: Any, rec: _Terminal, deadline: float) -> list[Order]:
            self._attach(instance_id, mt5, rec, deadline)
            self._refuse_another_account(instance_id, mt5, rec, what)
            found = self._ask(instance_id, mt5, what, lambda: mt5.orders_get())
            return [
                Order(ticket=int(o.ticket), symbol=str(o.symbol), volume=float(o.volume_current))
                for o in found
            ]

        return self._answer(instance_id, what, "orders_get()", job)

    def close_position(self, instance_id: str, position: Position, volume: float) -> TradeResult:
        check_instance_id(instance_id)

        def job(mt5: Any, rec: _Terminal, _deadline: float) -> TradeResult:
            refused = self._other_account(mt5, rec)
            if refused is not None:
                return TradeResult(retcode=None, remaining=position.volume, comment=_said(*refused))
            try:
                return self._close(mt5, position, volume)
            except DeadlineExceeded:
                raise
            except Exception as exc:  # recorded as "no answer", never lost
                return TradeResult(retcode=None, remaining=position.volume, comment=_describe(exc))

        try:
            return self._call(instance_id, self._call_timeout, "a close request", job)
        except (DeadlineExceeded, _Unreachable) as exc:
            return TradeResult(retcode=None, remaining=position.volume, comment=str(exc))

    def cancel_order(self, instance_id: str, order: Order) -> TradeResult:
        check_instance_id(instance_id)
        request = {
            "action": TRADE_ACTION_REMOVE,
            "order": order.ticket,
            "magic": self._magic,
            "comment": self._comment,
        }

        def job(mt5: Any, rec: _Terminal, _deadline: float) -> TradeResult:
            refused = self._other_account(mt5, rec)
            if refused is not None:
                return TradeResult(retcode=None, comment=_said(*refused))
            try:
                result = mt5.order_send(request)
            except DeadlineExceeded:
                raise
            except Exception as exc:
                return TradeResult(retcode=None, comment=_describe(exc))
            if result is None:
                return TradeResult(retcode=None, comment=_error_text(mt5))
            return TradeResult(retcode=int(result.retcode), comment=str(result.comment))

        try:
            return self._call(instance_id, self._call_timeout, "a cancel request", job)
        except (DeadlineExceeded, _Unreachable) as exc:
            return TradeResult(retcode=None, comment=str(exc))

    def trade_outcome(self, instance_id: str, kind: str, ticket: int) -> TradeResult | None:
        """How a position (``kind="position"``) or pending order (``"order"``) that is
        gone from the terminal ended, from its history; ``None`` when the history does
        not have it. Raises ``TerminalUnavailable`` when the terminal cannot be asked
        (down, past its deadline, logged in to another account)."""
        check_instance_id(instance_id)
        if kind not in ("position", "order"):
            raise ValueError(f"kind must be 'position' or 'order', not {kind!r}")
        if isinstance(ticket, bool) or not isinstance(ticket, int) or ticket <= 0:
            raise ValueError(f"ticket must be a positive int, not {ticket!r}")
        what = "read its history"

        def job(mt5: Any, rec: _Terminal, deadline: float) -> TradeResult | None:
            self._attach(instance_id, mt5, rec, deadline)
            self._refuse_another_account(instance_id, mt5, rec, what)
            if kind == "position":
                deals = self._history(
                    instance_id,
                    mt5,
                    "history_deals_get",
                    lambda d: int(d.position_id) == ticket,
                    position=ticket,
                )
                return position_outcome(ticket, deals)
            orders = self._history(
                instance_id,
                mt5,
                "history_orders_get",
                lambda o: int(o.ticket) == ticket,
                ticket=ticket,
            )
            return order_outcome(ticket, orders)

        return self._answer(instance_id, what, f"{kind} {ticket}'s history", job)

    # -- logging in ---------------------------------------------------------------------

    def _login(
        self,
        instance_id: str,
        credentials: Credentials,
        logged_in_before: bool,
        mt5: Any,
        rec: _Terminal,
        deadline: float,
    ) -> LoginResult:
        info = _info(mt5) if rec.initialized else None
        if info is None:
            # A crash, a stop, a network error or a first login: attach first, without
            # the credentials (a call a bridge may repeat must not carry them).
            rec.initialized = False
            failed = self._attach_for_login(instance_id, mt5, rec, credentials, deadline)
            if failed is not None:
                return failed
            info = _info(mt5)
        data_path = self._journal_path(instance_id, info)
        mark = None if data_path is None else journal_mark(data_path)
        try:
            # The one call that carries the password, once per attempt.
            ok = bool(
                mt5.login(
                    credentials.login,
                    password=credentials.password,
                    server=credentials.server,
                    timeout=self._terminal_timeout(deadline),
                )
            )
        except DeadlineExceeded:
            raise
        except Exception as exc:  # any transport fault is checked below
            refused = self._late_refusal(
                lambda: data_path or self._journal_path(instance_id, info),
                mark,
                credentials,
                logged_in_before,
                deadline,
                exc,
            )
            return self._check_raised(
                instance_id, mt5, rec, credentials, exc, "login", refused=refused
            )
        rec.stopped = False
        if ok:
            account = _account(mt5)
            self._expect(rec, credentials, account)
            return LoginResult.success(account=account)
        code, message = _last_error(mt5)
        message = _scrub(message, credentials.password)
        if code in NETWORK_CODES:
            # The IPC link is gone: the next attempt must attach again.
            rec.initialized = False
        if data_path is None:
            # The journal folder may have come with this very login.
            data_path = self._journal_path(instance_id, info)
        journal: str | None = None
        if data_path is not None:
            journal = read_failure_line(
                data_path,
                credentials.login,
                mark,
                # Only a -6 is told apart by the journal; for anything else one look,
                # for the archive's sake, is enough.
                delays=self._journal_retry if code == AUTH_FAILED_CODE else (),
                sleep=self._sleep,
                deadline=deadline - _MARGIN,
            )
        journal = None if journal is None else _scrub(journal, credentials.password)
        reason = self._classify(code, message, journal, logged_in_before)
        said = message if journal is None else f"{message}; journal: {journal}"
        return LoginResult.failure(reason, code, said)

    def _attach_for_login(
        self,
        instance_id: str,
        mt5: Any,
        rec: _Terminal,
        credentials: Credentials,
        deadline: float,
    ) -> LoginResult | None:
        """``initialize()`` without credentials; a failed login's result, or ``None``."""
        try:
            ok = bool(
                mt5.initialize(
                    *self._path(instance_id), **self._init_options(instance_id, deadline)
                )
            )
        except DeadlineExceeded:
            raise
        except Exception as exc:
            return self._check_raised(instance_id, mt5, rec, credentials, exc, "initialize")
        if not ok:
            # No credentials were given: whatever it says, it is not about them.
            code, message = _last_error(mt5)
            reason = Reason.NETWORK if code in NETWORK_CODES else Reason.TERMINAL
            return LoginResult.failure(reason, code, _scrub(message, credentials.password))
        rec.initialized = True
        rec.stopped = False
        return None

    def _check_raised(
        self,
        instance_id: str,
        mt5: Any,
        rec: _Terminal,
        credentials: Credentials,
        exc: Exception,
        call: str,
        *,
        refused: Callable[[], LoginResult | None] = lambda: None,
    ) -> LoginResult:
        # mt5linux raises "TimeoutError: result expired" for logins that in fact
        # succeeded: ask the terminal who is logged in before counting anything.
        account = _account(mt5)
        if account is not None and account.login == credentials.login:
            rec.initialized = True
            rec.stopped = False
            self._expect(rec, credentials, account)
            log.info(
                "instance %s: the %s call raised %s, but the terminal is logged in",
                instance_id,
                call,
                type(exc).__name__,
            )
            return LoginResult.success(account=account)
        rec.initialized = False
        late = refused()
        if late is not None:
            return late
        message = _scrub(_describe(exc), credentials.password)
        return LoginResult.failure(Reason.NETWORK, None, f"the {call} call raised {message}")

    def _late_refusal(
        self,
        journal_path: Callable[[], Path | None],
        mark: JournalMark | None,
        credentials: Credentials,
        logged_in_before: bool,
        deadline: float,
        exc: Exception,
    ) -> Callable[[], LoginResult | None]:
        """A login whose answer was lost but which the broker did refuse: the journal
        says so. It was a password try at the broker, so it counts as one."""

        def read() -> LoginResult | None:
            data_path = journal_path()  # the folder may have come with this very login
            if data_path is None:
                return None
            line = read_failure_line(
                data_path,
                credentials.login,
                mark,
                delays=self._journal_retry,
                sleep=self._sleep,
                deadline=deadline - _MARGIN,
                fallback=False,
            )
            if line is None or "failed" not in line.lower():
                return None
            journal = _scrub(line, credentials.password)
            said = _scrub(_describe(exc), credentials.password)
            # The broker's refusal, as a -6 would have told it had the answer come back.
            reason = self._classify(AUTH_FAILED_CODE, said, journal, logged_in_before)
            return LoginResult.failure(
                reason, None, f"the login call raised {said}; journal: {journal}"
            )

        return read

    @staticmethod
    def _expect(rec: _Terminal, credentials: Credentials, account: Account | None) -> None:
        # The terminal's own words for the server when it confirms the login, so that
        # later comparisons compare its answers with its answers.
        if account is not None and account.login == credentials.login:
            rec.expected = account
        else:
            rec.expected = Account(credentials.login, credentials.server)

    # -- identity -----------------------------------------------------------------------

    def _other_account(self, mt5: Any, rec: _Terminal) -> tuple[int | None, str] | None:
        """Why nothing may be traded on this terminal now (a code and a message, as
        ``last_error()``); ``None`` when it may."""
        expected = rec.expected
        if expected is None:
            # Nothing logged in from this process yet (a worker that took the instance
            # over): there is nothing to compare with.
            return None
        try:
            info = mt5.account_info()
        except DeadlineExceeded:
            raise
        except Exception as exc:
            return None, f"cannot tell which account it is logged in to: {_describe(exc)}"
        if info is None:
            # Logged in to nothing (a refused login, a deleted account): there is no
            # other account to trade on, and its trade calls fail by themselves.
            return None
        current = _as_account(info)
        if current is None:
            return None, "cannot tell which account it is logged in to"
        if not current.matches(expected):
            return None, (
                f"logged in to another account: {current.login} on {current.server}, "
                f"not {expected.login} on {expected.server}"
            )
        return None

    def _refuse_another_account(
        self, instance_id: str, mt5: Any, rec: _Terminal, what: str
    ) -> None:
        refused = self._other_account(mt5, rec)
        if refused is not None:
            raise TerminalUnavailable(instance_id, what, *refused)

    # -- closing a position -------------------------------------------------------------

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

    def _history(
        self,
        instance_id: str,
        mt5: Any,
        function: str,
        mine: Callable[[Any], bool],
        **which: int,
    ) -> list[Any]:
        call = getattr(mt5, function)
        found = [r for r in self._ask(instance_id, mt5, "read its history", lambda: call(**which))]
        chosen = [r for r in found if mine(r)]
        if chosen:
            return chosen
        # The filtered call is the package's documented way; a wide date range, filtered
        # here, is asked too before anything is called absent: the documentation does
        # not say that the filtered call reaches past the history the terminal loaded,
        # and an ending missed here is a ticket whose outcome is lost.
        until = int(time.time()) + _HISTORY_AHEAD
        wide = self._ask(instance_id, mt5, "read its history", lambda: call(_HISTORY_FROM, until))
        return [r for r in wide if mine(r)]

    # -- plumbing -----------------------------------------------------------------------

    def _call(
        self,
        instance_id: str,
        seconds: float,
        what: str,
        job: Callable[[Any, _Terminal, float], _T],
        *,
        settle: bool = False,
    ) -> _T:
        """Run ``job`` on the terminal's thread; ``DeadlineExceeded`` after ``seconds``.

        ``settle``: a terminal process was just ended, so a call stuck in it is about
        to return: wait for it rather than refuse at once.
        """
        deadline = time.monotonic() + seconds
        rec = self._record(instance_id)
        if not rec.lock.acquire(timeout=max(0.0, seconds)):
            raise DeadlineExceeded(
                what, seconds, instance_id=instance_id, detail="another call was still running"
            )
        try:
            if settle:
                rec.worker.wait_settled(deadline - time.monotonic())
            if rec.module is None:
                self._build(instance_id, rec, deadline, seconds)
            module = rec.module
            try:
                return rec.worker.run(
                    lambda: job(module, rec, deadline), deadline - time.monotonic()
                )
            except Late as late:
                if late.earlier and rec.building:
                    raise _Unreachable(instance_id, "its client is still being built") from None
                detail = (
                    "it is still in an earlier call that did not return" if late.earlier else ""
                )
                exceeded = DeadlineExceeded(what, seconds, instance_id=instance_id, detail=detail)
                log.warning("%s; it is taken for dead until it is restarted", exceeded)
                raise exceeded from None
        finally:
            rec.lock.release()

    def _answer(
        self,
        instance_id: str,
        what: str,
        call: str,
        job: Callable[[Any, _Terminal, float], _T],
    ) -> _T:
        """A call whose answer the core must have: every fault is ``TerminalUnavailable``."""
        check_instance_id(instance_id)
        try:
            return self._call(instance_id, self._call_timeout, call, job)
        except DeadlineExceeded as exc:
            raise TerminalUnavailable(instance_id, what, None, str(exc)) from None
        except _Unreachable as exc:
            raise TerminalUnavailable(instance_id, what, None, exc.detail) from None

    def _record(self, instance_id: str) -> _Terminal:
        with self._guard:
            rec = self._records.get(instance_id)
            if rec is None:
                if self._factory is None:
                    raise TerminalNotConfigured(instance_id)
                rec = self._records[instance_id] = _Terminal(worker=_worker(instance_id))
            return rec

    def _build(self, instance_id: str, rec: _Terminal, deadline: float, seconds: float) -> None:
        factory = self._factory
        assert factory is not None  # a mapping's records are built at construction

        def build() -> None:
            rec.building = True
            try:
                made = factory(instance_id)
            finally:
                rec.building = False
            if made is None:
                raise TerminalNotConfigured(instance_id)
            with self._guard:
                if self._records.get(instance_id) is rec:  # not replaced by a restart
                    self._bind(instance_id, made)
                    rec.module = made

        try:
            rec.worker.run(build, deadline - time.monotonic())
        except Late as late:
            detail = (
                "its client is still being built"
                if late.earlier
                else f"its client was not built within {seconds:g} s"
            )
            raise _Unreachable(instance_id, detail) from None
        except (TerminalNotConfigured, TerminalShared):
            raise
        except Exception as exc:
            # mt5linux 1.1 raises AttributeError from its own error path when its
            # server is down, RuntimeError without a container runtime: all the same.
            raise _Unreachable(
                instance_id, f"building its client raised {_describe(exc)}"
            ) from None
        if rec.module is None:
            raise _Unreachable(instance_id, "its client was replaced by a restart")

    def _renew(self, instance_id: str) -> None:
        # An RPC client (mt5linux) whose server went away stays dead: the next call asks
        # the factory for a new one, on a new thread (the old one may be stuck).
        with self._guard:
            old = self._records.pop(instance_id, None)
            if old is not None and old.module is not None:
                self._owner.pop(id(old.module), None)
            self._records[instance_id] = _Terminal(
                worker=_worker(instance_id), expected=None if old is None else old.expected
            )
        if old is not None:
            old.worker.close()

    def _bind(self, instance_id: str, module: Any) -> None:
        owner = self._owner.get(id(module))
        if owner is not None and owner != instance_id:
            raise TerminalShared(instance_id, owner)
        self._owner[id(module)] = instance_id

    def _attach(self, instance_id: str, mt5: Any, rec: _Terminal, deadline: float) -> bool:
        """Connect this process to a terminal that is already running.

        A worker that resumes an instance (after a restart, or a takeover) has never
        called ``initialize()``: until it does, the package answers every call with
        "No IPC connection" although the terminal runs and is logged in. Without
        credentials, ``initialize()`` attaches to the terminal's current session.
        """
        if rec.initialized:
            return True
        if rec.stopped:
            return False
        try:
            ok = bool(
                mt5.initialize(
                    *self._path(instance_id), **self._init_options(instance_id, deadline)
                )
            )
        except DeadlineExceeded:
            raise
        except Exception:  # a transport that raises means no answer
            return False
        if ok:
            rec.initialized = True
        return ok

    def _end_process(self, instance_id: str, deadline: float) -> bool:
        path = self._terminal_paths.get(instance_id)
        if not self._end_processes or path is None:
            return False
        wait = min(_END_WAIT, max(0.0, deadline - time.monotonic()) / 2)
        return bool(end_terminal_process(path, timeout=wait))

    def _path(self, instance_id: str) -> tuple[str, ...]:
        # initialize() takes the path as its only unnamed argument and refuses None.
        path = self._terminal_paths.get(instance_id)
        return () if path is None else (path,)

    def _init_options(self, instance_id: str, deadline: float) -> dict[str, Any]:
        options: dict[str, Any] = {"timeout": self._terminal_timeout(deadline)}
        if instance_id in self._portable:
            options["portable"] = True
        return options

    def _terminal_timeout(self, deadline: float) -> int:
        # The terminal's own timeout, ending before the call's deadline does: it then
        # answers (and says why) rather than being left behind.
        left = int((deadline - time.monotonic() - _MARGIN) * 1000)
        return max(1, min(self._timeout_ms, left))

    def _ask(self, instance_id: str, mt5: Any, what: str, call: Callable[[], Any]) -> Any:
        try:
            found = call()
        except DeadlineExceeded:
            raise
        except Exception as exc:
            raise TerminalUnavailable(instance_id, what, None, _describe(exc)) from None
        if found is None:
            # None is an error, not "none open": closing trades on it would record an
            # account with open positions as one without.
            code, message = _last_error(mt5)
            raise TerminalUnavailable(instance_id, what, code, message)
        return found

    def _journal_path(self, instance_id: str, info: Any) -> Path | None:
        own = getattr(info, "data_path", None) if info is not None else None
        candidates = [Path(str(own))] if own else []
        configured = self._data_paths.get(instance_id)
        if configured is not None:
            candidates.append(configured)
        return next((p for p in candidates if p.is_dir()), None)


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


def _worker(instance_id: str) -> Worker:
    return Worker(f"mt5lifecycle-terminal-{instance_id}")


def _positive(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and value > 0
    )


def _bridge_timeout(terminals: object) -> float:
    # ProcessTerminals says how long one of its calls may run before it kills the worker.
    value = getattr(terminals, "call_timeout", None)
    return float(value) if _positive(value) else 0.0  # type: ignore[arg-type]


def _check_paths_apart(paths: Mapping[str, str]) -> None:
    # Two instances on one terminal64.exe would log each other out, and ending one's
    # process would end the other's.
    seen: dict[str, str] = {}
    for instance_id, path in paths.items():
        for other, other_path in seen.items():
            if same_executable(path, other_path):
                raise ValueError(
                    f"instances {other!r} and {instance_id!r} were given the same terminal "
                    f"path {path!r}; give each instance its own terminal installation"
                )
        seen[instance_id] = path


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
    except DeadlineExceeded:
        raise
    except Exception:
        return None


def _account(mt5: Any) -> Account | None:
    try:
        info = mt5.account_info()
    except DeadlineExceeded:
        raise
    except Exception:
        return None
    return None if info is None else _as_account(info)


def _as_account(info: Any) -> Account | None:
    try:
        login, server = int(info.login), str(info.server)
    except (AttributeError, TypeError, ValueError):
        return None
    return Account(login, server) if login > 0 else None


def _last_error(mt5: Any) -> tuple[int | None, str]:
    try:
        code, message = mt5.last_error()
    except Exception as exc:
        return RES_E_INTERNAL_FAIL_CONNECT, f"last_error() failed: {_describe(exc)}"
    return int(code), str(message)


def _error_text(mt5: Any) -> str:
    return _said(*_last_error(mt5))


def _said(code: int | None, message: str) -> str:
    return message if code is None else f"{code}, {message}"


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
