"""Redis: the live state (``RedisStateStore``), fleet leases and the archive queue."""

from __future__ import annotations

from .store import KEY_SUFFIXES, RedisStateStore, RedisType

__all__ = ["KEY_SUFFIXES", "RedisStateStore", "RedisType"]
