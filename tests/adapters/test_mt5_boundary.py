"""``MT5Broker`` at the terminal boundary (SPEC section 12), on the fake module in process.

One submission per attempt, deadlines (a hung call, a hung client construction, a
``DeadlineExceeded`` from below), identity (``LoginResult.account``, ``account()``,
no trade on a cross-wired terminal), ``trade_outcome`` from the history, ending a
terminal process by its path, portable installs and a journal written late.

Deadlines are real here (a thread is left behind at one), so they are kept to a few
tenths of a second; every other wait is on an event the test controls.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mt5lifecycle import Credentials, Lifecycle, LifecycleError, Policy, Reason, State
from mt5lifecycle.adapters.mt5 import (
    DeadlineExceeded,
    MT5Broker,
    TerminalUnavailable,
)
from mt5lifecycle.adapters.mt5 import broker as broker_module
from mt5lifecycle.core.records import Account, Order, Position
from mt5lifecycle.core.states import TerminalStatus
from mt5lifecycle.testing import memory_backends, run_for
from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5, Submission
from tests.adapters.test_mt5_broker import CREDS, LOGIN, PASSWORD, SERVER

# A login's deadline here: login_timeout_ms (100 ms) + call_timeout (0.25 s).
FAST: dict[str, Any] = {"call_timeout": 0.25, "login_timeout_ms": 100}


def _terminal(tmp_path: Path | None = None) -> FakeMetaTrader5:
    mt5 = FakeMetaTrader5(data_path=tmp_path)
    mt5.add_account(LOGIN, PASSWORD, SERVER)
    return mt5


def _broker(mt5: Any, **options: Any) -> MT5Broker:
    options.setdefault("sleep", lambda _: None)
    return MT5Broker({"acc-1": mt5}, **{**FAST, **options})


def _login(broker: MT5Broker, creds: Credentials = CREDS, before: bool = False) -> Any:
    return broker.login("acc-1", creds, logged_in_before=before)


# -- DeadlineExceeded ---------------------------------------------------------------------


def test_deadline_exceeded_is_a_lifecycle_error_and_a_timeout() -> None:
    exc = DeadlineExceeded("initialize()", 30.0, instance_id="acc-1", detail="worker killed")
    assert isinstance(exc, LifecycleError) and isinstance(exc, TimeoutError)
    assert (exc.what, exc.seconds, exc.instance_id) == ("initialize()", 30.0, "acc-1")
    assert str(exc) == (
        "the MetaTrader 5 terminal of instance 'acc-1' did not answer initialize() "
        "within 30 s (worker killed)"
    )
    assert broker_module.DeadlineExceeded is DeadlineExceeded


# -- deadlines ----------------------------------------------------------------------------


def test_the_default_deadlines_end_well_inside_the_default_lock() -> None:
    broker = MT5Broker({"acc-1": FakeMetaTrader5()})
    assert (broker.call_timeout, broker.longest_call) == (20.0, 50.0)
    assert broker.longest_call <= Policy().lock_ttl / 2


def test_longest_call_is_the_login_or_the_terminals_own_deadline() -> None:
    assert MT5Broker({}, call_timeout=5, login_timeout_ms=10_000).longest_call == 15.0

    class Terminals:
        call_timeout = 90.0

        def __call__(self, instance_id: str) -> FakeMetaTrader5:
            return FakeMetaTrader5()

    assert MT5Broker(Terminals()).longest_call == 90.0


@pytest.mark.parametrize("bad", [0, -1, True, float("inf"), float("nan"), "20"])
def test_a_bad_call_timeout_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="call_timeout"):
        MT5Broker({}, call_timeout=bad)


@pytest.mark.parametrize("bad", [(-1.0,), ("x",), "0.1"])
def test_bad_journal_waits_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="journal_retry"):
        MT5Broker({}, journal_retry=bad)


def test_a_hung_login_is_a_dead_terminal_never_a_password_try() -> None:
    mt5 = _terminal()
    broker = _broker(mt5)
    held = mt5.hang("login")
    started = time.monotonic()
    result = _login(broker)
    took = time.monotonic() - started
    assert (result.ok, result.reason, result.code) == (False, Reason.TERMINAL, None)
    assert result.message == (
        "the MetaTrader 5 terminal of instance 'acc-1' did not answer a login within 0.35 s"
    )
    assert 0.3 < took < 1.0
    assert held.entered.is_set(), "the login is in progress at the terminal"
    assert "account_info" not in mt5.calls, "nobody to ask"
    # Dead until released: every other call answers at once, as for a terminal that is down.
    started = time.monotonic()
    assert broker.status("acc-1") is TerminalStatus.DOWN
    assert broker.account("acc-1") is None
    with pytest.raises(TerminalUnavailable, match="earlier call"):
        broker.positions("acc-1")
    with pytest.raises(TerminalUnavailable, match="earlier call"):
        broker.orders("acc-1")
    closing = broker.close_position("acc-1", Position(ticket=1, symbol="EURUSD", volume=1.0), 1.0)
    assert (closing.retcode, closing.remaining) == (None, 1.0)
    assert broker.cancel_order("acc-1", Order(ticket=2, symbol="EURUSD")).retcode is None
    with pytest.raises(TerminalUnavailable, match="earlier call"):
        broker.trade_outcome("acc-1", "position", 1)
    assert _login(broker).reason is Reason.TERMINAL
    assert time.monotonic() - started < 0.2, "a dead terminal is not waited for again"
    held.release()
    assert broker._records["acc-1"].worker.wait_settled(2), "the late login returned"
    assert mt5.submissions == [Submission("login", LOGIN, SERVER)], "sent once, never again"
    assert broker.status("acc-1") is TerminalStatus.CONNECTED  # it went through, late


def test_a_hung_status_is_down_at_its_deadline() -> None:
    mt5 = _terminal()
    broker = _broker(mt5)
    assert _login(broker).ok
    held = mt5.hang("terminal_info")
    started = time.monotonic()
    assert broker.status("acc-1") is TerminalStatus.DOWN
    assert 0.2 < time.monotonic() - started < 1.0
    held.release()


def test_a_restart_of_a_hung_terminal_it_cannot_end_is_refused_at_once() -> None:
    mt5 = _terminal()
    broker = _broker(mt5)
    mt5.hang("login")
    assert _login(broker).reason is Reason.TERMINAL
    started = time.monotonic()
    with pytest.raises(TerminalUnavailable, match="still in an earlier call"):
        broker.restart("acc-1")
    assert time.monotonic() - started < 0.2
    broker.stop("acc-1")  # never raises
    mt5.release_hangs()


def test_a_restart_gives_a_hung_client_up_for_a_fresh_one() -> None:
    terminal = _terminal()
    made: list[FakeMetaTrader5] = []

    def connect(instance_id: str) -> FakeMetaTrader5:
        made.append(terminal)
        return terminal

    broker = MT5Broker(connect, sleep=lambda _: None, **FAST)
    held = terminal.hang("login")
    assert broker.login("acc-1", CREDS, logged_in_before=False).reason is Reason.TERMINAL
    broker.restart("acc-1")  # the old thread stays in its call; the new client has its own
    assert len(made) == 2
    assert broker.login("acc-1", CREDS, logged_in_before=True).ok
    held.release()


class _Killed:
    """A ProcessTerminals proxy whose worker was killed at its deadline for ``function``."""

    def __init__(self, terminal: FakeMetaTrader5, function: str) -> None:
        self._terminal = terminal
        self._function = function

    def __getattr__(self, name: str) -> Any:
        if name == self._function:

            def killed(*args: Any, **kwargs: Any) -> Any:
                raise DeadlineExceeded(f"{name}()", 30.0, instance_id="acc-1")

            return killed
        return getattr(self._terminal, name)


@pytest.mark.parametrize("function", ["initialize", "login"])
def test_a_deadline_exceeded_from_below_is_a_dead_terminal(function: str) -> None:
    mt5 = _terminal()
    broker = _broker(_Killed(mt5, function))
    result = _login(broker)
    assert (result.reason, result.code) == (Reason.TERMINAL, None)
    assert "did not answer" in result.message
    assert "account_info" not in mt5.calls, "no terminal to ask"


def test_a_deadline_exceeded_from_below_maps_everywhere() -> None:
    mt5 = _terminal()
    assert _login(_broker(mt5)).ok
    assert _broker(_Killed(mt5, "terminal_info")).status("acc-1") is TerminalStatus.DOWN
    assert _broker(_Killed(mt5, "account_info")).account("acc-1") is None
    broker = _broker(_Killed(mt5, "initialize"))
    with pytest.raises(TerminalUnavailable, match="did not answer"):
        broker.restart("acc-1")
    with pytest.raises(TerminalUnavailable, match="did not answer"):
        _broker(_Killed(mt5, "positions_get")).positions("acc-1")
    with pytest.raises(TerminalUnavailable, match="did not answer"):
        _broker(_Killed(mt5, "orders_get")).orders("acc-1")
    mt5.open_position(7001, "EURUSD", 1.0)
    closing = _broker(_Killed(mt5, "order_send")).close_position(
        "acc-1", Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0
    )
    assert closing.retcode is None and "did not answer" in closing.comment


# -- building a client ----------------------------------------------------------------------


def test_a_client_that_cannot_be_built_never_escapes_as_itself() -> None:
    def connect(instance_id: str) -> Any:
        # mt5linux 1.1.1 when its server is down: its TimeoutError names self._port,
        # which it never set.
        raise AttributeError("'ContainerManager' object has no attribute '_port'")

    broker = MT5Broker(connect, **FAST)
    result = broker.login("acc-1", CREDS, logged_in_before=False)
    assert (result.reason, result.code) == (Reason.NETWORK, None)
    assert "AttributeError" in result.message
    assert broker.status("acc-1") is TerminalStatus.DOWN
    assert broker.account("acc-1") is None
    with pytest.raises(TerminalUnavailable, match=r"failed to connect.*AttributeError"):
        broker.restart("acc-1")
    with pytest.raises(TerminalUnavailable, match="AttributeError"):
        broker.positions("acc-1")
    broker.stop("acc-1")


def test_a_client_that_takes_too_long_to_build_is_left_behind() -> None:
    release = threading.Event()
    asked: list[str] = []

    def connect(instance_id: str) -> FakeMetaTrader5:
        asked.append(instance_id)
        release.wait(5)  # mt5linux 1.1 retries for its whole timeout (300 s by default)
        return _terminal()

    broker = MT5Broker(connect, **FAST)
    started = time.monotonic()
    result = broker.login("acc-1", CREDS, logged_in_before=False)
    assert result.reason is Reason.NETWORK and "not built within" in result.message
    assert 0.3 < time.monotonic() - started < 1.0
    started = time.monotonic()
    assert broker.status("acc-1") is TerminalStatus.DOWN
    assert time.monotonic() - started < 0.2, "one construction at a time, not one per call"
    assert asked == ["acc-1"]
    with pytest.raises(TerminalUnavailable, match="not built within"):
        broker.restart("acc-1")  # a fresh construction, given up at its deadline too
    release.set()


# -- identity -------------------------------------------------------------------------------


def test_account_is_what_the_terminal_says() -> None:
    mt5 = _terminal()
    broker = _broker(mt5)
    assert broker.account("acc-1") is None  # attached, logged in to nothing yet
    assert _login(broker).account == Account(LOGIN, SERVER)
    assert broker.account("acc-1") == Account(LOGIN, SERVER)
    mt5.cross_wire(777)
    assert broker.account("acc-1") == Account(777, SERVER)
    broker.stop("acc-1")
    assert broker.account("acc-1") is None


@pytest.mark.parametrize(
    ("login", "server"), [(777, None), (LOGIN, "Other-Server")], ids=["login", "server"]
)
def test_nothing_is_traded_on_a_cross_wired_terminal(login: int, server: str | None) -> None:
    mt5 = _terminal()
    broker = _broker(mt5)
    assert _login(broker).ok
    mt5.open_position(7001, "EURUSD", 1.0)
    mt5.pending_order(8001, "EURUSD")
    mt5.cross_wire(login, server)
    closing = broker.close_position(
        "acc-1", Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0
    )
    assert (closing.retcode, closing.remaining) == (None, 1.0)
    assert closing.comment.startswith("logged in to another account")
    cancelling = broker.cancel_order("acc-1", Order(ticket=8001, symbol="EURUSD"))
    assert cancelling.retcode is None
    assert cancelling.comment.startswith("logged in to another account")
    for listing in (broker.positions, broker.orders):
        with pytest.raises(TerminalUnavailable, match="logged in to another account"):
            listing("acc-1")
    with pytest.raises(TerminalUnavailable, match="logged in to another account"):
        broker.trade_outcome("acc-1", "position", 7001)
    assert "order_send" not in mt5.calls and mt5.requests == []
    mt5.cross_wire(None)
    assert (
        broker.close_position(
            "acc-1", Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0
        ).retcode
        == 10009
    )


def test_a_login_answered_for_another_account_is_reported_and_not_traded_on() -> None:
    mt5 = _terminal()
    mt5.cross_wire(777)
    broker = _broker(mt5)
    result = _login(broker)
    assert result.ok and result.account == Account(777, SERVER)  # the runtime compares
    mt5.open_position(7001, "EURUSD", 1.0)
    closing = broker.close_position(
        "acc-1", Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0
    )
    assert closing.comment.startswith("logged in to another account: 777")
    assert mt5.requests == []


def test_a_worker_that_never_logged_in_trades_on_the_session_it_finds() -> None:
    # A worker that takes a closing over finds the terminal logged in already; it has
    # no login of its own to compare with (the runtime checks account() itself).
    mt5 = _terminal()
    assert mt5.initialize(login=LOGIN, password=PASSWORD, server=SERVER)
    mt5.open_position(7001, "EURUSD", 1.0)
    broker = _broker(mt5)
    assert broker.positions("acc-1") == [Position(ticket=7001, symbol="EURUSD", volume=1.0)]
    closing = broker.close_position(
        "acc-1", Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0
    )
    assert closing.retcode == 10009


def test_a_worker_told_which_account_to_expect_refuses_another() -> None:
    mt5 = _terminal()
    mt5.add_account(777, "other-pw", SERVER)
    assert mt5.initialize(login=777, password="other-pw", server=SERVER)
    mt5.open_position(7001, "EURUSD", 1.0)
    broker = _broker(mt5)
    broker.expect_account("acc-1", Account(LOGIN, SERVER))
    with pytest.raises(TerminalUnavailable, match="logged in to another account: 777"):
        broker.positions("acc-1")
    broker.expect_account("acc-1", None)
    assert broker.positions("acc-1") == [Position(ticket=7001, symbol="EURUSD", volume=1.0)]


# -- trade outcomes from the history ----------------------------------------------------------


def _closing(mt5: FakeMetaTrader5) -> MT5Broker:
    broker = _broker(mt5)
    assert _login(broker).ok
    return broker


def test_a_closed_position_is_found_in_the_deals() -> None:
    mt5 = _terminal()
    broker = _closing(mt5)
    mt5.open_position(7001, "EURUSD", 1.0)
    assert (
        broker.close_position(
            "acc-1", Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0
        ).retcode
        == 10009
    )
    outcome = broker.trade_outcome("acc-1", "position", 7001)
    assert outcome is not None
    assert (outcome.retcode, outcome.remaining) == (10009, 0.0)
    assert outcome.comment.startswith("position 7001 closed by deal")
    assert mt5.calls.count("history_deals_get") == 1, "found by the filtered call"


def test_a_position_the_broker_closed_says_how() -> None:
    mt5 = _terminal()
    broker = _closing(mt5)
    mt5.open_position(7001, "EURUSD", 1.0)
    mt5.close_by_broker(7001, reason=FakeMetaTrader5.DEAL_REASON_SL)
    outcome = broker.trade_outcome("acc-1", "position", 7001)
    assert outcome is not None and outcome.retcode == 10009
    assert "by its stop loss" in outcome.comment


def test_a_partly_closed_position_says_what_is_left() -> None:
    mt5 = _terminal()
    broker = _closing(mt5)
    mt5.open_position(7001, "EURUSD", 1.0, close_retcodes=10010)
    broker.close_position("acc-1", Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0)
    outcome = broker.trade_outcome("acc-1", "position", 7001)
    assert outcome is not None
    assert (outcome.retcode, outcome.remaining) == (10010, 0.5)


@pytest.mark.parametrize(("script", "word"), [("cancel", "cancelled"), ("fill", "filled")])
def test_an_order_gone_from_the_terminal_is_found_in_the_orders(script: str, word: str) -> None:
    mt5 = _terminal()
    broker = _closing(mt5)
    mt5.pending_order(8001, "EURUSD")
    if script == "cancel":
        broker.cancel_order("acc-1", Order(ticket=8001, symbol="EURUSD"))
    else:
        mt5.fill_order(8001)
    outcome = broker.trade_outcome("acc-1", "order", 8001)
    assert outcome is not None
    assert (outcome.retcode, outcome.remaining) == (10009, 0.0)
    assert outcome.comment.startswith(f"order 8001 {word}")


def test_a_ticket_the_history_does_not_have_is_none_after_a_wide_look() -> None:
    mt5 = _terminal()
    broker = _closing(mt5)
    mt5.open_position(7001, "EURUSD", 1.0)  # open: its opening deal, no closing one
    assert broker.trade_outcome("acc-1", "position", 7001) is None
    assert mt5.calls.count("history_deals_get") == 1
    assert broker.trade_outcome("acc-1", "position", 9999) is None
    assert mt5.calls.count("history_deals_get") == 3  # filtered, then a wide date range
    assert broker.trade_outcome("acc-1", "order", 9999) is None
    assert mt5.calls.count("history_orders_get") == 2


class _FilteredFindsNothing(FakeMetaTrader5):
    """A terminal whose filtered history call answers only from a history not loaded."""

    def history_deals_get(self, date_from: Any = None, date_to: Any = None, **kw: Any) -> Any:
        if date_from is None:
            self.calls.append("history_deals_get")
            return ()
        assert isinstance(date_from, int) and isinstance(date_to, int)  # mt5linux 0.1 safe
        return super().history_deals_get(date_from, date_to, **kw)


def test_the_wide_look_finds_what_the_filtered_call_missed() -> None:
    mt5 = _FilteredFindsNothing()
    mt5.add_account(LOGIN, PASSWORD, SERVER)
    broker = _closing(mt5)
    mt5.open_position(7001, "EURUSD", 1.0)
    mt5.close_by_broker(7001)
    outcome = broker.trade_outcome("acc-1", "position", 7001)
    assert outcome is not None and "by a stop out" in outcome.comment


def test_trade_outcome_refuses_bad_questions_and_dead_terminals() -> None:
    mt5 = _terminal()
    broker = _closing(mt5)
    with pytest.raises(ValueError, match="kind"):
        broker.trade_outcome("acc-1", "deal", 1)
    for bad in (0, -1, True, "7001"):
        with pytest.raises(ValueError, match="ticket"):
            broker.trade_outcome("acc-1", "position", bad)  # type: ignore[arg-type]
    mt5.crash()
    broker.stop("acc-1")
    with pytest.raises(TerminalUnavailable, match="read its history"):
        broker.trade_outcome("acc-1", "order", 8001)


# -- ending the terminal process ------------------------------------------------------------


@pytest.fixture
def stand_in_terminal(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A process whose executable is ``.../MetaTrader 5/terminal64.exe``: a copy of
    ``cat``, waiting on its standard input for ever, as a stuck terminal does."""
    exe = tmp_path / "MetaTrader 5" / "terminal64.exe"
    exe.parent.mkdir()
    cat = shutil.which("cat")
    assert cat is not None
    shutil.copy2(cat, exe)
    with subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL) as proc:
        try:
            yield exe, proc
        finally:
            if proc.poll() is None:
                proc.kill()


def _when_it_dies(proc: subprocess.Popen[bytes], mt5: FakeMetaTrader5) -> threading.Thread:
    # The call stuck in the terminal returns when the terminal process dies.
    def watch() -> None:
        proc.wait()
        mt5.crash()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_a_restart_ends_a_hung_terminal_by_its_path(
    stand_in_terminal: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    exe, proc = stand_in_terminal
    mt5 = _terminal()
    broker = _broker(mt5, terminal_paths={"acc-1": str(exe)}, call_timeout=1.0)
    assert _login(broker).ok
    mt5.hang("terminal_info")
    _when_it_dies(proc, mt5)
    assert broker.status("acc-1") is TerminalStatus.DOWN  # at its deadline
    broker.restart("acc-1")
    assert proc.poll() is not None, "the process was ended"
    assert mt5.calls[-2:] == ["shutdown", "initialize"]
    assert broker.status("acc-1") is TerminalStatus.CONNECTED  # started again, logged in
    assert _login(broker, before=True).ok


def test_a_stop_ends_the_terminal_so_it_does_not_stay_logged_in(
    stand_in_terminal: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    exe, proc = stand_in_terminal
    other = tmp_path / "other" / "terminal64.exe"
    other.parent.mkdir()
    shutil.copy2(exe, other)
    with subprocess.Popen([str(other)], stdin=subprocess.PIPE) as bystander:
        try:
            mt5 = _terminal()
            broker = _broker(mt5, terminal_paths={"acc-1": str(exe)})
            assert _login(broker).ok
            broker.stop("acc-1")
            assert proc.wait(timeout=5) is not None
            assert mt5.calls[-1] == "shutdown"
            assert bystander.poll() is None, "another terminal's process is left alone"
        finally:
            bystander.kill()


def test_ending_processes_can_be_turned_off(
    stand_in_terminal: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    exe, proc = stand_in_terminal
    broker = _broker(_terminal(), terminal_paths={"acc-1": str(exe)}, end_terminal_processes=False)
    broker.stop("acc-1")
    assert proc.poll() is None


def test_without_psutil_a_restart_says_so_and_goes_on(
    stand_in_terminal: tuple[Path, subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exe, proc = stand_in_terminal
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    broker = _broker(_terminal(), terminal_paths={"acc-1": str(exe)})
    broker.restart("acc-1")
    assert proc.poll() is None
    assert "psutil is not installed" in caplog.text


def test_two_instances_on_one_terminal_path_are_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "terminal64.exe")
    with pytest.raises(ValueError, match=r"'a' and 'b'.*same terminal path"):
        MT5Broker({}, terminal_paths={"a": path, "b": str(tmp_path / "." / "terminal64.exe")})


class _Spy(FakeMetaTrader5):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initialized_with: list[dict[str, Any]] = []

    def initialize(self, path: str | None = None, **kwargs: Any) -> bool:
        self.initialized_with.append({"path": path, **kwargs})
        return super().initialize(path, **kwargs)


@pytest.mark.parametrize("portable", [{"acc-1"}, {"acc-1": True}], ids=["set", "mapping"])
def test_a_portable_install_is_started_portable(portable: Any) -> None:
    mt5, plain = _Spy(), _Spy()
    for t in (mt5, plain):
        t.add_account(LOGIN, PASSWORD, SERVER)
    broker = MT5Broker(
        {"acc-1": mt5, "acc-2": plain},
        terminal_paths={"acc-1": r"C:\MT5\acc-1\terminal64.exe"},
        portable=portable,
    )
    assert broker.login("acc-1", CREDS, logged_in_before=False).ok
    broker.restart("acc-1")
    assert broker.status("acc-2") is TerminalStatus.DISCONNECTED
    assert [c["portable"] for c in mt5.initialized_with] == [True, True]
    assert {c["path"] for c in mt5.initialized_with} == {r"C:\MT5\acc-1\terminal64.exe"}
    assert all("password" not in c and "login" not in c for c in mt5.initialized_with)
    assert ["portable" in c for c in plain.initialized_with] == [False]


# -- the journal, written late ----------------------------------------------------------------


def test_a_journal_line_that_appears_late_is_still_found(tmp_path: Path) -> None:
    mt5 = _terminal(tmp_path)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            mt5.flush_journal()  # the terminal gets round to writing it

    broker = _broker(mt5, data_paths={"acc-1": tmp_path}, sleep=sleep, login_timeout_ms=5_000)
    assert _login(broker).ok
    mt5.disable_account(LOGIN)
    mt5.hold_journal()
    result = _login(broker, before=True)
    assert (result.reason, result.code) == (Reason.ACCOUNT_BANNED, -6)
    assert "failed (Account disabled)" in result.message
    assert slept == [0.1, 0.2]


def test_an_old_line_is_not_taken_for_the_new_one(tmp_path: Path) -> None:
    mt5 = _terminal(tmp_path)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        mt5.flush_journal()

    broker = _broker(mt5, sleep=sleep, login_timeout_ms=5_000)
    mt5.write_journal(f"'{LOGIN}': authorization on {SERVER} failed (Account disabled)")
    mt5.hold_journal()
    mt5.delete_account(LOGIN)
    result = _login(broker, before=True)
    assert result.reason is Reason.ACCOUNT_CLOSED, "the new line, not the newest old one"
    assert "failed (Invalid account)" in result.message
    assert slept == [0.1]


def test_no_new_line_falls_back_to_the_newest_after_bounded_waits(tmp_path: Path) -> None:
    mt5 = _terminal(tmp_path)
    slept: list[float] = []
    broker = _broker(mt5, sleep=slept.append, login_timeout_ms=5_000)
    mt5.write_journal(f"'{LOGIN}': authorization on {SERVER} failed (Account disabled)")
    mt5.fail_logins(-6)  # refused, and nothing written for it
    assert _login(broker).reason is Reason.ACCOUNT_BANNED  # SPEC 11: the newest line
    assert slept == [0.1, 0.2, 0.3, 0.4]
    slept.clear()
    mt5.fail_logins(-10005, "IPC timeout")
    assert _login(broker).reason is Reason.NETWORK
    assert slept == [], "only a -6 is worth waiting for"


def test_the_waits_for_the_journal_never_pass_the_login_deadline(tmp_path: Path) -> None:
    mt5 = _terminal(tmp_path)
    slept: list[float] = []
    broker = _broker(mt5, sleep=slept.append, journal_retry=(0.5, 0.5), call_timeout=0.75)
    mt5.write_journal("the journal exists")
    mt5.fail_logins(-6)
    assert _login(broker).reason is Reason.AUTH_FAILED
    assert slept == []  # 0.5 s would leave no time for the rest of the login


def test_a_journal_that_cannot_be_read_yet_is_tried_again(tmp_path: Path) -> None:
    mt5 = _terminal(tmp_path)
    mt5.write_journal("the journal exists")
    [today] = (tmp_path / "logs").iterdir()
    # The newest journal cannot be opened for now (the terminal holds it): here, a
    # folder where the file will be.
    held = tmp_path / "logs" / "29991231.log"
    held.mkdir()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        held.rmdir()
        shutil.copy2(today, held)

    broker = _broker(mt5, sleep=sleep, login_timeout_ms=5_000)
    mt5.fail_logins(-6, journal="Account disabled")
    assert _login(broker).reason is Reason.ACCOUNT_BANNED
    assert slept == [0.1]


# -- one submission per attempt, under a lifecycle ---------------------------------------------


def test_a_wrong_password_reaches_the_terminal_exactly_max_login_attempts_times() -> None:
    mt5 = _terminal()
    broker = _broker(mt5, call_timeout=5.0)
    backends = memory_backends(broker=broker)
    backends.credentials.put("acc-1", Credentials(LOGIN, SERVER, "wrong"))
    lc = Lifecycle("acc-1", backends)
    lc.start()
    run_for(lc, backends.clock, 600)
    assert lc.state is State.FAILED
    assert len(mt5.submissions) == Policy().max_login_attempts


# -- a bridge that loses the answer -------------------------------------------------------------


class _LosesAnswers(FakeMetaTrader5):
    """A bridge that passes login() on and loses its answer (mt5linux's "result expired")."""

    def login(self, login: int, **kwargs: Any) -> bool:
        super().login(login, **kwargs)
        raise TimeoutError("result expired")


def test_a_refusal_whose_answer_was_lost_is_the_password_try_the_journal_shows(
    tmp_path: Path,
) -> None:
    mt5 = _LosesAnswers(data_path=tmp_path)
    mt5.add_account(LOGIN, PASSWORD, SERVER)
    broker = _broker(mt5, login_timeout_ms=5_000)
    result = _login(broker, creds=Credentials(LOGIN, SERVER, "not-the-password"))
    assert (result.reason, result.code) == (Reason.AUTH_FAILED, None)
    assert "result expired" in result.message and "failed (Invalid account)" in result.message
    assert "not-the-password" not in result.message
    mt5.disable_account(LOGIN)
    assert _login(broker, before=True).reason is Reason.ACCOUNT_BANNED
    assert len(mt5.submissions) == 2


def test_a_lost_answer_with_nothing_new_in_the_journal_is_network(tmp_path: Path) -> None:
    mt5 = _LosesAnswers(data_path=tmp_path)
    mt5.add_account(LOGIN, PASSWORD, SERVER)
    slept: list[float] = []
    broker = _broker(mt5, login_timeout_ms=5_000, sleep=slept.append)
    mt5.write_journal(f"'{LOGIN}': authorization on {SERVER} failed (Account disabled)")
    mt5.fail_logins(-10005, "IPC timeout")  # never reached the broker: nothing written
    result = _login(broker, before=True)
    assert (result.reason, result.code) == (Reason.NETWORK, None), "an old line is not this try"
    assert slept == [0.1, 0.2, 0.3, 0.4]  # the journal is given its time, bounded
    assert _login(broker, before=True).ok  # logged in; only the answer was lost


# -- the mt5linux helper and the lazy imports ------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1.0, True, "45"])
def test_mt5linux_client_refuses_a_bad_timeout_before_importing_anything(bad: Any) -> None:
    from mt5lifecycle.adapters.mt5 import mt5linux_client

    with pytest.raises(ValueError, match="timeout"):
        mt5linux_client("localhost", 18812, timeout=bad)


def test_the_adapter_imports_no_driver() -> None:
    program = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'MetaTrader5', 'psutil', 'mt5linux', 'rpyc'}:\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from mt5lifecycle.adapters.mt5 import MT5Broker\n"
        "from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5\n"
        "mt5 = FakeMetaTrader5()\n"
        "broker = MT5Broker({'a': mt5}, terminal_paths={'a': '/nowhere/terminal64.exe'})\n"
        "broker.restart('a'); broker.stop('a')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
    assert "psutil is not installed" in done.stderr or done.stderr == ""
