"""``Backends``: the ports one lifecycle runs on, gathered in one value."""

from __future__ import annotations

import attrs

from ..builtin.memory import NullArchive
from ..builtin.metrics import NullMetrics
from ..builtin.notify import NullNotifier
from ..ports import Archive, Broker, Clock, CredentialStore, Metrics, Notifier, StateStore

__all__ = ["Backends"]


@attrs.frozen
class Backends:
    """The ports of SPEC section 1.

    Archive, notifier and metrics default to ones that keep nothing in memory, so a
    fleet that runs for months does not grow; swap them with ``attrs.evolve``.
    """

    state: StateStore
    credentials: CredentialStore
    broker: Broker
    clock: Clock
    archive: Archive = attrs.field(factory=NullArchive)
    notifier: Notifier = attrs.field(factory=NullNotifier)
    metrics: Metrics = attrs.field(factory=NullMetrics)
