"""``MT5Broker`` driven directly, against the fake ``MetaTrader5`` module (SPEC sections 8, 11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mt5lifecycle import Credentials, InvalidInstanceId, LifecycleError, Reason
from mt5lifecycle.adapters.mt5 import (
    MT5Broker,
    TerminalNotConfigured,
    TerminalShared,
    TerminalUnavailable,
    read_journal_line,
)
from mt5lifecycle.core.records import Account, LoginResult, Order, Position
from mt5lifecycle.core.states import TerminalStatus
from mt5lifecycle.ports import AccountReader, Broker, Deadlined, TradeHistory
from mt5lifecycle.testing import FakeClock
from mt5lifecycle.testing.fake_mt5 import (
    FakeMetaTrader5,
    Mt5LinuxProxy,
    OrderSendResult,
    Submission,
    TerminalInfo,
)

LOGIN = 5012345
SERVER = "Broker-Demo"
PASSWORD = "Tr1cky-pa55word"
CREDS = Credentials(login=LOGIN, server=SERVER, password=PASSWORD)
T0 = 1767225600.0


class World:
    """A fake terminal, its data folder and an ``MT5Broker`` over it (directly, or
    through an mt5linux-shaped proxy)."""

    def __init__(self, tmp_path: Path, *, proxy: bool = False, instance_id: str = "acc-1") -> None:
        self.id = instance_id
        self.clock = FakeClock(T0)
        self.data_path = tmp_path / "Terminal" / "D0E8209F77C8CF37AD8BF550E51FF075"
        self.mt5 = FakeMetaTrader5(data_path=self.data_path, clock=self.clock)
        self.mt5.add_account(LOGIN, PASSWORD, SERVER)
        module: object = Mt5LinuxProxy(self.mt5) if proxy else self.mt5
        self.slept: list[float] = []
        self.broker = MT5Broker(
            {instance_id: module},
            data_paths={instance_id: self.data_path},
            sleep=self.slept.append,  # the journal's waits, counted instead of slept
        )

    def login(self, *, logged_in_before: bool = False, creds: Credentials = CREDS) -> LoginResult:
        return self.broker.login(self.id, creds, logged_in_before=logged_in_before)


RES_CODES: dict[str, int] = {
    name: value
    for name, value in json.loads(
        (Path(__file__).resolve().parent.parent / "data" / "mt5_reference.json").read_text()
    )["constants"].items()
    if name.startswith("RES_")
}
EXPECTED_REASON = {
    "RES_S_OK": Reason.TERMINAL,  # False with "Success" is no answer about credentials
    "RES_E_FAIL": Reason.TERMINAL,
    "RES_E_INVALID_PARAMS": Reason.TERMINAL,
    "RES_E_NO_MEMORY": Reason.TERMINAL,
    "RES_E_NOT_FOUND": Reason.TERMINAL,
    "RES_E_INVALID_VERSION": Reason.TERMINAL,
    "RES_E_AUTH_FAILED": Reason.AUTH_FAILED,
    "RES_E_UNSUPPORTED": Reason.TERMINAL,
    "RES_E_AUTO_TRADING_DISABLED": Reason.TERMINAL,
    "RES_E_INTERNAL_FAIL": Reason.NETWORK,
    "RES_E_INTERNAL_FAIL_SEND": Reason.NETWORK,
    "RES_E_INTERNAL_FAIL_RECEIVE": Reason.NETWORK,
    "RES_E_INTERNAL_FAIL_INIT": Reason.TERMINAL,
    "RES_E_INTERNAL_FAIL_CONNECT": Reason.NETWORK,
    "RES_E_INTERNAL_FAIL_TIMEOUT": Reason.NETWORK,
}


@pytest.fixture(params=["module", "mt5linux"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    return World(tmp_path, proxy=request.param == "mt5linux")


def test_it_is_a_broker_with_every_optional_capability(world: World) -> None:
    assert isinstance(world.broker, Broker)
    assert isinstance(world.broker, AccountReader)
    assert isinstance(world.broker, TradeHistory)
    assert isinstance(world.broker, Deadlined)


# -- login -----------------------------------------------------------------------


def _logins(world: World) -> list[str]:
    return [c for c in world.mt5.calls if c in ("initialize", "login", "shutdown")]


def test_first_login_attaches_then_logs_in_once(world: World) -> None:
    result = world.login()
    assert result.ok
    assert result.account == Account(LOGIN, SERVER)
    assert world.mt5.logged_in == LOGIN
    assert world.login(logged_in_before=True).ok
    assert _logins(world) == ["initialize", "login", "login"]
    # initialize() never carries the credentials: the password went to login() only.
    assert world.mt5.submissions == [Submission("login", LOGIN, SERVER)] * 2


def test_login_after_stop_attaches_again(world: World) -> None:
    assert world.login().ok
    world.broker.stop(world.id)
    assert world.login(logged_in_before=True).ok
    assert _logins(world) == ["initialize", "login", "shutdown", "initialize", "login"]


def test_the_report_covers_every_res_code() -> None:
    assert set(RES_CODES) == set(EXPECTED_REASON)


@pytest.mark.parametrize("name", sorted(EXPECTED_REASON))
@pytest.mark.parametrize("path", ["initialize", "login"])
def test_every_res_code_maps_to_its_reason(world: World, name: str, path: str) -> None:
    if path == "login":
        assert world.login().ok
    world.mt5.fail_logins(RES_CODES[name], f"message for {name}")
    result = world.login(logged_in_before=True)
    assert not result.ok
    assert result.reason is EXPECTED_REASON[name]
    assert result.code == RES_CODES[name]
    assert result.message.startswith(f"message for {name}")


def test_after_a_network_failure_the_next_login_attaches_first(world: World) -> None:
    assert world.login().ok
    world.mt5.fail_logins(-10004, "No IPC connection")
    assert world.login(logged_in_before=True).reason is Reason.NETWORK
    assert world.login(logged_in_before=True).ok
    assert _logins(world)[-2:] == ["initialize", "login"]


def test_a_crashed_terminal_is_attached_again(world: World) -> None:
    assert world.login().ok
    world.mt5.crash()
    assert world.login(logged_in_before=True).ok
    assert _logins(world) == ["initialize", "login", "initialize", "login"]


def test_an_attach_that_fails_sends_no_password(world: World) -> None:
    world.mt5.fail_initialize(-10005, "IPC timeout")
    result = world.login()
    assert (result.reason, result.code) == (Reason.NETWORK, -10005)
    world.mt5.fail_initialize(-6, "Terminal: Authorization failed")  # its own saved account
    assert world.login(logged_in_before=True).reason is Reason.TERMINAL  # never a password try
    assert world.mt5.submissions == []


def test_terminal_not_found_is_terminal(world: World) -> None:
    world.mt5.fail_initialize()
    result = world.login()
    assert (result.reason, result.code) == (Reason.TERMINAL, -10003)
    assert "MetaTrader 5 x64 not found" in result.message


# -- the journal -----------------------------------------------------------------


def test_wrong_password_is_auth_failed(world: World) -> None:
    result = world.login(creds=Credentials(LOGIN, SERVER, "wrong-password"))
    assert (result.reason, result.code) == (Reason.AUTH_FAILED, -6)
    assert "Invalid account" in result.message  # the journal line is kept for the archive


def test_disabled_account_is_banned(world: World) -> None:
    assert world.login().ok
    world.mt5.disable_account(LOGIN)
    for before in (True, False):
        result = world.login(logged_in_before=before)
        assert (result.reason, result.code) == (Reason.ACCOUNT_BANNED, -6)


def test_invalid_account_after_a_success_is_closed(world: World) -> None:
    assert world.login().ok
    world.mt5.delete_account(LOGIN)
    result = world.login(logged_in_before=True)
    assert (result.reason, result.code) == (Reason.ACCOUNT_CLOSED, -6)
    assert f"'{LOGIN}': authorization on {SERVER} failed (Invalid account)" in result.message


def test_invalid_account_never_logged_in_is_auth_failed(world: World) -> None:
    result = world.login(creds=Credentials(9999999, SERVER, PASSWORD), logged_in_before=False)
    assert (result.reason, result.code) == (Reason.AUTH_FAILED, -6)


def test_a_single_minus_6_without_a_journal_line_is_never_a_closure(world: World) -> None:
    assert world.login().ok
    world.mt5.fail_logins(-6, "Terminal: Authorization failed")
    result = world.login(logged_in_before=True)
    assert result.reason is Reason.AUTH_FAILED


def test_account_disabled_in_the_message_alone_is_banned(world: World) -> None:
    world.mt5.fail_logins(-6, "Terminal: Authorization failed (ACCOUNT DISABLED)")
    assert world.login().reason is Reason.ACCOUNT_BANNED


class _UnderWine(FakeMetaTrader5):
    """A terminal whose own data path is a Wine path, meaningless on this machine."""

    def terminal_info(self) -> TerminalInfo | None:
        info = super().terminal_info()
        return None if info is None else info._replace(data_path=WINE_DATA_PATH)


WINE_DATA_PATH = r"C:\users\bot\AppData\Roaming\MetaQuotes\Terminal\D0E8209F77C8CF37"


def test_the_journal_is_found_through_the_configured_path(tmp_path: Path) -> None:
    # The terminal's own data_path is not a folder here: only data_paths leads to it.
    mt5 = _UnderWine(data_path=tmp_path)
    mt5.add_account(LOGIN, PASSWORD, SERVER)
    mt5.delete_account(LOGIN)
    configured = MT5Broker({"acc-1": mt5}, data_paths={"acc-1": tmp_path}, sleep=lambda _: None)
    assert configured.login("acc-1", CREDS, logged_in_before=True).reason is Reason.ACCOUNT_CLOSED
    other = _UnderWine(data_path=tmp_path / "other")
    other.add_account(LOGIN, PASSWORD, SERVER)
    other.delete_account(LOGIN)
    unconfigured = MT5Broker({"acc-2": other}, sleep=lambda _: None)
    result = unconfigured.login("acc-2", CREDS, logged_in_before=True)
    assert result.reason is Reason.AUTH_FAILED  # no journal reachable: never a closure


def test_a_success_newer_than_a_failure_hides_it(world: World) -> None:
    world.mt5.write_journal(f"'{LOGIN}': authorization on {SERVER} failed (Account disabled)")
    assert world.login().ok  # writes "authorized on"
    world.mt5.fail_logins(-6)
    assert world.login(logged_in_before=True).reason is Reason.AUTH_FAILED


def test_only_the_newest_journal_file_counts(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    failed = "authorization on X failed"
    (logs / "20251231.log").write_text(
        f"LP\t2\t23:59:59.000\tNetwork\t'{LOGIN}': {failed} (Account disabled)\r\n",
        encoding="utf-16",
    )
    (logs / "20260101.log").write_text(
        f"DL\t0\t00:00:01.000\tTerminal\tMetaTrader 5 x64 build 5200 started\r\n"
        f"LP\t2\t00:00:02.000\tNetwork\t'{LOGIN}': {failed} (Invalid account)\r\n"
        f"LP\t2\t00:00:03.000\tNetwork\t'1{LOGIN}': {failed} (Account disabled)\r\n",
        encoding="utf-16",
    )
    line = read_journal_line(tmp_path, LOGIN)
    assert line is not None and line.endswith("failed (Invalid account)")
    assert read_journal_line(tmp_path, 42) is None
    assert read_journal_line(tmp_path / "nowhere", LOGIN) is None


def test_a_long_journal_is_read_from_its_tail(tmp_path: Path) -> None:
    logs = tmp_path / "Logs"
    logs.mkdir()
    filler = "QK\t0\t00:00:00.000\tTerminal\tnothing to see here, only filler\r\n" * 80_000
    last = (
        f"LP\t2\t00:00:02.000\tNetwork\t'{LOGIN}': authorization on X failed (Account disabled)\r\n"
    )
    (logs / "20260101.log").write_text(filler + last, encoding="utf-16")
    assert (logs / "20260101.log").stat().st_size > 4 * 1024 * 1024
    line = read_journal_line(tmp_path, LOGIN)
    assert line is not None and line.endswith("(Account disabled)")


# -- logins that raise -----------------------------------------------------------


def test_a_login_that_timed_out_but_succeeded_is_a_success(world: World) -> None:
    world.mt5.raise_on_login()  # TimeoutError('result expired'), as mt5linux says
    assert world.login().ok
    assert "account_info" in world.mt5.calls
    assert world.login(logged_in_before=True).ok
    assert world.mt5.calls.count("initialize") == 1  # the terminal counts as initialized


def test_a_login_that_raised_and_did_not_succeed_is_network(world: World) -> None:
    world.mt5.raise_on_login(succeed=False)
    result = world.login()
    assert (result.ok, result.reason, result.code) == (False, Reason.NETWORK, None)
    assert "TimeoutError" in result.message


def test_a_login_that_raised_while_logged_in_elsewhere_is_network(world: World) -> None:
    world.mt5.add_account(777, "other-pw", SERVER)
    assert world.login(creds=Credentials(777, SERVER, "other-pw")).ok
    world.mt5.raise_on_login(ConnectionResetError("peer gone"), succeed=False)
    assert world.login().reason is Reason.NETWORK


def test_the_password_never_reaches_the_message(world: World) -> None:
    world.mt5.fail_logins(
        -2, f'Invalid "password" argument: {PASSWORD}', journal=f"echo {PASSWORD}"
    )
    result = world.login()
    assert PASSWORD not in result.message and PASSWORD not in repr(result)
    assert "***" in result.message
    world.mt5.raise_on_login(RuntimeError(f"login({LOGIN}, password={PASSWORD!r})"), succeed=False)
    result = world.login()
    assert PASSWORD not in result.message and "***" in result.message


# -- status, restart, stop -------------------------------------------------------


def test_status(world: World) -> None:
    # Never initialized by this process: the broker attaches to the terminal (a worker
    # that resumes an instance must see the session the terminal has), which runs but
    # is logged in to nothing yet.
    assert world.broker.status(world.id) is TerminalStatus.DISCONNECTED
    assert world.login().ok
    assert world.broker.status(world.id) is TerminalStatus.CONNECTED
    world.mt5.drop_connection()
    assert world.broker.status(world.id) is TerminalStatus.DISCONNECTED
    world.mt5.restore_connection()
    assert world.broker.status(world.id) is TerminalStatus.CONNECTED
    world.mt5.crash()
    assert world.broker.status(world.id) is TerminalStatus.DOWN


def test_a_closed_account_reads_disconnected(world: World) -> None:
    assert world.login().ok
    world.mt5.delete_account(LOGIN)
    assert world.broker.status(world.id) is TerminalStatus.DISCONNECTED


def test_restart_shuts_down_and_initializes(world: World) -> None:
    assert world.login().ok
    world.mt5.crash()
    world.broker.restart(world.id)
    assert world.mt5.calls[-2:] == ["shutdown", "initialize"]
    assert world.broker.status(world.id) is TerminalStatus.CONNECTED  # logged in as before
    assert world.login(logged_in_before=True).ok
    assert world.mt5.calls[-2:] == ["login", "account_info"]


def test_restart_raises_when_the_terminal_does_not_start(world: World) -> None:
    world.mt5.fail_initialize()
    with pytest.raises(TerminalUnavailable, match=r"acc-1.*-10003.*x64 not found") as caught:
        world.broker.restart(world.id)
    assert isinstance(caught.value, LifecycleError) and caught.value.code == -10003


def test_stop_shuts_down(world: World) -> None:
    assert world.login().ok
    world.broker.stop(world.id)
    assert world.mt5.calls[-1] == "shutdown"
    assert world.broker.status(world.id) is TerminalStatus.DOWN


# -- configuration ---------------------------------------------------------------


def test_two_ids_on_one_module_are_refused(tmp_path: Path) -> None:
    mt5 = FakeMetaTrader5()
    with pytest.raises(TerminalShared, match=r"'bot-a' and 'bot-b'") as caught:
        MT5Broker({"bot-a": mt5, "bot-b": mt5})
    assert isinstance(caught.value, ValueError)


def test_two_ids_from_a_factory_on_one_module_are_refused() -> None:
    mt5 = FakeMetaTrader5()
    broker = MT5Broker(lambda instance_id: mt5)
    assert broker.status("bot-a") is TerminalStatus.DISCONNECTED
    with pytest.raises(TerminalShared, match=r"'bot-a' and 'bot-b'"):
        broker.status("bot-b")
    assert broker.status("bot-a") is TerminalStatus.DISCONNECTED


def test_a_factory_is_asked_once_per_id(tmp_path: Path) -> None:
    asked: list[str] = []

    def factory(instance_id: str) -> FakeMetaTrader5:
        asked.append(instance_id)
        mt5 = FakeMetaTrader5()
        mt5.add_account(LOGIN, PASSWORD, SERVER)
        return mt5

    broker = MT5Broker(factory)
    assert broker.login("bot-a", CREDS, logged_in_before=False).ok
    assert broker.status("bot-a") is TerminalStatus.CONNECTED
    assert asked == ["bot-a"]


def test_an_unknown_id_is_refused(world: World) -> None:
    with pytest.raises(TerminalNotConfigured, match="'acc-2'"):
        world.broker.status("acc-2")
    with pytest.raises(TerminalNotConfigured):
        MT5Broker(lambda _: None).status("acc-2")


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "x" * 129])
def test_a_bad_id_is_refused_before_any_call(world: World, bad: str) -> None:
    with pytest.raises(InvalidInstanceId):
        world.broker.login(bad, CREDS, logged_in_before=False)
    with pytest.raises(InvalidInstanceId):
        MT5Broker({bad: FakeMetaTrader5()})
    assert world.mt5.calls == []


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"login_timeout_ms": 0}, "login_timeout_ms"),
        ({"login_timeout_ms": True}, "login_timeout_ms"),
        ({"deviation": -1}, "deviation"),
        ({"comment": "x" * 32}, "comment"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        MT5Broker({"a": FakeMetaTrader5()}, **kwargs)


def test_the_module_is_never_imported() -> None:
    import sys

    import mt5lifecycle.adapters.mt5  # noqa: F401

    assert "MetaTrader5" not in sys.modules


# -- positions, orders, closing --------------------------------------------------


def _logged_in(world: World) -> World:
    assert world.login().ok
    return world


def test_positions_and_orders(world: World) -> None:
    _logged_in(world)
    world.mt5.open_position(7001, "EURUSD", 1.5)
    world.mt5.open_position(7002, "XAUUSD", 0.2, type=1)
    world.mt5.pending_order(8001, "EURUSD", volume=0.3)
    assert world.broker.positions(world.id) == [
        Position(ticket=7001, symbol="EURUSD", volume=1.5),
        Position(ticket=7002, symbol="XAUUSD", volume=0.2),
    ]
    assert world.broker.orders(world.id) == [Order(ticket=8001, symbol="EURUSD", volume=0.3)]


def test_positions_of_a_dead_terminal_raise_rather_than_say_none(world: World) -> None:
    _logged_in(world)
    world.mt5.open_position(7001, "EURUSD", 1.0)
    world.mt5.crash()
    with pytest.raises(TerminalUnavailable, match=r"list its positions: -10004"):
        world.broker.positions(world.id)
    with pytest.raises(TerminalUnavailable, match=r"list its orders: -10004"):
        world.broker.orders(world.id)


CLOSE_CASES = [
    (10009, 0.0),  # done
    (10010, 0.5),  # partial: half of the requested volume filled
    (10004, 1.0),  # requote
    (10020, 1.0),  # prices changed
    (10021, 1.0),  # price off
    (10006, 1.0),  # rejected
    (10018, 1.0),  # market closed
    (10027, 1.0),  # autotrading disabled by the client
    (10028, 1.0),  # locked
    (10029, 1.0),  # frozen
]


@pytest.mark.parametrize(("retcode", "remaining"), CLOSE_CASES)
def test_close_position_sends_one_request_and_reports(
    world: World, retcode: int, remaining: float
) -> None:
    _logged_in(world)
    world.mt5.set_symbol("EURUSD", bid=1.25, ask=1.2502)
    world.mt5.open_position(7001, "EURUSD", 1.0, close_retcodes=retcode)
    result = world.broker.close_position(
        world.id, Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0
    )
    assert result.retcode == retcode
    assert result.remaining == pytest.approx(remaining)
    assert result.comment
    assert len(world.mt5.requests) == 1
    request = world.mt5.requests[0]
    assert request["action"] == FakeMetaTrader5.TRADE_ACTION_DEAL
    assert request["position"] == 7001
    assert request["type"] == FakeMetaTrader5.ORDER_TYPE_SELL  # closing a buy
    assert request["price"] == 1.25  # at the bid
    assert request["volume"] == 1.0
    assert request["type_filling"] == FakeMetaTrader5.ORDER_FILLING_FOK


def test_closing_without_connection_is_10031(world: World) -> None:
    _logged_in(world)
    world.mt5.open_position(7001, "EURUSD", 1.0)
    world.mt5.drop_connection()
    result = world.broker.close_position(
        world.id, Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0
    )
    assert (result.retcode, result.remaining) == (10031, 1.0)


def test_a_sell_closes_with_a_buy_at_the_ask(world: World) -> None:
    _logged_in(world)
    world.mt5.set_symbol("GBPUSD", bid=1.3, ask=1.3003)
    world.mt5.open_position(7003, "GBPUSD", 0.4, type=FakeMetaTrader5.POSITION_TYPE_SELL)
    result = world.broker.close_position(
        world.id, Position(ticket=7003, symbol="GBPUSD", volume=0.4), 0.4
    )
    assert (result.retcode, result.remaining) == (10009, 0.0)
    request = world.mt5.requests[0]
    assert (request["type"], request["price"]) == (FakeMetaTrader5.ORDER_TYPE_BUY, 1.3003)


def test_a_partial_fill_closes_the_rest_on_the_next_call(world: World) -> None:
    _logged_in(world)
    world.mt5.open_position(7001, "EURUSD", 1.0, close_retcodes=[10010, 10009])
    position = Position(ticket=7001, symbol="EURUSD", volume=1.0)
    first = world.broker.close_position(world.id, position, 1.0)
    assert (first.retcode, first.remaining) == (10010, 0.5)
    second = world.broker.close_position(world.id, position, first.remaining)
    assert (second.retcode, second.remaining) == (10009, 0.0)
    assert [r["volume"] for r in world.mt5.requests] == [1.0, 0.5]


@pytest.mark.parametrize(
    ("flags", "filling"),
    [(1, 0), (3, 0), (2, 1), (0, 2)],  # FOK first, then IOC, else RETURN
)
def test_the_filling_follows_the_symbol(world: World, flags: int, filling: int) -> None:
    _logged_in(world)
    world.mt5.set_symbol("EURUSD", filling_mode=flags)
    world.mt5.open_position(7001, "EURUSD", 1.0)
    result = world.broker.close_position(
        world.id, Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0
    )
    assert result.retcode == 10009
    assert world.mt5.requests[0]["type_filling"] == filling


def test_a_position_closed_meanwhile_sends_nothing(world: World) -> None:
    _logged_in(world)
    result = world.broker.close_position(
        world.id, Position(ticket=7009, symbol="EURUSD", volume=1.0), 1.0
    )
    assert (result.retcode, result.remaining) == (10036, 0.0)
    assert world.mt5.requests == []


class _NoAnswer(FakeMetaTrader5):
    def order_send(self, request: Any) -> OrderSendResult | None:
        super().order_send(request)  # recorded, then the answer is lost
        self._error = (-10005, "IPC timeout")
        return None


def test_order_send_returning_none_is_no_retcode(tmp_path: Path) -> None:
    mt5 = _NoAnswer()
    mt5.add_account(LOGIN, PASSWORD, SERVER)
    broker = MT5Broker({"acc-1": mt5})
    assert broker.login("acc-1", CREDS, logged_in_before=False).ok
    mt5.open_position(7001, "EURUSD", 1.0)
    mt5.pending_order(8001, "EURUSD")
    result = broker.close_position("acc-1", Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0)
    assert (result.retcode, result.comment) == (None, "-10005, IPC timeout")
    cancelled = broker.cancel_order("acc-1", Order(ticket=8001, symbol="EURUSD"))
    assert (cancelled.retcode, cancelled.comment) == (None, "-10005, IPC timeout")


def test_a_transport_that_raises_while_closing_is_no_retcode(tmp_path: Path) -> None:
    class Broken(Mt5LinuxProxy):
        def order_send(self, request: Any) -> Any:
            raise EOFError("connection closed by peer")

    mt5 = FakeMetaTrader5()
    mt5.add_account(LOGIN, PASSWORD, SERVER)
    broker = MT5Broker({"acc-1": Broken(mt5)})
    assert broker.login("acc-1", CREDS, logged_in_before=False).ok
    mt5.open_position(7001, "EURUSD", 1.0)
    result = broker.close_position("acc-1", Position(ticket=7001, symbol="EURUSD", volume=1.0), 1.0)
    assert (result.retcode, result.remaining) == (None, 1.0)
    assert "EOFError" in result.comment


@pytest.mark.parametrize("retcode", [10009, 10028, 10006])
def test_cancel_order_sends_one_remove(world: World, retcode: int) -> None:
    _logged_in(world)
    world.mt5.pending_order(8001, "EURUSD", cancel_retcodes=retcode)
    result = world.broker.cancel_order(world.id, Order(ticket=8001, symbol="EURUSD", volume=0.1))
    assert result.retcode == retcode
    assert len(world.mt5.requests) == 1
    request = world.mt5.requests[0]
    assert (request["action"], request["order"]) == (FakeMetaTrader5.TRADE_ACTION_REMOVE, 8001)
    assert bool(world.broker.orders(world.id)) is (retcode != 10009)


# -- the classification is replaceable --------------------------------------------


def test_a_host_classifier_sees_what_the_terminal_said(tmp_path: Path) -> None:
    seen: list[tuple[int | None, str, str | None, bool]] = []

    def strict(code: int | None, message: str, journal: str | None, before: bool) -> Reason:
        seen.append((code, message, journal, before))
        return (
            Reason.ACCOUNT_BANNED if journal and "(Invalid account)" in journal else Reason.NETWORK
        )

    world = World(tmp_path)
    broker = MT5Broker({"acc-9": world.mt5}, data_paths={"acc-9": world.data_path}, classify=strict)
    result = broker.login("acc-9", Credentials(LOGIN, SERVER, "wrong"), logged_in_before=False)
    assert result.reason is Reason.ACCOUNT_BANNED
    [(code, message, journal, before)] = seen
    assert (code, message, before) == (-6, "Terminal: Authorization failed", False)
    assert journal is not None and journal.endswith(
        f"'{LOGIN}': authorization on {SERVER} failed (Invalid account)"
    )


def test_a_classifier_answer_that_is_no_login_reason_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path)
    broker = MT5Broker({"acc-9": world.mt5}, classify=lambda *_: Reason.MANUAL)
    with pytest.raises(ValueError, match="MANUAL"):
        broker.login("acc-9", Credentials(LOGIN, SERVER, "wrong"), logged_in_before=False)


def test_a_restart_asks_the_factory_for_a_fresh_client(tmp_path: Path) -> None:
    # An mt5linux client whose rpyc server restarted raises on every call for ever.
    class Dead(Mt5LinuxProxy):
        def __getattr__(self, name: str) -> Any:
            raise EOFError("stream has been closed")

    terminal = FakeMetaTrader5()
    terminal.add_account(LOGIN, PASSWORD, SERVER)
    made: list[object] = []

    def connect(instance_id: str) -> object:
        client = Dead(terminal) if not made else Mt5LinuxProxy(terminal)
        made.append(client)
        return client

    broker = MT5Broker(connect)
    assert broker.login("acc-1", CREDS, logged_in_before=False).reason is Reason.NETWORK
    assert broker.status("acc-1") is TerminalStatus.DOWN
    broker.restart("acc-1")
    assert len(made) == 2
    assert broker.login("acc-1", CREDS, logged_in_before=True).ok
    assert broker.status("acc-1") is TerminalStatus.CONNECTED


def test_a_dead_client_never_escapes_but_as_typed_errors(tmp_path: Path) -> None:
    class Dead:
        def __getattr__(self, name: str) -> Any:
            raise EOFError("stream has been closed")

    broker = MT5Broker({"acc-1": Dead()})
    assert broker.login("acc-1", CREDS, logged_in_before=True).reason is Reason.NETWORK
    assert broker.status("acc-1") is TerminalStatus.DOWN
    broker.stop("acc-1")
    with pytest.raises(TerminalUnavailable, match="EOFError"):
        broker.restart("acc-1")
    with pytest.raises(TerminalUnavailable, match="EOFError"):
        broker.positions("acc-1")
    with pytest.raises(TerminalUnavailable, match="EOFError"):
        broker.orders("acc-1")
    closing = broker.close_position("acc-1", Position(ticket=1, symbol="EURUSD", volume=1.0), 1.0)
    assert (closing.retcode, closing.remaining) == (None, 1.0)
    assert broker.cancel_order("acc-1", Order(ticket=2, symbol="EURUSD")).retcode is None
