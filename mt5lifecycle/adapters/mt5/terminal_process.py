"""Ending a terminal process by the path of its executable (psutil, optional).

The ``MetaTrader5`` package cannot restart a terminal: ``shutdown()`` only closes this
process's IPC connection to it. A ``terminal64.exe`` stuck in a call stays stuck
(``initialize()`` reconnects to it), and one that was "stopped" stays logged in and
keeps reconnecting. So a restart and a stop end the process itself, found by its
executable's path: the path ``MT5Broker`` starts it from (``terminal_paths``), which
is one terminal's own when each account has its own installation.

psutil is imported here only, when a process is to be ended: without it this is a
no-op that says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

__all__ = ["end_terminal_process", "same_executable"]

log = logging.getLogger("mt5lifecycle.adapters.mt5")


def same_executable(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same executable (case-insensitively on Windows)."""
    return _normal(a) == _normal(b)


def end_terminal_process(path: str | os.PathLike[str], *, timeout: float) -> list[int] | None:
    """End every process whose executable is ``path``; the pids that were ended.

    ``terminate()`` first (``TerminateProcess`` on Windows, ``SIGTERM`` elsewhere),
    ``kill()`` for what is left after ``timeout`` seconds. Never this process. ``None``
    when psutil is not installed.
    """
    try:
        import psutil
    except ImportError:
        log.warning(
            "psutil is not installed: the terminal process %s cannot be ended (pip install "
            "'mt5lifecycle[mt5]')",
            path,
        )
        return None
    wanted = _normal(path)
    found = []
    for proc in psutil.process_iter(["exe"]):
        exe = proc.info.get("exe")
        if exe and proc.pid != os.getpid() and _normal(exe) == wanted:
            found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(found, timeout=max(0.0, timeout / 2))
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _, stuck = psutil.wait_procs(alive, timeout=max(0.0, timeout / 2))
    for proc in stuck:
        log.warning("the terminal process %s (pid %d) did not end", path, proc.pid)
    if found:
        log.info("ended the terminal process %s (pids %s)", path, [p.pid for p in found])
    return [p.pid for p in found]


def _normal(path: str | os.PathLike[str]) -> str:
    return os.path.normcase(os.path.realpath(Path(path)))
