"""The ``MetaTrader5`` module the real mt5linux server imports in the bridge tests.

The test copies this file to ``<site>/MetaTrader5/__init__.py`` and puts ``<site>`` on
the server's ``PYTHONPATH``: mt5linux's server is rpyc's classic server, and its
client runs ``import MetaTrader5 as mt5`` there, then ``mt5.login(...)`` and so on.
Behind it is the testing kit's fake terminal. Every call that carries a password is
written, as it arrives and before the fake does anything with it, to the file named in
the configuration: that file is what the broker was shown, and it survives the
server's kill.

Configuration (JSON in ``MT5LIFECYCLE_STANDIN``): ``accounts`` (``[login, password,
server]`` each), ``submissions`` (the file), ``data_path`` (the terminal's data folder,
for its journal). The tests script the fake through the module's ``fake`` attribute,
over an rpyc connection of their own.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from mt5lifecycle.testing.fake_mt5 import FakeMetaTrader5

_config: dict[str, Any] = json.loads(os.environ["MT5LIFECYCLE_STANDIN"])
fake = FakeMetaTrader5(data_path=_config.get("data_path"))
for _login, _password, _server in _config["accounts"]:
    fake.add_account(_login, _password, _server)
held: dict[str, Any] = {}
"""Handles of the holds a test scripted (``fake.hang(...)``), by a name it chose."""
_written = threading.Lock()


def _arrived(function: str, login: object, password: object) -> None:
    if password is None:
        return
    with _written, open(_config["submissions"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"function": function, "login": login}) + "\n")


def initialize(*args: Any, **kwargs: Any) -> bool:
    _arrived("initialize", kwargs.get("login"), kwargs.get("password"))
    return fake.initialize(*args, **kwargs)


def login(*args: Any, **kwargs: Any) -> bool:
    _arrived("login", args[0] if args else kwargs.get("login"), kwargs.get("password"))
    return fake.login(*args, **kwargs)


def __getattr__(name: str) -> Any:
    # Every other function and constant is the fake's (delays and hangs included).
    return getattr(fake, name)
