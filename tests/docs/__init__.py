"""Docs that run: every block of README.md and docs/ is run, checked, or shown.

The convention the pages follow, and what the tests here do with each block:

``python``
    Run, by pytest-examples, in the page's order, in one namespace per page (a later
    block uses what an earlier one built; ``test_pages.py``). A ``#> text`` line under
    a ``print(...)`` is what that print shows, and is compared (``pytest
    --update-examples tests/docs`` rewrites them). A block that starts with ``>>>`` is
    a doctest, run with doctest's ``ELLIPSIS``. A block that defines ``test_*``
    functions is also run by pytest, as a bot's test file of its own. Every block is
    type-checked by mypy, for Linux and for Windows (``test_types.py``).
``sh`` / ``bash``
    Run by ``bash -e -o pipefail``: a failing command fails the test.
``console``
    A session: ``$ command`` lines, each followed by what it prints (stdout and
    stderr together), compared with doctest's checker and ``ELLIPSIS``: a line
    ``...`` stands for lines cut from the sample.
``powershell``
    Not run (the CI is Linux). Every ``sh``/``bash``/``console`` block has a
    ``powershell`` block beside it, or the paragraph next to it says that the same
    lines work in PowerShell, or why there is no PowerShell form
    (``test_conventions.py``).
``text``, ``sql``, ``json``, ``yaml``, ``toml``, ``ini``, ``xml``, ``promql``, ``mermaid``
    Shown, not commands: output, data, configuration, diagrams. The DuckDB page's
    investigation queries are run against a real archive (``test_duckdb_queries.py``).

Every fence names its language; indented code blocks are not used.

An HTML comment right before a block changes what is done with it (readers of the
rendered page do not see it):

``<!-- test: fragment, WHY -->``
    Not run, for the reason given (it needs Windows, a terminal, a service that runs
    until stopped, a download...). A shell fragment is still parsed by ``bash -n``; a
    Python fragment is still type-checked, after the Python lines that follow the
    first line of the comment: the names the fragment takes from its context::

        <!-- test: fragment, needs Windows and the MetaTrader5 package
        from mt5lifecycle import Backends
        backends: Backends
        -->

``<!-- test: setup`` + Python lines ``-->``
    Run in the page's namespace before the block, so that a sample shows what it
    shows: ``worlds.exhausted("acct-7")`` (``worlds.py``) builds an instance that
    used up its logins, for the ``status`` sample. A setup may define ``answers``,
    ``{prompt: answer}``: the next ``console`` block then runs on a pseudo-terminal,
    as at a console, and each prompt is answered as it appears. ``worlds.serve()``
    starts the real ``mt5lifecycle serve`` on a free port for a page's HTTP calls
    (its address in ``URL``, an operator's token in ``TOKEN``); it is stopped when the
    page's test ends, and must exit 0.

Where the blocks run: a temporary directory that looks like a checkout (its
top-level entries link to this one), with the virtual environment's ``bin`` first on
``PATH`` and ``MT5LIFECYCLE_REDIS_URL``, ``MT5LIFECYCLE_PREFIX``,
``MT5LIFECYCLE_POSTGRES_DSN``, ``MT5LIFECYCLE_KEYS`` and ``MT5LIFECYCLE_ARCHIVE`` set
to the real servers on 127.0.0.1 under a key prefix, a database and a file of the
test's own, all removed afterwards (``conftest.py``).
"""
