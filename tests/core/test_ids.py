"""Instance ids are checked before any I/O."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mt5lifecycle import InvalidInstanceId, Lifecycle, LifecycleError, Reason
from mt5lifecycle.core.ids import check_instance_id
from mt5lifecycle.testing import FakeBroker, FakeClock, memory_backends


@pytest.mark.parametrize("good", ["a", "A1", "bot-1", "acc_2.live", "9" * 128])
def test_valid_ids(good: str) -> None:
    assert check_instance_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "-a",
        ".a",
        "_a",
        "a b",
        "a:b",
        "a/b",
        "a\n",
        "é",
        "9" * 129,
        "x'; DROP TABLE t;--",
        "a*",
        "{a}",
        None,
        5,
        b"abc",
    ],
)
def test_invalid_ids_raise_before_any_io(bad: Any) -> None:
    with pytest.raises(InvalidInstanceId) as caught:
        Lifecycle(bad, memory_backends())
    assert isinstance(caught.value, LifecycleError)
    assert isinstance(caught.value, ValueError)
    assert "invalid instance id" in str(caught.value)


@given(st.text(max_size=140))
def test_check_agrees_with_the_pattern(text: str) -> None:
    import re

    ok = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", text) is not None and text.isascii()
    if ok:
        assert check_instance_id(text) == text
    else:
        with pytest.raises(InvalidInstanceId):
            check_instance_id(text)


def test_invalid_ids_never_reach_the_stores() -> None:
    b = memory_backends()
    for call in (
        lambda: b.state.load("a b"),
        lambda: b.credentials.get("a b"),
        lambda: b.state.acquire_lock("a b", 1),
        lambda: FakeBroker(FakeClock()).fail_logins("a b", Reason.AUTH_FAILED),
    ):
        with pytest.raises(InvalidInstanceId):
            call()
