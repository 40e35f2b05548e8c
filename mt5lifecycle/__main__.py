"""``python -m mt5lifecycle``: the same command line as the ``mt5lifecycle`` script."""

from __future__ import annotations

from .cli.main import main

raise SystemExit(main())
