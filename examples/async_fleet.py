"""An asyncio orchestrator: one ``Fleet`` runs in the background, handlers await accounts.

``Fleet.arun()`` drives every instance on one timer heap, running the due work in a
thread so the event loop stays free. A handler that needs an account awaits
``fleet.wait_connected(id, timeout)``: it gets the snapshot as soon as the instance
is ``CONNECTED``, and an ``Unrecoverable`` error at once when the instance reaches a
state it cannot leave by itself (a banned account, no credentials), so no handler
ever waits out its timeout on a dead account.

Run it (simulated: the fake broker, and a clock 600 times faster than real time)::

    python examples/async_fleet.py
"""

from __future__ import annotations

import asyncio
import logging

from mt5lifecycle import Credentials, Fleet, Reason
from mt5lifecycle.builtin.clock import ScaledClock
from mt5lifecycle.errors import Unrecoverable
from mt5lifecycle.testing import FakeBroker, memory_backends

ACCOUNTS = ("acct-1", "acct-2", "acct-3", "acct-4")


async def start_trading(fleet: Fleet, instance_id: str) -> str:
    """What a request handler does before it trades on an account."""
    try:
        snapshot = await fleet.wait_connected(instance_id, timeout=300)
    except Unrecoverable as exc:
        return f"{instance_id}: not trading, it needs an operator: {exc}"
    except TimeoutError:
        return f"{instance_id}: not connected within 5 minutes, will ask again later"
    return f"{instance_id}: trading (logged in at {snapshot.last_login_attempt:%H:%M:%S})"


async def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    clock = ScaledClock(speed=600)  # ten simulated minutes per real second
    broker = FakeBroker(clock)
    backends = memory_backends(broker=broker, clock=clock)
    for number, instance_id in enumerate(ACCOUNTS[:3], start=1):
        backends.credentials.put(instance_id, Credentials(7000000 + number, "Demo", "secret"))
    broker.fail_logins("acct-2", Reason.AUTH_FAILED, times=2)  # connects at t = 15 s
    broker.ban_account("acct-3")  # INACTIVE (ACCOUNT_BANNED) on its first login
    # acct-4 has no credentials: FAILED (CREDENTIALS_MISSING) at once

    fleet = Fleet(backends)
    for instance_id in ACCOUNTS:
        fleet.add(instance_id)
    runner = asyncio.create_task(fleet.arun())
    try:
        lines = await asyncio.gather(*(start_trading(fleet, i) for i in ACCOUNTS))
    finally:
        fleet.stop()
        await runner
    for line in lines:
        print(line)
    return 0 if sum(" trading (" in line for line in lines) == 2 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
