"""The fake ``MetaTrader5`` module against the real package: names, parameters, constants.

The reference is the real wheel when one is at hand (``MT5LIFECYCLE_MT5_WHEEL``, or the
newest ``metatrader5-*.whl`` under ``~/.cache/mt5lifecycle/``), else the extract
committed in ``tests/data/mt5_reference.json`` (made from the wheel by
``tests/data/make_mt5_reference.py``). There is always a reference: without one the
tests fail, they never pass on nothing.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mt5lifecycle.adapters.mt5 import broker as adapter
from mt5lifecycle.adapters.mt5 import classify as mt5_classify
from mt5lifecycle.adapters.mt5 import history as mt5_history
from mt5lifecycle.testing import fake_mt5
from mt5lifecycle.testing.fake_mt5 import SCRIPTING_API, FakeMetaTrader5, Submission

DATA = Path(__file__).resolve().parent.parent / "data"

# Keywords the native functions parse that their docstrings leave out (their
# PyArg keyword names are in the .pyd: "timeout", "portable").
UNDOCUMENTED_KEYWORDS = {"initialize": ["timeout", "portable"], "login": ["timeout"]}

RESULT_TYPES = [
    fake_mt5.TerminalInfo,
    fake_mt5.AccountInfo,
    fake_mt5.TradePosition,
    fake_mt5.TradeOrder,
    fake_mt5.TradeDeal,
    fake_mt5.TradeRequest,
    fake_mt5.OrderSendResult,
    fake_mt5.OrderCheckResult,
    fake_mt5.SymbolInfo,
    fake_mt5.Tick,
    fake_mt5.BookInfo,
]


def _extractor() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_mt5_reference", DATA / "make_mt5_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel() -> Path | None:
    given = os.environ.get("MT5LIFECYCLE_MT5_WHEEL")
    if given:
        path = Path(given)
        assert path.exists(), f"MT5LIFECYCLE_MT5_WHEEL={given} does not exist"
        return path
    cache = Path.home() / ".cache" / "mt5lifecycle"
    wheels = sorted(cache.glob("metatrader5-*.whl")) if cache.is_dir() else []
    return wheels[-1] if wheels else None


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    wheel = _wheel()
    if wheel is not None:
        extracted: dict[str, Any] = _extractor().extract(wheel)
        return extracted
    committed: dict[str, Any] = json.loads((DATA / "mt5_reference.json").read_text("utf-8"))
    return committed


@pytest.fixture(scope="module")
def fake() -> FakeMetaTrader5:
    return FakeMetaTrader5()


def _fake_constants() -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(FakeMetaTrader5).items()
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and isinstance(value, (int, float, str))
    }


def _doc_parameters(doc: str) -> list[tuple[str, bool]]:
    """``positions_get([symbol="SYMBOL"],[ticket=TICKET])`` -> [(name, optional), ...]."""
    inner = doc[doc.index("(") + 1 : doc.rindex(")")]
    inner = re.sub(r'="[^"]*"|=[A-Z_]+', "", inner)
    found: list[tuple[str, bool]] = []
    depth = 0
    for token in re.finditer(r"\[|\]|[a-z_][a-z0-9_]*", inner):
        text = token.group()
        if text == "[":
            depth += 1
        elif text == "]":
            depth -= 1
        else:
            found.append((text, depth > 0))
    return found


def test_reference_is_present(reference: dict[str, Any]) -> None:
    assert reference["version"]
    assert len(reference["constants"]) > 200
    assert len(reference["native_functions"]) >= 30


def test_committed_extract_matches_the_wheel_when_one_is_at_hand() -> None:
    wheel = _wheel()
    if wheel is None:
        pytest.skip("no MetaTrader5 wheel downloaded; the committed extract is the reference")
    fresh = _extractor().extract(wheel)
    committed = json.loads((DATA / "mt5_reference.json").read_text("utf-8"))
    if fresh["version"] != committed["version"]:
        pytest.fail(
            f"the wheel is {fresh['version']}, the committed extract {committed['version']}: "
            "regenerate it with tests/data/make_mt5_reference.py"
        )
    assert {k: v for k, v in fresh.items() if k != "source"} == {
        k: v for k, v in committed.items() if k != "source"
    }


def test_the_fake_has_every_constant_with_the_same_value(reference: dict[str, Any]) -> None:
    assert _fake_constants() == reference["constants"]
    assert FakeMetaTrader5.__version__ == reference["version"]


def test_the_fake_has_every_function_and_no_other(
    reference: dict[str, Any], fake: FakeMetaTrader5
) -> None:
    real = set(reference["native_functions"]) | set(reference["python_functions"])
    ours = {
        name
        for name in dir(fake)
        if not name.startswith("_") and name not in SCRIPTING_API and name not in _fake_constants()
    }
    assert ours == real
    assert not SCRIPTING_API & real


@pytest.mark.parametrize(
    "name", sorted(json.loads((DATA / "mt5_reference.json").read_text())["native_functions"])
)
def test_native_function_parameters(
    name: str, reference: dict[str, Any], fake: FakeMetaTrader5
) -> None:
    doc = reference["native_functions"][name]
    parameters = inspect.signature(getattr(fake, name)).parameters
    expected = _doc_parameters(doc) + [(k, True) for k in UNDOCUMENTED_KEYWORDS.get(name, [])]
    for keyword in UNDOCUMENTED_KEYWORDS.get(name, []):
        assert keyword in reference["identifiers"], f"{keyword!r} is not a string of _core"
    assert set(parameters) == {n for n, _ in expected}, doc
    required = [n for n, optional in expected if not optional]
    positional = [
        p.name
        for p in parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    assert positional == required, doc
    for n, optional in expected:
        assert (parameters[n].default is not parameters[n].empty) == optional, (n, doc)


def test_python_function_parameters(reference: dict[str, Any], fake: FakeMetaTrader5) -> None:
    for name, shape in reference["python_functions"].items():
        parameters = inspect.signature(getattr(fake, name)).parameters.values()
        required = [
            p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
        ]
        optional = [
            p.name
            for p in parameters
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty
        ]
        keyword_only = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
        assert (required, optional, keyword_only) == (
            shape["required"],
            shape["optional"],
            shape["keyword_only"],
        ), name


@pytest.mark.parametrize("result_type", RESULT_TYPES, ids=lambda t: t.__name__)
def test_result_types_use_the_real_names(result_type: type, reference: dict[str, Any]) -> None:
    strings = set(reference["identifiers"])
    assert result_type.__name__ in strings
    missing = [f for f in result_type._fields if f not in strings]  # type: ignore[attr-defined]
    assert not missing, f"{result_type.__name__} fields not in the package: {missing}"
    assert hasattr(result_type(), "_asdict")


def test_the_adapter_constants_are_the_packages(reference: dict[str, Any]) -> None:
    constants = reference["constants"]
    for name in [
        "TRADE_ACTION_DEAL",
        "TRADE_ACTION_REMOVE",
        "ORDER_TYPE_BUY",
        "ORDER_TYPE_SELL",
        "POSITION_TYPE_BUY",
        "ORDER_FILLING_FOK",
        "ORDER_FILLING_IOC",
        "ORDER_FILLING_RETURN",
        "ORDER_TIME_GTC",
        "TRADE_RETCODE_DONE",
        "TRADE_RETCODE_DONE_PARTIAL",
        "TRADE_RETCODE_POSITION_CLOSED",
        "RES_E_INTERNAL_FAIL_CONNECT",
    ]:
        assert getattr(adapter, name) == constants[name], name
    assert constants["RES_E_AUTH_FAILED"] == mt5_classify.AUTH_FAILED_CODE
    assert constants["RES_E_INTERNAL_FAIL_INIT"] == mt5_classify.TERMINAL_INIT_CODE
    assert {
        constants[n]
        for n in [
            "RES_E_INTERNAL_FAIL",
            "RES_E_INTERNAL_FAIL_SEND",
            "RES_E_INTERNAL_FAIL_RECEIVE",
            "RES_E_INTERNAL_FAIL_CONNECT",
            "RES_E_INTERNAL_FAIL_TIMEOUT",
        ]
    } == mt5_classify.NETWORK_CODES
    # SYMBOL_FILLING_* are MQL5's, not the package's: make sure that is still so.
    assert "SYMBOL_FILLING_FOK" not in constants
    for name in [
        "TRADE_RETCODE_DONE",
        "TRADE_RETCODE_DONE_PARTIAL",
        "DEAL_ENTRY_IN",
        "DEAL_ENTRY_OUT",
        "DEAL_ENTRY_INOUT",
        "DEAL_ENTRY_OUT_BY",
        "ORDER_STATE_CANCELED",
        "ORDER_STATE_PARTIAL",
        "ORDER_STATE_FILLED",
        "ORDER_STATE_REJECTED",
        "ORDER_STATE_EXPIRED",
    ]:
        assert getattr(mt5_history, name) == constants[name], name
    reasons = {v: k for k, v in constants.items() if k.startswith("DEAL_REASON_")}
    assert set(mt5_history._DEAL_REASONS) == set(reasons)


def test_the_fake_speaks_the_terminals_words(reference: dict[str, Any]) -> None:
    messages = set(reference["messages"])
    for code, message in [
        fake_mt5._SUCCESS,
        fake_mt5._NO_IPC,
        fake_mt5._AUTH_FAILED,
        fake_mt5._IPC_TIMEOUT,
        fake_mt5._NOT_FOUND,
        fake_mt5._INVALID_PARAMS,
    ]:
        assert message in messages, (code, message)
    assert "IPC initialize failed, %S" in messages  # -10003, with the reason appended


def test_the_fake_behaves_like_the_module_before_initialize() -> None:
    mt5 = FakeMetaTrader5()
    assert mt5.last_error() == (1, "Success")
    assert mt5.terminal_info() is None
    assert mt5.last_error() == (-10004, "No IPC connection")
    assert mt5.login(1, password="x", server="S") is False
    assert mt5.positions_get() is None
    assert mt5.order_send({"action": 1}) is None
    assert mt5.version() is None


def test_the_packages_own_helpers_work_on_the_fake() -> None:
    mt5 = FakeMetaTrader5()
    mt5.add_account(1, "pw", "S")
    assert mt5.initialize(login=1, password="pw", server="S")
    mt5.set_symbol("EURUSD", bid=1.1, ask=1.1002)
    bought = mt5.Buy("EURUSD", 0.5)
    assert bought is not None and bought.retcode == mt5.TRADE_RETCODE_DONE
    [position] = mt5.positions_get(symbol="EURUSD") or ()
    assert (position.type, position.volume, position.price_open) == (
        mt5.POSITION_TYPE_BUY,
        0.5,
        1.1002,
    )
    assert mt5.Close("EURUSD") is True
    assert mt5.positions_total() == 0
    assert bought._asdict()["request"].action == mt5.TRADE_ACTION_DEAL


# -- the fake's own scripting -------------------------------------------------------------


def _logged_in() -> FakeMetaTrader5:
    mt5 = FakeMetaTrader5()
    mt5.add_account(1, "pw", "S")
    assert mt5.initialize(login=1, password="pw", server="S")
    return mt5


def test_the_history_answers_the_packages_three_call_shapes() -> None:
    mt5 = _logged_in()
    mt5.set_symbol("EURUSD", bid=1.1, ask=1.1002)
    mt5.open_position(7001, "EURUSD", 1.0)
    mt5.open_position(7002, "GBPUSD", 1.0)
    mt5.close_by_broker(7001, reason=mt5.DEAL_REASON_TP)
    deals = mt5.history_deals_get(position=7001) or ()
    assert [(d.entry, d.volume, d.reason) for d in deals] == [
        (mt5.DEAL_ENTRY_IN, 1.0, mt5.DEAL_REASON_EXPERT),
        (mt5.DEAL_ENTRY_OUT, 1.0, mt5.DEAL_REASON_TP),
    ]
    [by_ticket] = mt5.history_deals_get(ticket=deals[1].ticket) or ()
    assert by_ticket == deals[1]
    everything = mt5.history_deals_get(0, 2**31)
    assert everything is not None and len(everything) == 3
    assert len(mt5.history_deals_get(0, 2**31, group="*,!GBP*") or ()) == 2
    assert mt5.history_deals_total(0, 2**31) == 3
    assert mt5.history_deals_get() is None
    assert mt5.last_error() == (-2, "Terminal: Invalid params")
    mt5.pending_order(8001, "EURUSD")
    mt5.pending_order(8002, "EURUSD")
    assert mt5.order_send({"action": mt5.TRADE_ACTION_REMOVE, "order": 8001}) is not None
    mt5.fill_order(8002)
    states = {o.ticket: o.state for o in mt5.history_orders_get(0, 2**31) or ()}
    assert states[8001] == mt5.ORDER_STATE_CANCELED and states[8002] == mt5.ORDER_STATE_FILLED
    assert [p.ticket for p in mt5.positions_get() or ()] == [7002, 8002]
    mt5.crash()
    assert mt5.history_orders_get(ticket=8001) is None


def test_delays_and_hangs_are_for_the_modules_functions_only() -> None:
    mt5 = FakeMetaTrader5()
    for name in ("add_account", "nothing", "_now"):
        with pytest.raises(ValueError, match="not a function"):
            mt5.hang(name)
    with pytest.raises(ValueError, match="times"):
        mt5.delay("login", 1.0, times=0)
    with pytest.raises(ValueError, match="seconds"):
        mt5.delay("login", -1.0)
    mt5.delay("positions_get", 0.0)
    # The held function keeps the package's signature, and other fakes are untouched.
    assert inspect.signature(mt5.positions_get) == inspect.signature(
        FakeMetaTrader5().positions_get
    )
    assert "positions_get" not in vars(FakeMetaTrader5())


def test_a_hang_holds_until_released_or_crashed() -> None:
    mt5 = _logged_in()
    held = mt5.hang("terminal_info")
    answers: list[object] = []
    caller = threading.Thread(target=lambda: answers.append(mt5.terminal_info()))
    caller.start()
    assert held.entered.wait(5)
    assert answers == []
    mt5.crash()  # the terminal process dies: the stuck call returns, with nothing
    caller.join(5)
    assert answers == [None]
    late = mt5.delay("version", 10.0)
    late.release()
    assert mt5.version() is None  # released before it began: no wait at all


def test_submissions_count_passwords_without_keeping_them() -> None:
    mt5 = FakeMetaTrader5()
    mt5.add_account(1, "secret-pw", "S")
    mt5.initialize()
    mt5.login(1, server="S")  # the saved password: nothing handed over
    mt5.login(1, password="secret-pw", server="S")
    mt5.initialize(login=1, password="wrong", server="S")
    assert mt5.submissions == [Submission("login", 1, "S"), Submission("initialize", 1, "S")]
    assert "secret-pw" not in repr(mt5.submissions)


def test_a_cross_wired_terminal_names_another_account() -> None:
    mt5 = _logged_in()
    mt5.cross_wire(777)
    info = mt5.account_info()
    assert info is not None and (info.login, info.server) == (777, "S")
    mt5.cross_wire(777, "Other")
    info = mt5.account_info()
    assert info is not None and info.server == "Other"
    mt5.cross_wire(None)
    info = mt5.account_info()
    assert info is not None and info.login == 1


def test_a_held_journal_is_written_when_flushed(tmp_path: Path) -> None:
    mt5 = FakeMetaTrader5(data_path=tmp_path)
    mt5.hold_journal()
    mt5.write_journal("late line")
    assert not (tmp_path / "logs").exists()
    mt5.flush_journal()
    [journal] = (tmp_path / "logs").iterdir()
    assert "late line" in journal.read_text("utf-16")
