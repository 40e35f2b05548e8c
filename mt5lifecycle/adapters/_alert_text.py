"""What an alert says to the person who reads it: a subject, a body and flat fields.

Pure functions of a ``Notification`` (or a batch of them of one kind) and the
console's address: no apprise, no I/O, so every kind can be rendered and read in a
test. ``AppriseNotifier`` sends the subject and body to every channel, and adds the
fields to the channels that carry structured data (JSON, XML and form webhooks).

Why the text is shaped so:

- A person reads it on a phone at 3 a.m. The first line says what happened, the
  facts follow one per line (instance, reason, message, time in UTC, the
  notification's id), then numbered steps with the exact command or page to use.
- It names the steps by the command line's words (``mt5lifecycle reset ID``), or the
  console's pages when a console is configured: an operator acts from the message
  without looking anything up.
- Nothing here can hold a password: a ``Notification`` has no field for one, and the
  commands it shows ask for the password themselves, never take it as an argument.
- A batch (a broker server down takes hundreds of accounts with it) is one message
  that lists the accounts, cut after ``max_listed`` rows with "and N more", so that it
  stays under the length limits of chat services (Telegram 4096, Discord 2000
  characters for a plain message). The per-instance records stay whole in the
  archive; the fields of a batch still name every instance and notification.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import Enum
from urllib.parse import quote

import attrs

from ..core.records import Notification
from ..core.states import AlertKind, Reason

__all__ = ["Message", "Severity", "console_links", "render", "render_group"]


class Severity(str, Enum):
    """How urgent a kind is; the values are apprise's notification types."""

    FAILURE = "failure"
    WARNING = "warning"
    SUCCESS = "success"
    INFO = "info"

    def __str__(self) -> str:
        return self.value


SEVERITY: dict[AlertKind, Severity] = {
    AlertKind.LOGIN_FAILURE: Severity.FAILURE,
    AlertKind.REPEATED_LOGIN_FAILURE: Severity.WARNING,
    AlertKind.LOGIN_RECOVERED: Severity.SUCCESS,
    AlertKind.ACCOUNT_BANNED: Severity.FAILURE,
    AlertKind.ACCOUNT_CLOSED: Severity.FAILURE,
    AlertKind.AUTO_RECOVERY_FAILURE: Severity.FAILURE,
    AlertKind.CREDENTIALS_DELETED: Severity.INFO,
    AlertKind.BROKER_SERVER_DOWN: Severity.FAILURE,
    AlertKind.BROKER_SERVER_RECOVERED: Severity.SUCCESS,
}

HEADLINE: dict[AlertKind, str] = {
    AlertKind.LOGIN_FAILURE: "login given up",
    AlertKind.REPEATED_LOGIN_FAILURE: "repeated login failures",
    AlertKind.LOGIN_RECOVERED: "logged in again",
    AlertKind.ACCOUNT_BANNED: "account suspended or banned by the broker",
    AlertKind.ACCOUNT_CLOSED: "account closed by the broker",
    AlertKind.AUTO_RECOVERY_FAILURE: "automatic recovery gave up",
    AlertKind.CREDENTIALS_DELETED: "closure confirmed, credentials deleted",
    AlertKind.BROKER_SERVER_DOWN: "broker server down",
    AlertKind.BROKER_SERVER_RECOVERED: "broker server back",
}

RUNBOOK: dict[AlertKind, str] = {
    kind: "docs/operations/alerts.md#" + anchor
    for kind, anchor in {
        AlertKind.LOGIN_FAILURE: "mt5loginfailure",
        AlertKind.REPEATED_LOGIN_FAILURE: "mt5repeatedloginfailure",
        AlertKind.LOGIN_RECOVERED: "mt5loginrecovered",
        AlertKind.ACCOUNT_BANNED: "mt5accountbanned",
        AlertKind.ACCOUNT_CLOSED: "mt5accountclosed",
        AlertKind.AUTO_RECOVERY_FAILURE: "mt5autorecoveryfailure",
        AlertKind.CREDENTIALS_DELETED: "mt5credentialsdeleted",
        AlertKind.BROKER_SERVER_DOWN: "mt5brokerserverdown",
        AlertKind.BROKER_SERVER_RECOVERED: "mt5brokerserverrecovered",
    }.items()
}

_ADDS_ACCOUNT = frozenset({AlertKind.ACCOUNT_CLOSED, AlertKind.CREDENTIALS_DELETED})
"""The kinds after which the way on is a new account (SPEC section 14)."""


@attrs.frozen
class Message:
    """One message as every channel gets it."""

    title: str
    body: str
    severity: Severity
    fields: dict[str, str] = attrs.field(factory=dict)
    """Flat string fields for structured channels (a JSON webhook's extra keys)."""


@attrs.frozen
class ConsoleLinks:
    """The console's pages an alert points at (``console_url`` of the notifier)."""

    base: str

    def instance(self, instance_id: str) -> str:
        return f"{self.base}/instances/{quote(instance_id, safe='')}"

    @property
    def new_account(self) -> str:
        return f"{self.base}/instances/new"


def console_links(console_url: str | None) -> ConsoleLinks | None:
    """Checked once, when the notifier is built: a bad address is a clear error then,
    not a broken link in every alert."""
    if console_url is None:
        return None
    if not isinstance(console_url, str):
        raise TypeError(f"console_url must be a str, not {type(console_url).__name__}")
    base = console_url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")) or len(base.split("//", 1)[1]) == 0:
        raise ValueError(
            f"console_url must be the console's http:// or https:// address, got {base!r}"
        )
    if "@" in base.split("//", 1)[1].split("/", 1)[0]:
        # An address with user:password in it would put a secret in every alert.
        raise ValueError("console_url must not carry a user or password")
    return ConsoleLinks(base)


def _utc(at: datetime) -> datetime:
    # A naive time is taken as UTC, as the library's own times are.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def utc_iso(at: datetime) -> str:
    """ISO 8601 in UTC."""
    return _utc(at).isoformat()


def _add_account(links: ConsoleLinks | None) -> str:
    if links is not None:
        return f"Add a new account on the console: {links.new_account}"
    return (
        "Add a new account: mt5lifecycle add NEW-ID --login N --server S "
        "(it asks for the password; a closed account's id is never used again)"
    )


def _history(instance_id: str, links: ConsoleLinks | None) -> str:
    where = f"mt5lifecycle history {instance_id}"
    if links is not None:
        where += f" or {links.instance(instance_id)}"
    return where


def _put_credentials(instance_id: str, links: ConsoleLinks | None) -> str:
    how = (
        f"mt5lifecycle credentials put {instance_id} --login N --server S "
        "(it asks for the password)"
    )
    if links is not None:
        how += f", or Replace credentials on {links.instance(instance_id)}"
    return how


def next_steps(
    kind: AlertKind, reason: Reason | None, instance_id: str, links: ConsoleLinks | None
) -> list[str]:
    """What the reader does about it, in order; ``instance_id`` may be a placeholder."""
    history = _history(instance_id, links)
    if kind is AlertKind.LOGIN_FAILURE and reason is Reason.CREDENTIALS_MISSING:
        return [
            f"Store the credentials: {_put_credentials(instance_id, links)}.",
            f"Then log it in: mt5lifecycle reset {instance_id}.",
        ]
    if kind is AlertKind.LOGIN_FAILURE:
        return [
            f"Read the failed attempts (the broker's code and message for each): {history}.",
            "If the message says the credentials worked before, the account may have been "
            "closed or disabled: ask the broker first, a reset only spends more attempts.",
            "Check the password, the login and the server name with the broker.",
            f"Then mt5lifecycle reset {instance_id}, or, if they were wrong, replace them "
            f"first: {_put_credentials(instance_id, links)}.",
        ]
    if kind is AlertKind.REPEATED_LOGIN_FAILURE:
        return [
            "The instance keeps trying with backoff and gives up at the last attempt: "
            f"check the login, the password and the server name now ({history}).",
            f"If they are wrong, replace them: {_put_credentials(instance_id, links)}.",
        ]
    if kind is AlertKind.LOGIN_RECOVERED:
        return ["Nothing to do: the instance is connected again."]
    if kind is AlertKind.ACCOUNT_BANNED:
        return [
            f"Contact the broker about the account; its message is in {history}.",
            f"Once the broker lifts the ban: mt5lifecycle reset {instance_id} (before that a "
            "reset ends in the same state).",
            f"To take it out of service for good: mt5lifecycle disable {instance_id}.",
        ]
    if kind is AlertKind.ACCOUNT_CLOSED:
        confirm = f"mt5lifecycle confirm-closure {instance_id}"
        if links is not None:
            confirm += f", or Confirm closure on {links.instance(instance_id)}"
        return [
            f"Check how its open positions and orders ended: {history}. A position "
            "recorded FAILED needs a person: settle it with the broker.",
            f"Confirm the closure once the broker has confirmed it: {confirm}. This deletes "
            "the credentials and the live state; the history stays in the archive.",
            # No full stop after it: some mail clients would take it into the link.
            _add_account(links),
        ]
    if kind is AlertKind.AUTO_RECOVERY_FAILURE:
        return [
            "Look at the host running the terminal: does the terminal start, is there disk "
            "and memory, does the network reach the broker's server?",
            f"See how each restart ended: {history}.",
            f"When the cause is fixed: mt5lifecycle reset {instance_id}. Many instances at "
            "once point at the broker's server or the network, not the terminals.",
        ]
    if kind is AlertKind.CREDENTIALS_DELETED:
        return [
            "Nothing to do if an operator meant to confirm this closure; otherwise read who "
            f"did it in the audit trail: {history}. It cannot be undone.",
            "To go on trading: " + _add_account(links),
        ]
    if kind is AlertKind.BROKER_SERVER_DOWN:
        return [
            "The server's instances wait without using up their login attempts or "
            "restarts: nothing to reset.",
            "Check the broker's status page and the network from the terminals' hosts to "
            "the server.",
            "BROKER_SERVER_RECOVERED follows when logins succeed again; if it does not "
            "come, contact the broker.",
        ]
    if kind is AlertKind.BROKER_SERVER_RECOVERED:
        return ["Nothing to do: logins to the server succeed again and the waiting "
                "instances log in."]  # fmt: skip
    raise ValueError(f"no text for alert kind {kind!r}")


def _numbered(steps: Sequence[str]) -> list[str]:
    return [f"{n}. {step}" for n, step in enumerate(steps, start=1)]


def render(notification: Notification, links: ConsoleLinks | None) -> Message:
    """One notification as one message."""
    n = notification
    at = utc_iso(n.at)
    reason = n.reason.value if n.reason is not None else ""
    lines = [
        f"{n.kind.value} for {n.instance_id}: {HEADLINE[n.kind]}",
        "",
        f"Instance:      {n.instance_id}",
        f"Reason:        {reason or '-'}",
        f"Message:       {n.message}",
        f"Time (UTC):    {at}",
        f"Notification:  {n.id}",
    ]
    if links is not None:
        lines.append(f"Instance page: {links.instance(n.instance_id)}")
    lines += ["", "What to do next:"]
    lines += _numbered(next_steps(n.kind, n.reason, n.instance_id, links))
    lines += ["", f"Runbook: {RUNBOOK[n.kind]}"]
    fields = {
        "kind": n.kind.value,
        "instance_id": n.instance_id,
        "reason": reason,
        "at": at,
        "notification_id": n.id,
        "count": "1",
    }
    if links is not None:
        fields["instance_page"] = links.instance(n.instance_id)
    if n.kind in _ADDS_ACCOUNT:
        fields["add_account"] = _add_account(links)
    return Message(
        title=f"{n.kind.value}: {n.instance_id} ({HEADLINE[n.kind]})",
        body="\n".join(lines),
        severity=SEVERITY[n.kind],
        fields=fields,
    )


def _noun(kind: AlertKind, count: int) -> str:
    if kind in (AlertKind.BROKER_SERVER_DOWN, AlertKind.BROKER_SERVER_RECOVERED):
        return "notification" if count == 1 else "notifications"
    return "account" if count == 1 else "accounts"


def render_group(
    notifications: Sequence[Notification], links: ConsoleLinks | None, max_listed: int
) -> Message:
    """Notifications of one kind as one message listing them; one alone renders whole."""
    if not notifications:
        raise ValueError("render_group needs at least one notification")
    if len(notifications) == 1:
        return render(notifications[0], links)
    kind = notifications[0].kind
    if any(n.kind is not kind for n in notifications):
        raise ValueError("render_group renders notifications of one kind")
    count = len(notifications)
    ordered = sorted(notifications, key=lambda n: (_utc(n.at), n.instance_id))
    first, last = utc_iso(ordered[0].at), utc_iso(ordered[-1].at)
    messages = {n.message for n in ordered}
    one_message = len(messages) == 1
    width = max(len(n.instance_id) for n in ordered[:max_listed])
    rows = []
    for n in ordered[:max_listed]:
        row = f"  {n.instance_id:<{width}}  {n.reason.value if n.reason else '-'}  {utc_iso(n.at)}"
        rows.append(row if one_message else f"{row}  {n.message}")
    if count > max_listed:
        rows.append(
            f"  and {count - max_listed} more (mt5lifecycle status --all lists every "
            "instance; each one's history is whole: mt5lifecycle history ID)"
        )
    lines = [
        f"{kind.value}: {count} {_noun(kind, count)} ({HEADLINE[kind]})",
        "",
        f"Between {first} and {last} (UTC):",
        *rows,
    ]
    if one_message:
        lines += ["", f"Message: {ordered[0].message}"]
    if links is not None:
        lines += ["", f"Console: {links.base}/"]
    reasons = list(dict.fromkeys(n.reason for n in ordered))
    per_account = kind not in (AlertKind.BROKER_SERVER_DOWN, AlertKind.BROKER_SERVER_RECOVERED)
    lines += ["", "What to do next, for each account (ID):" if per_account else "What to do next:"]
    if len(reasons) == 1:
        lines += _numbered(next_steps(kind, reasons[0], "ID", links))
    else:
        for reason in reasons:
            lines += [f"With reason {reason.value if reason else '-'}:"]
            lines += _numbered(next_steps(kind, reason, "ID", links))
    lines += ["", f"Runbook: {RUNBOOK[kind]}"]
    fields = {
        "kind": kind.value,
        "count": str(count),
        "instance_ids": ",".join(n.instance_id for n in ordered),
        "notification_ids": ",".join(n.id for n in ordered),
        "reasons": ",".join(r.value if r else "" for r in reasons),
        "first_at": first,
        "last_at": last,
    }
    if links is not None:
        fields["console"] = f"{links.base}/"
    if kind in _ADDS_ACCOUNT:
        fields["add_account"] = _add_account(links)
    return Message(
        title=f"{kind.value}: {count} {_noun(kind, count)}",
        body="\n".join(lines),
        severity=SEVERITY[kind],
        fields=fields,
    )
