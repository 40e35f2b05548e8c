"""Shared helpers for the core's tests. The kit's fixtures come from the plugin."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import attrs
import pytest

from mt5lifecycle import Backends, Credentials, Lifecycle, Policy, StoreUnavailable
from mt5lifecycle.builtin.memory import MemoryArchive
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends

CREDS = Credentials(login=5550001, server="Broker-Demo", password="s3cret-Pa55")
T0 = 1767225600.0


class Switch:
    """A port whose calls fail while ``down``: a backend outage, a broken notifier.

    Everything else is the inner port's, its optional capabilities included.
    """

    def __init__(
        self,
        inner: Any,
        *,
        only: Collection[str] | None = None,
        fault: Callable[[str], Exception] | None = None,
    ) -> None:
        self.inner = inner
        self.down = False
        self.only = only
        self.fault = fault or (
            lambda name: StoreUnavailable(backend="test", instance_id=None, detail=f"{name}: down")
        )

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.inner, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down and (self.only is None or name in self.only):
                raise self.fault(name)
            return found(*args, **kwargs)

        return call


class World:
    """One instance's world: backends, fakes and the lifecycle, for short tests.

    ``switched`` names ports (``"state"``, ``"credentials"``, ``"archive"``,
    ``"notifier"``, ``"metrics"``) wrapped in a ``Switch``: ``world.switches[name]``.
    """

    def __init__(
        self,
        policy: Policy | None = None,
        instance_id: str = "acc-1",
        *,
        switched: Collection[str] = (),
    ) -> None:
        self.clock = FakeClock(T0)
        self.broker = FakeBroker(self.clock)
        plain = memory_backends(broker=self.broker, clock=self.clock)
        self.switches = {name: Switch(getattr(plain, name)) for name in switched}
        self.backends: Backends = attrs.evolve(plain, **self.switches)
        self.plain = plain
        self.id = instance_id
        self.policy = policy
        self.lc = Lifecycle(instance_id, self.backends, policy)

    @property
    def notifier(self) -> RecordingNotifier:
        n = self.plain.notifier
        assert isinstance(n, RecordingNotifier)
        return n

    @property
    def archive(self) -> MemoryArchive:
        a = self.plain.archive
        assert isinstance(a, MemoryArchive)
        return a

    def store_credentials(self) -> World:
        self.backends.credentials.put(self.id, CREDS)
        return self

    def started(self) -> World:
        self.store_credentials()
        self.lc.start()
        return self

    def connected(self) -> World:
        self.started()
        self.lc.run_due()
        assert self.lc.snapshot() is not None
        return self

    def run(self, seconds: float) -> None:
        """Play simulated time: jump to each due time and run it."""
        end = self.clock.now() + seconds
        self.lc.run_due()
        while (due := self.lc.next_due) is not None and due <= end:
            self.clock.advance_to(due)
            self.lc.run_due()
        self.clock.advance_to(end)

    def at(self) -> float:
        return self.clock.now() - T0

    def logins(self) -> list[float]:
        return [t - T0 for t in self.broker.login_times(self.id)]

    def kinds(self) -> list[str]:
        return [k.value for k in self.notifier.kinds(self.id)]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def make_world() -> Callable[..., World]:
    return World
