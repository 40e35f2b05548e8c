"""The ports: what the lifecycle needs from the world, as ``typing.Protocol``s.

The core talks to nothing else. A backend needs no base class: anything with these
methods fits, which is how the shipped adapters (Redis, PostgreSQL, DuckDB,
Prometheus, MetaTrader 5) and a host's own backends plug in alike.

Every method that reaches a server raises ``StoreUnavailable`` when the server cannot
be reached or times out, and nothing else for that fault: the runtime treats it as
transient and retries, never as a failed login.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from .core.credentials import Credentials
from .core.health import FleetHealth, Health
from .core.records import (
    Account,
    ArchiveRecord,
    ClosureRecord,
    LoginResult,
    Notification,
    Order,
    Position,
    TradeResult,
)
from .core.snapshot import Snapshot
from .core.states import Reason, State, TerminalStatus

__all__ = [
    "AccountExpectation",
    "AccountReader",
    "Archive",
    "BatchNotifier",
    "BatchingStateStore",
    "Broker",
    "Clock",
    "Commit",
    "CredentialStore",
    "Deadlined",
    "DeliveryMetrics",
    "Entry",
    "HealthMetrics",
    "Leases",
    "LockToken",
    "LoginSlots",
    "Metrics",
    "Notifier",
    "Outbox",
    "OutboxStore",
    "Rejections",
    "ScheduleMetrics",
    "ServerMetrics",
    "ServerOutages",
    "SetAside",
    "StateStore",
    "Stored",
    "TradeHistory",
    "VersionReader",
]

Entry = Notification | ArchiveRecord
"""What a transition's outbox holds: its notifications and its archive records."""


@attrs.frozen
class Stored:
    """A snapshot as read, with the version a write must be checked against."""

    snapshot: Snapshot
    version: int
    pending: int = 0
    """Entries of the instance's outbox not yet handed over (stores with an outbox)."""


@attrs.frozen
class LockToken:
    """Proof of holding an instance's login lock.

    ``token`` is unique to one acquisition: a holder whose lock expired and was taken
    by another cannot release or write with the old token (fencing).
    """

    instance_id: str
    token: str
    release_on_commit: bool = False
    """Give the lock back in the same atomic write as the commit it guards: a login's
    result and the lock's release cost one round trip, not two."""


@runtime_checkable
class Clock(Protocol):
    """Time. A due time is a float of this clock, never of ``time.time()`` directly."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait; a fake clock jumps instead."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Wait without blocking the event loop; a fake clock jumps instead."""
        ...


@runtime_checkable
class StateStore(Protocol):
    """The live state of each instance (SPEC section 5)."""

    def load(self, instance_id: str) -> Stored | None:
        """One instance, in one round trip; ``None`` when nothing is stored."""
        ...

    def load_many(self, instance_ids: Iterable[str]) -> dict[str, Stored]:
        """Many instances at once (restore at start-up); absent ids are left out."""
        ...

    def ids(self) -> Iterator[str]:
        """Every instance id the store holds."""
        ...

    def commit(
        self,
        instance_id: str,
        snapshot: Snapshot,
        *,
        expected_version: int,
        lock: LockToken | None = None,
    ) -> int:
        """Write a whole snapshot atomically and return the new version.

        ``expected_version`` is the version that was read (0: nothing stored). A
        mismatch raises ``ConcurrentUpdate``; a ``lock`` that is no longer held raises
        ``LockLost``. Either way nothing is written. A lock with
        ``release_on_commit`` is released by the same write.
        """
        ...

    def delete(self, instance_id: str) -> None:
        """Remove every key of the instance, the library's own included. Idempotent."""
        ...

    def acquire_lock(self, instance_id: str, ttl: float) -> LockToken | None:
        """Take the login lock for ``ttl`` seconds; ``None`` when another holds it."""
        ...

    def release_lock(self, lock: LockToken) -> None:
        """Give the lock back; a no-op when it is no longer this token's."""
        ...


@attrs.frozen
class Commit:
    """One instance's write, as ``commit`` takes it: for stores that write many at once."""

    instance_id: str
    snapshot: Snapshot | None
    """``None`` deletes the live state (a purged closure); the outbox stays until drained."""
    expected_version: int
    lock: LockToken | None = None
    outbox: Sequence[Entry] = ()


@runtime_checkable
class BatchingStateStore(StateStore, Protocol):
    """A state store that can send many instances' commits in one round trip."""

    def commit_many(self, items: Sequence[Commit]) -> list[int | Exception]:
        """Each item's new version or the exception ``commit`` would have raised."""
        ...


@attrs.frozen
class Outbox:
    """What an instance's outbox holds, in the order the transitions stored it."""

    notifications: tuple[Notification, ...] = ()
    records: tuple[ArchiveRecord, ...] = ()


@attrs.frozen
class SetAside:
    """A notification that kept failing after its tries, waiting for an operator."""

    notification: Notification
    error: str
    """What the last try raised (the notifier's words, never a secret of its own)."""
    at: datetime


@runtime_checkable
class OutboxStore(Protocol):
    """A state store that keeps each transition's notifications and archive records in
    the same atomic write as its state (SPEC section 14), until they are handed over.

    The outbox lives with the instance (on Redis in its own hash slot), so one write is
    still one round trip and a cluster still works. Without it, the runtime hands them
    over right after the write, and a process that dies in between loses them.
    """

    def commit(
        self,
        instance_id: str,
        snapshot: Snapshot | None,
        *,
        expected_version: int,
        lock: LockToken | None = None,
        outbox: Sequence[Entry] = (),
    ) -> int:
        """``StateStore.commit``, with the entries appended to the outbox in the same
        atomic write; ``snapshot=None`` deletes the live state but not the outbox."""
        ...

    def outbox(self, instance_ids: Sequence[str]) -> dict[str, Outbox]:
        """The entries waiting in each instance's outbox; ids with none are left out."""
        ...

    def acknowledge(self, delivered: Mapping[str, Sequence[str]]) -> None:
        """Drop handed-over entries: per instance, the ids (notification ``id``s and
        record ``record_id``s) at the heads of its outbox, in order. An id that is no
        longer there (handed over by another process) is skipped."""
        ...

    def set_aside(
        self, instance_id: str, notification_id: str, error: str, *, at: float | None = None
    ) -> None:
        """Move a notification that kept failing out of the way, for an operator.

        ``at``: when, on the caller's clock (so a fake clock's run reads true); ``None``
        takes the store's own.
        """
        ...

    def set_aside_notifications(self, instance_ids: Iterable[str] | None = None) -> list[SetAside]:
        """What was set aside (for these instances, or for all)."""
        ...

    def redeliver(self, instance_id: str, notification_ids: Sequence[str] | None = None) -> int:
        """Put set-aside notifications back in the outbox (all, or these); how many."""
        ...


@runtime_checkable
class LoginSlots(Protocol):
    """A counting semaphore per broker server, shared by every process on the store.

    Bounds the logins in flight to one server (``Policy.max_concurrent_logins_per_server``).
    A slot expires after ``ttl`` seconds, so a holder that dies cannot keep it.
    """

    def acquire_slot(self, server: str, limit: int, ttl: float) -> str | None:
        """A token for a free slot, or ``None`` when ``limit`` are taken."""
        ...

    def release_slot(self, server: str, token: str) -> None:
        """Give the slot back; a no-op when it expired."""
        ...


@runtime_checkable
class ServerOutages(Protocol):
    """What every process knows about a broker server's outage (SPEC section 15).

    The threshold itself is the core's (``Policy.server_outage_threshold``): the store
    only counts and flips flags atomically, so exactly one process announces an outage
    and exactly one its end.
    """

    def report_failure(self, server: str, instance_id: str, now: float, window: float) -> int:
        """Count a failure; the distinct accounts of ``server`` that failed within the
        last ``window`` seconds, this one included."""
        ...

    def mark_down(self, server: str) -> bool:
        """Take the server as down; ``True`` only for the caller that did so."""
        ...

    def mark_up(self, server: str) -> bool:
        """Take the server as back; ``True`` only for the caller that did so."""
        ...

    def is_down(self, server: str) -> bool: ...

    def probe(self, server: str, now: float, ttl: float) -> bool:
        """Whether this caller may try the down server now: one per ``ttl`` seconds of
        the callers' clock (``now``)."""
        ...


@runtime_checkable
class Rejections(Protocol):
    """A credential store that remembers credentials that exhausted their attempts.

    It keeps a keyed fingerprint (an HMAC), never the password a second time, so that
    after any loss of the live state no process sends them again until they change.
    """

    def reject(self, instance_id: str, credentials: Credentials) -> None:
        """Remember these credentials as exhausted."""
        ...

    def rejected(self, instance_id: str, credentials: Credentials) -> bool:
        """Whether these are the credentials remembered as exhausted."""
        ...

    def forgive(self, instance_id: str) -> None:
        """Forget the mark (the credentials logged in after all)."""
        ...


@runtime_checkable
class VersionReader(Protocol):
    """A state store that can read versions without the fields (optional).

    A ``Fleet`` reads its idle members back once per interval, to act on what another
    process stored (an operator's reset). With this it reads each one's version and
    loads only those that changed, so an idle instance costs one small read.
    """

    def versions(self, instance_ids: Sequence[str]) -> dict[str, int]:
        """The stored version of each id that has one; absent ids are left out.

        A version that is not a count is left out too: the whole read that follows
        names what is wrong with it.
        """
        ...


@runtime_checkable
class CredentialStore(Protocol):
    """Broker logins and passwords (SPEC section 6)."""

    def put(self, instance_id: str, credentials: Credentials) -> None: ...

    def get(self, instance_id: str) -> Credentials | None:
        """``None`` when no credentials are stored for the instance."""
        ...

    def delete(self, instance_id: str) -> None:
        """Idempotent."""
        ...


@runtime_checkable
class Archive(Protocol):
    """History for investigation (SPEC section 7).

    ``write`` must not block a transition for long: an archive that buffers, batches
    or queues is expected. Each record carries an id minted once, so an archive that
    retries may drop duplicates by it.
    """

    def write(self, records: Sequence[ArchiveRecord]) -> None: ...

    def confirm(self, record: ClosureRecord) -> None:
        """Store a confirmed closure durably, now, or raise ``StoreUnavailable``.

        The one write that may not wait in a buffer: the live state is deleted right
        after it, and from then on only the archive remembers that the id must never
        start again.
        """
        ...

    def is_confirmed(self, instance_id: str) -> bool:
        """Whether the instance's closure was confirmed (its id is never started again)."""
        ...

    def flush(self) -> None:
        """Make everything written so far durable."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Notifier(Protocol):
    """Tells people and the host's backend what happened: one call per alert.

    A notifier that cannot deliver raises: the relay tries again later with backoff,
    and sets the notification aside after ``Policy.max_delivery_attempts``. A
    notification may arrive twice (after a crash); its ``id`` is the same both times.
    """

    def notify(self, notification: Notification) -> None: ...


@runtime_checkable
class BatchNotifier(Notifier, Protocol):
    """A notifier that can send many notifications of one kind as one message (optional).

    A broker server that goes down takes hundreds of accounts with it: the relay hands
    what is due together to ``notify_many`` grouped by kind, and the notifier may list
    them in one message. It raises when any of them was not delivered.
    """

    def notify_many(self, notifications: Sequence[Notification]) -> None: ...


@runtime_checkable
class Metrics(Protocol):
    """The facts behind the Prometheus series (SPEC section 9)."""

    def transition(
        self,
        instance_id: str,
        source: State | None,
        dest: State | None,
        reason: Reason | None,
    ) -> None:
        """``source`` is ``None`` for a new instance, ``dest`` for one that is gone."""
        ...

    def login(self, instance_id: str, failure: Reason | None, consecutive_failures: int) -> None:
        """One login call's result (``failure`` is ``None`` on success)."""
        ...

    def alert(self, notification: Notification) -> None: ...

    def restart(self, instance_id: str, restart_count: int) -> None: ...

    def error(self, component: str, instance_id: str | None) -> None:
        """A backend fault the runtime absorbed (``"state"``, ``"archive"``, ...)."""
        ...


@runtime_checkable
class ScheduleMetrics(Protocol):
    """Metrics that watch whether the runtime keeps up with its due times (optional)."""

    def lag(self, seconds: float) -> None:
        """A due step ran ``seconds`` after its due time."""
        ...


@runtime_checkable
class ServerMetrics(Protocol):
    """Metrics that show which broker servers this process takes as down (optional)."""

    def server(self, server: str, down: bool) -> None: ...


@runtime_checkable
class HealthMetrics(Protocol):
    """Metrics that export the fleet's health (optional; a ``Fleet`` reports it once
    per ``connection_check_interval``)."""

    def health(self, report: FleetHealth) -> None: ...

    def instance_health(self, reports: Iterable[Health]) -> None: ...


@runtime_checkable
class DeliveryMetrics(Protocol):
    """Metrics that count what the relay could not deliver (optional)."""

    def set_aside(self, notification: Notification) -> None:
        """A notification that kept failing was set aside for an operator."""
        ...


@runtime_checkable
class Broker(Protocol):
    """One terminal per instance: log in, watch the connection, close trades."""

    def login(
        self, instance_id: str, credentials: Credentials, *, logged_in_before: bool
    ) -> LoginResult:
        """Log the terminal in and classify a failure.

        ``logged_in_before`` tells whether these credentials ever worked: brokers
        answer a deleted account and a mistyped login alike, and only history tells
        them apart (SPEC section 11).
        """
        ...

    def status(self, instance_id: str) -> TerminalStatus: ...

    def restart(self, instance_id: str) -> None:
        """Stop and start the terminal; raises when it does not come up."""
        ...

    def stop(self, instance_id: str) -> None: ...

    def positions(self, instance_id: str) -> Sequence[Position]:
        """The open positions."""
        ...

    def orders(self, instance_id: str) -> Sequence[Order]:
        """The pending orders."""
        ...

    def close_position(self, instance_id: str, position: Position, volume: float) -> TradeResult:
        """Close ``volume`` of the position with one request."""
        ...

    def cancel_order(self, instance_id: str, order: Order) -> TradeResult: ...


@runtime_checkable
class AccountReader(Protocol):
    """A broker that can say which account a terminal is logged in to (optional).

    With it, the lifecycle checks the terminal's identity after every login and at
    every connection check (SPEC section 12): a terminal logged in to another account
    is restarted, and nothing is ever traded on it.
    """

    def account(self, instance_id: str) -> Account | None:
        """The account the terminal is logged in to; ``None`` when it cannot say."""
        ...


@runtime_checkable
class AccountExpectation(Protocol):
    """A broker that can be told which account a terminal must be logged in to (optional).

    A login tells it by itself; a process that takes an instance over without logging
    in (a closing resumed by the next worker) says it here, from the live state, so
    that the broker refuses to trade on a terminal logged in to another account.
    """

    def expect_account(self, instance_id: str, account: Account | None) -> None: ...


@runtime_checkable
class TradeHistory(Protocol):
    """A broker that can say how a ticket ended from the terminal's history (optional).

    Closing a closed account's trades records each ticket as in progress before it is
    sent. A worker killed after the broker filled it, before the outcome was stored,
    leaves a ticket that is gone from the terminal: its outcome is then read from the
    history, never sent again.
    """

    def trade_outcome(self, instance_id: str, kind: str, ticket: int) -> TradeResult | None:
        """How the position (``kind="position"``) or order (``"order"``) ended.

        ``retcode`` 10009 (done) for a position closed by a deal or an order that was
        cancelled or filled; ``None`` when the history does not have the ticket.
        """
        ...


@runtime_checkable
class Deadlined(Protocol):
    """A broker whose every call has a deadline (optional, checked at construction).

    A call that could outlive the login lock would let a second worker log in to the
    same account while the first is still in its call: a ``Lifecycle`` refuses a
    broker whose longest deadline is more than half of ``Policy.lock_ttl``.
    """

    @property
    def longest_call(self) -> float:
        """Seconds the longest call (a login) may take before it is abandoned."""
        ...


@runtime_checkable
class Leases(Protocol):
    """Which worker drives which instance, when several ``Fleet`` processes share one
    state store.

    A lease is held by an owner for ``ttl`` seconds and renewed by acquiring it again;
    a worker that dies loses its leases when they expire, and the others take its
    instances over.
    """

    def acquire(self, instance_ids: Sequence[str], owner: str, ttl: float) -> list[str]:
        """Take or renew the leases; return the ids ``owner`` now holds."""
        ...

    def release(self, instance_ids: Sequence[str], owner: str) -> None:
        """Give back the leases ``owner`` holds (others' are left alone)."""
        ...
