"""Policy: defaults, validation, the schedule as a pure function (SPEC section 3)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mt5lifecycle import Policy


def test_defaults_are_the_design_notes() -> None:
    p = Policy()
    assert p.max_login_attempts == 5
    assert p.login_backoff == (5, 10, 30, 60, 120)
    assert p.repeated_failure_threshold == 3
    assert p.network_retry_delay == 10
    assert p.max_network_retries == 6
    assert p.max_restarts == 3
    assert p.restart_backoff == (30, 60, 120)
    assert p.backoff_jitter == 0.0
    assert p.connection_check_interval == 60


def test_default_timeline_is_0_5_15_45_105() -> None:
    assert Policy().login_timeline() == (0, 5, 15, 45, 105)


def test_past_the_end_the_last_backoff_repeats() -> None:
    p = Policy(max_login_attempts=8)
    assert [p.login_delay(k) for k in range(1, 8)] == [5, 10, 30, 60, 120, 120, 120]
    assert p.restart_delay(5) == 120


def test_policy_is_immutable() -> None:
    p = Policy()
    with pytest.raises(AttributeError):
        p.max_login_attempts = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_login_attempts", 0),
        ("max_login_attempts", -1),
        ("max_login_attempts", 2.5),
        ("max_login_attempts", True),
        ("login_backoff", ()),
        ("login_backoff", (5, -1)),
        ("login_backoff", (float("nan"),)),
        ("login_backoff", "5,10"),
        ("login_backoff", (5, "10")),
        ("repeated_failure_threshold", 0),
        ("network_retry_delay", -0.5),
        ("network_retry_delay", float("inf")),
        ("network_retry_delay", "10"),
        ("max_network_retries", -1),
        ("max_restarts", -1),
        ("restart_backoff", ()),
        ("backoff_jitter", -0.1),
        ("backoff_jitter", 1.0),
        ("connection_check_interval", 0),
        ("lock_ttl", 0),
        ("max_close_calls", 0),
        ("max_requote_retries", -1),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Policy\.{field}"):
        Policy(**{field: value})


def test_counts_may_be_zero() -> None:
    p = Policy(max_restarts=0, max_network_retries=0)
    assert p.max_restarts == 0


@given(
    st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=6),
    st.integers(1, 10),
    st.floats(0, 0.99),
    st.floats(0, 0.999),
)
def test_jitter_stays_within_its_proportion(
    backoff: list[float], k: int, jitter: float, rand: float
) -> None:
    p = Policy(login_backoff=backoff, backoff_jitter=jitter)
    base = Policy(login_backoff=backoff).login_delay(k)
    delay = p.login_delay(k, rand)
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9
