"""The core installs with transitions, attrs and tenacity alone (and runs without
tenacity until a delivery fails); adapters import their drivers lazily; the package
ships its type information and its rules file."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCK_DRIVERS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"redis", "psycopg", "psycopg_pool", "duckdb",
                                   "prometheus_client", "cryptography", "MetaTrader5",
                                   "hiredis", "pytest", "tenacity", "apprise", "starlette",
                                   "uvicorn", "jinja2", "psutil", "mt5linux", "rpyc"}:
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
import mt5lifecycle, mt5lifecycle.testing
import mt5lifecycle.adapters.redis, mt5lifecycle.adapters.postgres
import mt5lifecycle.adapters.duckdb, mt5lifecycle.adapters.prometheus
import mt5lifecycle.adapters.mt5, mt5lifecycle.adapters.redis.leases
import mt5lifecycle.adapters.redis.queue, mt5lifecycle.cli, mt5lifecycle.adapters.apprise
import mt5lifecycle.adapters.mt5_process
from mt5lifecycle import Credentials, Lifecycle, State
from mt5lifecycle.testing import memory_backends
b = memory_backends()
b.credentials.put("a", Credentials(1, "s", "p"))
lc = Lifecycle("a", b)
lc.start()
lc.run_due()
assert lc.state is State.CONNECTED
print("ok")
"""


def test_the_core_and_the_kit_work_without_any_driver() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_DRIVERS], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_core_depends_on_transitions_attrs_and_tenacity_only() -> None:
    # tenacity drives the relay's retries of a failing notifier or archive (SPEC 14).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(dep.split(">")[0].split("=")[0].strip() for dep in project["dependencies"])
    assert names == ["attrs", "tenacity", "transitions"]
    extras = project["optional-dependencies"]
    assert {"redis", "postgres", "duckdb", "prometheus", "mt5", "all", "dev"} <= set(extras)


def test_the_package_ships_py_typed_and_the_rules() -> None:
    files = resources.files("mt5lifecycle")
    assert files.joinpath("py.typed").is_file()
    assert files.joinpath("rules", "alerts.yml").is_file()
