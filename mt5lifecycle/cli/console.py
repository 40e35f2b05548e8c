"""The command line's streams, on every platform: encodings, closed pipes, real consoles.

Three things a command meets outside a developer's terminal:

- A stdout redirected to a file or a pipe uses the locale's encoding, on Windows
  the ANSI code page (cp1252 and the like), which cannot write every character a
  terminal's journal may hold. ``prepare_streams`` keeps the encoding and swaps the
  error handler for ``backslashreplace``: a character the encoding lacks becomes
  ``\\u2713``, never a ``UnicodeEncodeError`` half-way through a history.
- A reader that stops early (``mt5lifecycle history ID | head``) closes the pipe.
  Writing then fails with ``EPIPE`` (``EINVAL`` on Windows). ``GuardedOutput``
  turns that into ``OutputClosed``, which ``main`` answers with exit code 141
  (128 + SIGPIPE, what POSIX tools answer) and nothing on stderr.
- ``isatty()`` is true for the ``NUL`` device on Windows, so a scheduled task
  whose stdin is ``NUL`` would look interactive. ``is_console`` asks Windows for
  the console mode of the handle (``GetConsoleMode``), which only a real console
  has; elsewhere ``isatty`` is what it says.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from typing import Any, TextIO

__all__ = ["GuardedOutput", "OutputClosed", "is_console", "prepare_streams", "silence"]

_CLOSED_PIPE = {errno.EPIPE, errno.EINVAL} if sys.platform == "win32" else {errno.EPIPE}


class OutputClosed(Exception):
    """The reader of the command's output went away."""


class GuardedOutput(io.TextIOBase):
    """A text stream that reports a closed pipe as ``OutputClosed``.

    Everything else is the wrapped stream's: its encoding, its buffering, whether
    it is a terminal.
    """

    def __init__(self, inner: TextIO) -> None:
        super().__init__()
        self.inner = inner

    def write(self, text: str) -> int:
        try:
            return self.inner.write(text)
        except OSError as exc:
            if _closed_pipe(exc):
                raise OutputClosed from exc
            raise

    def flush(self) -> None:
        try:
            self.inner.flush()
        except OSError as exc:
            if _closed_pipe(exc):
                raise OutputClosed from exc
            raise

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8") or "utf-8"

    def writable(self) -> bool:
        return True


def _closed_pipe(exc: OSError) -> bool:
    return isinstance(exc, BrokenPipeError) or exc.errno in _CLOSED_PIPE


def prepare_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` unable to fail on a character."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            # A closed or detached stream: leave it as it is.
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def silence(stream: TextIO) -> None:
    """After ``OutputClosed`` on the process's stdout: point it at the null device.

    Python flushes stdout once more at exit; on a closed pipe that would print
    "Exception ignored ... BrokenPipeError" and exit 120. The null device takes the
    rest quietly (the recipe of Python's own ``signal`` documentation).
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def is_console(stream: Any) -> bool:
    """Whether ``stream`` is a person's console (so a prompt can be answered)."""
    isatty = getattr(stream, "isatty", None)
    try:
        if isatty is None or not isatty():
            return False
    except (OSError, ValueError):
        return False
    if sys.platform != "win32":
        return True
    try:
        fd = stream.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        # A stream that says it is a terminal but has no descriptor (a test's
        # stand-in): believe it.
        return True
    return _windows_console(fd)


def _windows_console(fd: int) -> bool:
    if sys.platform != "win32":  # for mypy --platform: the branch below is Windows-only
        return False
    import ctypes
    import msvcrt
    from ctypes import wintypes

    handle = msvcrt.get_osfhandle(fd)
    mode = wintypes.DWORD()
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    return bool(kernel32.GetConsoleMode(wintypes.HANDLE(handle), ctypes.byref(mode)))
