"""The policy: how many attempts, how long to wait (SPEC section 3).

A ``Policy`` is an immutable value that validates itself, and its schedules are pure
functions of a count, in the manner of urllib3's ``Retry``: the whole timeline of a
flow can be computed with numbers, and tested without a clock.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["Policy"]


def _to_schedule(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"Policy.{name} must be a sequence of seconds, not {value!r}")
    if isinstance(value, (int, float)):
        return (float(value),)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"Policy.{name} must be a sequence of seconds, not {value!r}") from None
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"Policy.{name} must hold seconds as numbers, not {item!r}")
    return tuple(float(item) for item in items)


def _to_seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Policy.{name} must be a number of seconds, not {value!r}")
    return float(value)


# mypy's attrs plugin wants named converters: one per field, so the error names it.
def _login_backoff(value: Any) -> tuple[float, ...]:
    return _to_schedule(value, "login_backoff")


def _restart_backoff(value: Any) -> tuple[float, ...]:
    return _to_schedule(value, "restart_backoff")


def _network_retry_delay(value: Any) -> float:
    return _to_seconds(value, "network_retry_delay")


def _backoff_jitter(value: Any) -> float:
    return _to_seconds(value, "backoff_jitter")


def _connection_check_interval(value: Any) -> float:
    return _to_seconds(value, "connection_check_interval")


def _lock_ttl(value: Any) -> float:
    return _to_seconds(value, "lock_ttl")


def _transient_retry_delay(value: Any) -> float:
    return _to_seconds(value, "transient_retry_delay")


def _start_spread(value: Any) -> float:
    return _to_seconds(value, "start_spread")


def _admission_retry_delay(value: Any) -> float:
    return _to_seconds(value, "admission_retry_delay")


def _server_outage_window(value: Any) -> float:
    return _to_seconds(value, "server_outage_window")


def _server_probe_interval(value: Any) -> float:
    return _to_seconds(value, "server_probe_interval")


def _delivery_backoff(value: Any) -> float:
    return _to_seconds(value, "delivery_backoff")


def _delivery_backoff_max(value: Any) -> float:
    return _to_seconds(value, "delivery_backoff_max")


def _fail(field: attrs.Attribute[Any], problem: str) -> None:
    raise ValueError(f"Policy.{field.name} {problem}")


def _count(minimum: int) -> Any:
    def check(_: object, field: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(field, f"must be an integer, not {value!r}")
        if value < minimum:
            _fail(field, f"must be at least {minimum}, not {value}")

    return check


def _optional_count(_: object, field: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be an integer or None (no bound), not {value!r}")
    if value < 1:
        _fail(field, f"must be at least 1 (or None for no bound), not {value}")


def _delay(_: object, field: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        _fail(field, f"must be a finite number of seconds >= 0, not {value}")


def _positive_delay(_: object, field: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        _fail(field, f"must be a finite number of seconds > 0, not {value}")


def _delays(_: object, field: attrs.Attribute[Any], value: tuple[float, ...]) -> None:
    if not value:
        _fail(field, "must not be empty")
    for item in value:
        if not math.isfinite(item) or item < 0:
            _fail(field, f"must hold finite delays >= 0, not {item}")


def _jitter(_: object, field: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        _fail(field, f"must be a proportion in [0, 1), not {value}")


@attrs.frozen(kw_only=True)
class Policy:
    """Attempts and waits. The defaults are the design notes'.

    With the defaults, a password that keeps failing is tried at t = 0, 5, 15, 45 and
    105 s and the instance is ``FAILED`` at t = 105 s: the fifth backoff value (120 s)
    is only reached when ``max_login_attempts`` is raised.
    """

    max_login_attempts: int = attrs.field(default=5, validator=_count(1))
    login_backoff: tuple[float, ...] = attrs.field(
        default=(5.0, 10.0, 30.0, 60.0, 120.0), converter=_login_backoff, validator=_delays
    )
    repeated_failure_threshold: int = attrs.field(default=3, validator=_count(1))
    network_retry_delay: float = attrs.field(
        default=10.0, converter=_network_retry_delay, validator=_delay
    )
    max_network_retries: int = attrs.field(default=6, validator=_count(0))
    max_restarts: int = attrs.field(default=3, validator=_count(0))
    restart_backoff: tuple[float, ...] = attrs.field(
        default=(30.0, 60.0, 120.0), converter=_restart_backoff, validator=_delays
    )
    backoff_jitter: float = attrs.field(default=0.0, converter=_backoff_jitter, validator=_jitter)
    connection_check_interval: float = attrs.field(
        default=60.0, converter=_connection_check_interval, validator=_positive_delay
    )
    # The library's own, beyond the design notes:
    max_requote_retries: int = attrs.field(default=3, validator=_count(0))
    """Retries of a position close answered with a requote or a price change."""
    max_close_calls: int = attrs.field(default=20, validator=_count(1))
    """Close calls per position at most, partial fills included, so closing always ends."""
    lock_ttl: float = attrs.field(default=120.0, converter=_lock_ttl, validator=_positive_delay)
    """How long the login lock outlives a holder that died; longer than a login takes."""
    transient_retry_delay: float = attrs.field(
        default=10.0, converter=_transient_retry_delay, validator=_positive_delay
    )
    """The wait after a backend outage (``StoreUnavailable``) before trying again."""
    # Protecting accounts across a fleet (SPEC section 15):
    start_spread: float = attrs.field(default=0.0, converter=_start_spread, validator=_delay)
    """Seconds over which a new instance's first login is spread (uniformly at random),
    so a host that starts thousands of instances does not log them all in at once. 0
    keeps the documented timelines exact."""
    max_concurrent_logins: int | None = attrs.field(default=None, validator=_optional_count)
    """Logins in flight at once in one process; ``None``: no bound."""
    max_concurrent_logins_per_server: int | None = attrs.field(
        default=None, validator=_optional_count
    )
    """Logins in flight at once to one broker server, across every process sharing the
    state store; ``None``: no bound."""
    admission_retry_delay: float = attrs.field(
        default=1.0, converter=_admission_retry_delay, validator=_positive_delay
    )
    """How long a login that found no free slot waits before asking again. A waiting
    login is neither a failure nor an attempt."""
    server_outage_threshold: int = attrs.field(default=5, validator=_count(1))
    """Accounts of one broker server whose logins (or connections) fail with ``NETWORK``
    or ``TERMINAL`` within ``server_outage_window`` for the server to be taken as down."""
    server_outage_window: float = attrs.field(
        default=60.0, converter=_server_outage_window, validator=_positive_delay
    )
    server_probe_interval: float = attrs.field(
        default=30.0, converter=_server_probe_interval, validator=_positive_delay
    )
    """While a server is down, how often its waiting instances look again; one login per
    interval probes whether it is back."""
    # Delivering notifications and archive records (SPEC section 14):
    max_delivery_attempts: int = attrs.field(default=8, validator=_count(1))
    """Tries of one notification before it is set aside (re-deliverable by an operator)."""
    delivery_backoff: float = attrs.field(
        default=1.0, converter=_delivery_backoff, validator=_positive_delay
    )
    """The first wait after a failed delivery; it doubles (with jitter) after each."""
    delivery_backoff_max: float = attrs.field(
        default=300.0, converter=_delivery_backoff_max, validator=_positive_delay
    )

    def login_delay(self, failures: int, rand: float = 0.5) -> float:
        """The wait after the ``failures``-th authentication failure in a row.

        Past the end of ``login_backoff`` the last value repeats. ``rand`` in [0, 1)
        draws the jitter; 0.5 means none.
        """
        return self._pick(self.login_backoff, failures, rand)

    def restart_delay(self, restart: int, rand: float = 0.5) -> float:
        """The wait before the ``restart``-th automatic restart (1-based)."""
        return self._pick(self.restart_backoff, restart, rand)

    def login_timeline(self) -> tuple[float, ...]:
        """Seconds after the first attempt at which each attempt happens, jitter aside.

        The last value is also when the instance enters ``FAILED``.
        """
        times = [0.0]
        for failures in range(1, self.max_login_attempts):
            times.append(times[-1] + self.login_delay(failures))
        return tuple(times)

    def _pick(self, schedule: tuple[float, ...], k: int, rand: float) -> float:
        if k < 1:
            raise ValueError(f"schedule positions start at 1, not {k}")
        base = schedule[min(k, len(schedule)) - 1]
        if self.backoff_jitter == 0.0:
            return base
        return base * (1.0 + self.backoff_jitter * (2.0 * rand - 1.0))
