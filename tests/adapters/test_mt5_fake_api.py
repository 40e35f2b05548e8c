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
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mt5lifecycle.adapters.mt5 import broker as adapter
from mt5lifecycle.adapters.mt5 import classify as mt5_classify
from mt5lifecycle.testing import fake_mt5
from mt5lifecycle.testing.fake_mt5 import SCRIPTING_API, FakeMetaTrader5

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
