"""An ``mt5linux`` client for a server that already runs, with a timeout inside the lock.

``mt5linux`` puts the ``MetaTrader5`` package of a Windows Python (under Wine, or in
its Docker image) behind an rpyc server; its client is a ``MetaTrader5``-like object
that ``MT5Broker`` takes as it is. Its releases differ in what the constructor does:

- 0.1 and 1.0: ``MetaTrader5(host, port)`` (1.0 adds ``timeout=300``) connects to the
  server at once; results come back as rpyc proxies.
- 1.1: ``MetaTrader5(...)`` first looks for a container runtime (``docker`` or
  ``udocker`` on ``PATH``) and starts, or finds, its own ``lprett/mt5linux`` container;
  without one it raises ``RuntimeError``, and it cannot attach to a standalone server
  (``mt5server.exe`` under Wine) by itself. A server that is down makes it retry for
  its whole ``timeout`` and then raise ``AttributeError`` from its own error path.
  Results come back as copies. It needs Python 3.12 or newer.

:func:`mt5linux_client` attaches any of them to a server that is already running,
and sets the client's call timeout (300 s by default in 1.x, past the login lock)
to the one given. For 1.1 it supplies mt5linux's own ``Runtime`` seam with one that
only names the server (the seam mt5linux's own tests replace); everything else, the
connection, the calls and their retries, is mt5linux's.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

__all__ = ["mt5linux_client"]

_SEAM = threading.Lock()


def mt5linux_client(host: str = "localhost", port: int = 18812, *, timeout: float = 45.0) -> Any:
    """A client of the mt5linux server at ``host:port``, for ``MT5Broker(terminals)``.

    ``timeout`` (seconds) bounds each call over the connection and, in 1.1, the wait
    for the server at construction. Keep it within ``MT5Broker.longest_call`` (50 s by
    default), so that the bridge gives up, and says so, before the broker's deadline.
    Raises what mt5linux raises when the server cannot be reached; ``MT5Broker`` turns
    that into a ``NETWORK`` login, a ``DOWN`` status and a ``TerminalUnavailable``
    restart.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    import mt5linux

    try:
        from mt5linux import _container_manager
    except ImportError:  # 0.1 and 1.0: the constructor connects by itself
        if "timeout" in inspect.signature(mt5linux.MetaTrader5).parameters:
            return mt5linux.MetaTrader5(host=host, port=port, timeout=timeout)
        client = mt5linux.MetaTrader5(host=host, port=port)
        connection = getattr(client, "_MetaTrader5__conn", None)
        if connection is not None:
            connection._config["sync_request_timeout"] = timeout
        return client
    with _SEAM:
        made = _container_manager.create_runtime
        _container_manager.create_runtime = lambda _engine: _attached_runtime()
        try:
            # search_on_init=False: initialize(server=...) would otherwise be sent up to
            # four times (the bridge's own retry); MT5Broker never passes server= to
            # initialize, and this makes sure nothing else does either.
            return mt5linux.MetaTrader5(host=host, port=port, timeout=timeout, search_on_init=False)
        finally:
            _container_manager.create_runtime = made


def _attached_runtime() -> Any:
    """mt5linux 1.1's ``Runtime`` for a server that runs already: no container at all."""
    from mt5linux._base_runtime import Runtime

    class Attached(Runtime):  # type: ignore[misc]  # mt5linux is untyped
        def start_container(self, host: str, port: int, *args: Any, **kwargs: Any) -> None:
            self._port = port

        def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("an attached mt5linux server has no container")

        _create_connection_file = _delete_connection_file = _list_connection_files = _unsupported
        _is_controlled_container = _create_controlled_container_file = _unsupported
        _check_image_exists = _pull_image = _get_container_by_port = _unsupported
        _get_stopped_container_by_port = _start_existing_container = _unsupported
        _run_container = _stop_container = _remove_container = _unsupported
        _get_container_status = _unsupported

    return Attached()
