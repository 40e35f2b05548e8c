"""Adapters: one module per backend, each importing its driver lazily."""
