"""The error hierarchy.

Every error is a value with fields an operator (or a program) can act on, and its
message is a sentence that names the instance and what was wrong. None of them ever
carries a password: errors are logged, and logs leave the building.
"""

from __future__ import annotations

__all__ = [
    "ConcurrentUpdate",
    "CorruptState",
    "CredentialsRejected",
    "CredentialsUndecryptable",
    "InvalidInstanceId",
    "InvalidTransition",
    "LeaseHeld",
    "LifecycleError",
    "LockLost",
    "StoreUnavailable",
    "Unrecoverable",
]


class LifecycleError(Exception):
    """Root of every error the library raises on purpose."""

    instance_id: str | None

    def __init__(self, message: str, *, instance_id: str | None = None) -> None:
        super().__init__(message)
        self.instance_id = instance_id


class InvalidInstanceId(LifecycleError, ValueError):
    """An instance id that is not ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``.

    Raised before any I/O, so a hostile id never reaches Redis, SQL or a file name.
    """

    def __init__(self, value: object) -> None:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        super().__init__(
            f"invalid instance id {shown}: expected 1 to 128 characters of "
            "[A-Za-z0-9._-], starting with a letter or a digit"
        )
        self.value = value


class InvalidTransition(LifecycleError):
    """An event or operator action that the transition table refuses in this state.

    Nothing was changed: not the state store, not the broker, not the archive.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        event: str,
        state: str | None,
        detail: str = "",
    ) -> None:
        where = "before start()" if state is None else f"in state {state}"
        message = f"instance {instance_id!r} refuses {event!r} {where}"
        if detail:
            message += f": {detail}"
        super().__init__(message, instance_id=instance_id)
        self.event = event
        self.state = state
        self.detail = detail


class CorruptState(LifecycleError):
    """A stored value that is not what the key schema says. It is never guessed at."""

    def __init__(self, *, instance_id: str, key: str, value: object, expected: str) -> None:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        super().__init__(
            f"corrupt state for instance {instance_id!r}: key {key!r} holds {shown}, "
            f"expected {expected}",
            instance_id=instance_id,
        )
        self.key = key
        self.value = value
        self.expected = expected


class StoreUnavailable(LifecycleError):
    """A backend could not be reached or timed out: a transient fault.

    The transition it interrupted did not happen; the machine's state is unchanged and
    it never counts as a login attempt.
    """

    def __init__(self, *, backend: str, instance_id: str | None, detail: str) -> None:
        subject = f" for instance {instance_id!r}" if instance_id is not None else ""
        super().__init__(f"{backend} unavailable{subject}: {detail}", instance_id=instance_id)
        self.backend = backend
        self.detail = detail


class ConcurrentUpdate(LifecycleError):
    """Another writer changed the instance since it was read: a stale write is refused.

    The writer's view is out of date; it reloads and decides again rather than merge.
    """

    def __init__(
        self, *, instance_id: str, expected_version: int, found_version: int | None
    ) -> None:
        found = "nothing" if found_version is None else f"version {found_version}"
        super().__init__(
            f"instance {instance_id!r} was changed by another writer: expected version "
            f"{expected_version}, found {found}; nothing was written",
            instance_id=instance_id,
        )
        self.expected_version = expected_version
        self.found_version = found_version


class LockLost(LifecycleError):
    """The login lock expired or was taken over: its former holder may not write."""

    def __init__(self, *, instance_id: str) -> None:
        super().__init__(
            f"instance {instance_id!r}: the login lock was lost before the write; "
            "nothing was written",
            instance_id=instance_id,
        )


class CredentialsUndecryptable(LifecycleError):
    """A stored credential that no configured key decrypts (wrong key, or a tampered row)."""

    def __init__(self, *, instance_id: str) -> None:
        super().__init__(
            f"the stored credentials of instance {instance_id!r} cannot be decrypted with "
            "any configured key (wrong key, or the row was altered or copied)",
            instance_id=instance_id,
        )


class Unrecoverable(LifecycleError):
    """The instance is in a state it cannot leave by itself: waiting longer is useless.

    ``FAILED`` with no restart pending, ``INACTIVE`` and ``ACCOUNT_CLOSED`` need an
    operator (``reset``, ``confirm_closure``) or a new instance.
    """

    def __init__(self, *, instance_id: str, state: object, reason: object) -> None:
        state_name = getattr(state, "value", state)
        reason_name = getattr(reason, "value", reason)
        super().__init__(
            f"instance {instance_id!r} is {state_name} ({reason_name}) and will not connect "
            "by itself; it needs an operator's reset, a confirmed closure or a new instance",
            instance_id=instance_id,
        )
        self.state = state
        self.reason = reason


class CredentialsRejected(LifecycleError):
    """Credentials that exhausted their login attempts, asked to be tried again unchanged.

    Trying a password the broker refused five times in a row, again, is how accounts get
    locked: replace the credentials, or ``reset(force=True)`` to try them once more.
    """

    def __init__(self, *, instance_id: str) -> None:
        super().__init__(
            f"instance {instance_id!r}: its credentials exhausted their login attempts and "
            "have not changed since; replace them, or reset with force to try them once more",
            instance_id=instance_id,
        )


class LeaseHeld(LifecycleError):
    """Another worker holds the instance's lease and drives it (``Fleet.add`` with leases).

    Not a refusal of the transition table: the instance may be in any state; it is
    simply somebody else's to drive until that worker lets go or its lease expires.
    """

    def __init__(self, *, instance_id: str, owner: str | None) -> None:
        holder = f" ({owner})" if owner else ""
        super().__init__(
            f"instance {instance_id!r} is driven by another worker{holder}, which holds its "
            "lease; it can be added here once that worker lets go or its lease expires",
            instance_id=instance_id,
        )
        self.owner = owner
