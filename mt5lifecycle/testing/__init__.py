"""The testing kit: fakes and helpers for your bot's own tests.

    from mt5lifecycle import Lifecycle, Credentials, Reason, State
    from mt5lifecycle.testing import memory_backends, run_for

    def test_my_bot_survives_a_wrong_password():
        b = memory_backends()
        b.credentials.put("bot-1", Credentials(12345, "Demo-Server", "secret"))
        b.broker.fail_logins("bot-1", Reason.AUTH_FAILED, times=2)
        lc = Lifecycle("bot-1", b)
        lc.start()
        run_for(lc, b.clock, 60)
        assert lc.state is State.CONNECTED

Nothing here sleeps: ``FakeClock`` jumps to each due time. The pytest plugin
(installed with the package) offers the same as fixtures: ``mt5_clock``,
``mt5_broker``, ``mt5_backends``, ``mt5_notifier``, ``mt5_lifecycle``.
"""

from __future__ import annotations

from typing import Protocol

from ..builtin.memory import MemoryArchive, MemoryCredentialStore, MemoryStateStore
from ..ports import Broker, Clock
from ..runtime.backends import Backends
from .broker import FakeBroker
from .clock import FakeClock
from .notifier import RecordingNotifier

__all__ = ["FakeBroker", "FakeClock", "RecordingNotifier", "memory_backends", "run_for"]


def memory_backends(broker: Broker | None = None, clock: Clock | None = None) -> Backends:
    """``Backends`` for tests: in-memory stores and archive, a ``RecordingNotifier``,
    a ``FakeClock`` and a ``FakeBroker`` unless given.

    Without a clock, a broker that has one (``FakeBroker``) lends it, so the broker's
    login times and the lifecycle's due times are readings of the same clock.
    """
    if clock is None:
        lent = getattr(broker, "clock", None)
        clock = lent if isinstance(lent, Clock) else FakeClock()
    if broker is None:
        broker = FakeBroker(clock)
    return Backends(
        state=MemoryStateStore(clock),
        credentials=MemoryCredentialStore(),
        broker=broker,
        clock=clock,
        archive=MemoryArchive(),
        notifier=RecordingNotifier(),
    )


class _Runnable(Protocol):
    @property
    def next_due(self) -> float | None: ...

    def run_due(self) -> float | None: ...


def run_for(target: _Runnable, clock: FakeClock | Clock, seconds: float) -> float:
    """Play ``seconds`` of simulated time on a ``Lifecycle`` or a ``Fleet``.

    Jumps the fake clock to each due time in turn and runs what is due there, then
    to the end of the span. Returns the clock's now at the end.
    """
    if not isinstance(clock, FakeClock):
        raise TypeError("run_for drives a FakeClock; a real clock cannot jump")
    end = clock.now() + seconds
    target.run_due()
    while True:
        due = target.next_due
        if due is None or due > end:
            break
        clock.advance_to(due)
        target.run_due()
    return clock.advance_to(end)
