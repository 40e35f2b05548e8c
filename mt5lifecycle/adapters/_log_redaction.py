"""Keeps the notifier's secrets out of apprise's and urllib3's own log lines.

apprise URLs carry tokens and passwords, and apprise hides them in what it shows
(``url(privacy=True)``), but at DEBUG some of its services log the address they
post to with the token in its path (Telegram's ``/bot<token>/``, Discord's
``/webhooks/<id>/<token>``, Apprise API's ``/notify/<token>``), and urllib3, beneath
requests, logs every request line (``"POST /bot<token>/sendMessage HTTP/1.1" 200``).
A host that turns DEBUG on for a moment must not ship its channels' tokens to its
log store.

So every secret of every notifier built in this process is registered here, and a
filter on those loggers replaces each one with ``****`` before any handler sees the
record. Filters on a logger run for the records made on that very logger, which is
why each logger is named rather than a parent. The filter only rewrites records that
hold a secret, and never drops one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["LOGGERS", "MASK", "protect", "redact"]

MASK = "****"

LOGGERS = (
    "apprise",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.util.retry",
)
"""The loggers that may write a channel's address: apprise's one logger (all its
services log on it) and urllib3's request and retry lines."""

_SHORTEST = 3
"""Shorter strings are not worth hiding and would mangle every line they occur in."""

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_installed = False


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``****``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class _Redactor(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _secrets
        if not secrets:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to logging
            return True
        if any(secret in text for secret in secrets):
            record.msg = redact(text)
            record.args = None
        if record.exc_info and record.exc_text is None:
            # A requests exception's text holds the URL it failed on.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = _Redactor()


def protect(secrets: Iterable[str]) -> None:
    """Hide these strings (and their URL-encoded forms) in those loggers from now on."""
    global _secrets, _installed
    new = set()
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= _SHORTEST:
            new.add(secret)
            new.add(quote(secret, safe=""))
            new.add(quote(secret, safe="/:"))
    with _lock:
        # Longest first, so that a secret containing another is masked whole.
        _secrets = tuple(sorted(new.union(_secrets), key=len, reverse=True))
        if not _installed:
            for name in LOGGERS:
                logging.getLogger(name).addFilter(_FILTER)
            _installed = True
