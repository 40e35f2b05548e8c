"""The terminal's journal: the only place that says why a login was refused (SPEC 11).

The terminal writes ``logs/YYYYMMDD.log`` under its data folder, in UTF-16, one file a
day, with lines such as ``'5012345': authorization on MetaQuotes-Demo failed (Invalid
account)`` or ``'5012345': authorized on MetaQuotes-Demo through Access Server #2``.

It writes them late, and may hold the file locked while it does: right after a refused
login the line may not be there yet. So the adapter marks where the newest file ended
before the login (:func:`journal_mark`), and after a refusal looks for a line written
since, trying again a few times over about a second (:func:`read_failure_line`) before
it falls back to the newest line of the file, old or new.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

__all__ = ["JournalMark", "journal_mark", "read_failure_line", "read_journal_line"]

log = logging.getLogger("mt5lifecycle.adapters.mt5")

_JOURNAL_NAME = re.compile(r"^\d{8}\.log$", re.IGNORECASE)
_JOURNAL_TAIL_BYTES = 4 * 1024 * 1024


@attrs.frozen
class JournalMark:
    """Where the newest journal file ended at some moment: what is after it is newer."""

    name: str
    size: int


def journal_mark(data_path: Path) -> JournalMark | None:
    """The end of the newest journal file now; ``None`` when there is none (yet)."""
    newest = _newest(data_path)
    try:
        if newest is None or not newest.is_file():
            return None
        return JournalMark(newest.name, newest.stat().st_size)
    except OSError:
        return None


def read_journal_line(
    data_path: Path, login: int, *, since: JournalMark | None = None
) -> str | None:
    """The newest authorization line for ``login`` in the newest journal file.

    With ``since``, only what was written after that mark counts (a new file, from a
    day that began meanwhile, counts whole). A success line newer than a failure hides
    that failure, as it should: the failure is over. Raises ``OSError`` when the file
    cannot be read (the terminal may hold it locked).
    """
    newest = _newest(data_path)
    if newest is None:
        return None
    start = since.size if since is not None and since.name == newest.name else 0
    text = _read_utf16(newest, start)
    mark = f"'{login}'"
    for line in reversed(text.splitlines()):
        if mark in line and "authoriz" in line.lower():
            return line.strip()
    return None


def read_failure_line(
    data_path: Path,
    login: int,
    since: JournalMark | None,
    *,
    delays: Sequence[float],
    sleep: Callable[[float], None],
    deadline: float,
    fallback: bool = True,
) -> str | None:
    """The journal line that explains a refused login, waiting briefly for it.

    Tries at once, then after each of ``delays`` (``sleep`` is injectable so tests do
    not wait), never past ``deadline`` (``time.monotonic()``). A line written since
    ``since`` wins; when none comes, the newest line of the file is the answer (SPEC
    section 11's reading) unless ``fallback`` is false, and ``None`` when the file
    cannot be read at all.
    """
    for delay in (0.0, *delays):
        if delay:
            if time.monotonic() + delay >= deadline:
                break
            sleep(delay)
        try:
            line = read_journal_line(data_path, login, since=since)
        except OSError as exc:
            log.debug("the journal under %s cannot be read yet: %s", data_path, exc)
            continue
        if line is not None:
            return line
    if since is None or not fallback:
        return None
    try:
        return read_journal_line(data_path, login)
    except OSError as exc:
        log.warning("cannot read the journal under %s: %s", data_path, exc)
        return None


def _newest(data_path: Path) -> Path | None:
    logs = next(
        (data_path / name for name in ("logs", "Logs") if (data_path / name).is_dir()), None
    )
    if logs is None:
        return None
    try:
        names = sorted(p.name for p in logs.iterdir() if _JOURNAL_NAME.match(p.name))
    except OSError:
        return None
    return logs / names[-1] if names else None


def _read_utf16(path: Path, start: int) -> str:
    # Journals reach tens of megabytes on a busy terminal; the newest lines are at the end.
    with path.open("rb") as f:
        head = f.read(2)
        encoding = "utf-16-be" if head == b"\xfe\xff" else "utf-16-le"
        first = 2 if head in (b"\xff\xfe", b"\xfe\xff") else 0
        size = f.seek(0, 2)
        offset = max(first, start if start <= size else first, size - _JOURNAL_TAIL_BYTES)
        offset -= (offset - first) % 2
        f.seek(offset)
        return f.read().decode(encoding, errors="replace")
