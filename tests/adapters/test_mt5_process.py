"""``ProcessTerminals``: one worker process per terminal behind the ``MetaTrader5`` API.

Real processes throughout (SPEC section 12): every worker is spawned as on Windows and
runs the testing kit's fake module (or a stand-in under ``tests/adapters``). The only
waits are real deadlines (``call_timeout`` of one second), and polls for a killed
process to be gone.
"""

from __future__ import annotations

import _thread
import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mt5lifecycle import Credentials, LifecycleError, Reason
from mt5lifecycle.adapters.mt5 import (
    DeadlineExceeded,
    MT5Broker,
    TerminalNotConfigured,
    TerminalUnavailable,
)
from mt5lifecycle.adapters.mt5_process import ProcessTerminals, TerminalProxy
from mt5lifecycle.core.states import TerminalStatus
from mt5lifecycle.errors import InvalidInstanceId
from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5
from mt5lifecycle.testing.fake_mt5_module import SETUP_VARIABLE, write_setup

HERE = Path(__file__).resolve().parent
DOC = HERE.parent.parent / "docs" / "adapters" / "process-terminals.md"
FAKE = "mt5lifecycle.testing.fake_mt5_module"
LOGIN, OTHER_LOGIN = 5012345, 7000001
SERVER = "Broker-Demo"
PASSWORD = "Pr0cess-Secr3t"
CREDS = Credentials(login=LOGIN, server=SERVER, password=PASSWORD)
START_METHODS = [m for m in multiprocessing.get_all_start_methods() if m != "fork"]

Make = Callable[..., ProcessTerminals]


def path_of(instance_id: str) -> str:
    return rf"C:\MT5\{instance_id}\terminal64.exe"


@pytest.fixture(autouse=True)
def broker_accounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker's side: every worker's fake knows these accounts, as a broker would."""
    setup = write_setup(
        tmp_path / "broker.json",
        accounts=[(LOGIN, PASSWORD, SERVER), (OTHER_LOGIN, "other-pw", SERVER)],
    )
    monkeypatch.setenv(SETUP_VARIABLE, str(setup))


@pytest.fixture
def make() -> Iterator[Make]:
    made: list[ProcessTerminals] = []

    def build(*ids: str, **options: Any) -> ProcessTerminals:
        options.setdefault("module", FAKE)
        # Long enough for any answer on a loaded machine; the deadline tests say 1 s.
        options.setdefault("call_timeout", 5.0)
        terminals = ProcessTerminals({i: path_of(i) for i in ids or ("acct-1",)}, **options)
        made.append(terminals)
        return terminals

    yield build
    for terminals in made:
        terminals.close()


def dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet: either way it runs nothing."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_dead(pids: list[int], seconds: float = 5.0) -> list[int]:
    """The pids still running after ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if all(dead(pid) for pid in pids):
            return []
        time.sleep(0.02)  # polling real processes, not waiting on logic
    return [pid for pid in pids if not dead(pid)]


def kill(pid: int) -> None:
    """kill -9 (TerminateProcess on Windows), without reaping: the proxy must find out."""
    psutil.Process(pid).kill()
    assert wait_dead([pid]) == []


def logged_in(proxy: TerminalProxy) -> TerminalProxy:
    assert proxy.initialize(login=LOGIN, password=PASSWORD, server=SERVER) is True
    return proxy


def spawned_workers() -> list[psutil.Process]:
    """This process's multiprocessing children, not its helpers (resource tracker)."""
    found = []
    for child in psutil.Process().children():
        try:
            if "spawn_main" in " ".join(child.cmdline()) and not dead(child.pid):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


# -- one process per terminal ------------------------------------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_each_terminal_has_a_worker_process_of_its_own(make: Make, start_method: str) -> None:
    terminals = make("acct-1", "acct-2", "acct-3", start_method=start_method)
    assert all(terminals.worker_pid(i) is None for i in terminals)  # started at first call

    pids = {i: terminals[i].process_id() for i in terminals}

    assert len(set(pids.values())) == 3
    assert os.getpid() not in pids.values()
    assert pids == {i: terminals.worker_pid(i) for i in terminals}
    for instance_id in terminals:
        # initialize() without a path reaches the instance's own terminal.
        assert terminals[instance_id].initialize() is True
        assert terminals[instance_id].initialize_paths() == [path_of(instance_id)]


def test_a_path_given_by_the_caller_is_used_as_given(make: Make) -> None:
    proxy = make()["acct-1"]
    assert proxy.initialize(r"D:\Other\terminal64.exe") is True
    assert proxy.initialize(path=r"E:\Third\terminal64.exe") is True
    assert proxy.initialize_paths() == [r"D:\Other\terminal64.exe", r"E:\Third\terminal64.exe"]


def test_it_is_a_mapping_and_a_callable_of_proxies(make: Make) -> None:
    terminals = make("acct-1", "acct-2")
    assert sorted(terminals) == ["acct-1", "acct-2"]
    assert len(terminals) == 2
    assert terminals("acct-1") is terminals["acct-1"]
    assert "acct-2" in terminals
    assert "acct-9" not in terminals
    assert "not an id!" not in terminals
    assert terminals.terminal_path("acct-2") == path_of("acct-2")
    with pytest.raises(TerminalNotConfigured, match="acct-9"):
        terminals["acct-9"]
    with pytest.raises(InvalidInstanceId):
        terminals("../acct-1")


# -- results keep the package's shapes ---------------------------------------------------


def test_results_keep_the_package_types_and_field_names(make: Make) -> None:
    mt5 = logged_in(make()["acct-1"])
    mt5.open_position(7001, "EURUSD", 0.5)

    info = mt5.terminal_info()
    account = mt5.account_info()
    positions = mt5.positions_get()
    request = {
        "action": mt5.TRADE_ACTION_DEAL,
        "symbol": "EURUSD",
        "volume": 0.5,
        "type": mt5.ORDER_TYPE_SELL,
        "position": 7001,
        "price": mt5.symbol_info_tick("EURUSD").bid,
        "deviation": 20,
        "type_filling": mt5.ORDER_FILLING_FOK,
    }
    sent = mt5.order_send(request)

    assert type(info).__name__ == "TerminalInfo" and info.connected is True
    assert account.login == LOGIN and account.server == SERVER
    assert [p.ticket for p in positions] == [7001] and positions[0].volume == 0.5
    assert sent.retcode == 10009 and sent.request.symbol == "EURUSD"
    assert mt5.positions_get() == ()
    assert mt5.last_error() == (1, "Success")
    assert account._asdict()["login"] == LOGIN


def test_the_module_constants_are_read_from_the_worker(make: Make) -> None:
    mt5 = make()["acct-1"]
    assert mt5.TIMEFRAME_H1 == 1 | 0x4000
    assert mt5.RES_E_INTERNAL_FAIL_CONNECT == -10004
    assert mt5.__version__ == FakeMetaTrader5.__version__
    with pytest.raises(AttributeError, match="NO_SUCH_CONSTANT"):
        mt5.NO_SUCH_CONSTANT  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_function"):
        mt5.no_such_function  # noqa: B018
    assert not hasattr(mt5, "_private")


def test_struct_sequences_arrive_as_named_tuples_of_the_same_shape(make: Make) -> None:
    mt5 = make(module="mt5_structseq_module")["acct-1"]
    assert mt5.raw_is_picklable() is False  # so the worker's conversion is what carries them

    info = mt5.terminal_info()
    account = mt5.account_info()
    positions = mt5.positions_get()
    sent = mt5.order_send({"action": 1, "symbol": "EURUSD", "volume": 0.5})

    assert type(info).__name__ == "TerminalInfo"
    assert info._fields == ("connected", "build", "name", "path")
    assert info.connected is True and info[1] == 5200
    assert account._asdict() == {"login": 5012345, "server": "Broker-Demo", "balance": 10_000.0}
    assert [(p.ticket, p.volume) for p in positions] == [(7001, 0.5), (7002, 0.5)]
    assert sent.retcode == 10009 and type(sent.request).__name__ == "TradeRequest"
    assert sent.request.symbol == "EURUSD"
    # And they travel on, like the package's own results would not.
    assert pickle.loads(pickle.dumps(sent)) == sent


def test_a_result_that_cannot_be_sent_back_is_a_type_error(make: Make) -> None:
    terminals = make(module="mt5_structseq_module")
    mt5 = terminals["acct-1"]
    with pytest.raises(TypeError, match="cannot be sent between processes"):
        mt5.held_lock()
    pid = terminals.worker_pid("acct-1")
    assert mt5.terminal_info().connected is True  # the same worker answers on
    assert terminals.worker_pid("acct-1") == pid


def test_the_module_exception_is_raised_as_itself(make: Make) -> None:
    terminals = make()
    mt5 = logged_in(terminals["acct-1"])
    pid = terminals.worker_pid("acct-1")
    mt5.raise_on_login(TimeoutError("result expired"), succeed=True)

    with pytest.raises(TimeoutError, match="result expired") as raised:
        mt5.login(LOGIN, password=PASSWORD, server=SERVER)

    assert not isinstance(raised.value, DeadlineExceeded)  # the bridge's own timeout
    assert terminals.worker_pid("acct-1") == pid
    assert mt5.account_info().login == LOGIN


def test_an_argument_that_cannot_be_sent_is_a_type_error_and_nothing_is_sent(make: Make) -> None:
    terminals = make()
    mt5 = terminals["acct-1"]
    mt5.initialize()
    before = mt5.calls()

    with pytest.raises(TypeError, match=r"symbol_info\(\)"):
        mt5.symbol_info(threading.Lock())

    assert mt5.calls() == before
    kill(terminals.worker_pid("acct-1") or 0)
    assert mt5.version() is None
    with pytest.raises(TypeError):
        mt5.symbol_info(threading.Lock())
    assert mt5.last_error() == (-10004, "No IPC connection")  # unchanged by the refusal
    assert terminals.worker_pid("acct-1") is None


# -- deadlines ------------------------------------------------------------------------------


def test_a_call_past_its_deadline_ends_the_worker_and_the_next_call_starts_a_new_one(
    make: Make,
) -> None:
    terminals = make(call_timeout=1.0)
    mt5 = logged_in(terminals["acct-1"])
    hung = terminals.worker_pid("acct-1")
    assert hung is not None
    mt5.hang_on("terminal_info")

    began = time.monotonic()
    with pytest.raises(DeadlineExceeded) as raised:
        mt5.terminal_info()
    took = time.monotonic() - began

    assert 1.0 <= took < 1.0 + 2 * 1.0 + 1.0
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, LifecycleError)
    assert raised.value.instance_id == "acct-1" and raised.value.seconds == 1.0
    assert "terminal_info() within 1 s" in str(raised.value)
    assert wait_dead([hung]) == []
    assert terminals.worker_pid("acct-1") is None
    # Asked before any new call, the proxy answers as the package does after an IPC timeout.
    assert mt5.last_error() == (-10005, "IPC timeout")
    assert terminals.worker_pid("acct-1") is None

    # The next call runs in a fresh worker: a new Python session, not yet initialized.
    assert mt5.terminal_info() is None
    assert mt5.last_error() == (-10004, "No IPC connection")
    fresh = terminals.worker_pid("acct-1")
    assert fresh not in (None, hung)
    logged_in(mt5)
    assert mt5.terminal_info().connected is True


@pytest.mark.skipif(sys.platform == "win32", reason="interrupts the wait with SIGALRM")
def test_a_call_interrupted_in_the_caller_takes_its_worker_with_it(make: Make) -> None:
    terminals = make()
    mt5 = logged_in(terminals["acct-1"])
    interrupted = terminals.worker_pid("acct-1")
    assert interrupted is not None
    mt5.hang_on("version", seconds=1.0)  # it would answer, late, after the interrupt

    # Ctrl-C, as the main thread sees it on every platform.
    ctrl_c = threading.Timer(0.2, _thread.interrupt_main)
    ctrl_c.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            mt5.version()
    finally:
        ctrl_c.cancel()

    # Its late answer must never be read as the next call's.
    assert wait_dead([interrupted]) == []
    assert terminals.worker_pid("acct-1") is None
    assert mt5.last_error() == (1, "Success")  # a fresh worker's own answer
    assert mt5.version() is None  # not the interrupted call's (500, 5200, ...)


def test_a_worker_that_does_not_start_in_time_is_ended(make: Make) -> None:
    terminals = make(start_timeout=0.001)
    with pytest.raises(DeadlineExceeded, match=r"the start of its worker process within 0\.001 s"):
        terminals["acct-1"].initialize()
    assert terminals.worker_pid("acct-1") is None
    assert spawned_workers() == []


def test_longest_call_covers_a_start_a_call_and_ending_a_worker(make: Make) -> None:
    terminals = make(call_timeout=2.5, start_timeout=4)
    assert (terminals.call_timeout, terminals.start_timeout) == (2.5, 4.0)
    assert terminals.longest_call == 2.5 + 4.0 + 2.0
    assert terminals.start_method == "spawn" and terminals.module == FAKE


# -- dead workers ----------------------------------------------------------------------------


def test_a_killed_worker_answers_like_a_terminal_that_is_down_then_recovers(make: Make) -> None:
    terminals = make()
    mt5 = logged_in(terminals["acct-1"])
    victim = terminals.worker_pid("acct-1")
    assert victim is not None

    kill(victim)

    # The call that finds the worker dead answers as the package does without a
    # terminal: False from a function that answers a bool, None from the others.
    assert mt5.login(LOGIN, password=PASSWORD, server=SERVER) is False
    assert mt5.last_error() == (-10004, "No IPC connection")
    assert terminals.worker_pid("acct-1") is None
    # The next call starts a new worker: a fresh session, driven again from initialize().
    assert mt5.account_info() is None
    second = terminals.worker_pid("acct-1")
    assert second not in (None, victim)
    logged_in(mt5)
    assert mt5.account_info().login == LOGIN

    kill(second)
    assert mt5.account_info() is None
    assert mt5.last_error() == (-10004, "No IPC connection")
    assert terminals.worker_pid("acct-1") is None


def test_a_worker_that_dies_in_the_middle_of_a_call_answers_like_a_terminal_that_is_down(
    make: Make,
) -> None:
    terminals = make()
    mt5 = logged_in(terminals["acct-1"])
    mt5.open_position(7001, "EURUSD", 0.5)
    mt5.exit_on("order_send")

    # Whether the order went through is unknown, as with a terminal that crashed: the
    # caller hears "no answer", and the request is never sent again.
    assert mt5.order_send({"action": mt5.TRADE_ACTION_DEAL, "position": 7001}) is None
    assert mt5.last_error() == (-10004, "No IPC connection")
    assert mt5.shutdown() is None
    assert terminals.worker_pid("acct-1") is None


def test_a_module_that_fails_to_import_in_the_worker_is_a_terminal_that_cannot_start(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    terminals = make(module="mt5_unimportable_module")
    mt5 = terminals["acct-1"]

    with caplog.at_level(logging.ERROR, logger="mt5lifecycle"):
        assert mt5.initialize() is False
    code, message = mt5.last_error()

    assert code == -10003
    assert "could not import 'mt5_unimportable_module'" in message
    assert "DLL load failed" in message
    assert "DLL load failed" in caplog.text
    assert terminals.worker_pid("acct-1") is None
    with pytest.raises(AttributeError, match="could not start"):
        mt5.TIMEFRAME_M1  # noqa: B018


def test_a_module_that_is_not_installed_is_refused_at_construction() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"'NoSuchMetaTrader5'.*not installed"):
        ProcessTerminals({"acct-1": path_of("acct-1")}, module="NoSuchMetaTrader5")


# -- identity --------------------------------------------------------------------------------


def test_a_terminal_logged_in_to_another_account_shows_through_the_proxy(make: Make) -> None:
    terminals = make("acct-1", "acct-2")
    own = logged_in(terminals["acct-1"])
    crossed = logged_in(terminals["acct-2"])
    crossed.answer_as(OTHER_LOGIN)

    assert own.account_info().login == LOGIN
    assert crossed.account_info().login == OTHER_LOGIN
    assert crossed.account_info().server == SERVER


# -- stopping ----------------------------------------------------------------------------------


def test_close_stops_every_worker_even_one_stuck_in_a_call(make: Make, tmp_path: Path) -> None:
    terminals = make("acct-1", "acct-2", "acct-3", call_timeout=60.0)
    for instance_id in terminals:
        terminals[instance_id].initialize()
    pids = [terminals.worker_pid(i) for i in terminals]
    mark = tmp_path / "stuck"
    terminals["acct-3"].hang_on("version", entered=str(mark))
    answers: list[object] = []
    stuck = threading.Thread(target=lambda: answers.append(terminals["acct-3"].version()))
    stuck.start()
    assert wait_for(mark.exists)

    began = time.monotonic()
    terminals.close()
    stuck.join(5)

    assert time.monotonic() - began < 5  # not the stuck call's 60 s
    assert answers == [None]  # the stuck call answered as a terminal that is down
    assert wait_dead([p for p in pids if p is not None]) == []
    assert spawned_workers() == []
    assert all(terminals.worker_pid(i) is None for i in terminals)
    assert terminals.closed and "closed" in repr(terminals)
    with pytest.raises(TerminalUnavailable, match="closed"):
        terminals["acct-1"].terminal_info()
    terminals.close()  # idempotent


def test_shutdown_ends_the_worker_and_a_later_call_starts_a_new_one(make: Make) -> None:
    terminals = make()
    mt5 = logged_in(terminals["acct-1"])
    first = terminals.worker_pid("acct-1")
    assert first is not None

    assert mt5.shutdown() is None

    assert wait_dead([first]) == []
    assert terminals.worker_pid("acct-1") is None
    assert mt5.shutdown() is None  # nothing to shut down: no worker is started for it
    assert terminals.worker_pid("acct-1") is None
    logged_in(mt5)
    assert terminals.worker_pid("acct-1") not in (None, first)


def test_a_with_block_closes() -> None:
    with ProcessTerminals({"acct-1": path_of("acct-1")}, module=FAKE) as terminals:
        terminals["acct-1"].initialize()
        pid = terminals.worker_pid("acct-1")
    assert pid is not None and wait_dead([pid]) == []
    assert terminals.closed


def test_a_killed_parent_leaves_no_worker_behind(tmp_path: Path) -> None:
    mark = tmp_path / "stuck"
    everything: list[int] = []
    parent = subprocess.Popen(
        [sys.executable, str(HERE / "mt5_process_parent.py"), str(mark)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)},
    )
    try:
        assert parent.stdout is not None
        report = json.loads(parent.stdout.readline())
        assert report["stuck"] is True
        workers = [int(pid) for pid in report["pids"].values()]
        everything.extend(p.pid for p in psutil.Process(parent.pid).children(recursive=True))
        assert set(workers) <= set(everything)

        parent.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
        parent.wait(10)

        # The resource tracker multiprocessing starts goes too: nothing is left.
        assert wait_dead(everything) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for pid in everything:
            if not dead(pid):
                psutil.Process(pid).kill()
        for stream in (parent.stdin, parent.stdout):
            if stream is not None:
                stream.close()


# -- MT5Broker over the proxies ----------------------------------------------------------------


def test_mt5broker_logs_in_checks_and_restarts_through_the_workers(make: Make) -> None:
    terminals = make("acct-1", "acct-2", call_timeout=1.0)
    broker = MT5Broker(terminals)

    assert broker.login("acct-1", CREDS, logged_in_before=False).ok
    assert broker.login("acct-2", CREDS, logged_in_before=False).ok
    assert broker.status("acct-1") is TerminalStatus.CONNECTED
    assert terminals.worker_pid("acct-1") != terminals.worker_pid("acct-2")

    # A terminal that stops answering: the check is cut at the deadline and reads DOWN.
    terminals["acct-1"].hang_on("terminal_info")
    assert broker.status("acct-1") is TerminalStatus.DOWN
    assert broker.status("acct-2") is TerminalStatus.CONNECTED  # the other one is untouched
    broker.restart("acct-1")
    assert broker.status("acct-1") is TerminalStatus.DISCONNECTED  # a fresh worker, no session
    assert broker.login("acct-1", CREDS, logged_in_before=True).ok
    assert broker.status("acct-1") is TerminalStatus.CONNECTED

    # A worker killed with kill -9: DOWN, then logged in again on a new worker.
    victim = terminals.worker_pid("acct-1")
    assert victim is not None
    kill(victim)
    assert broker.status("acct-1") is TerminalStatus.DOWN
    assert broker.login("acct-1", CREDS, logged_in_before=True).ok
    assert broker.status("acct-1") is TerminalStatus.CONNECTED
    assert broker.positions("acct-1") == []


@pytest.mark.parametrize("script", ["hang_on", "exit_on"])
def test_mt5broker_login_on_a_stuck_or_dying_terminal_is_never_a_password_try(
    make: Make, script: str, caplog: pytest.LogCaptureFixture
) -> None:
    terminals = make(call_timeout=1.0)
    broker = MT5Broker(terminals)
    getattr(terminals["acct-1"], script)("initialize")

    with caplog.at_level(logging.DEBUG, logger="mt5lifecycle"):
        result = broker.login("acct-1", CREDS, logged_in_before=True)

    assert not result.ok
    assert result.reason in (Reason.NETWORK, Reason.TERMINAL)
    assert PASSWORD not in result.message
    assert PASSWORD not in caplog.text
    assert broker.status("acct-1") is not TerminalStatus.CONNECTED


# -- many threads ---------------------------------------------------------------------------------


def test_calls_from_many_threads_each_get_their_own_answer(make: Make) -> None:
    terminals = make("acct-1", "acct-2", "acct-3")
    for instance_id in terminals:
        mt5 = terminals[instance_id]
        mt5.initialize()
        for n in range(4):
            mt5.set_symbol(f"{instance_id}-S{n}", bid=float(n))
    wrong: list[str] = []

    def ask(instance_id: str, n: int) -> None:
        mt5 = terminals[instance_id]
        for _ in range(20):
            info = mt5.symbol_info(f"{instance_id}-S{n}")
            if info is None or info.name != f"{instance_id}-S{n}" or info.bid != float(n):
                wrong.append(f"{instance_id}-S{n}: {info!r}")

    threads = [threading.Thread(target=ask, args=(i, n)) for i in terminals for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert wrong == []
    assert not any(thread.is_alive() for thread in threads)


# -- input and secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "names"),
    [
        ({"terminal_paths": ["C:/a/terminal64.exe"]}, TypeError, "terminal_paths"),
        ({"terminal_paths": {"bad id!": "C:/a.exe"}}, InvalidInstanceId, "bad id!"),
        ({"terminal_paths": {"acct-1": 42}}, TypeError, r"terminal_paths\['acct-1'\]"),
        ({"terminal_paths": {"acct-1": b"C:/a.exe"}}, TypeError, r"terminal_paths\['acct-1'\]"),
        ({"terminal_paths": {"acct-1": "  "}}, ValueError, r"terminal_paths\['acct-1'\]"),
        (
            {"terminal_paths": {"acct-1": "C:/t/terminal64.exe", "acct-2": "C:/t/terminal64.exe"}},
            ValueError,
            r"terminal_paths\['acct-2'\] is also the terminal of instance 'acct-1'",
        ),
        ({"module": ""}, ValueError, "module"),
        ({"module": "Meta Trader5"}, ValueError, "module"),
        ({"module": 5}, TypeError, "module"),
        ({"call_timeout": 0}, ValueError, "call_timeout"),
        ({"call_timeout": -1.0}, ValueError, "call_timeout"),
        ({"call_timeout": float("nan")}, ValueError, "call_timeout"),
        ({"call_timeout": float("inf")}, ValueError, "call_timeout"),
        ({"call_timeout": True}, TypeError, "call_timeout"),
        ({"call_timeout": "30"}, TypeError, "call_timeout"),
        ({"start_timeout": 0}, ValueError, "start_timeout"),
        ({"start_method": "fork"}, ValueError, "start_method 'fork'"),
        ({"start_method": "thread"}, ValueError, "start_method"),
    ],
)
def test_bad_arguments_are_refused_naming_the_field(
    arguments: dict[str, Any], error: type[Exception], names: str
) -> None:
    given: dict[str, Any] = {"terminal_paths": {"acct-1": path_of("acct-1")}, "module": FAKE}
    given.update(arguments)
    paths = given.pop("terminal_paths")
    with pytest.raises(error, match=names):
        ProcessTerminals(paths, **given)
    assert spawned_workers() == []


def test_no_password_in_reprs_errors_or_logs(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    terminals = make(call_timeout=1.0)
    mt5 = terminals["acct-1"]
    mt5.initialize()
    mt5.hang_on("login")

    with caplog.at_level(logging.DEBUG, logger="mt5lifecycle"):
        with pytest.raises(DeadlineExceeded) as raised:
            mt5.login(LOGIN, password=PASSWORD, server=SERVER)
        mt5.initialize(login=LOGIN, password=PASSWORD, server=SERVER)

    for text in (str(raised.value), repr(raised.value), repr(terminals), repr(mt5), caplog.text):
        assert PASSWORD not in text
    assert "acct-1" in repr(mt5) and "worker=" in repr(mt5)


def test_the_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- example:fake:start -->\n```python\n", 1)[1]
    block = block.split("```\n<!-- example:fake:end -->", 1)[0]
    exec(compile(block, str(DOC), "exec"), {})
    assert capsys.readouterr().out.strip() == "DOWN"
    assert spawned_workers() == []


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)  # polling a real process for its sign
    return condition()
