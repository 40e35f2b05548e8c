"""The pytest plugin (entry point ``pytest11``): the testing kit as fixtures.

A bot's test asks for what it needs and gets fresh fakes wired together:

    def test_bot_reconnects(mt5_lifecycle, mt5_broker):
        lc = mt5_lifecycle("bot-1")
        mt5_broker.drop_connection("bot-1")
        ...
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ..core.credentials import Credentials
from ..core.policy import Policy
from ..runtime.backends import Backends
from ..runtime.lifecycle import Lifecycle
from . import memory_backends
from .broker import FakeBroker
from .clock import FakeClock
from .notifier import RecordingNotifier

DEMO_CREDENTIALS = Credentials(login=10_000_001, server="FakeBroker-Demo", password="demo-password")  # noqa: S106 - a fake


@pytest.fixture
def mt5_clock() -> FakeClock:
    """A ``FakeClock`` at 2026-01-01T00:00:00Z."""
    return FakeClock()


@pytest.fixture
def mt5_broker(mt5_clock: FakeClock) -> FakeBroker:
    """A ``FakeBroker`` on ``mt5_clock``."""
    return FakeBroker(mt5_clock)


@pytest.fixture
def mt5_backends(mt5_broker: FakeBroker, mt5_clock: FakeClock) -> Backends:
    """In-memory ``Backends`` around ``mt5_broker`` and ``mt5_clock``."""
    return memory_backends(broker=mt5_broker, clock=mt5_clock)


@pytest.fixture
def mt5_notifier(mt5_backends: Backends) -> RecordingNotifier:
    """The ``RecordingNotifier`` of ``mt5_backends``."""
    notifier = mt5_backends.notifier
    assert isinstance(notifier, RecordingNotifier)
    return notifier


@pytest.fixture
def mt5_lifecycle(mt5_backends: Backends) -> Callable[..., Lifecycle]:
    """A factory: ``mt5_lifecycle("bot-1")`` stores demo credentials (unless
    ``credentials=None``), starts a ``Lifecycle`` and returns it, its login due now."""

    def make(
        instance_id: str,
        *,
        credentials: Credentials | None = DEMO_CREDENTIALS,
        policy: Policy | None = None,
        start: bool = True,
    ) -> Lifecycle:
        if credentials is not None:
            mt5_backends.credentials.put(instance_id, credentials)
        lifecycle = Lifecycle(instance_id, mt5_backends, policy)
        if start:
            lifecycle.start()
        return lifecycle

    return make
