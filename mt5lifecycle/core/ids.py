"""Instance ids: validated before any I/O, so a hostile id never reaches a backend."""

from __future__ import annotations

import re

from ..errors import InvalidInstanceId

__all__ = ["check_instance_id"]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_instance_id(value: object) -> str:
    """Return ``value`` if it is a valid instance id, else raise ``InvalidInstanceId``."""
    if type(value) is not str or _ID.fullmatch(value) is None:
        raise InvalidInstanceId(value)
    return value
