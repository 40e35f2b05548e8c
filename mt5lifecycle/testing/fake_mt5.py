"""A fake ``MetaTrader5`` module: a terminal and its broker in one scriptable object.

The real package ships for Windows only and needs a running terminal, so tests (ours
and a host's) drive ``MT5Broker`` through this instead. An instance of
``FakeMetaTrader5`` stands where the module would: it has every public function of
the package with the same parameters, every constant with the same value, results
shaped like the package's (named tuples with the real field names), and the same
habits: ``False``/``None`` plus ``last_error()`` instead of exceptions, ``-10004 'No
IPC connection'`` before ``initialize()`` or after a crash, ``-6 'Terminal:
Authorization failed'`` for every refused login, with the reason written only to the
terminal's journal (``logs/YYYYMMDD.log`` in UTF-16 under ``data_path``).
``tests/adapters/test_mt5_fake_api.py`` checks names, parameters and constants
against the real wheel.

Scripting (the names in ``SCRIPTING_API``, which the real module does not have)::

    mt5 = FakeMetaTrader5(data_path=tmp_path)
    mt5.add_account(5012345, "secret", "Broker-Demo")
    mt5.open_position(7001, "EURUSD", 1.0, close_retcodes=[10004, 10009])
    mt5.delete_account(5012345)     # later logins: -6, journal "(Invalid account)"

A terminal that is slow or stuck, or that answers for another account::

    mt5.delay("login", 1.5)                  # answers 1.5 s late (the login took effect)
    mt5.delay("initialize", 1.5, before=True) # starts 1.5 s late
    held = mt5.hang("terminal_info")         # blocks until held.release() or crash()
    mt5.cross_wire(777)                      # account_info() names login 777
    mt5.submissions                          # every call that carried a password

The history (``history_deals_get``, ``history_orders_get``) holds what happened:
positions opened and closed (by ``order_send``, or by the broker with
``close_by_broker``), orders cancelled or filled (``fill_order``).

Not modelled: price history (``copy_*`` answer ``None`` with ``RES_E_NOT_FOUND``),
market depth, margin and profit arithmetic.
"""

# The fake keeps the package's parameter names, used or not: the API test checks them.

from __future__ import annotations

import fnmatch
import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple, Protocol, TypeVar

import attrs

__all__ = [
    "SCRIPTING_API",
    "AccountInfo",
    "BookInfo",
    "FakeMetaTrader5",
    "Hang",
    "Mt5LinuxProxy",
    "OrderCheckResult",
    "OrderSendResult",
    "Submission",
    "SymbolInfo",
    "TerminalInfo",
    "Tick",
    "TradeDeal",
    "TradeOrder",
    "TradePosition",
    "TradeRequest",
]

SCRIPTING_API = frozenset(
    {
        "add_account",
        "calls",
        "close_by_broker",
        "crash",
        "cross_wire",
        "delay",
        "delete_account",
        "disable_account",
        "drop_connection",
        "fail_initialize",
        "fail_logins",
        "fill_order",
        "flush_journal",
        "hang",
        "hold_journal",
        "logged_in",
        "open_position",
        "pending_order",
        "raise_on_login",
        "release_hangs",
        "requests",
        "restore_connection",
        "set_symbol",
        "submissions",
        "write_journal",
    }
)
"""The fake's own public names, for scripting a test; the real module has none of them."""


_T = TypeVar("_T")


class _Clock(Protocol):
    def now(self) -> float: ...


class Submission(NamedTuple):
    """One call that handed a password to the terminal (the password itself is not kept)."""

    function: str
    """``initialize`` or ``login``."""
    login: int
    server: str | None


class Hang:
    """A call held by :meth:`FakeMetaTrader5.hang` or ``delay``: the test's handle on it.

    ``entered`` is set once the held call has started waiting, so a test can wait for
    the call to be in progress without sleeping; ``release()`` lets it go on (a delay
    ends early), as does the terminal's crash.
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def _wait(self, seconds: float | None) -> None:
        self.entered.set()
        self._released.wait(seconds)


# -- result types: field names and order as the package's struct sequences ----------


class TerminalInfo(NamedTuple):
    community_account: bool = False
    community_connection: bool = False
    connected: bool = False
    dlls_allowed: bool = False
    trade_allowed: bool = True
    tradeapi_disabled: bool = False
    email_enabled: bool = False
    ftp_enabled: bool = False
    notifications_enabled: bool = False
    mqid: bool = False
    build: int = 0
    maxbars: int = 100000
    codepage: int = 0
    ping_last: int = 0
    community_balance: float = 0.0
    retransmission: float = 0.0
    company: str = ""
    name: str = ""
    language: str = "English"
    path: str = ""
    data_path: str = ""
    commondata_path: str = ""


class AccountInfo(NamedTuple):
    login: int = 0
    trade_mode: int = 0
    leverage: int = 100
    limit_orders: int = 200
    margin_so_mode: int = 0
    trade_allowed: bool = True
    trade_expert: bool = True
    margin_mode: int = 2
    currency_digits: int = 2
    fifo_close: bool = False
    balance: float = 0.0
    credit: float = 0.0
    profit: float = 0.0
    equity: float = 0.0
    margin: float = 0.0
    margin_free: float = 0.0
    margin_level: float = 0.0
    margin_so_call: float = 50.0
    margin_so_so: float = 30.0
    margin_initial: float = 0.0
    margin_maintenance: float = 0.0
    assets: float = 0.0
    liabilities: float = 0.0
    commission_blocked: float = 0.0
    name: str = ""
    server: str = ""
    currency: str = "USD"
    company: str = ""


class TradePosition(NamedTuple):
    ticket: int = 0
    time: int = 0
    time_msc: int = 0
    time_update: int = 0
    time_update_msc: int = 0
    type: int = 0
    magic: int = 0
    identifier: int = 0
    reason: int = 0
    volume: float = 0.0
    price_open: float = 0.0
    sl: float = 0.0
    tp: float = 0.0
    price_current: float = 0.0
    swap: float = 0.0
    profit: float = 0.0
    symbol: str = ""
    comment: str = ""
    external_id: str = ""


class TradeOrder(NamedTuple):
    ticket: int = 0
    time_setup: int = 0
    time_setup_msc: int = 0
    time_done: int = 0
    time_done_msc: int = 0
    time_expiration: int = 0
    type: int = 0
    type_time: int = 0
    type_filling: int = 0
    state: int = 0
    magic: int = 0
    position_id: int = 0
    position_by_id: int = 0
    reason: int = 0
    volume_initial: float = 0.0
    volume_current: float = 0.0
    price_open: float = 0.0
    sl: float = 0.0
    tp: float = 0.0
    price_current: float = 0.0
    price_stoplimit: float = 0.0
    symbol: str = ""
    comment: str = ""
    external_id: str = ""


class TradeDeal(NamedTuple):
    ticket: int = 0
    order: int = 0
    time: int = 0
    time_msc: int = 0
    type: int = 0
    entry: int = 0
    magic: int = 0
    position_id: int = 0
    reason: int = 0
    volume: float = 0.0
    price: float = 0.0
    commission: float = 0.0
    swap: float = 0.0
    profit: float = 0.0
    fee: float = 0.0
    symbol: str = ""
    comment: str = ""
    external_id: str = ""


class TradeRequest(NamedTuple):
    action: int = 0
    magic: int = 0
    order: int = 0
    symbol: str = ""
    volume: float = 0.0
    price: float = 0.0
    stoplimit: float = 0.0
    sl: float = 0.0
    tp: float = 0.0
    deviation: int = 0
    type: int = 0
    type_filling: int = 0
    type_time: int = 0
    expiration: int = 0
    comment: str = ""
    position: int = 0
    position_by: int = 0


class OrderSendResult(NamedTuple):
    retcode: int = 0
    deal: int = 0
    order: int = 0
    volume: float = 0.0
    price: float = 0.0
    bid: float = 0.0
    ask: float = 0.0
    comment: str = ""
    request_id: int = 0
    retcode_external: int = 0
    request: TradeRequest = TradeRequest()


class OrderCheckResult(NamedTuple):
    retcode: int = 0
    balance: float = 0.0
    equity: float = 0.0
    profit: float = 0.0
    margin: float = 0.0
    margin_free: float = 0.0
    margin_level: float = 0.0
    comment: str = ""
    request: TradeRequest = TradeRequest()


class Tick(NamedTuple):
    time: int = 0
    bid: float = 0.0
    ask: float = 0.0
    last: float = 0.0
    volume: int = 0
    time_msc: int = 0
    flags: int = 0
    volume_real: float = 0.0


class BookInfo(NamedTuple):
    type: int = 0
    price: float = 0.0
    volume: int = 0
    volume_dbl: float = 0.0


class SymbolInfo(NamedTuple):
    custom: bool = False
    chart_mode: int = 0
    select: bool = False
    visible: bool = False
    session_deals: int = 0
    session_buy_orders: int = 0
    session_sell_orders: int = 0
    volume: int = 0
    volumehigh: int = 0
    volumelow: int = 0
    time: int = 0
    digits: int = 0
    spread: int = 0
    spread_float: bool = False
    ticks_bookdepth: int = 0
    trade_calc_mode: int = 0
    trade_mode: int = 0
    start_time: int = 0
    expiration_time: int = 0
    trade_stops_level: int = 0
    trade_freeze_level: int = 0
    trade_exemode: int = 0
    swap_mode: int = 0
    swap_rollover3days: int = 0
    margin_hedged_use_leg: bool = False
    expiration_mode: int = 0
    filling_mode: int = 0
    order_mode: int = 0
    order_gtc_mode: int = 0
    option_mode: int = 0
    option_right: int = 0
    bid: float = 0.0
    bidhigh: float = 0.0
    bidlow: float = 0.0
    ask: float = 0.0
    askhigh: float = 0.0
    asklow: float = 0.0
    last: float = 0.0
    lasthigh: float = 0.0
    lastlow: float = 0.0
    volume_real: float = 0.0
    volumehigh_real: float = 0.0
    volumelow_real: float = 0.0
    option_strike: float = 0.0
    point: float = 0.0
    trade_tick_value: float = 0.0
    trade_tick_value_profit: float = 0.0
    trade_tick_value_loss: float = 0.0
    trade_tick_size: float = 0.0
    trade_contract_size: float = 0.0
    trade_accrued_interest: float = 0.0
    trade_face_value: float = 0.0
    trade_liquidity_rate: float = 0.0
    volume_min: float = 0.0
    volume_max: float = 0.0
    volume_step: float = 0.0
    volume_limit: float = 0.0
    swap_long: float = 0.0
    swap_short: float = 0.0
    margin_initial: float = 0.0
    margin_maintenance: float = 0.0
    session_volume: float = 0.0
    session_turnover: float = 0.0
    session_interest: float = 0.0
    session_buy_orders_volume: float = 0.0
    session_sell_orders_volume: float = 0.0
    session_open: float = 0.0
    session_close: float = 0.0
    session_aw: float = 0.0
    session_price_settlement: float = 0.0
    session_price_limit_min: float = 0.0
    session_price_limit_max: float = 0.0
    margin_hedged: float = 0.0
    price_change: float = 0.0
    price_volatility: float = 0.0
    price_theoretical: float = 0.0
    price_greeks_delta: float = 0.0
    price_greeks_theta: float = 0.0
    price_greeks_gamma: float = 0.0
    price_greeks_vega: float = 0.0
    price_greeks_rho: float = 0.0
    price_greeks_omega: float = 0.0
    price_sensitivity: float = 0.0
    basis: str = ""
    category: str = ""
    currency_base: str = "USD"
    currency_profit: str = "USD"
    currency_margin: str = "USD"
    bank: str = ""
    description: str = ""
    exchange: str = ""
    formula: str = ""
    isin: str = ""
    name: str = ""
    page: str = ""
    path: str = ""


# -- what the fake terminal and broker hold ----------------------------------------

_SUCCESS = (1, "Success")
_NO_IPC = (-10004, "No IPC connection")
_AUTH_FAILED = (-6, "Terminal: Authorization failed")
_IPC_TIMEOUT = (-10005, "IPC timeout")
_NOT_FOUND = (-4, "Terminal: Not found")
_INVALID_PARAMS = (-2, "Terminal: Invalid params")

# The terminal's own words for a trade return code (OrderSendResult.comment).
_RETCODE_COMMENTS = {
    10004: "Requote",
    10006: "Request rejected",
    10008: "Order placed",
    10009: "Request executed",
    10010: "Request executed partially",
    10013: "Invalid request",
    10014: "Invalid volume",
    10015: "Invalid price",
    10018: "Market closed",
    10020: "Prices changed",
    10021: "No prices",
    10027: "AutoTrading disabled by client",
    10028: "Request locked for processing",
    10029: "Order or position frozen",
    10030: "Unsupported filling mode",
    10031: "No connection with the trade server",
    10036: "Position already closed",
}

Script = int | Sequence[int]


def _script(value: Script) -> list[int]:
    codes = [value] if isinstance(value, int) else list(value)
    if not codes or any(isinstance(c, bool) or not isinstance(c, int) for c in codes):
        raise ValueError(f"a retcode script is an int or a non-empty sequence of ints: {value!r}")
    return codes


def _next(script: list[int]) -> int:
    # Each call takes the next code; the last one repeats for ever.
    return script.pop(0) if len(script) > 1 else script[0]


@attrs.define
class _Account:
    login: int
    password: str
    server: str
    name: str
    balance: float
    status: str = "active"
    """``active``, ``disabled`` (the journal says ``Account disabled``) or ``invalid``."""


@attrs.define
class _LoginFailure:
    code: int
    message: str
    journal: str | None


@attrs.define
class _Raise:
    error: BaseException
    succeed: bool


@attrs.define
class _Position:
    ticket: int
    symbol: str
    type: int
    volume: float
    price_open: float
    magic: int
    comment: str
    close_retcodes: list[int]


@attrs.define
class _Order:
    ticket: int
    symbol: str
    type: int
    volume: float
    price_open: float
    cancel_retcodes: list[int]


@attrs.define
class _Symbol:
    name: str
    bid: float
    ask: float
    filling_mode: int
    digits: int = 5
    point: float = 0.00001
    volume_min: float = 0.01
    volume_step: float = 0.01
    volume_max: float = 100.0
    trade_mode: int = 4


@attrs.define
class _Hold:
    seconds: float | None
    """``None``: until released."""
    before: bool
    """Wait before doing the call's work (it starts late) or after (it answers late)."""
    hang: Hang


class FakeMetaTrader5:
    """A stand-in for the ``MetaTrader5`` module, one terminal per instance.

    ``data_path`` is the terminal's data folder (its journal goes to ``logs/`` under
    it; ``None`` writes no journal). ``clock`` (anything with ``now()``) dates the
    journal and the results; it defaults to the system time.
    ``wrong_password_says`` is what the journal gives as the reason for a wrong
    password: real terminals say ``Invalid account`` for it as they do for an
    unknown or deleted account.
    """

    # timeframes
    TIMEFRAME_M1 = 1
    TIMEFRAME_M2 = 2
    TIMEFRAME_M3 = 3
    TIMEFRAME_M4 = 4
    TIMEFRAME_M5 = 5
    TIMEFRAME_M6 = 6
    TIMEFRAME_M10 = 10
    TIMEFRAME_M12 = 12
    TIMEFRAME_M15 = 15
    TIMEFRAME_M20 = 20
    TIMEFRAME_M30 = 30
    TIMEFRAME_H1 = 1 | 0x4000
    TIMEFRAME_H2 = 2 | 0x4000
    TIMEFRAME_H4 = 4 | 0x4000
    TIMEFRAME_H3 = 3 | 0x4000
    TIMEFRAME_H6 = 6 | 0x4000
    TIMEFRAME_H8 = 8 | 0x4000
    TIMEFRAME_H12 = 12 | 0x4000
    TIMEFRAME_D1 = 24 | 0x4000
    TIMEFRAME_W1 = 1 | 0x8000
    TIMEFRAME_MN1 = 1 | 0xC000
    # tick copy flags
    COPY_TICKS_ALL = -1
    COPY_TICKS_INFO = 1
    COPY_TICKS_TRADE = 2
    # tick flags
    TICK_FLAG_BID = 0x02
    TICK_FLAG_ASK = 0x04
    TICK_FLAG_LAST = 0x08
    TICK_FLAG_VOLUME = 0x10
    TICK_FLAG_BUY = 0x20
    TICK_FLAG_SELL = 0x40
    # position type, ENUM_POSITION_TYPE
    POSITION_TYPE_BUY = 0
    POSITION_TYPE_SELL = 1
    # position reason, ENUM_POSITION_REASON
    POSITION_REASON_CLIENT = 0
    POSITION_REASON_MOBILE = 1
    POSITION_REASON_WEB = 2
    POSITION_REASON_EXPERT = 3
    # order types, ENUM_ORDER_TYPE
    ORDER_TYPE_BUY = 0
    ORDER_TYPE_SELL = 1
    ORDER_TYPE_BUY_LIMIT = 2
    ORDER_TYPE_SELL_LIMIT = 3
    ORDER_TYPE_BUY_STOP = 4
    ORDER_TYPE_SELL_STOP = 5
    ORDER_TYPE_BUY_STOP_LIMIT = 6
    ORDER_TYPE_SELL_STOP_LIMIT = 7
    ORDER_TYPE_CLOSE_BY = 8
    # order state, ENUM_ORDER_STATE
    ORDER_STATE_STARTED = 0
    ORDER_STATE_PLACED = 1
    ORDER_STATE_CANCELED = 2
    ORDER_STATE_PARTIAL = 3
    ORDER_STATE_FILLED = 4
    ORDER_STATE_REJECTED = 5
    ORDER_STATE_EXPIRED = 6
    ORDER_STATE_REQUEST_ADD = 7
    ORDER_STATE_REQUEST_MODIFY = 8
    ORDER_STATE_REQUEST_CANCEL = 9
    # ENUM_ORDER_TYPE_FILLING
    ORDER_FILLING_FOK = 0
    ORDER_FILLING_IOC = 1
    ORDER_FILLING_RETURN = 2
    ORDER_FILLING_BOC = 3
    # ENUM_ORDER_TYPE_TIME
    ORDER_TIME_GTC = 0
    ORDER_TIME_DAY = 1
    ORDER_TIME_SPECIFIED = 2
    ORDER_TIME_SPECIFIED_DAY = 3
    # ENUM_ORDER_REASON
    ORDER_REASON_CLIENT = 0
    ORDER_REASON_MOBILE = 1
    ORDER_REASON_WEB = 2
    ORDER_REASON_EXPERT = 3
    ORDER_REASON_SL = 4
    ORDER_REASON_TP = 5
    ORDER_REASON_SO = 6
    # deal types, ENUM_DEAL_TYPE
    DEAL_TYPE_BUY = 0
    DEAL_TYPE_SELL = 1
    DEAL_TYPE_BALANCE = 2
    DEAL_TYPE_CREDIT = 3
    DEAL_TYPE_CHARGE = 4
    DEAL_TYPE_CORRECTION = 5
    DEAL_TYPE_BONUS = 6
    DEAL_TYPE_COMMISSION = 7
    DEAL_TYPE_COMMISSION_DAILY = 8
    DEAL_TYPE_COMMISSION_MONTHLY = 9
    DEAL_TYPE_COMMISSION_AGENT_DAILY = 10
    DEAL_TYPE_COMMISSION_AGENT_MONTHLY = 11
    DEAL_TYPE_INTEREST = 12
    DEAL_TYPE_BUY_CANCELED = 13
    DEAL_TYPE_SELL_CANCELED = 14
    DEAL_DIVIDEND = 15
    DEAL_DIVIDEND_FRANKED = 16
    DEAL_TAX = 17
    # ENUM_DEAL_ENTRY
    DEAL_ENTRY_IN = 0
    DEAL_ENTRY_OUT = 1
    DEAL_ENTRY_INOUT = 2
    DEAL_ENTRY_OUT_BY = 3
    # ENUM_DEAL_REASON
    DEAL_REASON_CLIENT = 0
    DEAL_REASON_MOBILE = 1
    DEAL_REASON_WEB = 2
    DEAL_REASON_EXPERT = 3
    DEAL_REASON_SL = 4
    DEAL_REASON_TP = 5
    DEAL_REASON_SO = 6
    DEAL_REASON_ROLLOVER = 7
    DEAL_REASON_VMARGIN = 8
    DEAL_REASON_SPLIT = 9
    # ENUM_TRADE_REQUEST_ACTIONS, Trade Operation Types
    TRADE_ACTION_DEAL = 1
    TRADE_ACTION_PENDING = 5
    TRADE_ACTION_SLTP = 6
    TRADE_ACTION_MODIFY = 7
    TRADE_ACTION_REMOVE = 8
    TRADE_ACTION_CLOSE_BY = 10
    # ENUM_SYMBOL_CHART_MODE
    SYMBOL_CHART_MODE_BID = 0
    SYMBOL_CHART_MODE_LAST = 1
    # ENUM_SYMBOL_CALC_MODE
    SYMBOL_CALC_MODE_FOREX = 0
    SYMBOL_CALC_MODE_FUTURES = 1
    SYMBOL_CALC_MODE_CFD = 2
    SYMBOL_CALC_MODE_CFDINDEX = 3
    SYMBOL_CALC_MODE_CFDLEVERAGE = 4
    SYMBOL_CALC_MODE_FOREX_NO_LEVERAGE = 5
    SYMBOL_CALC_MODE_EXCH_STOCKS = 32
    SYMBOL_CALC_MODE_EXCH_FUTURES = 33
    SYMBOL_CALC_MODE_EXCH_OPTIONS = 34
    SYMBOL_CALC_MODE_EXCH_OPTIONS_MARGIN = 36
    SYMBOL_CALC_MODE_EXCH_BONDS = 37
    SYMBOL_CALC_MODE_EXCH_STOCKS_MOEX = 38
    SYMBOL_CALC_MODE_EXCH_BONDS_MOEX = 39
    SYMBOL_CALC_MODE_SERV_COLLATERAL = 64
    # ENUM_SYMBOL_TRADE_MODE
    SYMBOL_TRADE_MODE_DISABLED = 0
    SYMBOL_TRADE_MODE_LONGONLY = 1
    SYMBOL_TRADE_MODE_SHORTONLY = 2
    SYMBOL_TRADE_MODE_CLOSEONLY = 3
    SYMBOL_TRADE_MODE_FULL = 4
    # ENUM_SYMBOL_TRADE_EXECUTION
    SYMBOL_TRADE_EXECUTION_REQUEST = 0
    SYMBOL_TRADE_EXECUTION_INSTANT = 1
    SYMBOL_TRADE_EXECUTION_MARKET = 2
    SYMBOL_TRADE_EXECUTION_EXCHANGE = 3
    # ENUM_SYMBOL_SWAP_MODE
    SYMBOL_SWAP_MODE_DISABLED = 0
    SYMBOL_SWAP_MODE_POINTS = 1
    SYMBOL_SWAP_MODE_CURRENCY_SYMBOL = 2
    SYMBOL_SWAP_MODE_CURRENCY_MARGIN = 3
    SYMBOL_SWAP_MODE_CURRENCY_DEPOSIT = 4
    SYMBOL_SWAP_MODE_INTEREST_CURRENT = 5
    SYMBOL_SWAP_MODE_INTEREST_OPEN = 6
    SYMBOL_SWAP_MODE_REOPEN_CURRENT = 7
    SYMBOL_SWAP_MODE_REOPEN_BID = 8
    # ENUM_DAY_OF_WEEK
    DAY_OF_WEEK_SUNDAY = 0
    DAY_OF_WEEK_MONDAY = 1
    DAY_OF_WEEK_TUESDAY = 2
    DAY_OF_WEEK_WEDNESDAY = 3
    DAY_OF_WEEK_THURSDAY = 4
    DAY_OF_WEEK_FRIDAY = 5
    DAY_OF_WEEK_SATURDAY = 6
    # ENUM_SYMBOL_ORDER_GTC_MODE
    SYMBOL_ORDERS_GTC = 0
    SYMBOL_ORDERS_DAILY = 1
    SYMBOL_ORDERS_DAILY_NO_STOPS = 2
    # ENUM_SYMBOL_OPTION_RIGHT
    SYMBOL_OPTION_RIGHT_CALL = 0
    SYMBOL_OPTION_RIGHT_PUT = 1
    # ENUM_SYMBOL_OPTION_MODE
    SYMBOL_OPTION_MODE_EUROPEAN = 0
    SYMBOL_OPTION_MODE_AMERICAN = 1
    # ENUM_ACCOUNT_TRADE_MODE
    ACCOUNT_TRADE_MODE_DEMO = 0
    ACCOUNT_TRADE_MODE_CONTEST = 1
    ACCOUNT_TRADE_MODE_REAL = 2
    # ENUM_ACCOUNT_STOPOUT_MODE
    ACCOUNT_STOPOUT_MODE_PERCENT = 0
    ACCOUNT_STOPOUT_MODE_MONEY = 1
    # ENUM_ACCOUNT_MARGIN_MODE
    ACCOUNT_MARGIN_MODE_RETAIL_NETTING = 0
    ACCOUNT_MARGIN_MODE_EXCHANGE = 1
    ACCOUNT_MARGIN_MODE_RETAIL_HEDGING = 2
    # ENUM_BOOK_TYPE
    BOOK_TYPE_SELL = 1
    BOOK_TYPE_BUY = 2
    BOOK_TYPE_SELL_MARKET = 3
    BOOK_TYPE_BUY_MARKET = 4
    # order send/check return codes
    TRADE_RETCODE_REQUOTE = 10004
    TRADE_RETCODE_REJECT = 10006
    TRADE_RETCODE_CANCEL = 10007
    TRADE_RETCODE_PLACED = 10008
    TRADE_RETCODE_DONE = 10009
    TRADE_RETCODE_DONE_PARTIAL = 10010
    TRADE_RETCODE_ERROR = 10011
    TRADE_RETCODE_TIMEOUT = 10012
    TRADE_RETCODE_INVALID = 10013
    TRADE_RETCODE_INVALID_VOLUME = 10014
    TRADE_RETCODE_INVALID_PRICE = 10015
    TRADE_RETCODE_INVALID_STOPS = 10016
    TRADE_RETCODE_TRADE_DISABLED = 10017
    TRADE_RETCODE_MARKET_CLOSED = 10018
    TRADE_RETCODE_NO_MONEY = 10019
    TRADE_RETCODE_PRICE_CHANGED = 10020
    TRADE_RETCODE_PRICE_OFF = 10021
    TRADE_RETCODE_INVALID_EXPIRATION = 10022
    TRADE_RETCODE_ORDER_CHANGED = 10023
    TRADE_RETCODE_TOO_MANY_REQUESTS = 10024
    TRADE_RETCODE_NO_CHANGES = 10025
    TRADE_RETCODE_SERVER_DISABLES_AT = 10026
    TRADE_RETCODE_CLIENT_DISABLES_AT = 10027
    TRADE_RETCODE_LOCKED = 10028
    TRADE_RETCODE_FROZEN = 10029
    TRADE_RETCODE_INVALID_FILL = 10030
    TRADE_RETCODE_CONNECTION = 10031
    TRADE_RETCODE_ONLY_REAL = 10032
    TRADE_RETCODE_LIMIT_ORDERS = 10033
    TRADE_RETCODE_LIMIT_VOLUME = 10034
    TRADE_RETCODE_INVALID_ORDER = 10035
    TRADE_RETCODE_POSITION_CLOSED = 10036
    TRADE_RETCODE_INVALID_CLOSE_VOLUME = 10038
    TRADE_RETCODE_CLOSE_ORDER_EXIST = 10039
    TRADE_RETCODE_LIMIT_POSITIONS = 10040
    TRADE_RETCODE_REJECT_CANCEL = 10041
    TRADE_RETCODE_LONG_ONLY = 10042
    TRADE_RETCODE_SHORT_ONLY = 10043
    TRADE_RETCODE_CLOSE_ONLY = 10044
    TRADE_RETCODE_FIFO_CLOSE = 10045
    # functio error codes, last_error()
    RES_S_OK = 1
    RES_E_FAIL = -1
    RES_E_INVALID_PARAMS = -2
    RES_E_NO_MEMORY = -3
    RES_E_NOT_FOUND = -4
    RES_E_INVALID_VERSION = -5
    RES_E_AUTH_FAILED = -6
    RES_E_UNSUPPORTED = -7
    RES_E_AUTO_TRADING_DISABLED = -8
    RES_E_INTERNAL_FAIL = -10000
    RES_E_INTERNAL_FAIL_SEND = -10001
    RES_E_INTERNAL_FAIL_RECEIVE = -10002
    RES_E_INTERNAL_FAIL_INIT = -10003
    RES_E_INTERNAL_FAIL_CONNECT = -10004
    RES_E_INTERNAL_FAIL_TIMEOUT = -10005

    __version__ = "5.0.6231"
    __author__ = "MetaQuotes Ltd."

    def __init__(
        self,
        data_path: str | Path | None = None,
        *,
        clock: _Clock | None = None,
        terminal_path: str = r"C:\Program Files\MetaTrader 5",
        build: int = 5200,
        wrong_password_says: str = "Invalid account",  # noqa: S107 - a journal reason
    ) -> None:
        self._data_path = None if data_path is None else Path(data_path)
        self._clock = clock
        self._terminal_path = terminal_path
        self._build = build
        self._wrong_password_says = wrong_password_says
        self._accounts: dict[int, _Account] = {}
        self._positions: dict[int, _Position] = {}
        self._orders: dict[int, _Order] = {}
        self._symbols: dict[str, _Symbol] = {}
        self._login_failures: list[_LoginFailure] = []
        self._login_failures_forever: _LoginFailure | None = None
        self._init_failures: list[tuple[int, str]] = []
        self._init_failures_forever: tuple[int, str] | None = None
        self._raises: list[_Raise] = []
        self._running = False
        self._ipc = False
        self._network = True
        self._login: int | None = None
        self._saved_passwords: dict[int, str] = {}
        self._error: tuple[int, str] = _SUCCESS
        self._sequence = 1000
        self.calls: list[str] = []
        """The module functions called, in order (a test's view of the traffic)."""
        self.requests: list[dict[str, Any]] = []
        """Every request given to ``order_send``, as sent."""
        self.submissions: list[Submission] = []
        """Every ``initialize``/``login`` call that carried a password, as it arrived: how
        often the broker was shown the credentials."""
        self._holds: dict[str, list[_Hold]] = {}
        self._hangs: list[Hang] = []
        self._holds_lock = threading.Lock()
        self._cross_wired: tuple[int, str | None] | None = None
        self._deals: list[TradeDeal] = []
        self._history_orders: list[TradeOrder] = []
        self._journal_held: list[tuple[str, str, int]] | None = None

    # == scripting ====================================================================

    def add_account(
        self,
        login: int,
        password: str,
        server: str,
        *,
        name: str = "Test Account",
        balance: float = 10_000.0,
    ) -> None:
        """An account the broker knows and accepts."""
        self._accounts[login] = _Account(login, password, server, name, balance)

    def disable_account(self, login: int) -> None:
        """The broker suspends the account: its session ends, later logins fail."""
        self._end_account(login, "disabled", "Account disabled")

    def delete_account(self, login: int) -> None:
        """The broker deletes the account: its session ends, later logins fail."""
        self._end_account(login, "invalid", "Invalid account")

    def fail_logins(
        self,
        code: int = -6,
        message: str = "Terminal: Authorization failed",
        *,
        times: int | None = 1,
        journal: str | None = None,
    ) -> None:
        """The next ``times`` logins (``None``: all) fail with ``(code, message)``.

        ``journal`` is the reason written to the journal, as in ``authorization on
        <server> failed (<journal>)``; ``None`` writes nothing. Calls queue up.
        """
        failure = _LoginFailure(code, message, journal)
        if times is None:
            self._login_failures_forever = failure
        else:
            self._login_failures.extend([failure] * times)

    def fail_initialize(
        self,
        code: int = -10003,
        message: str = "IPC initialize failed, MetaTrader 5 x64 not found",
        *,
        times: int | None = 1,
    ) -> None:
        """The next ``times`` ``initialize()`` calls (``None``: all) cannot start the terminal."""
        if times is None:
            self._init_failures_forever = (code, message)
        else:
            self._init_failures.extend([(code, message)] * times)

    def raise_on_login(
        self, error: BaseException | None = None, *, succeed: bool = True, times: int = 1
    ) -> None:
        """The next ``times`` logins raise ``error`` after doing their work.

        The default is mt5linux's ``TimeoutError('result expired')`` for a login that in
        fact went through; ``succeed=False`` raises without logging in.
        """
        raised = TimeoutError("result expired") if error is None else error
        self._raises.extend([_Raise(raised, succeed)] * times)

    def drop_connection(self) -> None:
        """The terminal loses its broker connection (it keeps running)."""
        self._network = False

    def restore_connection(self) -> None:
        """The network is back; a logged-in terminal reconnects by itself."""
        self._network = True

    def crash(self) -> None:
        """The terminal process dies: every call fails with ``-10004 'No IPC connection'``.

        ``initialize()`` starts it again, logged in to the account it had.
        """
        self._running = False
        self._ipc = False
        # A call stuck in a terminal returns when the terminal process dies.
        self.release_hangs()

    def open_position(
        self,
        ticket: int,
        symbol: str,
        volume: float,
        *,
        type: int = 0,  # the package's own field name
        price: float | None = None,
        close_retcodes: Script = 10009,
        magic: int = 0,
        comment: str = "",
    ) -> None:
        """An open position; each close request takes the next code of ``close_retcodes``.

        10009 closes the requested volume, 10010 closes half of it, any other code
        leaves the position as it was. The last code repeats.
        """
        sym = self._symbol(symbol)
        opened = sym.ask if type == self.POSITION_TYPE_BUY else sym.bid
        at = opened if price is None else price
        self._positions[ticket] = _Position(
            ticket,
            symbol,
            type,
            float(volume),
            at,
            magic,
            comment,
            _script(close_retcodes),
        )
        self._record_deal(
            ticket,
            symbol,
            type,
            self.DEAL_ENTRY_IN,
            float(volume),
            at,
            magic=magic,
            comment=comment,
            order=ticket,
        )

    def pending_order(
        self,
        ticket: int,
        symbol: str,
        *,
        volume: float = 0.1,
        type: int = 2,  # ORDER_TYPE_BUY_LIMIT
        price: float | None = None,
        cancel_retcodes: Script = 10009,
    ) -> None:
        """A pending order; each cancel request takes the next code of ``cancel_retcodes``."""
        sym = self._symbol(symbol)
        self._orders[ticket] = _Order(
            ticket,
            symbol,
            type,
            float(volume),
            sym.bid * 0.99 if price is None else price,
            _script(cancel_retcodes),
        )

    def set_symbol(
        self,
        symbol: str,
        *,
        bid: float | None = None,
        ask: float | None = None,
        filling_mode: int | None = None,
    ) -> None:
        """Prices and the allowed fillings (``SYMBOL_FILLING_FOK`` 1 | ``_IOC`` 2) of a symbol."""
        sym = self._symbol(symbol)
        if bid is not None:
            sym.bid = bid
        if ask is not None:
            sym.ask = ask
        if filling_mode is not None:
            sym.filling_mode = filling_mode

    def write_journal(self, message: str, *, source: str = "Network", level: int = 0) -> None:
        """Append one line to today's journal, as the terminal writes it (UTF-16).

        While the journal is held (``hold_journal``) the line waits for ``flush_journal``.
        """
        if self._data_path is None:
            return
        if self._journal_held is not None:
            self._journal_held.append((message, source, level))
            return
        now = self._now()
        stamp = datetime.fromtimestamp(now, tz=UTC)
        logs = self._data_path / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{stamp:%Y%m%d}.log"
        at = f"{stamp:%H:%M:%S}.{stamp.microsecond // 1000:03d}"
        line = f"QK\t{level}\t{at}\t{source}\t{message}\r\n"
        with path.open("ab") as f:
            if f.tell() == 0:
                f.write(b"\xff\xfe")
            f.write(line.encode("utf-16-le"))

    def hold_journal(self) -> None:
        """Keep the next journal lines back, as a terminal that writes its journal late does."""
        if self._journal_held is None:
            self._journal_held = []

    def flush_journal(self) -> None:
        """Write the lines kept back since ``hold_journal``, and write at once from now on."""
        held, self._journal_held = self._journal_held or [], None
        for message, source, level in held:
            self.write_journal(message, source=source, level=level)

    @property
    def logged_in(self) -> int | None:
        """The account the terminal is logged in to, if any."""
        return self._login

    def delay(self, function: str, seconds: float, *, times: int = 1, before: bool = False) -> Hang:
        """The next ``times`` calls of ``function`` take ``seconds`` longer (real time).

        By default the call does its work at once and answers late (a login that took
        effect, though its answer came after the caller gave up); ``before=True`` waits
        first (the work itself happens late). The returned handle ends the wait early.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"seconds must be a non-negative number, not {seconds!r}")
        return self._hold(function, float(seconds), times, before)

    def hang(self, function: str, *, times: int = 1, before: bool = True) -> Hang:
        """The next ``times`` calls of ``function`` block until released (or ``crash()``).

        By default nothing happens until the release, as with a terminal stuck in a
        call; ``before=False`` does the work first and then never answers.
        """
        return self._hold(function, None, times, before)

    def release_hangs(self) -> None:
        """Let every held call go on."""
        with self._holds_lock:
            hangs, self._hangs = self._hangs, []
            self._holds.clear()
        for held in hangs:
            held.release()

    def cross_wire(self, login: int | None, server: str | None = None) -> None:
        """``account_info()`` names ``login`` on ``server`` (default: the account's own
        server): the answer of another terminal over the same IPC channel, or of a
        terminal shared by mistake. ``None`` ends it."""
        self._cross_wired = None if login is None else (int(login), server)

    def close_by_broker(self, ticket: int, *, reason: int = 6, price: float | None = None) -> None:
        """The broker closes the position itself (``reason``: ``DEAL_REASON_SO`` stop out by
        default, ``_SL`` 4, ``_TP`` 5): it leaves the terminal and enters the history."""
        pos = self._positions.pop(ticket, None)
        if pos is None:
            raise ValueError(f"no open position {ticket}")
        sym = self._symbols[pos.symbol]
        closing = (
            self.ORDER_TYPE_SELL if pos.type == self.POSITION_TYPE_BUY else self.ORDER_TYPE_BUY
        )
        at = (
            (sym.bid if pos.type == self.POSITION_TYPE_BUY else sym.ask) if price is None else price
        )
        self._sequence += 1
        order = self._sequence
        self._record_order(
            order, pos.symbol, closing, self.ORDER_STATE_FILLED, pos.volume, 0.0, at, pos.ticket
        )
        self._record_deal(
            pos.ticket,
            pos.symbol,
            closing,
            self.DEAL_ENTRY_OUT,
            pos.volume,
            at,
            reason=reason,
            order=order,
        )

    def fill_order(self, ticket: int) -> None:
        """A pending order fills: it enters the history, and a position with its ticket opens."""
        order = self._orders.pop(ticket, None)
        if order is None:
            raise ValueError(f"no pending order {ticket}")
        self._record_order(
            order.ticket,
            order.symbol,
            order.type,
            self.ORDER_STATE_FILLED,
            order.volume,
            0.0,
            order.price_open,
            order.ticket,
        )
        kind = self.POSITION_TYPE_BUY if order.type % 2 == 0 else self.POSITION_TYPE_SELL
        self.open_position(
            order.ticket, order.symbol, order.volume, type=kind, price=order.price_open
        )

    # == the module's API =============================================================

    def initialize(
        self,
        path: str | None = None,
        *,
        login: int | None = None,
        password: str | None = None,
        server: str | None = None,
        timeout: int | None = None,
        portable: bool = False,
    ) -> bool:
        self.calls.append("initialize")
        failure = self._init_failures.pop(0) if self._init_failures else self._init_failures_forever
        if failure is not None:
            return self._fail(failure)
        self._running = True
        self._ipc = True
        if login is None:
            self._error = _SUCCESS
            return True
        if password is not None:
            self.submissions.append(Submission("initialize", login, server))
        ok = self._authenticate(login, password, server)
        if not ok:
            # Refused credentials leave no usable IPC connection behind.
            self._ipc = False
        return ok

    def login(
        self,
        login: int,
        *,
        password: str | None = None,
        server: str | None = None,
        timeout: int | None = None,
    ) -> bool:
        self.calls.append("login")
        if password is not None:
            self.submissions.append(Submission("login", login, server))
        if not self._ipc:
            return self._fail(_NO_IPC)
        return self._authenticate(login, password, server)

    def shutdown(self) -> None:
        self.calls.append("shutdown")
        self._ipc = False

    def version(self) -> tuple[int, int, str] | None:
        self.calls.append("version")
        if self._ipc_gone():
            return None
        return (500, self._build, "1 Jan 2026")

    def last_error(self) -> tuple[int, str]:
        return self._error

    def terminal_info(self) -> TerminalInfo | None:
        self.calls.append("terminal_info")
        if self._ipc_gone():
            return None
        return TerminalInfo(
            connected=self._connected(),
            build=self._build,
            company="MetaQuotes Ltd.",
            name="MetaTrader 5",
            path=self._terminal_path,
            data_path="" if self._data_path is None else str(self._data_path),
            commondata_path="" if self._data_path is None else str(self._data_path / "Common"),
        )

    def account_info(self) -> AccountInfo | None:
        self.calls.append("account_info")
        if self._ipc_gone():
            return None
        account = None if self._login is None else self._accounts.get(self._login)
        if self._cross_wired is not None:
            other, server = self._cross_wired
            self._error = _SUCCESS
            return AccountInfo(
                login=other,
                name="Another Account",
                server=server or (account.server if account is not None else ""),
                company="MetaQuotes Ltd.",
            )
        if account is None:
            self._error = _NOT_FOUND
            return None
        return AccountInfo(
            login=account.login,
            balance=account.balance,
            equity=account.balance,
            margin_free=account.balance,
            name=account.name,
            server=account.server,
            company="MetaQuotes Ltd.",
        )

    def copy_ticks_from(self, symbol: str, date_from: Any, count: int, flags: int) -> None:
        self._history("copy_ticks_from")

    def copy_ticks_range(self, symbol: str, date_from: Any, date_to: Any, flags: int) -> None:
        self._history("copy_ticks_range")

    def copy_rates_from(self, symbol: str, timeframe: int, date_from: Any, count: int) -> None:
        self._history("copy_rates_from")

    def copy_rates_from_pos(self, symbol: str, timeframe: int, start_pos: int, count: int) -> None:
        self._history("copy_rates_from_pos")

    def copy_rates_range(self, symbol: str, timeframe: int, date_from: Any, date_to: Any) -> None:
        self._history("copy_rates_range")

    def positions_total(self) -> int | None:
        self.calls.append("positions_total")
        if self._ipc_gone():
            return None
        return len(self._positions)

    def positions_get(
        self,
        *,
        symbol: str | None = None,
        ticket: int | None = None,
        group: str | None = None,
    ) -> tuple[TradePosition, ...] | None:
        self.calls.append("positions_get")
        if self._ipc_gone():
            return None
        self._error = _SUCCESS
        return tuple(
            self._trade_position(p)
            for p in self._positions.values()
            if (symbol is None or p.symbol == symbol) and (ticket is None or p.ticket == ticket)
        )

    def orders_total(self) -> int | None:
        self.calls.append("orders_total")
        if self._ipc_gone():
            return None
        return len(self._orders)

    def orders_get(
        self,
        *,
        symbol: str | None = None,
        ticket: int | None = None,
        group: str | None = None,
    ) -> tuple[TradeOrder, ...] | None:
        self.calls.append("orders_get")
        if self._ipc_gone():
            return None
        self._error = _SUCCESS
        return tuple(
            TradeOrder(
                ticket=o.ticket,
                type=o.type,
                state=self.ORDER_STATE_PLACED,
                volume_initial=o.volume,
                volume_current=o.volume,
                price_open=o.price_open,
                price_current=self._symbols[o.symbol].bid,
                symbol=o.symbol,
            )
            for o in self._orders.values()
            if (symbol is None or o.symbol == symbol) and (ticket is None or o.ticket == ticket)
        )

    def history_orders_total(self, date_from: Any, date_to: Any) -> int | None:
        found = self._history_select(
            "history_orders_total", self._history_orders, date_from, date_to, None, None, None
        )
        return None if found is None else len(found)

    def history_orders_get(
        self,
        date_from: Any = None,
        date_to: Any = None,
        *,
        group: str | None = None,
        position: int | None = None,
        ticket: int | None = None,
    ) -> tuple[TradeOrder, ...] | None:
        return self._history_select(
            "history_orders_get", self._history_orders, date_from, date_to, group, position, ticket
        )

    def history_deals_total(self, date_from: Any, date_to: Any) -> int | None:
        found = self._history_select(
            "history_deals_total", self._deals, date_from, date_to, None, None, None
        )
        return None if found is None else len(found)

    def history_deals_get(
        self,
        date_from: Any = None,
        date_to: Any = None,
        *,
        group: str | None = None,
        position: int | None = None,
        ticket: int | None = None,
    ) -> tuple[TradeDeal, ...] | None:
        return self._history_select(
            "history_deals_get", self._deals, date_from, date_to, group, position, ticket
        )

    def order_check(self, request: Mapping[str, Any]) -> OrderCheckResult | None:
        self.calls.append("order_check")
        if self._ipc_gone():
            return None
        if not isinstance(request, Mapping) or "action" not in request:
            self._error = (-2, 'Invalid "action" argument')
            return None
        self._error = _SUCCESS
        return OrderCheckResult(comment="Done", request=_request(request))

    def order_send(self, request: Mapping[str, Any]) -> OrderSendResult | None:
        self.calls.append("order_send")
        if self._ipc_gone():
            return None
        if not isinstance(request, Mapping) or "action" not in request:
            self._error = (-2, 'Invalid "action" argument')
            return None
        self.requests.append(dict(request))
        self._error = _SUCCESS
        if not self._connected():
            return self._result(request, 10031)
        action = request["action"]
        if action == self.TRADE_ACTION_DEAL:
            return self._deal(request)
        if action == self.TRADE_ACTION_REMOVE:
            order = self._orders.get(int(request.get("order", 0)))
            if order is None:
                return self._result(request, 10013)
            retcode = _next(order.cancel_retcodes)
            if retcode == self.TRADE_RETCODE_DONE:
                del self._orders[order.ticket]
                self._record_order(
                    order.ticket,
                    order.symbol,
                    order.type,
                    self.ORDER_STATE_CANCELED,
                    order.volume,
                    order.volume,
                    order.price_open,
                    0,
                )
            return self._result(request, retcode)
        return self._result(request, 10013)

    def order_calc_margin(
        self, action: int, symbol: str, volume: float, price: float
    ) -> float | None:
        return self._empty_history("order_calc_margin", 0.0)

    def order_calc_profit(
        self, action: int, symbol: str, volume: float, price_open: float, price_close: float
    ) -> float | None:
        return self._empty_history("order_calc_profit", 0.0)

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        self.calls.append("symbol_info")
        if self._ipc_gone():
            return None
        sym = self._symbols.get(symbol)
        if sym is None:
            self._error = _NOT_FOUND
            return None
        self._error = _SUCCESS
        return _symbol_info(sym)

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        self.calls.append("symbol_info_tick")
        if self._ipc_gone():
            return None
        sym = self._symbols.get(symbol)
        if sym is None:
            self._error = _NOT_FOUND
            return None
        self._error = _SUCCESS
        now = self._now()
        return Tick(time=int(now), bid=sym.bid, ask=sym.ask, time_msc=int(now * 1000), flags=6)

    def symbol_select(self, symbol: str, enable: bool | None = None) -> bool:
        self.calls.append("symbol_select")
        if not self._ipc:
            return self._fail(_NO_IPC)
        if symbol not in self._symbols:
            return self._fail(_NOT_FOUND)
        return True

    def symbols_total(self) -> int | None:
        self.calls.append("symbols_total")
        if self._ipc_gone():
            return None
        return len(self._symbols)

    def symbols_get(self, *, group: str | None = None) -> tuple[SymbolInfo, ...] | None:
        self.calls.append("symbols_get")
        if self._ipc_gone():
            return None
        return tuple(_symbol_info(s) for s in self._symbols.values())

    def market_book_add(self, symbol: str) -> bool:
        self.calls.append("market_book_add")
        return self._fail(_NO_IPC if not self._ipc else _NOT_FOUND)

    def market_book_get(self, symbol: str) -> tuple[BookInfo, ...] | None:
        self.calls.append("market_book_get")
        self._error = _NO_IPC if not self._ipc else _NOT_FOUND
        return None

    def market_book_release(self, symbol: str) -> bool:
        self.calls.append("market_book_release")
        return self._fail(_NO_IPC if not self._ipc else _NOT_FOUND)

    # The package's own Python helpers (MetaTrader5/__init__.py), same logic.

    def Buy(  # noqa: N802 - the package's name
        self,
        symbol: str,
        volume: float,
        price: float | None = None,
        *,
        comment: str | None = None,
        ticket: int | None = None,
    ) -> OrderSendResult | None:
        return self._market(self.ORDER_TYPE_BUY, symbol, volume, price, comment, ticket)

    def Sell(  # noqa: N802 - the package's name
        self,
        symbol: str,
        volume: float,
        price: float | None = None,
        *,
        comment: str | None = None,
        ticket: int | None = None,
    ) -> OrderSendResult | None:
        return self._market(self.ORDER_TYPE_SELL, symbol, volume, price, comment, ticket)

    def Close(  # noqa: N802 - the package's name
        self, symbol: str, *, comment: str | None = None, ticket: int | None = None
    ) -> bool | str | None:
        positions = (
            self.positions_get(ticket=ticket)
            if ticket is not None
            else self.positions_get(symbol=symbol)
        )
        tried = done = 0
        for pos in positions or ():
            if pos.type not in (self.ORDER_TYPE_BUY, self.ORDER_TYPE_SELL):
                continue
            tried += 1
            for _ in range(10):
                info = self.symbol_info_tick(symbol)
                if info is None:
                    return None
                if pos.type == self.ORDER_TYPE_BUY:
                    r = self._raw(
                        self.ORDER_TYPE_SELL, symbol, pos.volume, info.bid, comment, pos.ticket
                    )
                else:
                    r = self._raw(
                        self.ORDER_TYPE_BUY, symbol, pos.volume, info.ask, comment, pos.ticket
                    )
                if r is None:
                    return None
                if r.retcode not in (self.TRADE_RETCODE_REQUOTE, self.TRADE_RETCODE_PRICE_OFF):
                    if r.retcode == self.TRADE_RETCODE_DONE:
                        done += 1
                    break
        if done > 0:
            return True if done == tried else "Partially"
        return False

    # == internals ====================================================================

    def _now(self) -> float:
        return time.time() if self._clock is None else self._clock.now()

    def _ipc_gone(self) -> bool:
        """True, with ``last_error()`` set as the real package sets it, when IPC is gone."""
        if self._ipc:
            return False
        self._error = _NO_IPC
        return True

    def _fail(self, error: tuple[int, str]) -> bool:
        self._error = error
        return False

    def _connected(self) -> bool:
        if not self._running or not self._network or self._login is None:
            return False
        account = self._accounts.get(self._login)
        return account is not None and account.status == "active"

    def _history(self, name: str) -> None:
        self.calls.append(name)
        self._error = _NO_IPC if not self._ipc else _NOT_FOUND

    def _empty_history(self, name: str, empty: _T) -> _T | None:
        self.calls.append(name)
        if self._ipc_gone():
            return None
        self._error = _SUCCESS
        return empty

    def _hold(self, function: str, seconds: float | None, times: int, before: bool) -> Hang:
        if function not in _api_functions():
            raise ValueError(f"{function!r} is not a function of the MetaTrader5 module")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive int, not {times!r}")
        held = Hang()
        with self._holds_lock:
            self._hangs.append(held)
            self._holds.setdefault(function, []).extend([_Hold(seconds, before, held)] * times)
        if function not in vars(self):
            # An instance attribute in front of the method: the class, its signatures
            # and every other fake stay as they are.
            setattr(self, function, self._held(function, getattr(self, function)))
        return held

    def _held(self, function: str, call: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(call)
        def held(*args: Any, **kwargs: Any) -> Any:
            with self._holds_lock:
                queue = self._holds.get(function)
                hold = queue.pop(0) if queue else None
            if hold is None:
                return call(*args, **kwargs)
            if hold.before:
                hold.hang._wait(hold.seconds)
                return call(*args, **kwargs)
            result = call(*args, **kwargs)
            hold.hang._wait(hold.seconds)
            return result

        return held

    def _record_deal(
        self,
        position: int,
        symbol: str,
        side: int,
        entry: int,
        volume: float,
        price: float,
        *,
        reason: int = 3,  # DEAL_REASON_EXPERT: sent through the API
        magic: int = 0,
        comment: str = "",
        order: int = 0,
    ) -> None:
        self._sequence += 1
        now = self._now()
        self._deals.append(
            TradeDeal(
                ticket=self._sequence,
                order=order,
                time=int(now),
                time_msc=int(now * 1000),
                type=side,
                entry=entry,
                magic=magic,
                position_id=position,
                reason=reason,
                volume=volume,
                price=price,
                symbol=symbol,
                comment=comment,
            )
        )

    def _record_order(
        self,
        ticket: int,
        symbol: str,
        side: int,
        state: int,
        volume_initial: float,
        volume_current: float,
        price: float,
        position: int,
    ) -> None:
        now = self._now()
        self._history_orders.append(
            TradeOrder(
                ticket=ticket,
                time_setup=int(now),
                time_setup_msc=int(now * 1000),
                time_done=int(now),
                time_done_msc=int(now * 1000),
                type=side,
                state=state,
                position_id=position,
                reason=3,
                volume_initial=volume_initial,
                volume_current=volume_current,
                price_open=price,
                symbol=symbol,
            )
        )

    def _record_trade(
        self, request: Mapping[str, Any], result: OrderSendResult, position: int, entry: int
    ) -> None:
        symbol = str(request.get("symbol", ""))
        side = int(request.get("type", 0))
        asked = float(request.get("volume", 0.0))
        state = self.ORDER_STATE_FILLED if result.volume >= asked else self.ORDER_STATE_PARTIAL
        self._record_order(
            result.order, symbol, side, state, asked, asked - result.volume, result.price, position
        )
        self._record_deal(
            position,
            symbol,
            side,
            entry,
            result.volume,
            result.price,
            magic=int(request.get("magic", 0)),
            comment=str(request.get("comment", "")),
            order=result.order,
        )

    def _history_select(
        self,
        name: str,
        records: Sequence[_Record],
        date_from: Any,
        date_to: Any,
        group: str | None,
        position: int | None,
        ticket: int | None,
    ) -> tuple[_Record, ...] | None:
        # The package's three call shapes: by position, by ticket, or by a date range
        # (with an optional symbol group); anything else is refused.
        self.calls.append(name)
        if self._ipc_gone():
            return None
        self._error = _SUCCESS
        if position is not None:
            return tuple(r for r in records if r.position_id == position)
        if ticket is not None:
            return tuple(r for r in records if r.ticket == ticket)
        if date_from is None or date_to is None:
            self._error = _INVALID_PARAMS
            return None
        start, end = _seconds(date_from), _seconds(date_to)
        return tuple(
            r
            for r in records
            if start <= _record_time(r) <= end and (group is None or _in_group(r.symbol, group))
        )

    def _authenticate(self, login: int, password: str | None, server: str | None) -> bool:
        raised = self._raises.pop(0) if self._raises else None
        ok = self._check_credentials(login, password, server, raised)
        if raised is not None:
            raise raised.error
        return ok

    def _check_credentials(
        self, login: int, password: str | None, server: str | None, raised: _Raise | None
    ) -> bool:
        account = self._accounts.get(login)
        where = server or (account.server if account is not None else "unknown")
        if raised is not None and not raised.succeed:
            self._login = None
            return self._fail(_IPC_TIMEOUT)
        scripted = self._login_failures.pop(0) if self._login_failures else None
        scripted = scripted or self._login_failures_forever
        if scripted is not None:
            if scripted.journal is not None:
                self._journal_failure(login, where, scripted.journal)
            self._login = None
            return self._fail((scripted.code, scripted.message))
        if not self._network:
            # No route to the broker: the terminal gives up waiting for an answer.
            self._login = None
            return self._fail(_IPC_TIMEOUT)
        password = self._saved_passwords.get(login) if password is None else password
        said: str | None = None
        if account is None or account.status == "invalid" or account.server != where:
            said = "Invalid account"
        elif account.status == "disabled":
            said = "Account disabled"
        elif account.password != password:
            said = self._wrong_password_says
        if said is not None:
            self._journal_failure(login, where, said)
            self._login = None
            return self._fail(_AUTH_FAILED)
        assert password is not None  # implied by the password check
        self._login = login
        self._saved_passwords[login] = password
        self.write_journal(
            f"'{login}': authorized on {where} through Access Server #1 "
            f"(ping: 25.00 ms, build {self._build})"
        )
        self._error = _SUCCESS
        return True

    def _journal_failure(self, login: int, server: str, said: str) -> None:
        self.write_journal(f"'{login}': authorization on {server} failed ({said})", level=2)

    def _end_account(self, login: int, status: str, said: str) -> None:
        account = self._accounts[login]
        account.status = status
        if self._login == login and self._running:
            # The broker ends the session; the terminal's reconnect is refused.
            self._journal_failure(login, account.server, said)

    def _symbol(self, symbol: str) -> _Symbol:
        sym = self._symbols.get(symbol)
        if sym is None:
            sym = self._symbols[symbol] = _Symbol(symbol, 1.10000, 1.10020, filling_mode=1)
        return sym

    def _trade_position(self, p: _Position) -> TradePosition:
        sym = self._symbols[p.symbol]
        now = self._now()
        return TradePosition(
            ticket=p.ticket,
            time=int(now),
            time_msc=int(now * 1000),
            time_update=int(now),
            time_update_msc=int(now * 1000),
            type=p.type,
            magic=p.magic,
            identifier=p.ticket,
            volume=p.volume,
            price_open=p.price_open,
            price_current=sym.bid if p.type == self.POSITION_TYPE_BUY else sym.ask,
            symbol=p.symbol,
            comment=p.comment,
        )

    def _deal(self, request: Mapping[str, Any]) -> OrderSendResult:
        sym = self._symbols.get(str(request.get("symbol", "")))
        if sym is None:
            return self._result(request, 10013)
        side = request.get("type")
        price = float(request.get("price", 0.0))
        expected = sym.ask if side == self.ORDER_TYPE_BUY else sym.bid
        if side not in (self.ORDER_TYPE_BUY, self.ORDER_TYPE_SELL):
            return self._result(request, 10013)
        if abs(price - expected) > sym.point * int(request.get("deviation", 0)) + 1e-12:
            return self._result(request, 10015)
        filling = request.get("type_filling", self.ORDER_FILLING_FOK)
        allowed = {f for flag, f in ((1, 0), (2, 1)) if sym.filling_mode & flag} or {2}
        if filling not in allowed:
            return self._result(request, 10030)
        volume = float(request.get("volume", 0.0))
        ticket = int(request.get("position", 0))
        if not ticket:
            self._sequence += 1
            kind = (
                self.POSITION_TYPE_BUY if side == self.ORDER_TYPE_BUY else self.POSITION_TYPE_SELL
            )
            self._positions[self._sequence] = _Position(
                self._sequence,
                sym.name,
                kind,
                volume,
                price,
                int(request.get("magic", 0)),
                str(request.get("comment", "")),
                [10009],
            )
            opened = self._result(request, 10009, volume)
            self._record_trade(request, opened, self._sequence - 1, self.DEAL_ENTRY_IN)
            return opened
        pos = self._positions.get(ticket)
        if pos is None:
            return self._result(request, 10036)
        closing = (
            self.ORDER_TYPE_SELL if pos.type == self.POSITION_TYPE_BUY else self.ORDER_TYPE_BUY
        )
        if side != closing or pos.symbol != sym.name:
            return self._result(request, 10013)
        if volume <= 0 or volume > pos.volume + 1e-9:
            return self._result(request, 10014)
        retcode = _next(pos.close_retcodes)
        filled = {10009: volume, 10010: round(volume / 2, 8)}.get(retcode, 0.0)
        pos.volume = round(pos.volume - filled, 8)
        if pos.volume <= 1e-9:
            del self._positions[ticket]
        result = self._result(request, retcode, filled)
        if filled:
            self._record_trade(request, result, ticket, self.DEAL_ENTRY_OUT)
        return result

    def _result(
        self, request: Mapping[str, Any], retcode: int, volume: float = 0.0
    ) -> OrderSendResult:
        self._sequence += 1
        sym = self._symbols.get(str(request.get("symbol", "")))
        done = retcode in (10009, 10010)
        return OrderSendResult(
            retcode=retcode,
            deal=self._sequence if done else 0,
            order=self._sequence if done else 0,
            volume=volume,
            price=float(request.get("price", 0.0)) if done else 0.0,
            bid=0.0 if sym is None else sym.bid,
            ask=0.0 if sym is None else sym.ask,
            comment=_RETCODE_COMMENTS.get(retcode, f"retcode={retcode}"),
            request_id=self._sequence,
            request=_request(request),
        )

    def _market(
        self,
        order_type: int,
        symbol: str,
        volume: float,
        price: float | None,
        comment: str | None,
        ticket: int | None,
    ) -> OrderSendResult | None:
        if price is not None:
            return self._raw(order_type, symbol, volume, price, comment, ticket)
        r = None
        for _ in range(10):
            info = self.symbol_info_tick(symbol)
            if info is None:
                return None
            quote = info.ask if order_type == self.ORDER_TYPE_BUY else info.bid
            r = self._raw(order_type, symbol, volume, quote, comment, ticket)
            if r is None:
                return None
            if r.retcode not in (self.TRADE_RETCODE_REQUOTE, self.TRADE_RETCODE_PRICE_OFF):
                break
        return r

    def _raw(
        self,
        order_type: int,
        symbol: str,
        volume: float,
        price: float,
        comment: str | None,
        ticket: int | None,
    ) -> OrderSendResult | None:
        order: dict[str, Any] = {
            "action": self.TRADE_ACTION_DEAL,
            "symbol": symbol,
            "volume": volume,
            "type": order_type,
            "price": price,
            "deviation": 10,
        }
        if comment is not None:
            order["comment"] = comment
        if ticket is not None:
            order["position"] = ticket
        return self.order_send(order)


_Record = TypeVar("_Record", TradeDeal, TradeOrder)


def _seconds(value: Any) -> float:
    # The package takes a datetime (UTC when naive, as its documentation asks) or a
    # number of seconds since 1970.
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return float(value)


def _record_time(record: TradeDeal | TradeOrder) -> int:
    return record.time if isinstance(record, TradeDeal) else record.time_setup


def _in_group(symbol: str, group: str) -> bool:
    # "*, !EUR*": conditions applied in order, '!' excluding what matched before.
    selected = False
    for condition in (c.strip() for c in group.split(",")):
        if condition.startswith("!"):
            if fnmatch.fnmatchcase(symbol, condition[1:]):
                selected = False
        elif condition and fnmatch.fnmatchcase(symbol, condition):
            selected = True
    return selected


@functools.cache
def _api_functions() -> frozenset[str]:
    """The module functions of the package, which a test may delay or hang."""
    return frozenset(
        name
        for name, value in vars(FakeMetaTrader5).items()
        if callable(value) and not name.startswith("_") and name not in SCRIPTING_API
    )


def _request(request: Mapping[str, Any]) -> TradeRequest:
    known = {k: v for k, v in request.items() if k in TradeRequest._fields}
    return TradeRequest(**known)


def _symbol_info(sym: _Symbol) -> SymbolInfo:
    return SymbolInfo(
        select=True,
        visible=True,
        digits=sym.digits,
        trade_mode=sym.trade_mode,
        trade_exemode=2,
        filling_mode=sym.filling_mode,
        bid=sym.bid,
        ask=sym.ask,
        point=sym.point,
        volume_min=sym.volume_min,
        volume_max=sym.volume_max,
        volume_step=sym.volume_step,
        trade_contract_size=100_000.0,
        name=sym.name,
        path=f"Forex\\{sym.name}",
    )


class Mt5LinuxProxy:
    """A fake terminal seen the way ``mt5linux.MetaTrader5`` shows a remote one.

    mt5linux is a plain class whose methods forward to the ``MetaTrader5`` module
    in a Windows Python over rpyc; results come back as netrefs, which answer
    attribute reads but are not the package's struct sequences. This proxy keeps
    that shape (methods and constants only, results as attribute bags, tuples of
    them as lists), so a test proves that code reads fields by name and uses
    nothing but the package's API. Scripting stays on the wrapped fake.
    """

    def __init__(self, terminal: FakeMetaTrader5) -> None:
        self._terminal = terminal

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in SCRIPTING_API:
            raise AttributeError(name)
        value = getattr(self._terminal, name)
        if not callable(value):
            return value

        def remote(*args: Any, **kwargs: Any) -> Any:
            return _remote(value(*args, **kwargs))

        return remote


def _remote(value: Any) -> Any:
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return SimpleNamespace(**{f: _remote(getattr(value, f)) for f in value._fields})
    if isinstance(value, tuple) and value and hasattr(value[0], "_fields"):
        return [_remote(v) for v in value]
    return value
