"""The notifier port on apprise: e-mail, Telegram, Slack, Discord, webhooks and more.

``AppriseNotifier(urls)`` sends every notification to each channel (one apprise URL
each: ``mailtos://``, ``tgram://``, ``slack://``, ``discord://``, ``jsons://``, and
the rest of what apprise supports), as a subject and a body an operator can act on
(``_alert_text``), with the JSON, XML and form webhooks also getting the facts as
fields of their own.

Why it is shaped so:

- Delivery is at least once (SPEC section 14): a relay hands a stored notification
  over until the notifier takes it, and hands it again, with the same ``id``, after a
  crash. So ``notify`` raises ``NotificationNotDelivered`` when any channel did not
  take it, and remembers, per id, which channels did: the retry goes only to the
  ones that failed, and a notification every channel took is not sent again. The
  memory is bounded (``remember`` ids, the oldest forgotten first) and lives in this
  object, so a process that restarts may send a notification once more; the id in
  every message lets a reader see it is the same one.
- ``notify_many`` takes a batch (the runtime's burst of one event: a broker server
  down takes 500 accounts with it) and sends each channel one message per run of one
  kind, never reordering an instance's own notifications; the per-instance records
  stay whole in the archive, and a webhook's fields still name every one.
- Channels are sent to one after another, each through its own ``apprise.Apprise``,
  because only that tells which of them failed (an ``Apprise`` with many URLs
  answers one yes or no, in apprise 1.x).
- Sending blocks the caller: each channel's own timeouts bound it (apprise's ``cto``
  and ``rto`` URL options), and apprise spaces two messages on one e-mail channel
  5.5 s apart. Call it from a worker thread, not from an event loop.
- apprise URLs carry tokens and passwords. A channel is named, in a log line, an
  exception and ``repr``, by its service and the start of apprise's own privacy
  form of its URL (``Telegram tgram://1...u``, ``E-Mail mailtos://ops:****@host``),
  never the path or query (a JSON webhook's path and headers are not private to
  apprise), and every secret of every channel is masked in apprise's and urllib3's
  own log lines too (``_log_redaction``).
- Why a channel failed is what apprise logged on the ``apprise`` logger; an exception
  raised inside apprise is named by its type only, because a requests error's text
  holds the URL it failed on.
- apprise is imported when an ``AppriseNotifier`` is built, so ``import
  mt5lifecycle`` works without it (``pip install mt5lifecycle[apprise]``).
"""

from __future__ import annotations

import collections
import importlib
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from ..core.records import Notification
from ..core.states import AlertKind
from ..errors import LifecycleError
from . import _log_redaction
from ._alert_text import ConsoleLinks, Message, console_links, render_group

__all__ = ["AppriseNotifier", "NotificationNotDelivered"]

log = logging.getLogger("mt5lifecycle.notify")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}")
_SECRET_QUERY_KEYS = frozenset(
    {"token", "key", "apikey", "api_key", "secret", "password", "pass", "pw", "auth"}
)


class NotificationNotDelivered(LifecycleError):
    """Some channels did not take one or more notifications: hand them over again.

    A retry with the same notifications (the same ids) goes only to the channels that
    failed; the channels that took them are not sent to twice.
    """

    notification_ids: tuple[str, ...]
    """The notifications some channel did not take (the rest of a batch went everywhere)."""
    kinds: tuple[AlertKind, ...]
    failed: dict[str, str]
    """Each failed channel's name, and why it failed (never a secret)."""
    delivered: tuple[str, ...]
    """The channels that now hold every one of these notifications."""

    def __init__(
        self,
        *,
        notifications: Sequence[Notification],
        total: int,
        failed: Mapping[str, str],
        delivered: Sequence[str],
    ) -> None:
        self.notification_ids = tuple(n.id for n in notifications)
        self.kinds = tuple(dict.fromkeys(n.kind for n in notifications))
        self.failed = dict(failed)
        self.delivered = tuple(delivered)
        instances = {n.instance_id for n in notifications}
        channels = len(failed) + len(delivered)
        why = "; ".join(f"{name} ({reason})" for name, reason in failed.items())
        if total == 1:
            n = notifications[0]
            what = f"{n.kind.value} for {n.instance_id} (notification {n.id}) was"
        else:
            kinds = ", ".join(kind.value for kind in self.kinds)
            what = f"{len(notifications)} of {total} notifications ({kinds}) were"
        message = f"{what} not delivered to {len(failed)} of {channels} channels: {why}"
        if delivered:
            message += f"; delivered to {', '.join(delivered)}"
        message += ". A retry of the same notification ids goes only to the channels that failed."
        only = next(iter(instances)) if len(instances) == 1 else None
        super().__init__(message, instance_id=only)


def _import_apprise() -> Any:
    try:
        return importlib.import_module("apprise")
    except ImportError as exc:
        raise ModuleNotFoundError(
            "AppriseNotifier needs the apprise library: pip install 'mt5lifecycle[apprise]'",
            name="apprise",
        ) from exc


def _scheme(url: str) -> str:
    head = url.split("://", 1)[0] if "://" in url else ""
    return f"{head}://" if _SCHEME.fullmatch(head) else "(no scheme)"


def _secrets_in_url(url: str) -> set[str]:
    """What the URL itself says is secret, before apprise logs anything about it.

    apprise's privacy form hides the password and each service's private tokens, but
    shows a webhook's headers (``+X-Api-Key=...``) and query parameters
    (``-token=...``, which urllib3 then logs in the request line) in full, and logs
    that form the moment a URL is loaded.
    """
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            found.add(unquote(parts.password))
        query = parts.query
    except ValueError:
        return found
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        key = unquote(key)
        if value and (key.startswith(("+", "-")) or key.lower() in _SECRET_QUERY_KEYS):
            found.add(unquote(value))
    return found


def _secrets_of(plugin: Any) -> set[str]:
    """The values of the fields the service's own template marks private."""
    found: set[str] = set()
    for table in ("template_tokens", "template_args"):
        specs = getattr(plugin, table, None)
        if not isinstance(specs, Mapping):
            continue
        for key, spec in specs.items():
            if not (isinstance(spec, Mapping) and spec.get("private")):
                continue
            value = getattr(plugin, str(spec.get("map_to", key)), None)
            values = value if isinstance(value, list | tuple | set | frozenset) else [value]
            found.update(v for v in values if isinstance(v, str))
    for extra in ("headers", "params"):  # a webhook's "+header" and "-param" values
        given = getattr(plugin, extra, None)
        if isinstance(given, Mapping):
            found.update(v for v in given.values() if isinstance(v, str))
    return found


class _Channel:
    """One apprise URL, named without its secrets."""

    __slots__ = ("_apprise", "_fixed", "_kwargs", "name")

    def __init__(self, apprise: Any, name: str, plugin: Any, url: str) -> None:
        self.name = name
        self._apprise = apprise
        self._kwargs: dict[str, Any] | None = None
        self._fixed: Any = None
        if "payload" in (getattr(type(plugin), "template_kwargs", None) or {}):
            # JSON, XML and form webhooks take extra fields (apprise's ":key=value"):
            # each message's own facts go there, so the plugin is built per message.
            self._kwargs = type(plugin).parse_url(url)
        else:
            self._fixed = apprise.Apprise()
            self._fixed.add(plugin)

    def send(self, message: Message) -> str | None:
        """``None`` once the channel took the message, else why not (no secret in it)."""
        try:
            sender = self._fixed
            if self._kwargs is not None:
                kwargs = dict(self._kwargs)
                # The URL's own ":key=value" extras win: the operator set them on purpose.
                kwargs["payload"] = {**message.fields, **(kwargs.get("payload") or {})}
                plugin = self._apprise.Apprise.instantiate(kwargs)
                if plugin is None:
                    return "apprise could not build it"
                sender = self._apprise.Apprise()
                sender.add(plugin)
            ok = sender.notify(
                body=message.body,
                title=message.title,
                notify_type=message.severity.value,
                body_format="text",
            )
        except Exception as exc:
            return f"apprise raised {type(exc).__name__}"
        return None if ok else "apprise reported a failure; the 'apprise' logger says why"


class _Deliveries:
    """Which channels took each notification id: a bounded, thread-safe memory."""

    __slots__ = ("_done", "_limit", "_lock")

    def __init__(self, limit: int) -> None:
        self._done: collections.OrderedDict[str, frozenset[int]] = collections.OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def done(self, notification_id: str) -> frozenset[int]:
        with self._lock:
            return self._done.get(notification_id, frozenset())

    def mark(self, notification_ids: Iterable[str], channel: int) -> None:
        with self._lock:
            for nid in notification_ids:
                self._done[nid] = self._done.get(nid, frozenset()) | {channel}
                self._done.move_to_end(nid)
            while len(self._done) > self._limit:
                self._done.popitem(last=False)


class AppriseNotifier:
    """The ``Notifier`` port through apprise (see ``docs/operations/alerts.md``).

    ``urls`` is a list of apprise URLs, or a mapping from a name of yours ("ops-mail")
    to one, the name then leading the channel's name in logs and errors.
    ``console_url`` is the operator console's address: alerts then link to the
    instance's page and, after a closure, to the page that adds a new account; without
    it they show the ``mt5lifecycle`` commands. ``max_listed`` bounds the rows a
    grouped message lists; ``remember`` the notification ids whose deliveries are
    remembered for retries.

    Bad arguments raise ``TypeError`` or ``ValueError`` naming the argument, and a URL
    by its position and scheme only; without apprise installed, ``ModuleNotFoundError``
    naming the extra.
    """

    __slots__ = ("_channels", "_deliveries", "_links", "_max_listed")

    def __init__(
        self,
        urls: Iterable[str] | Mapping[str, str],
        *,
        console_url: str | None = None,
        max_listed: int = 20,
        remember: int = 10_000,
    ) -> None:
        if isinstance(urls, str | bytes):
            raise TypeError("urls must be a list of apprise URLs (or a mapping), not one string")
        named = list(urls.items()) if isinstance(urls, Mapping) else [(None, u) for u in urls]
        if not named:
            raise ValueError("AppriseNotifier needs at least one apprise URL")
        for argument, value in (("max_listed", max_listed), ("remember", remember)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument} must be an int of at least 1, got {value!r}")
        for position, (name, url) in enumerate(named, start=1):
            if not isinstance(url, str):
                raise TypeError(f"apprise URL {position} must be a str, not {type(url).__name__}")
            if name is not None and (not isinstance(name, str) or not name.strip()):
                raise ValueError(f"the name of apprise URL {position} must be a non-empty str")
        self._links: ConsoleLinks | None = console_links(console_url)
        self._max_listed = max_listed
        self._deliveries = _Deliveries(remember)
        apprise = _import_apprise()
        # Every secret is registered before apprise first logs the URL.
        _log_redaction.protect(s for _, url in named for s in _secrets_in_url(url))
        channels: list[_Channel] = []
        for position, (name, url) in enumerate(named, start=1):
            plugin = apprise.Apprise.instantiate(url.strip())
            if plugin is None:
                raise ValueError(
                    f"apprise cannot use URL {position} of {len(named)} "
                    f"(scheme {_scheme(url.strip())}): check it against apprise's page for "
                    "that service"
                )
            _log_redaction.protect(_secrets_of(plugin))
            shown = self._shown(plugin)
            label = f"{name.strip()} ({shown})" if name is not None else shown
            if any(c.name == label for c in channels):
                label = f"{label} #{position}"
            channels.append(_Channel(apprise, label, plugin, url.strip()))
        self._channels = tuple(channels)

    @staticmethod
    def _shown(plugin: Any) -> str:
        private = str(plugin.url(privacy=True))
        scheme, _, rest = private.partition("://")
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        return _log_redaction.redact(f"{plugin.service_name} {scheme}://{authority}")

    @property
    def channels(self) -> tuple[str, ...]:
        """Each channel's name as logs and errors show it (no secret in any)."""
        return tuple(c.name for c in self._channels)

    def __repr__(self) -> str:
        links = f", console_url={self._links.base!r}" if self._links is not None else ""
        return f"AppriseNotifier(channels={list(self.channels)!r}{links})"

    def notify(self, notification: Notification) -> None:
        """Send one notification to every channel that has not taken it yet.

        Raises ``NotificationNotDelivered`` naming the channels that failed.
        """
        self.notify_many((notification,))

    def notify_many(self, notifications: Iterable[Notification]) -> None:
        """Send a batch, one message for each run of notifications of one kind.

        For the burst of one event (a broker server down takes 500 accounts with it):
        each channel gets one message ("ACCOUNT_CLOSED: 500 accounts") instead of 500.
        A notification alone in its group is sent as ``notify`` sends it. Each
        instance's notifications reach every channel in the order given: a group never
        jumps ahead of an earlier notification of one of its instances, and a channel
        that fails a message gets nothing more from this call. A channel that took some
        of the batch before gets only the rest. Raises ``NotificationNotDelivered``
        naming the notifications some channel did not take (the others went
        everywhere) and the channels that failed.
        """
        batch: dict[str, Notification] = {}
        for n in notifications:
            if not isinstance(n, Notification):
                raise TypeError(f"expected a Notification, got {type(n).__name__}")
            batch.setdefault(n.id, n)
        groups = _grouped(batch.values())
        rendered: dict[tuple[str, ...], Message] = {}
        failed: dict[str, str] = {}
        undelivered: set[str] = set()
        for index, channel in enumerate(self._channels):
            for group in groups:
                pending = [n for n in group if index not in self._deliveries.done(n.id)]
                if not pending:
                    continue
                if channel.name in failed:
                    # Order per instance: nothing after a message this channel refused.
                    undelivered.update(n.id for n in pending)
                    continue
                key = tuple(n.id for n in pending)
                if key not in rendered:
                    rendered[key] = render_group(pending, self._links, self._max_listed)
                why = channel.send(rendered[key])
                kind = pending[0].kind
                if why is None:
                    self._deliveries.mark(key, index)
                    log.debug(
                        "%s: %d %s notification(s) delivered", channel.name, len(pending), kind
                    )
                    continue
                failed[channel.name] = why
                undelivered.update(key)
                log.warning(
                    "%s: %d %s notification(s) not delivered (first: %s, id %s): %s",
                    channel.name,
                    len(pending),
                    kind,
                    pending[0].instance_id,
                    pending[0].id,
                    why,
                )
        if failed:
            raise NotificationNotDelivered(
                notifications=[n for n in batch.values() if n.id in undelivered],
                total=len(batch),
                failed=failed,
                delivered=[c.name for c in self._channels if c.name not in failed],
            )


def _grouped(notifications: Iterable[Notification]) -> list[list[Notification]]:
    """Notifications of one kind together, without reordering any instance's own.

    Each joins the first group of its kind that comes no earlier than the group of its
    instance's previous notification, else starts a new one at the end: a burst of one
    kind over many instances is one group, and "LOGIN_FAILURE then LOGIN_RECOVERED" of
    one instance stays in that order.
    """
    groups: list[list[Notification]] = []
    latest: dict[str, int] = {}
    for n in notifications:
        start = latest.get(n.instance_id, 0)
        index = next(
            (i for i in range(start, len(groups)) if groups[i][0].kind is n.kind), len(groups)
        )
        if index == len(groups):
            groups.append([])
        groups[index].append(n)
        latest[n.instance_id] = index
    return groups
