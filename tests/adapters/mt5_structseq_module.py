"""A stand-in ``MetaTrader5`` whose results are C struct sequences, as the real package's.

The package builds its result types with ``PyStructSequence_InitType2`` under bare
names (``TerminalInfo``, ...) that no module exports, so pickle cannot carry them from
a worker process. This module makes such types through the same C API (by ctypes) and
keeps them out of its namespace, so ``ProcessTerminals`` must turn them into named
tuples itself. The real package also gives its types an ``_asdict()``; ``AccountInfo``
has one here, ``TerminalInfo`` does not, so both ways of reading the field names run.
"""

from __future__ import annotations

import ctypes
import pickle
import threading
import warnings
from collections.abc import Mapping
from typing import Any

TIMEFRAME_M1 = 1


class _Field(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("doc", ctypes.c_char_p)]


class _Desc(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("doc", ctypes.c_char_p),
        ("fields", ctypes.POINTER(_Field)),
        ("n_in_sequence", ctypes.c_int),
    ]


_new_type = ctypes.pythonapi.PyStructSequence_NewType
_new_type.restype = ctypes.py_object
_new_type.argtypes = [ctypes.POINTER(_Desc)]
_keep: list[object] = []  # the C type points into these buffers for as long as it lives


def _struct_type(name: str, fields: list[str]) -> Any:
    table = (_Field * (len(fields) + 1))(
        *[_Field(f.encode(), None) for f in fields], _Field(None, None)
    )
    desc = _Desc(name.encode(), b"a struct sequence", table, len(fields))
    _keep.extend([table, desc])
    with warnings.catch_warnings():
        # "builtin type ... has no __module__": nor have the package's.
        warnings.simplefilter("ignore", DeprecationWarning)
        return _new_type(ctypes.byref(desc))


def _as_dict(self: tuple[Any, ...]) -> dict[str, Any]:
    names: tuple[str, ...] = getattr(type(self), "__match_args__")  # noqa: B009
    return dict(zip(names, self, strict=True))


_types: dict[str, Any] = {
    "TerminalInfo": _struct_type("TerminalInfo", ["connected", "build", "name", "path"]),
    "AccountInfo": _struct_type("AccountInfo", ["login", "server", "balance"]),
    "TradePosition": _struct_type("TradePosition", ["ticket", "symbol", "volume"]),
    "TradeRequest": _struct_type("TradeRequest", ["action", "symbol", "volume"]),
    "OrderSendResult": _struct_type("OrderSendResult", ["retcode", "comment", "request"]),
}
_types["AccountInfo"]._asdict = _as_dict


def initialize(path: str | None = None, **kwargs: Any) -> bool:
    return True


def last_error() -> tuple[int, str]:
    return (1, "Success")


def shutdown() -> None:
    return None


def terminal_info() -> Any:
    return _types["TerminalInfo"]((True, 5200, "MetaTrader 5", r"C:\MT5\acct-1"))


def account_info() -> Any:
    return _types["AccountInfo"]((5012345, "Broker-Demo", 10_000.0))


def positions_get(**kwargs: Any) -> tuple[Any, ...]:
    return tuple(_types["TradePosition"]((t, "EURUSD", 0.5)) for t in (7001, 7002))


def order_send(request: Mapping[str, Any]) -> Any:
    sent = _types["TradeRequest"]((request["action"], request["symbol"], request["volume"]))
    return _types["OrderSendResult"]((10009, "Request executed", sent))


def raw_is_picklable() -> bool:
    """Whether pickle could carry this module's results without help (it must not)."""
    try:
        pickle.dumps(terminal_info())
    except pickle.PicklingError:
        return False
    return True


def held_lock() -> object:
    """A result no pickle carries: the worker must say so rather than go silent."""
    return threading.Lock()
