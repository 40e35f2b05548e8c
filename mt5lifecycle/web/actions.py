"""The operator's actions and reads, shared by the API and the console.

Each action names its operator (``by=``), so the lifecycle archives it as an
``AuditRecord``, done or refused (reset, disable and confirm-closure are audited by the
lifecycle itself; adding an account, replacing credentials and redelivering set-aside
notifications are audited here).

Where an action runs:

- With a ``Fleet`` that drives the instance, through ``fleet.send``: it waits for the
  worker driving the instance, so the action and the fleet never race.
- Otherwise on a fresh ``Lifecycle`` over the state store, as the command line does:
  the write is checked against the stored version, and the process that drives the
  instance reads it back and acts (it starts or stops its terminal). That lifecycle
  stands on a broker that never touches a terminal: this process may not own it.

Nothing is half-done: a store that is down raises ``StoreUnavailable`` before
anything was written, and an account whose start fails has its credentials put back.

Everything here blocks (the stores are synchronous): the HTTP layer calls it in a
worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

import attrs

from ..builtin.brokers import HandsOffBroker
from ..builtin.set_aside import no_outbox, oldest_first, redelivery_detail
from ..core.credentials import Credentials
from ..core.health import FleetHealth, Health
from ..core.policy import Policy
from ..core.records import AuditRecord
from ..core.snapshot import Snapshot, utc
from ..core.states import State
from ..errors import InvalidTransition
from ..ports import OutboxStore, SetAside
from ..runtime.backends import Backends
from ..runtime.fleet import Fleet
from ..runtime.lifecycle import Lifecycle
from .errors import WebError

__all__ = ["Operations"]

log = logging.getLogger("mt5lifecycle.web")


class Operations:
    """Reads and actions over one set of backends (and optionally a fleet)."""

    def __init__(self, backends: Backends, *, fleet: Fleet | None, policy: Policy | None) -> None:
        self.backends = backends
        self.fleet = fleet
        self.policy = policy if policy is not None else (fleet.policy if fleet else None)
        self._store = attrs.evolve(backends, broker=HandsOffBroker("the web console"))
        # Two adds of one id in this process must not both store credentials and then
        # undo each other's on the start that loses.
        self._adding = threading.Lock()

    # --- reading -----------------------------------------------------------------

    def snapshots(self) -> list[tuple[str, Snapshot]]:
        """Every stored instance, in the state store's order."""
        state = self.backends.state
        ids = list(state.ids())
        stored = state.load_many(ids)
        return [(i, s.snapshot) for i in ids if (s := stored.get(i)) is not None]

    def snapshot(self, instance_id: str) -> Snapshot | None:
        stored = self.backends.state.load(instance_id)
        return None if stored is None else stored.snapshot

    def confirmed(self, instance_id: str) -> bool:
        """Whether the archive remembers a confirmed closure for the id."""
        return self.backends.archive.is_confirmed(instance_id)

    def fleet_health(self) -> FleetHealth | None:
        """The fleet's health, or ``None`` without a fleet in this process: health is
        measured by the process that drives the instances, never read from the store."""
        if self.fleet is None:
            return None
        report = self.fleet.health()
        assert isinstance(report, FleetHealth)
        return report

    def health(self, instance_id: str) -> Health | None:
        """An instance's health, or ``None`` when no fleet here drives it."""
        fleet = self.fleet
        if fleet is None or instance_id not in fleet:
            return None
        try:
            report = fleet.health(instance_id)
        except KeyError:
            return None  # it left the fleet meanwhile (a lease lost)
        assert isinstance(report, Health)
        return report

    def set_aside(self, instance_ids: Sequence[str] | None = None) -> list[SetAside]:
        """The notifications set aside after their tries (for these instances, or all),
        oldest set aside first; ``WebError`` 501 for a store that keeps no outbox."""
        return oldest_first(self._outbox().set_aside_notifications(instance_ids))

    def _outbox(self) -> OutboxStore:
        state = self.backends.state
        if not isinstance(state, OutboxStore):
            raise WebError.unsupported(no_outbox(state))
        return state

    # --- actions -----------------------------------------------------------------

    def reset(self, by: str, instance_id: str, *, force: bool = False) -> Snapshot | None:
        return self._act(by, instance_id, "reset", lambda lc: lc.reset(force=force, by=by))

    def disable(self, by: str, instance_id: str) -> Snapshot | None:
        return self._act(by, instance_id, "disable", lambda lc: lc.disable(by=by))

    def confirm_closure(self, by: str, instance_id: str) -> None:
        self._act(by, instance_id, "confirm_closure", lambda lc: lc.confirm_closure(by=by))

    def _act(
        self, by: str, instance_id: str, event: str, action: Callable[[Lifecycle], None]
    ) -> Snapshot | None:
        fleet = self.fleet
        if fleet is not None and instance_id in fleet:

            def run(lifecycle: Lifecycle) -> Snapshot | None:
                action(lifecycle)
                return lifecycle.snapshot()

            try:
                return fleet.send(instance_id, run)
            except KeyError:
                pass  # it left the fleet meanwhile (a lease lost): act on the store
        lifecycle = Lifecycle(instance_id, self._store, self.policy)
        if lifecycle.snapshot() is None:
            self._refuse_gone(by, instance_id, event)
        action(lifecycle)
        return lifecycle.snapshot()

    def _refuse_gone(self, by: str, instance_id: str, event: str) -> NoReturn:
        """An action on an id with no live state: 404, or refused when its closure was
        confirmed. A fresh lifecycle would refuse it "before start()", which tells an
        operator nothing: this says why, as the command line does, and archives the
        refusal as the lifecycle archives its own."""
        if not self.confirmed(instance_id):
            raise WebError.not_found(instance_id)
        detail = "its account closure was confirmed; a closed account never comes back"
        self._audit(by, instance_id, event, None, None, "refused", detail)
        raise InvalidTransition(
            instance_id=instance_id, event=event, state=State.INACTIVE.value, detail=detail
        )

    def add(self, by: str, instance_id: str, credentials: Credentials) -> Snapshot | None:
        """Store the credentials of a new account and start it."""
        with self._adding:
            refusal = self._exists(instance_id)
            if refusal is not None:
                self._audit(by, instance_id, "add", None, None, "refused", refusal)
                raise WebError.conflict(f"instance {instance_id!r} {refusal}")
            store = self.backends.credentials
            previous = store.get(instance_id)
            store.put(instance_id, credentials)
            try:
                snapshot = self._start(instance_id)
            except BaseException:
                self._put_back(instance_id, previous)
                raise
        self._audit(
            by,
            instance_id,
            "add",
            None,
            snapshot.status if snapshot is not None else None,
            "done",
            _account(credentials),
        )
        return snapshot

    def _exists(self, instance_id: str) -> str | None:
        """Why the id cannot be a new account, or ``None`` when it can."""
        snapshot = self.snapshot(instance_id)
        if snapshot is not None:
            return f"already exists ({snapshot.status.value}); choose another id"
        if self.confirmed(instance_id):
            return (
                "had its account closure confirmed: a closed account never comes back; "
                "choose another id"
            )
        if self.fleet is not None and instance_id in self.fleet:
            return "is already in this fleet; choose another id"
        return None

    def _start(self, instance_id: str) -> Snapshot | None:
        if self.fleet is not None:
            return self.fleet.add(instance_id).snapshot()
        lifecycle = Lifecycle(instance_id, self._store, self.policy)
        lifecycle.start()
        return lifecycle.snapshot()

    def _put_back(self, instance_id: str, previous: Credentials | None) -> None:
        store = self.backends.credentials
        try:
            if previous is None:
                store.delete(instance_id)
            else:
                store.put(instance_id, previous)
        except Exception as exc:
            log.error(
                "instance %s was not started, and its new credentials could not be taken "
                "back (%s); delete them before trying again",
                instance_id,
                type(exc).__name__,
            )

    def put_credentials(self, by: str, instance_id: str, credentials: Credentials) -> None:
        """Replace an existing instance's credentials (the next login uses them)."""
        snapshot = self.snapshot(instance_id)
        if snapshot is None:
            if self.confirmed(instance_id):
                self._audit(
                    by, instance_id, "put_credentials", None, None, "refused", "closure confirmed"
                )
                raise WebError.conflict(
                    f"instance {instance_id!r} had its account closure confirmed: add a new "
                    "account instead"
                )
            raise WebError.not_found(instance_id)
        if snapshot.status is State.ACCOUNT_CLOSED:
            detail = "a closed account never comes back"
            self._audit(
                by,
                instance_id,
                "put_credentials",
                snapshot.status,
                snapshot.status,
                "refused",
                detail,
            )
            raise WebError.conflict(
                f"instance {instance_id!r} is ACCOUNT_CLOSED: {detail}; confirm the closure "
                "and add a new account"
            )
        self.backends.credentials.put(instance_id, credentials)
        self._audit(
            by,
            instance_id,
            "put_credentials",
            snapshot.status,
            snapshot.status,
            "done",
            _account(credentials),
        )

    def redeliver(
        self, by: str, instance_id: str, notification_ids: Sequence[str] | None = None
    ) -> int:
        """Put the instance's set-aside notifications (all, or these) back in its
        outbox; how many were moved.

        The store moves the instance's version with them, so the process that drives
        it reads it back and hands them over (within ``connection_check_interval``);
        when that is the fleet here, it reads it back now. An id with no live state is
        refused: no process drives it, so nothing would deliver them.
        """
        snapshot = self.snapshot(instance_id)
        state = None if snapshot is None else snapshot.status
        store = self.backends.state
        if not isinstance(store, OutboxStore):
            self._audit(by, instance_id, "redeliver", state, state, "refused", "no outbox")
            raise WebError.unsupported(no_outbox(store))
        if snapshot is None:
            self._refuse_gone(by, instance_id, "redeliver")
        moved = store.redeliver(instance_id, notification_ids)
        if moved:
            self._read_back(instance_id)
        detail = redelivery_detail(moved, notification_ids)
        self._audit(by, instance_id, "redeliver", state, state, "done", detail)
        return moved

    def _read_back(self, instance_id: str) -> None:
        """Have the fleet here, if it drives the instance, take in what was just stored."""
        fleet = self.fleet
        if fleet is None or instance_id not in fleet:
            return
        state = self.backends.state
        try:
            fleet.send(instance_id, lambda lifecycle: lifecycle.refresh(state.load(instance_id)))
        except KeyError:
            pass  # it left the fleet meanwhile: its next driver reads the outbox
        except Exception as exc:
            # Stored all the same: the fleet's next read-back finds them.
            log.warning(
                "instance %s: redelivered, but not read back now (%s)",
                instance_id,
                type(exc).__name__,
            )

    def refuse(self, by: str, instance_id: str, action: str, detail: str) -> None:
        """Archive an action refused before it ran (a viewer's, say)."""
        try:
            snapshot = self.snapshot(instance_id)
        except Exception:
            snapshot = None
        state = snapshot.status if snapshot is not None else None
        self._audit(by, instance_id, action, state, state, "refused", detail)

    def _audit(
        self,
        by: str,
        instance_id: str,
        action: str,
        before: State | None,
        after: State | None,
        outcome: str,
        detail: str,
    ) -> None:
        record = AuditRecord(
            instance_id=instance_id,
            at=utc(self.backends.clock.now()),
            actor=by,
            action=action,
            source=before,
            dest=after,
            outcome=outcome,
            detail=detail,
        )
        log.info(
            "%s: %s %s on %s%s", by, action, outcome, instance_id, f" ({detail})" if detail else ""
        )
        archive = self.backends.archive
        try:
            archive.write([record])
            archive.flush()
        except Exception:
            # The action itself is done (or refused) either way; the archive never
            # undoes it, as for the lifecycle's own records.
            log.exception("instance %s: the archive did not take the audit record", instance_id)


def _account(credentials: Credentials) -> str:
    # The login and the server are what the terminal shows in its title bar; the
    # password never goes in an audit record.
    return f"login {credentials.login} on server {credentials.server!r}"
