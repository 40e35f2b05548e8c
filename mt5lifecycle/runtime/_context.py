"""What every ``Lifecycle`` of one fleet shares: the ports, their capabilities, the relay.

A ``Fleet`` of 100,000 instances holds one of these, not 100,000: which optional
capabilities the backends have (an outbox, login slots, outage flags, rejected
credentials, a broker that can say who is logged in) is asked once, and the
per-process login bound is one semaphore.
"""

from __future__ import annotations

import threading

from ..core.policy import Policy
from ..ports import (
    AccountExpectation,
    AccountReader,
    Deadlined,
    LoginSlots,
    Rejections,
    ScheduleMetrics,
    ServerMetrics,
    ServerOutages,
)
from ._relay import Relay
from .backends import Backends

__all__ = ["Context"]


class Context:
    """The backends, the policy and what follows from them, for one or many instances."""

    __slots__ = (
        "accounts",
        "backends",
        "down",
        "expectation",
        "lag",
        "logins",
        "outages",
        "policy",
        "rejections",
        "relay",
        "server_metrics",
        "slots",
    )

    def __init__(self, backends: Backends, policy: Policy, *, relay: Relay | None = None) -> None:
        if not isinstance(backends, Backends):
            raise TypeError(f"backends must be a Backends value, not {type(backends).__name__}")
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a Policy value, not {type(policy).__name__}")
        broker = backends.broker
        if isinstance(broker, Deadlined):
            longest = float(broker.longest_call)
            if longest > policy.lock_ttl / 2:
                # A call that outlives the login lock lets a second worker log in to the
                # same account while the first is still in its call.
                raise ValueError(
                    f"the broker's longest call may take {longest:g} s, more than half of "
                    f"Policy.lock_ttl ({policy.lock_ttl:g} s): shorten the broker's deadlines "
                    "or raise lock_ttl, so that no call can outlive the login lock"
                )
        self.backends = backends
        self.policy = policy
        self.relay = relay if relay is not None else Relay(backends, policy)
        state, credentials = backends.state, backends.credentials
        self.accounts: AccountReader | None = broker if isinstance(broker, AccountReader) else None
        self.expectation: AccountExpectation | None = (
            broker if isinstance(broker, AccountExpectation) else None
        )
        self.rejections: Rejections | None = (
            credentials if isinstance(credentials, Rejections) else None
        )
        self.slots: LoginSlots | None = (
            state
            if isinstance(state, LoginSlots) and policy.max_concurrent_logins_per_server
            else None
        )
        self.outages: ServerOutages | None = state if isinstance(state, ServerOutages) else None
        self.down: set[str] = set()
        """The broker servers this process last saw taken as down (kept small: only
        those), so that a passing check asks the shared record only about them."""
        limit = policy.max_concurrent_logins
        self.logins = threading.BoundedSemaphore(limit) if limit is not None else None
        metrics = backends.metrics
        self.lag: ScheduleMetrics | None = metrics if isinstance(metrics, ScheduleMetrics) else None
        self.server_metrics: ServerMetrics | None = (
            metrics if isinstance(metrics, ServerMetrics) else None
        )
