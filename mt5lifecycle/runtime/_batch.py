"""One pass over the instances due together: their writes in ``commit_many`` calls.

Why: a ``Lifecycle`` writes each transition as it decides it, one round trip each.
A ``Fleet`` with hundreds of instances due at once (the connection checks of a
whole fleet, the logins after a broker's outage) would spend its time waiting on
those round trips, or, with a worker pool, handing them between threads. Here the
common due steps go through the pool in chunks, and each chunk works through its
instances a slice (``SLICE``) at a time:

1. a slice of logins takes its login locks in one round trip, just before logging
   in; once the locks have grown old (a slow broker), what is done is written and
   the logins not yet started are left to the one-by-one path, which takes a fresh
   lock for each;
2. the terminals are asked (a connection check's ``status``; a login's credentials
   and ``login``), and each answer's transition is decided with the clock read right
   after it, as ``Lifecycle._apply`` does;
3. the slice's transitions are written with one ``commit_many`` (on Redis, sent at
   once with the next slice's lock requests ahead of them, and answered once the
   next slice has been worked through), and each instance finishes exactly as
   ``_apply`` would (log, archive, metrics, alerts, commands).

Each write is still checked on its own (its version, its lock), so a stale instance
is refused and reloaded without touching the others, and what is stored is what the
instance-by-instance path stores, decided at the same moments; only the write comes
later, at the end of its slice. Chunks run on as few of the pool's threads as keep
up (``runners.py``: more while they wait on terminals), so a slow terminal holds up
its own chunk only. Anything else that is due (a restart, closing trades, a
cleanup) is left to the one-by-one path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ..core.machine import Decision, Facts
from ..core.records import LoginResult
from ..core.states import Due, TerminalStatus
from ..errors import ConcurrentUpdate, LockLost, StoreUnavailable
from ..ports import LockToken
from ._group_commit import BatchingStateStore, PendingCommit
from ._runners import Pace, Submit, Task, run_all
from .lifecycle import Lifecycle

__all__ = [
    "SLICE",
    "LockBatchingStore",
    "SendingStore",
    "Step",
    "run_together",
    "start_together",
]

log = logging.getLogger("mt5lifecycle.fleet")

_STALE = (ConcurrentUpdate, LockLost)

SLICE = 100
"""Instances whose locks are taken, terminals asked and results written together:
enough to share the round trips, few enough that a lock is young at its login."""


@runtime_checkable
class LockBatchingStore(Protocol):
    """A state store that can take many login locks in one round trip."""

    def acquire_many(
        self, instance_ids: Sequence[str], ttl: float
    ) -> list[LockToken | Exception | None]:
        """Each id's lock, ``None`` when another holds it, or the error for that id."""
        ...


class Sent(Protocol):
    """Lock requests and commits on their way; each read once, the locks first."""

    def locks(self) -> list[LockToken | Exception | None]:
        """The lock requests' answers, as ``acquire_many`` gives them."""
        ...

    def __call__(self) -> list[int | Exception]:
        """The commits' answers, as ``commit_many`` gives them."""
        ...


@runtime_checkable
class SendingStore(Protocol):
    """A state store that sends a batch of commits now and reads their answers later."""

    def start_commit_many(
        self, items: Sequence[PendingCommit], lock_first: Sequence[str] = (), ttl: float = 0.0
    ) -> Sent:
        """``commit_many`` sent now, after ``acquire_many(lock_first, ttl)``."""
        ...


Step = tuple[Lifecycle, Decision, "LockToken | None", "LoginResult | None", float]
"""A decided transition: its instance, the decision, its lock, a failed login's
result, and the clock reading it was decided at."""


class _Work:
    """One instance's due step on its way through a slice."""

    __slots__ = ("event", "facts", "failure", "lifecycle", "lock", "now")

    def __init__(self, lifecycle: Lifecycle, lock: LockToken | None = None) -> None:
        self.lifecycle = lifecycle
        self.lock = lock
        self.event: str | None = None
        self.facts: Facts | None = None
        self.failure: LoginResult | None = None
        self.now = 0.0


def run_together(
    due: Sequence[Lifecycle],
    now: float,
    store: BatchingStateStore,
    submit: Submit,
    chunk_size: int,
    release: Callable[[list[Lifecycle]], None],
    workers: int,
) -> list[Lifecycle]:
    """Run the due step of each instance that can go in a batch; return the others.

    The chunks run on up to ``workers`` of the pool's threads (``runners.run_all``).

    The returned instances still have their step due: the caller runs them one by
    one. Every other instance has had its step (or its failure handled as
    ``run_due`` would) and been handed to ``release`` by the time this returns, as
    soon as its slice was done, so the fleet's bookkeeping overlaps other slices.
    """
    checks: list[Lifecycle] = []
    logins: list[Lifecycle] = []
    rest: list[Lifecycle] = []
    for lifecycle in due:
        kind = _kind(lifecycle, now)
        if kind is None:
            rest.append(lifecycle)
        elif kind is Due.LOGIN:
            logins.append(lifecycle)
        else:
            checks.append(lifecycle)
    chunks: dict[Task, list[Lifecycle]] = {}
    for run, group in ((_check_slice, checks), (_login_slice, logins)):
        for i in range(0, len(group), chunk_size):
            chunk = group[i : i + chunk_size]
            chunks[_task(run, chunk, store, rest, release)] = chunk

    def abandon(task: Task) -> None:
        release(chunks[task])  # never started (interrupted): due at the next pass

    for error in run_all(list(chunks), submit, workers, abandon):
        # A bug, not a backend's or a broker's answer.
        log.error("a batch of due steps failed", exc_info=error)
    return rest


_Finish = Callable[[], None]
"""The rest of a slice once its writes are sent: read their answers, finish each."""

_Asked = tuple[float, "_Locks"]
"""Login locks asked for ahead of a slice: when they were asked, and their answers."""

_Slice = Callable[
    [list[Lifecycle], BatchingStateStore, list[Lifecycle], Pace, "_Asked | None", list[Lifecycle]],
    tuple[_Finish, "_Asked | None"],
]
"""Works through a slice (its locks possibly asked already) and sends its writes,
asking ahead of them for the locks of the next slice, when it is given."""


def _task(
    run: _Slice,
    chunk: list[Lifecycle],
    store: BatchingStateStore,
    rest: list[Lifecycle],
    release: Callable[[list[Lifecycle]], None],
) -> Task:
    """One chunk's slices, one after another, on one runner.

    Tasks share the list of instances left over (``list.extend`` is atomic) and the
    fleet's ``release``, which takes its lock; no two tasks of one pass ever hold the
    same instance.
    """

    def settle(part: list[Lifecycle], left: list[Lifecycle], finish: _Finish) -> None:
        try:
            finish()
        finally:
            rest.extend(left)
            kept = {id(lifecycle) for lifecycle in left}
            release([lifecycle for lifecycle in part if id(lifecycle) not in kept])

    def task(pace: Pace) -> None:
        # Each slice's writes are answered only once the next slice has been worked
        # through: Redis runs the one while this thread decides the other.
        sent: tuple[list[Lifecycle], list[Lifecycle], _Finish] | None = None
        asked: _Asked | None = None
        end = 0
        try:
            for end in range(SLICE, len(chunk) + SLICE, SLICE):
                part = chunk[end - SLICE : end]
                left: list[Lifecycle] = []
                given, asked = asked, None
                try:
                    finish, asked = run(part, store, left, pace, given, chunk[end : end + SLICE])
                except Exception:
                    # A bug, not a backend's or a broker's answer: the other slices go on.
                    log.exception("a batch of due steps failed")
                    settle(part, left, _nothing)
                    continue
                except BaseException:
                    settle(part, left, _nothing)
                    raise
                earlier, sent = sent, (part, left, finish)
                if earlier is not None:
                    settle(*earlier)
        finally:
            try:
                if asked is not None:
                    _give_back_asked(asked, chunk[end : end + SLICE])  # interrupted
            finally:
                try:
                    if sent is not None:
                        settle(*sent)
                finally:
                    if end < len(chunk):
                        release(chunk[end:])  # not run (interrupted): due at the next pass

    return task


def _nothing() -> None:
    pass


def _give_back_asked(asked: _Asked, logins: list[Lifecycle]) -> None:
    """The locks asked for a slice that will not run: given back, not left to expire."""
    _, read = asked
    try:
        locks = read()
    except StoreUnavailable:
        return  # unanswered, taken or not: they expire
    for lifecycle, lock in zip(logins, locks, strict=True):
        if isinstance(lock, LockToken):
            item = _Work(lifecycle, lock)
            _give_back(item)


def _kind(lifecycle: Lifecycle, now: float) -> Due | None:
    """``LOGIN`` or ``RECONNECT_CHECK`` (a connection check too) when batchable."""
    if lifecycle._gone:
        return None
    pending = lifecycle._pending(now)
    if pending == "check" or pending is Due.RECONNECT_CHECK:
        return Due.RECONNECT_CHECK
    return Due.LOGIN if pending is Due.LOGIN else None


def _check_slice(
    slice_: list[Lifecycle],
    store: BatchingStateStore,
    rest: list[Lifecycle],
    pace: Pace,
    asked: _Asked | None,
    ahead: list[Lifecycle],
) -> tuple[_Finish, _Asked | None]:
    """Connection and reconnect checks: ask each terminal, write what changed.

    A reconnect check whose terminal is still down goes on to a login, as
    ``Lifecycle._reconnect_check`` does, without asking the terminal again.
    """
    del asked, ahead  # a chunk of checks asks for no locks ahead
    work: list[_Work] = []
    logins: list[Lifecycle] = []
    for lifecycle in slice_:
        try:
            started = pace.begin()
            try:
                status = lifecycle._terminal_status()
            finally:
                pace.end(started)
            now = lifecycle.backends.clock.now()
            snap = lifecycle._snap
            if snap is not None and snap.due is Due.RECONNECT_CHECK:
                if status is not TerminalStatus.CONNECTED:
                    logins.append(lifecycle)  # still down: it needs a login
                    continue
                event: str | None = "login_succeeded"
            else:
                event = lifecycle._checked(status, now)
            if event is not None:
                item = _Work(lifecycle)
                item.event, item.now = event, now
                work.append(item)
        except Exception:
            log.exception("instance %s: a due action failed", lifecycle.instance_id)
    finish, _ = _send(work, store, rest, [])
    try:
        _login_slice(logins, store, rest, pace, None, [])[0]()
    except BaseException:
        finish()
        raise
    return finish, None


def _login_slice(
    slice_: list[Lifecycle],
    store: BatchingStateStore,
    rest: list[Lifecycle],
    pace: Pace,
    asked: _Asked | None,
    ahead: list[Lifecycle],
) -> tuple[_Finish, _Asked | None]:
    """Logins: take the locks together, log in one by one, write the results together.

    The locks of a slice are taken at one moment and age together. Once they are a
    quarter of their TTL old (a slow broker), the results so far are written at once,
    while their locks are young, and the logins not yet started go one by one, each
    under a fresh lock. A login in a batch must so end within three quarters of the
    TTL (90 s by default, where the MetaTrader 5 login times out after 60 s); one by
    one it has the whole TTL.

    The locks of the next slice (``ahead``) are asked for on the way of this slice's
    writes, ahead of them: they are answered while this thread finishes its work,
    and are as young when that slice starts as if it had asked itself.
    """
    if not slice_:
        return _nothing, None
    clock = slice_[0].backends.clock
    young = slice_[0].policy.lock_ttl / 4
    if asked is not None:
        taken_at, read = asked
    else:
        taken_at, read = clock.now(), None
    work = _locked(slice_, taken_at, store, read)
    done: list[_Work] = []
    late: list[_Work] = []
    try:
        for index, item in enumerate(work):
            if clock.now() - taken_at > young:
                late = work[index:]
                break
            lifecycle = item.lifecycle
            assert item.lock is not None
            try:
                started = pace.begin()
                try:
                    item.event, item.facts, item.lock, item.failure = lifecycle._log_in(item.lock)
                finally:
                    pace.end(started)
                item.now = clock.now()
                done.append(item)
            except StoreUnavailable as exc:  # the credential store is down
                _give_back(item)
                lifecycle._hold_off(exc, clock.now())
            except Exception:
                log.exception("instance %s: a due action failed", lifecycle.instance_id)
                _give_back(item)
        # First, while the done logins' locks are young.
        finish, asked_ahead = _send(done, store, rest, ahead)
    except BaseException:
        for item in work:
            _give_back(item)  # an unexpected error: no write takes these locks back
        raise

    def finish_and_give_back() -> None:
        try:
            finish()
        finally:
            for item in work:
                _give_back(item)  # any lock no write took back (an unexpected error)

    try:
        for item in late:
            _give_back(item)
            rest.append(item.lifecycle)
    except BaseException:
        # Interrupted: the writes sent are answered, and the next slice's locks and
        # this one's given back, before it goes on up.
        try:
            finish_and_give_back()
        finally:
            if asked_ahead is not None:
                _give_back_asked(asked_ahead, ahead)
        raise
    return finish_and_give_back, asked_ahead


def _locked(
    logins: list[Lifecycle], now: float, store: BatchingStateStore, read: _Locks | None
) -> list[_Work]:
    """The logins whose lock was taken; the others wait, as ``Lifecycle._login`` does.

    ``read`` gives the answers of locks already asked for; else they are asked here.
    """
    if read is None and isinstance(store, LockBatchingStore):
        ids = [lifecycle.instance_id for lifecycle in logins]
        ttl = logins[0].policy.lock_ttl
        read = lambda: store.acquire_many(ids, ttl)  # noqa: E731 - asked here, now
    locks: Sequence[LockToken | Exception | None]
    if read is None:
        locks = [_acquire(store, lifecycle) for lifecycle in logins]
    else:
        try:
            locks = read()
        except StoreUnavailable as exc:
            locks = [exc] * len(logins)
    work: list[_Work] = []
    for lifecycle, lock in zip(logins, locks, strict=True):
        if isinstance(lock, LockToken):
            work.append(_Work(lifecycle, lock))
            continue
        try:
            if isinstance(lock, Exception):
                raise lock
            # Another worker is logging this account in: never two logins at once.
            policy = lifecycle.policy
            lifecycle._hold_until = now + min(policy.transient_retry_delay, policy.lock_ttl)
            lifecycle._reload()
        except StoreUnavailable as exc:
            lifecycle._hold_off(exc, now)
        except Exception:
            log.exception("instance %s: a due action failed", lifecycle.instance_id)
    return work


def _acquire(store: BatchingStateStore, lifecycle: Lifecycle) -> LockToken | Exception | None:
    try:
        return store.acquire_lock(lifecycle.instance_id, lifecycle.policy.lock_ttl)
    except StoreUnavailable as exc:
        return exc


def _send(
    work: list[_Work], store: BatchingStateStore, rest: list[Lifecycle], ahead: list[Lifecycle]
) -> tuple[_Finish, _Asked | None]:
    """Decide each step and send their writes together; the call returned finishes each.

    When the store can, the login locks of ``ahead`` are asked for first, on the
    same way; their answers come back as the second half (``None``: not asked).
    """
    steps: list[Step] = []
    decided: list[_Work] = []
    for item in work:
        lifecycle = item.lifecycle
        assert item.event is not None
        try:
            facts = item.facts if item.facts is not None else lifecycle._facts()
            decision = lifecycle._decide(item.event, facts, item.now)
        except Exception:
            log.exception("instance %s: a due action failed", lifecycle.instance_id)
            _give_back(item)
            continue
        steps.append((lifecycle, decision, item.lock, item.failure, item.now))
        decided.append(item)
    if not steps:
        return _nothing, None
    ids = [lifecycle.instance_id for lifecycle in ahead]
    ttl = ahead[0].policy.lock_ttl if ahead else 0.0
    asked_at = ahead[0].backends.clock.now() if ahead else 0.0
    # The slice's task reschedules its instances when it releases them.
    answers, locks = _start(steps, store, False, ids, ttl)
    asked = (asked_at, locks) if locks is not None else None
    return (lambda: _finish(decided, answers(), rest)), asked


def _finish(decided: list[_Work], errors: list[Exception | None], rest: list[Lifecycle]) -> None:
    """After the writes: what each refused or failed write leads to, and the locks."""
    for item, error in zip(decided, errors, strict=True):
        lifecycle = item.lifecycle
        try:
            if error is not None:
                _give_back(item)
                if isinstance(error, _STALE):
                    # Another writer moved the instance on: take in what it wrote.
                    lifecycle._reload()
                elif isinstance(error, StoreUnavailable):
                    lifecycle._hold_off(error, item.now)
                else:
                    # Logged, not raised: one exception object may stand for a
                    # whole node's calls, and each raise would lengthen its traceback.
                    log.error(
                        "instance %s: a due action failed", lifecycle.instance_id, exc_info=error
                    )
                continue
            lock, item.lock = item.lock, None
            if lock is not None and not lock.release_on_commit:
                lifecycle._release(lock)  # credentials missing: nothing was tried
            due = lifecycle.next_due
            if due is not None and due <= lifecycle.backends.clock.now():
                rest.append(lifecycle)  # more is due at once: the one-by-one path goes on
        except StoreUnavailable as exc:
            lifecycle._hold_off(exc, item.now)
        except Exception:
            log.exception("instance %s: a due action failed", lifecycle.instance_id)


def start_together(
    steps: Sequence[Step], store: BatchingStateStore, *, notify: bool = True
) -> Callable[[], list[Exception | None]]:
    """Send every step's snapshot with one ``commit_many``; the call returned finishes
    each written one and answers, per step, ``None`` or what stopped it.

    ``notify`` is ``Lifecycle._finish``'s: ``False`` when the caller reschedules.
    What stops a step: the commit's refusal (``ConcurrentUpdate``, ``LockLost``),
    ``StoreUnavailable`` (for every step when the connection went mid-pipeline: any
    of them may have landed, and each one's next write from the old version is
    refused, so it reloads), or an error of a nested transition while finishing.

    A store that can (``SendingStore``) answers when that call is made, so the
    caller works on while Redis writes; another writes here and now. The call must
    be made once, and soon: until then the writes may hold one of the store's
    connections.
    """
    return _start(steps, store, notify, [], 0.0)[0]


_Locks = Callable[[], "Sequence[LockToken | Exception | None]"]
"""The answers of lock requests sent ahead, read when called."""


def _start(
    steps: Sequence[Step],
    store: BatchingStateStore,
    notify: bool,
    lock_first: list[str],
    ttl: float,
) -> tuple[Callable[[], list[Exception | None]], _Locks | None]:
    """``start_together``, and the answers of ``lock_first``'s locks asked ahead of the
    writes when the store can (else ``None``: nothing was asked)."""
    items = [
        (lifecycle.instance_id, decision.snapshot, lifecycle._version, lock)
        for lifecycle, decision, lock, _, _ in steps
    ]
    answers: Callable[[], Sequence[int | Exception]]
    locks: _Locks | None = None
    try:
        if isinstance(store, SendingStore):
            sent = store.start_commit_many(items, lock_first, ttl)
            answers = sent
            if lock_first:
                locks = sent.locks
        else:
            written = store.commit_many(items)
            answers = lambda: written  # noqa: E731 - the answers in hand
    except StoreUnavailable as exc:
        failed = [exc] * len(steps)
        answers = lambda: failed  # noqa: E731 - the answers in hand

    def finish() -> list[Exception | None]:
        outcomes: Sequence[int | Exception]
        try:
            outcomes = answers()
        except StoreUnavailable as exc:
            outcomes = [exc] * len(steps)
        errors: list[Exception | None] = []
        for (lifecycle, decision, lock, failure, now), outcome in zip(steps, outcomes, strict=True):
            if isinstance(outcome, Exception):
                errors.append(outcome)
                continue
            try:
                lifecycle._finish(decision, outcome, now, lock, failure, notify=notify)
            except Exception as exc:
                errors.append(exc)
                continue
            errors.append(None)
        return errors

    return finish, locks


def _give_back(item: _Work) -> None:
    """Release the step's lock, if it still holds one that no write took back."""
    lock, item.lock = item.lock, None
    item.event = None
    if lock is not None:
        try:
            item.lifecycle._release(lock)
        except Exception:
            log.exception(
                "instance %s: could not release the login lock", item.lifecycle.instance_id
            )
