"""The built-in backends: in-memory stores, clocks, notifiers and null metrics.

They need nothing beyond the core's own dependencies, so the library runs (and a
host's tests run) without any server.
"""
