"""``Fleet``: many instances on one timer heap.

Each instance's next due time sits in one heap, so ``run_due`` touches only the
instances that are due (O(due x log n)) and an idle instance costs no CPU. Entries
are invalidated lazily: when an instance's due time changes a new entry is pushed,
and a popped entry that no longer matches is skipped.

The instances due together run on a bounded pool of worker threads, in chunks, so one
slow terminal holds up only its own chunk. Each runs its due step exactly as a lone
``Lifecycle`` does (``Lifecycle.run_due``): there is one implementation of every step,
and the fleet only decides who runs when. Their writes share round trips through
``GroupCommitStore``, which groups concurrent commits without changing any of them.
An instance is only ever driven by one thread at a time: ``send`` waits for a worker
that is driving it.

The fleet uses the ``Lifecycle`` driver API and nothing else of it (see
``runtime/lifecycle.py``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import attrs

from ..builtin.clock import SystemClock
from ..core.health import FleetHealth, Health
from ..core.ids import check_instance_id
from ..core.policy import Policy
from ..core.snapshot import Snapshot
from ..core.states import State
from ..errors import (
    ConcurrentUpdate,
    InvalidTransition,
    LeaseHeld,
    StoreUnavailable,
    Unrecoverable,
)
from ..ports import (
    BatchingStateStore,
    HealthMetrics,
    Leases,
    StateStore,
    Stored,
    VersionReader,
)
from ._context import Context
from ._group_commit import GroupCommitStore
from .backends import Backends
from .lifecycle import Lifecycle

__all__ = ["Fleet"]

log = logging.getLogger("mt5lifecycle.fleet")

T = TypeVar("T")

_CHUNKS_PER_WORKER = 4
"""Due instances are split into this many chunks per worker: few enough to keep the
pool's overhead small, many enough that a slow terminal holds up few others."""

_WAIT_SLICE = 0.5
"""The longest a blocking wait lasts in one go, so that Ctrl-C is answered within a
second on Windows too (``Event.wait`` ignores it there before Python 3.14)."""


class Fleet:
    """Instances sharing one set of backends, one policy and one timer heap."""

    def __init__(
        self,
        backends: Backends,
        policy: Policy | None = None,
        *,
        workers: int = 8,
        leases: Leases | None = None,
        owner: str | None = None,
        lease_ttl: float = 15.0,
    ) -> None:
        if not isinstance(backends, Backends):
            raise TypeError(f"backends must be a Backends value, not {type(backends).__name__}")
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be a Policy value, not {type(policy).__name__}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, not {workers!r}")
        if (
            isinstance(lease_ttl, bool)
            or not isinstance(lease_ttl, (int, float))
            or not (lease_ttl > 0)
        ):
            raise ValueError(f"lease_ttl must be a number of seconds > 0, not {lease_ttl!r}")
        if leases is not None and not isinstance(leases, Leases):
            raise TypeError(f"leases must be a Leases store, not {type(leases).__name__}")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ValueError(f"owner must be a non-empty string, not {owner!r}")
        state = backends.state
        if (
            workers > 1
            and isinstance(state, BatchingStateStore)
            and not isinstance(state, GroupCommitStore)
        ):
            # Concurrent commits of the pool's threads share round trips.
            backends = attrs.evolve(backends, state=cast(StateStore, GroupCommitStore(state)))
        self.backends = backends
        self.policy = policy if policy is not None else Policy()
        self._ctx = Context(backends, self.policy)
        self.workers = workers
        # The periodic read-back asks versions first when the store can (_resync).
        inner = state.inner if isinstance(state, GroupCommitStore) else state
        self._versions: VersionReader | None = inner if isinstance(inner, VersionReader) else None
        self._pool: ThreadPoolExecutor | None = None
        self._members: dict[str, Lifecycle] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._scheduled: dict[str, float] = {}
        self._seq = itertools.count()
        # Guards the heap and the busy set: workers reschedule from their threads.
        self._lock = threading.Condition(threading.RLock())
        self._busy: set[str] = set()
        self._waiting = 0
        """Threads waiting in ``send``: only then does handing an instance back wake them."""
        self._stop = threading.Event()
        self._kick: asyncio.Event | None = None
        self._driving = 0
        self._tick: asyncio.Event | None = None
        self._deadlines: list[float] = []
        self.leases = leases
        self.owner = (
            owner
            if owner is not None
            else f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self.lease_ttl = float(lease_ttl)
        self._renew_at: float | None = None
        self._resync_at: float | None = None
        self._health_due = False

    # --- membership ------------------------------------------------------------

    def add(self, instance_id: str) -> Lifecycle:
        """Start (or resume) an instance and drive it from now on."""
        return self.add_many([instance_id])[0]

    def add_many(self, instance_ids: Iterable[str]) -> list[Lifecycle]:
        """``add`` for many instances, their stored states read in batches.

        Restoring a fleet after a restart: one ``load_many`` per thousand instances
        instead of a round trip each, and the starts run on the pool, so that their
        writes share round trips. An invalid id, one already in the fleet or one
        another worker holds raises before any instance is added; an id that then
        cannot start (a confirmed closure) raises with the ids before it added and the
        leases of the rest handed back (one after it may have had its ``start``
        written: whoever adds it next resumes it).
        """
        ids = list(dict.fromkeys(check_instance_id(i) for i in instance_ids))
        present = [i for i in ids if i in self._members]
        if present:
            raise InvalidTransition(
                instance_id=present[0],
                event="add",
                state=self._members[present[0]].state,
                detail="the instance is already in this fleet",
            )
        leases = self.leases
        if leases is not None:
            held = set(leases.acquire(ids, self.owner, self.lease_ttl))
            taken = [i for i in ids if i not in held]
            if taken:
                leases.release(list(held), self.owner)
                raise LeaseHeld(instance_id=taken[0], owner=None)
        added: list[Lifecycle] = []
        try:
            stored = self.backends.state.load_many(ids)
            started = self._start_all(ids, stored)
            for instance_id in ids:
                outcome = started[instance_id]
                if isinstance(outcome, BaseException):
                    raise outcome
                self._enlist(outcome)
                added.append(outcome)
        except BaseException:
            if leases is not None:
                joined = {lifecycle.instance_id for lifecycle in added}
                leases.release([i for i in ids if i not in joined], self.owner)
            raise
        finally:
            if added and self._kick is not None:
                self._kick.set()
            self._ctx.relay.deliver()
        return added

    def _start_all(
        self, ids: Sequence[str], stored: dict[str, Stored]
    ) -> dict[str, Lifecycle | BaseException]:
        """Start each id (on the pool when there are many); its Lifecycle or its error."""
        out: dict[str, Lifecycle | BaseException] = {}

        def start(chunk: Sequence[str]) -> None:
            for instance_id in chunk:
                lifecycle = Lifecycle(instance_id, self.backends, context=self._ctx)
                try:
                    lifecycle.start(stored=stored.get(instance_id))
                except BaseException as exc:
                    out[instance_id] = exc
                else:
                    out[instance_id] = lifecycle

        if self.workers == 1 or len(ids) < 2 * self.workers:
            start(ids)
        else:
            size = max(1, len(ids) // (self.workers * _CHUNKS_PER_WORKER))
            chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
            for _ in self._executor().map(start, chunks):
                pass
        return out

    def adopt(self, candidates: Iterable[str], *, limit: int | None = None) -> list[str]:
        """Take over the candidates no other worker holds, up to ``limit`` members.

        For several ``Fleet`` processes over one state store: each calls ``adopt``
        with every id now and then (``run()`` renews the leases it holds), so the
        instances of a worker that died are picked up once its leases expire. Each
        adopted instance is fenced: a late write from its previous driver is refused.
        Returns the ids adopted by this call.
        """
        leases = self.leases
        if leases is None:
            raise TypeError("adopt() needs a Fleet built with leases=")
        room = None if limit is None else max(limit - len(self._members), 0)
        free = [i for i in dict.fromkeys(candidates) if i not in self._members]
        adopted: list[str] = []
        while free and (room is None or len(adopted) < room):
            want = free[: 500 if room is None else min(500, room - len(adopted))]
            del free[: len(want)]
            held = leases.acquire(want, self.owner, self.lease_ttl)
            try:
                stored = self.backends.state.load_many(held)
            except StoreUnavailable as exc:
                log.warning("could not read the instances to adopt: %s", exc)
                leases.release(held, self.owner)
                break
            started = self._start_all(held, stored)
            for instance_id in held:
                outcome = started[instance_id]
                if isinstance(outcome, (InvalidTransition, StoreUnavailable, ConcurrentUpdate)):
                    # A previous driver's last write landing now is a ConcurrentUpdate:
                    # not ours yet; a later adopt() tries again.
                    log.warning("instance %s not adopted: %s", instance_id, outcome)
                    leases.release([instance_id], self.owner)
                    continue
                if isinstance(outcome, BaseException):
                    raise outcome
                try:
                    self._enlist(outcome)
                except (ConcurrentUpdate, StoreUnavailable) as exc:
                    # Another driver still writes it, or the store went away: not ours
                    # yet; a later adopt() tries again.
                    log.warning("instance %s not adopted: %s", instance_id, exc)
                    leases.release([instance_id], self.owner)
                    continue
                adopted.append(instance_id)
        if adopted and self._kick is not None:
            self._kick.set()
        return adopted

    def _enlist(self, lifecycle: Lifecycle) -> None:
        if self.leases is not None:
            lifecycle.fence()
        lifecycle.on_change = self._reschedule
        # Under the lock: an API thread may add while run() drives the fleet.
        with self._lock:
            self._members[lifecycle.instance_id] = lifecycle
            self._schedule(lifecycle)

    def _maintain_leases(self, now: float) -> None:
        """Renew the leases held; let go of the instances whose lease was lost."""
        leases = self.leases
        if leases is None:
            return
        if self._renew_at is not None and now < self._renew_at:
            return
        self._renew_at = now + self.lease_ttl / 3
        members = list(self._members)
        try:
            held = set(leases.acquire(members, self.owner, self.lease_ttl))
        except StoreUnavailable as exc:
            log.warning("could not renew the leases: %s", exc)
            return
        for instance_id in members:
            if instance_id not in held:
                log.warning("instance %s: lease lost; another worker drives it now", instance_id)
                self._drop(instance_id)

    def _resync(self, now: float) -> None:
        """Every ``connection_check_interval``, read back what other processes stored.

        An operator's ``reset`` or ``disable`` from the command line changes the state
        store, not this process: an exhausted instance has nothing due and would never
        be looked at again, and a disabled one would keep its terminal running. One
        batched read per interval (``load_many``) brings every idle member up to date;
        a store that can read versions alone (``VersionReader``) is asked those first,
        and only the members whose version moved are read whole.
        """
        if self._resync_at is None or now < self._resync_at:
            # The first pass follows the adds, which have just read every member.
            if self._resync_at is None:
                self._resync_at = now + self.policy.connection_check_interval
            return
        self._resync_at = now + self.policy.connection_check_interval
        self._health_due = True
        with self._lock:
            idle = [i for i in self._members if i not in self._busy]
        try:
            if self._versions is not None and idle:
                versions = self._versions.versions(idle)
                members = self._members
                idle = [
                    i
                    for i in idle
                    if (member := members.get(i)) is not None and versions.get(i) != member.version
                ]
            if not idle:
                return
            stored = self.backends.state.load_many(idle)
        except StoreUnavailable as exc:
            log.warning("could not read the stored states back: %s", exc)
            return
        for instance_id in idle:
            lifecycle = self._members.get(instance_id)
            if lifecycle is None:
                continue
            try:
                lifecycle.refresh(stored.get(instance_id))
            except Exception:
                log.exception("instance %s: could not take in its stored state", instance_id)
            if lifecycle.deleted:
                self._forget(instance_id)

    def _export_health(self) -> None:
        metrics = self.backends.metrics
        if not isinstance(metrics, HealthMetrics):
            return
        try:
            reports = [member.health() for member in list(self._members.values())]
            metrics.health(_summary(reports))
            metrics.instance_health(reports)
        except Exception:
            log.exception("the metrics failed to take the fleet's health")

    def _drop(self, instance_id: str) -> None:
        with self._lock:
            lifecycle = self._members.pop(instance_id, None)
            self._scheduled.pop(instance_id, None)
        if lifecycle is not None:
            lifecycle.on_change = None

    def _forget(self, instance_id: str) -> None:
        """A confirmed closure: nothing left to drive."""
        self._drop(instance_id)
        if self.leases is not None:
            self.leases.release([instance_id], self.owner)

    def __getitem__(self, instance_id: str) -> Lifecycle:
        try:
            return self._members[instance_id]
        except KeyError:
            raise KeyError(f"instance {instance_id!r} is not in this fleet") from None

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._members))

    def __len__(self) -> int:
        return len(self._members)

    # --- health ------------------------------------------------------------------

    def health(self, instance_id: str | None = None) -> Health | FleetHealth:
        """One instance's health, or the fleet's (SPEC section 15)."""
        if instance_id is not None:
            return self[instance_id].health()
        return _summary([member.health() for member in list(self._members.values())])

    # --- running ---------------------------------------------------------------

    @property
    def next_due(self) -> float | None:
        """The earliest due time of any instance (or of a delivery to try again)."""
        with self._lock:
            heap = self._heap
            scheduled = self._scheduled
            due = None
            while heap:
                when, _, instance_id = heap[0]
                if scheduled.get(instance_id) == when:
                    due = when
                    break
                heapq.heappop(heap)
        return _earliest(due, self._ctx.relay.next_due)

    def run_due(self) -> float | None:
        """Run every instance that is due at the clock's now; return the next due time.

        A backend outage for one instance is logged and retried later; it does not
        stop the others.
        """
        now = self.backends.clock.now()
        self._maintain_leases(now)
        self._resync(now)
        due: list[Lifecycle] = []
        with self._lock:
            heap = self._heap
            scheduled = self._scheduled
            held: list[tuple[float, int, str]] = []
            while heap and heap[0][0] <= now:
                entry = heapq.heappop(heap)
                when, _, instance_id = entry
                if scheduled.get(instance_id) != when:
                    continue
                if instance_id in self._busy:
                    held.append(entry)  # driven elsewhere right now: keep its turn
                    continue
                del scheduled[instance_id]
                member = self._members.get(instance_id)
                if member is None:
                    continue
                self._busy.add(instance_id)
                due.append(member)
            for entry in held:
                heapq.heappush(heap, entry)
        if len(due) <= 1 or self.workers == 1:
            self._run_chunk(due)
        else:
            size = max(1, len(due) // (self.workers * _CHUNKS_PER_WORKER))
            chunks = [due[i : i + size] for i in range(0, len(due), size)]
            for _ in self._executor().map(self._run_chunk, chunks):
                pass
        self._ctx.relay.deliver()
        if self._health_due:
            # After the pass, so that the checks it made are in the report.
            self._health_due = False
            self._export_health()
        if self._tick is not None:
            self._tick.set()
        return self.next_due

    def send(self, instance_id: str, action: Callable[[Lifecycle], T]) -> T:
        """Run ``action(fleet[id])`` once no worker is driving the instance.

        For events and operator actions while ``run()`` or ``arun()`` drives the
        fleet from other threads: ``fleet.send("bot-1", Lifecycle.reset)``.
        """
        lifecycle = self[instance_id]
        try:
            return self._driving_alone(lifecycle, action)
        finally:
            self._ctx.relay.deliver()

    def _driving_alone(self, lifecycle: Lifecycle, action: Callable[[Lifecycle], T]) -> T:
        instance_id = lifecycle.instance_id
        with self._lock:
            self._waiting += 1
            try:
                while instance_id in self._busy:
                    self._lock.wait(_WAIT_SLICE)
            finally:
                self._waiting -= 1
            self._busy.add(instance_id)
        try:
            return action(lifecycle)
        finally:
            self._release(lifecycle)

    def close(self) -> None:
        """Stop the worker pool, hand over what is due, hand the leases back (idempotent).

        A graceful shutdown: the other workers adopt this one's instances at once
        instead of waiting for the leases to expire.
        """
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._ctx.relay.deliver()
        if self.leases is not None and self._members:
            members = list(self._members)
            for instance_id in members:
                self._drop(instance_id)
            try:
                self.leases.release(members, self.owner)
            except StoreUnavailable as exc:
                log.warning("could not hand the leases back (they will expire): %s", exc)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mt5lifecycle")
        return self._pool

    def _run_chunk(self, chunk: list[Lifecycle]) -> None:
        for lifecycle in chunk:
            try:
                lifecycle.run_due()
            except StoreUnavailable:
                pass  # logged and held off by the lifecycle itself
            except Exception:
                log.exception("instance %s: a due action failed", lifecycle.instance_id)
            finally:
                self._release(lifecycle)

    def _release(self, lifecycle: Lifecycle) -> None:
        """No longer driven: schedule it again, and wake whoever waits to ``send``."""
        with self._lock:
            self._busy.discard(lifecycle.instance_id)
            self._schedule(lifecycle)
            if self._waiting:
                self._lock.notify_all()
        if lifecycle.deleted and lifecycle.instance_id in self._members:
            self._forget(lifecycle.instance_id)

    def stop(self) -> None:
        """Ask ``run()`` / ``arun()`` to return after the current pass."""
        self._stop.set()
        if self._kick is not None:
            self._kick.set()

    def run(self, until: float | None = None) -> None:
        """Drive the fleet until ``stop()`` or until the clock passes ``until``.

        Between due times it sleeps on the clock (a fake clock jumps), in slices of at
        most half a second on the system clock so that a signal is answered promptly.
        It wakes for the members' due times, the lease renewals and the periodic
        read-back of the stored states, so it never returns on its own without ``until``.
        """
        clock = self.backends.clock
        try:
            while not self._stop.is_set():
                wake = _earliest(self._wake(self.run_due()), until)
                if until is not None and clock.now() >= until:
                    return
                if wake is None:
                    wake = clock.now() + self.policy.connection_check_interval
                delay = wake - clock.now()
                if isinstance(clock, SystemClock):
                    self._stop.wait(min(max(delay, 0.0), _WAIT_SLICE))
                else:
                    clock.sleep(delay)
        finally:
            self._stop.clear()

    def _wake(self, due: float | None) -> float | None:
        wake = _earliest(due, self._resync_at)
        if self.leases is not None:
            wake = _earliest(wake, self._renew_at)
        return wake

    async def arun(self, until: float | None = None) -> None:
        """``run()`` for asyncio: due work runs in a thread, so the loop stays free."""
        clock = self.backends.clock
        self._kick = asyncio.Event()
        self._tick = asyncio.Event()
        self._driving += 1
        try:
            while not self._stop.is_set():
                self._kick.clear()
                due = await asyncio.to_thread(self.run_due)
                self._tick.set()
                wake = _earliest(self._wake(due), until)
                wake = _earliest(wake, min(self._deadlines, default=None))
                if until is not None and clock.now() >= until:
                    return
                await self._sleep_until(wake)
        finally:
            self._driving -= 1
            self._stop.clear()

    async def _sleep_until(self, wake: float | None) -> None:
        kick = self._kick
        assert kick is not None
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(kick.wait())]
        if wake is not None:
            clock = self.backends.clock
            waits.append(asyncio.ensure_future(clock.asleep(wake - clock.now())))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def wait_connected(self, instance_id: str, timeout: float) -> Snapshot:
        """The instance's snapshot once it is ``CONNECTED``.

        Raises ``TimeoutError`` after ``timeout`` seconds of the fleet's clock, and
        ``Unrecoverable`` at once when the instance reaches a state it cannot leave by
        itself: a caller never waits out a timeout on a dead account. Drives the fleet
        itself when no ``arun()`` is running.
        """
        lifecycle = self[instance_id]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        clock = self.backends.clock
        deadline = clock.now() + timeout
        while True:
            snapshot = _connected_or_raise(lifecycle)
            if snapshot is not None:
                return snapshot
            now = clock.now()
            if now >= deadline:
                current = lifecycle.snapshot()
                raise TimeoutError(
                    f"instance {instance_id!r} is not CONNECTED after {timeout} s "
                    f"(now {current.status.value if current else None})"
                )
            if self._driving and self._tick is not None:
                # arun() owns the clock (a fake one jumps): it wakes for this deadline
                # too, and every pass it makes sets the tick.
                tick = self._tick
                tick.clear()
                self._deadlines.append(deadline)
                if self._kick is not None:
                    self._kick.set()
                try:
                    await tick.wait()
                finally:
                    self._deadlines.remove(deadline)
            else:
                due = await asyncio.to_thread(self.run_due)
                snapshot = _connected_or_raise(lifecycle)
                if snapshot is not None:
                    return snapshot
                wake = deadline if due is None else min(due, deadline)
                await clock.asleep(max(wake - clock.now(), 0.0))

    # --- internals -------------------------------------------------------------

    def _reschedule(self, lifecycle: Lifecycle) -> None:
        """A member's due time changed (``Lifecycle.on_change``).

        One that a worker is driving is scheduled when it is handed back
        (``_release``): while it runs, its due time may change several times, and
        each change need not take the fleet's lock.
        """
        if lifecycle.instance_id in self._busy:
            return
        with self._lock:
            self._schedule(lifecycle)

    def _schedule(self, lifecycle: Lifecycle) -> None:
        # The caller holds the lock.
        instance_id = lifecycle.instance_id
        due = lifecycle.next_due
        if due is None:
            self._scheduled.pop(instance_id, None)
            return
        if self._scheduled.get(instance_id) != due:
            self._scheduled[instance_id] = due
            heapq.heappush(self._heap, (due, next(self._seq), instance_id))


def _summary(reports: Sequence[Health]) -> FleetHealth:
    count = len(reports)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / count if count else 0.0

    return FleetHealth(
        instances=count,
        connected=sum(r.connected for r in reports),
        healthy=sum(r.healthy for r in reports),
        unhealthy=tuple(r for r in reports if not r.healthy),
        uptime_5m=mean(r.uptime_5m for r in reports),
        uptime_1h=mean(r.uptime_1h for r in reports),
        uptime_1d=mean(r.uptime_1d for r in reports),
    )


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _connected_or_raise(lifecycle: Lifecycle) -> Snapshot | None:
    """The snapshot when ``CONNECTED``; raise when the table says it never will be."""
    snapshot = lifecycle.snapshot()
    if snapshot is not None and snapshot.status is State.CONNECTED and not lifecycle.deleted:
        return snapshot
    if lifecycle.needs_operator:
        raise Unrecoverable(
            instance_id=lifecycle.instance_id,
            state=State.INACTIVE if lifecycle.deleted or snapshot is None else snapshot.status,
            reason=snapshot.last_failure_reason if snapshot is not None else None,
        )
    return None
