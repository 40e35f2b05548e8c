"""The relay: hands a transition's stored notifications and archive records over.

A transition's notifications and archive records are stored in the same atomic write
as its state (the instance's outbox, SPEC section 14). The relay then hands them to
the notifier and the archive, at least once and in order per instance, and drops them
from the outbox once they are taken. A process that dies before that leaves them in
the outbox, and whoever takes the instance over hands them over again with the same
ids.

Why it is shaped so:

* Nothing waits. The first try happens right after the write, in the thread that
  wrote (so a lone ``Lifecycle``'s caller sees its alert at once); a failure is tried
  again at a due time (``next_due``), which the ``Lifecycle`` or ``Fleet`` that owns
  the relay acts on like any other. A notifier that is down never blocks or undoes a
  transition.
* The retries are tenacity's: each notification has its own ``RetryCallState``, and
  tenacity's ``iter`` (the state machine behind ``for attempt in Retrying(...)``) says
  whether to try, when to try again (exponential backoff with jitter) and when to
  stop. The relay only turns tenacity's "sleep" into a due time.
* One deliverer at a time: a thread that finds another delivering leaves its entries
  for it (like the group commit), so order per instance holds and no thread waits for
  another's slow notifier.
* A notification that still fails after ``Policy.max_delivery_attempts`` tries is set
  aside in the store (counted in the metrics, listed by the command line and the API,
  re-deliverable); the ones behind it go on. Archive records are never set aside:
  they wait, in order, until the archive takes them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..builtin.memory import NullArchive
from ..builtin.notify import NullNotifier
from ..builtin.set_aside import redact_urls
from ..core.policy import Policy
from ..core.records import ArchiveRecord, Notification, record_key
from ..errors import StoreUnavailable
from ..ports import BatchNotifier, DeliveryMetrics, Entry, OutboxStore
from .backends import Backends

if TYPE_CHECKING:
    from tenacity import RetryCallState, Retrying

__all__ = ["DurableArchive", "Relay"]

log = logging.getLogger("mt5lifecycle.relay")


@runtime_checkable
class DurableArchive(Protocol):
    """An archive that can write records now and say whether it did (optional).

    The relay drops records from the outbox only once the archive holds them: with
    ``store`` that is when it returns; without, after ``write`` and ``flush``.
    """

    def store(self, records: Sequence[ArchiveRecord]) -> None: ...


class _Item:
    """One entry on its way, with its tries so far."""

    __slots__ = ("due_at", "entry", "tries")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.tries: tuple[Retrying, RetryCallState] | None = None
        self.due_at = 0.0


def _entry_id(entry: Entry) -> str:
    return entry.id if isinstance(entry, Notification) else record_key(entry)


def _notification(item: _Item) -> Notification:
    entry = item.entry
    assert isinstance(entry, Notification)
    return entry


class Relay:
    """Delivers the outbox entries of the instances one ``Lifecycle`` or ``Fleet`` drives."""

    def __init__(self, backends: Backends, policy: Policy) -> None:
        self._notifier = backends.notifier
        self._archive = backends.archive
        self._metrics = backends.metrics
        self._clock = backends.clock
        state = backends.state
        self._store: OutboxStore | None = state if isinstance(state, OutboxStore) else None
        # A sink that keeps nothing need not have anything stored for it.
        self.keeps_notifications = not isinstance(self._notifier, NullNotifier)
        self.keeps_records = not isinstance(self._archive, NullArchive)
        self._policy = policy
        self._tries: tuple[Retrying, Retrying] | None = None
        self._leader = threading.Lock()
        self._guard = threading.Lock()
        self._notes: dict[str, deque[_Item]] = {}
        self._records: dict[str, deque[_Item]] = {}
        self._queued: set[str] = set()
        self._unacked: dict[str, list[str]] = {}
        self._ack_due_at = 0.0
        self._ack_delay = policy.transient_retry_delay
        self._record_item: _Item | None = None
        """The record lane's one retry state: records go to the archive together."""

    @property
    def stores(self) -> bool:
        """Whether entries travel in the state store's outbox (else they are handed over
        from memory, right after the write)."""
        return self._store is not None

    # -- what there is to hand over ------------------------------------------------------

    def kept(self, entries: Iterable[Entry]) -> list[Entry]:
        """The entries of a decision this process stores (see ``keeps_*``)."""
        return [
            e
            for e in entries
            if (self.keeps_notifications if isinstance(e, Notification) else self.keeps_records)
        ]

    def stored(self, instance_id: str, entries: Sequence[Entry]) -> None:
        """Entries just written to ``instance_id``'s outbox (or, without an outbox
        store, just decided): hand them over from now on."""
        if not entries:
            return
        with self._guard:
            self._enqueue(instance_id, entries)

    def recover(self, instance_ids: Sequence[str]) -> None:
        """Read what the outboxes of these instances still hold (after a takeover, a
        restart, or another process's write) and hand it over too."""
        store = self._store
        if store is None or not instance_ids:
            return
        found = store.outbox(instance_ids)
        with self._guard:
            for instance_id, outbox in found.items():
                self._enqueue(instance_id, (*outbox.notifications, *outbox.records))

    def _enqueue(self, instance_id: str, entries: Iterable[Entry]) -> None:
        for entry in entries:
            key = _entry_id(entry)
            if key in self._queued:
                continue  # already on its way (read back from the store, say)
            self._queued.add(key)
            lanes = self._notes if isinstance(entry, Notification) else self._records
            lanes.setdefault(instance_id, deque()).append(_Item(entry))

    def pending(self, instance_id: str) -> bool:
        """Whether anything of ``instance_id`` is still to be handed over or acknowledged."""
        with self._guard:
            return (
                instance_id in self._notes
                or instance_id in self._records
                or instance_id in self._unacked
            )

    @property
    def next_due(self) -> float | None:
        """When a retry (or an acknowledgement the store could not take) is due."""
        if not (self._notes or self._records or self._unacked):
            return None
        with self._guard:
            due = [q[0].due_at for q in self._notes.values()]
            if self._records:
                item = self._record_item
                due.append(item.due_at if item is not None else 0.0)
            if self._unacked:
                due.append(self._ack_due_at)
        return min(due, default=None)

    # -- handing over ----------------------------------------------------------------------

    def deliver(self) -> None:
        """Hand over everything that is due, unless another thread is doing so.

        Never raises: a notifier, an archive or a store that fails is tried again later.
        """
        if not (self._notes or self._records or self._unacked):
            return  # the usual case, after a write with nothing to tell: no lock taken
        while self._leader.acquire(blocking=False):
            try:
                self._rounds()
            finally:
                self._leader.release()
            # Entries stored while this thread was delivering found the leader busy and
            # left them here: look once more before going.
            due = self.next_due
            if due is None or due > self._clock.now():
                return

    def _rounds(self) -> None:
        # Each round takes the head of each instance's queue, so an instance's second
        # notification goes after its first has been taken.
        for _ in range(10_000):
            if not self._notification_round():
                break
        self._record_round()
        self._acknowledge()

    def _notification_round(self) -> bool:
        now = self._clock.now()
        with self._guard:
            heads = [(i, q[0]) for i, q in self._notes.items() if q[0].due_at <= now]
        if not heads:
            return False
        notifier = self._notifier
        if isinstance(notifier, BatchNotifier) and len(heads) > 1:
            groups: dict[object, list[tuple[str, _Item]]] = {}
            for head in heads:
                entry = head[1].entry
                assert isinstance(entry, Notification)
                groups.setdefault(entry.kind, []).append(head)
            for group in groups.values():
                batch = [_notification(item) for _, item in group]
                self._attempt(group, functools.partial(notifier.notify_many, batch))
        else:
            for head in heads:
                self._attempt([head], functools.partial(notifier.notify, _notification(head[1])))
        return True

    def _attempt(self, group: list[tuple[str, _Item]], send: Callable[[], None]) -> None:
        for _, item in group:
            self._next_try(item)
        try:
            send()
        except Exception as exc:
            log.warning(
                "%d notification(s) not delivered (%s); trying again later",
                len(group),
                type(exc).__name__,
            )
            for instance_id, item in group:
                self._failed(instance_id, item, exc)
            self._count("notifier", group[0][0])
            return
        for instance_id, item in group:
            self._taken(instance_id, item, self._notes)

    def _record_round(self) -> None:
        now = self._clock.now()
        with self._guard:
            if not self._records:
                return
            item = self._record_item
            if item is not None and item.due_at > now:
                return
            taken = {i: list(q) for i, q in self._records.items()}
        records = [it.entry for queue in taken.values() for it in queue]
        if item is None:
            item = self._record_item = _Item(records[0])
        self._next_try(item)
        archive = self._archive
        try:
            if isinstance(archive, DurableArchive):
                archive.store(records)  # type: ignore[arg-type]
            else:
                archive.write(records)  # type: ignore[arg-type]
                archive.flush()
        except Exception as exc:
            log.warning(
                "the archive did not take %d record(s) (%s); they wait in the outbox",
                len(records),
                type(exc).__name__,
            )
            self._count("archive", None)
            self._schedule(item, exc, self._templates()[1])
            return
        self._record_item = None
        for instance_id, items in taken.items():
            for it in items:
                self._taken(instance_id, it, self._records)

    # -- tries ------------------------------------------------------------------------------

    def _templates(self) -> tuple[Retrying, Retrying]:
        """tenacity's retry policies, for notifications (bounded) and records (not).

        Built on first use: a process whose deliveries never fail never imports it.
        """
        if self._tries is None:
            from tenacity import Retrying, stop_after_attempt, stop_never, wait_exponential_jitter

            policy = self._policy
            wait = wait_exponential_jitter(
                initial=policy.delivery_backoff, max=policy.delivery_backoff_max
            )
            self._tries = (
                Retrying(stop=stop_after_attempt(policy.max_delivery_attempts), wait=wait),
                Retrying(stop=stop_never, wait=wait),
            )
        return self._tries

    @staticmethod
    def _next_try(item: _Item) -> None:
        """Tell tenacity an attempt begins (an entry that failed before; a first try
        needs no retry state at all)."""
        if item.tries is not None:
            from tenacity import DoAttempt

            retrying, state = item.tries
            action = retrying.iter(state)
            assert isinstance(action, DoAttempt)

    def _schedule(self, item: _Item, exc: BaseException, template: Retrying) -> bool:
        """Record a failed try; ``False`` when tenacity says to stop trying."""
        from tenacity import DoSleep, RetryCallState, RetryError

        if item.tries is None:
            # The first failure: the attempt that just failed is tenacity's first.
            retrying = template.copy()
            retrying.begin()
            item.tries = (retrying, RetryCallState(retrying, fn=None, args=(), kwargs={}))
            self._next_try(item)
        retrying, state = item.tries
        state.set_exception((type(exc), exc, exc.__traceback__))
        try:
            action = retrying.iter(state)
        except RetryError:
            return False
        assert isinstance(action, DoSleep)
        state.prepare_for_next_attempt()
        item.due_at = self._clock.now() + float(action)
        return True

    def _failed(self, instance_id: str, item: _Item, exc: Exception) -> None:
        if self._schedule(item, exc, self._templates()[0]):
            return
        entry = _notification(item)
        # The notifier's words, with any URL cut to its scheme: an HTTP client quotes
        # the URL it failed on, and a webhook's URL is its secret.
        error = redact_urls(f"{type(exc).__name__}: {exc}")
        log.error(
            "instance %s: %s notification %s set aside after %d tries (%s)",
            instance_id,
            entry.kind.value,
            entry.id,
            item.tries[1].attempt_number if item.tries else 0,
            error,
        )
        with self._guard:
            self._drop(instance_id, item, self._notes)
        if self._store is not None:
            try:
                self._store.set_aside(instance_id, entry.id, error, at=self._clock.now())
            except StoreUnavailable as exc_store:
                # It stays in the outbox: the next owner tries it again from the start.
                log.warning("instance %s: could not set it aside: %s", instance_id, exc_store)
        if isinstance(self._metrics, DeliveryMetrics):
            try:
                self._metrics.set_aside(entry)
            except Exception:
                log.exception("the metrics failed")

    def _taken(self, instance_id: str, item: _Item, lanes: dict[str, deque[_Item]]) -> None:
        with self._guard:
            self._drop(instance_id, item, lanes)
            if self._store is not None:
                self._unacked.setdefault(instance_id, []).append(_entry_id(item.entry))

    def _drop(self, instance_id: str, item: _Item, lanes: dict[str, deque[_Item]]) -> None:
        queue = lanes.get(instance_id)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(item)
            if not queue:
                del lanes[instance_id]
        self._queued.discard(_entry_id(item.entry))

    def _acknowledge(self) -> None:
        store = self._store
        now = self._clock.now()
        with self._guard:
            if self._ack_due_at > now:
                return
            done, self._unacked = self._unacked, {}
        if store is None or not done:
            return
        try:
            store.acknowledge(done)
        except StoreUnavailable as exc:
            # Handed over already: keep the acknowledgement, not the entries, so they
            # are not sent again by this process; the next pass acknowledges them.
            log.warning("could not drop handed-over entries from the outbox: %s", exc)
            self._ack_due_at = now + self._ack_delay
            with self._guard:
                for instance_id, ids in done.items():
                    self._unacked.setdefault(instance_id, [])[:0] = ids

    def _count(self, component: str, instance_id: str | None) -> None:
        try:
            self._metrics.error(component, instance_id)
        except Exception:
            log.exception("the metrics failed")
