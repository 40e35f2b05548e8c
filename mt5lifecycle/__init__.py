"""mt5lifecycle: the login and connection lifecycle of MetaTrader 5 terminals.

One explicit state machine (``machine.py``) decides; ``Lifecycle`` and ``Fleet`` carry
its decisions out through pluggable backends (``ports.py``). See SPEC section 10 for
the stable public names exported here.
"""

from __future__ import annotations

from .core.credentials import Credentials
from .core.policy import Policy
from .core.snapshot import Snapshot
from .core.states import AlertKind, ConnectionState, Reason, State
from .errors import (
    CorruptState,
    CredentialsRejected,
    InvalidInstanceId,
    InvalidTransition,
    LifecycleError,
    StoreUnavailable,
)
from .runtime.backends import Backends
from .runtime.fleet import Fleet
from .runtime.lifecycle import Lifecycle

__all__ = [
    "AlertKind",
    "Backends",
    "ConnectionState",
    "CorruptState",
    "Credentials",
    "CredentialsRejected",
    "Fleet",
    "InvalidInstanceId",
    "InvalidTransition",
    "Lifecycle",
    "LifecycleError",
    "Policy",
    "Reason",
    "Snapshot",
    "State",
    "StoreUnavailable",
]

__version__ = "0.1.0.dev0"
