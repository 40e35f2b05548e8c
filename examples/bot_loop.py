"""A trading bot that embeds one ``Lifecycle`` in its own loop.

The bot owns the loop and the lifecycle owns the login. Each turn the bot lets the
lifecycle do whatever is due (a login, a retry after its backoff, a restart, a
connection check), trades only while the instance is ``CONNECTED``, and then waits
until the lifecycle's next due time or its own next tick, whichever comes first.
Nothing in the library sleeps: the waiting is the bot's, on the clock port, so the
same loop runs on the system clock in production and on a fake clock in tests.

Run it (simulated: in-memory stores, the fake broker and a fake clock, so half an
hour of trading passes in a blink)::

    python examples/bot_loop.py
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mt5lifecycle import Credentials, Lifecycle, Reason, State, StoreUnavailable
from mt5lifecycle.core.states import Due
from mt5lifecycle.ports import Clock
from mt5lifecycle.testing import FakeBroker, RecordingNotifier, memory_backends

log = logging.getLogger("bot")


def needs_an_operator(lifecycle: Lifecycle) -> bool:
    """States the instance will not leave by itself: waiting longer is useless."""
    snapshot = lifecycle.snapshot()
    if snapshot is None:
        return False
    if snapshot.status in (State.INACTIVE, State.ACCOUNT_CLOSED):
        return True
    return snapshot.status is State.FAILED and snapshot.due is not Due.RESTART


def run_bot(
    lifecycle: Lifecycle,
    clock: Clock,
    trade: Callable[[], None],
    *,
    until: float,
    tick: float = 15.0,
) -> None:
    """Trade every ``tick`` seconds while connected, until ``until`` on ``clock``.

    Returns early when the instance needs an operator (a reset, a confirmed closure).
    """
    while clock.now() < until:
        try:
            lifecycle.run_due()
        except StoreUnavailable as exc:
            # Redis or PostgreSQL is down: nothing changed, and the lifecycle tries
            # again after policy.transient_retry_delay by itself. Keep the bot alive.
            log.warning("backend down, trying again later: %s", exc)
        if lifecycle.state is State.CONNECTED:
            trade()
        elif needs_an_operator(lifecycle):
            log.error("%s needs an operator: %s", lifecycle.instance_id, lifecycle.snapshot())
            return
        wake = min(clock.now() + tick, until)
        due = lifecycle.next_due
        if due is not None:
            wake = min(wake, due)
        clock.sleep(max(wake - clock.now(), 0.0))


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("mt5lifecycle").setLevel(logging.INFO)  # every transition
    backends = memory_backends()
    broker, clock, notifier = backends.broker, backends.clock, backends.notifier
    assert isinstance(broker, FakeBroker) and isinstance(notifier, RecordingNotifier)

    backends.credentials.put("bot-1", Credentials(5551234, "Broker-Demo", "correct horse"))
    broker.fail_logins("bot-1", Reason.AUTH_FAILED, times=2)  # a typo, fixed meanwhile
    lifecycle = Lifecycle("bot-1", backends)
    lifecycle.start()

    trades: list[float] = []
    t0 = clock.now()
    run_bot(lifecycle, clock, lambda: trades.append(clock.now()), until=t0 + 600)
    broker.drop_connection("bot-1")  # the broker connection drops mid-session
    run_bot(lifecycle, clock, lambda: trades.append(clock.now()), until=t0 + 1800)

    print(f"state after 30 simulated minutes: {lifecycle.state}")
    print(f"trading turns: {len(trades)}, logins: {len(broker.login_times('bot-1'))}")
    print(f"alerts: {', '.join(kind.value for kind in notifier.kinds('bot-1'))}")
    return 0 if lifecycle.state is State.CONNECTED else 1


if __name__ == "__main__":
    raise SystemExit(main())
