"""``MT5Broker`` over the real mt5linux client and a real mt5linux server (SPEC section 12).

Everything between the broker and the terminal is mt5linux's own code: its client
(1.1.1, and 1.0.11 whose plain rpyc shape is 0.1's), its server (``python -m
mt5linux``: rpyc's classic server, what ``mt5server.exe`` is built from), on a free
loopback port. Only the terminal is a stand-in: the testing kit's fake ``MetaTrader5``
(tests/adapters/bridge/standin_metatrader5.py) on the server's path, which writes down
every password that reaches it. What the broker may never do is counted there, at the
far end of the bridge: send a password twice in one attempt, or more than
``max_login_attempts`` times in a row.

mt5linux 1.1 imports only on Python 3.12+; the project's environment is 3.11. So a
3.12 virtual environment with each mt5linux is made once and kept under
``~/.cache/mt5lifecycle/mt5linux-bridge/``, and the broker runs in a driver process
there (tests/adapters/bridge/mt5linux_driver.py). In CI (``CI`` set) a missing Python
3.12 or a failed install fails these tests; elsewhere it skips them.

The only real waits are the ones under test: a bridge timeout of 1 s, answers 1.5 s
late, mt5linux 1.1's own 2 s retry when its server is down.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
BRIDGE = Path(__file__).resolve().parent / "bridge"
CACHE = Path.home() / ".cache" / "mt5lifecycle" / "mt5linux-bridge"
# The core's own dependencies, read from pyproject.toml; the project itself goes on
# PYTHONPATH, so the cached environment serves every clone.
REQUIREMENTS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
    "dependencies"
]
VERSIONS = ["1.1.1", "1.0.11"]

LOGIN = 5012345
SERVER = "Broker-Demo"
PASSWORD = "Tr1cky-pa55word"
# The broker's deadlines here: a login may take 1 + 3 s; mt5linux gives up after 1 s.
SETUP = {"client_timeout": 1.0, "call_timeout": 3.0, "login_timeout_ms": 1000}


def _unavailable(why: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (in CI the mt5linux bridge tests must run)")
    pytest.skip(why)


def _python312() -> str | None:
    home = Path.home()
    candidates = [
        os.environ.get("MT5LIFECYCLE_PYTHON312"),
        shutil.which("python3.13"),
        shutil.which("python3.12"),
        *sorted(glob.glob(str(home / ".pyenv" / "versions" / "3.1[2-9]*" / "bin" / "python3"))),
    ]
    for candidate in candidates:
        if not candidate:
            continue
        check = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode == 0 and check.stdout.strip() == "True":
            return candidate
    return None


@pytest.fixture(scope="session", params=VERSIONS, ids=lambda v: f"mt5linux-{v}")
def bridge_python(request: pytest.FixtureRequest) -> Path:
    """The python of a cached 3.12 environment with this mt5linux (made once)."""
    version: str = request.param
    base = _python312()
    if base is None:
        _unavailable("no Python 3.12 or newer found (set MT5LIFECYCLE_PYTHON312)")
    venv = CACHE / f"{version}"
    python = venv / "bin" / "python"
    wanted = json.dumps({"mt5linux": version, "requirements": REQUIREMENTS, "base": base})
    stamp = venv / ".mt5lifecycle-ready"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # another run building the same environment
        if not (stamp.exists() and stamp.read_text() == wanted and python.exists()):
            shutil.rmtree(venv, ignore_errors=True)
            steps = [
                [base, "-m", "venv", str(venv)],
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    f"mt5linux=={version}",
                    *REQUIREMENTS,
                ],
            ]
            for step in steps:
                done = subprocess.run(
                    step, capture_output=True, text=True, check=False, timeout=900
                )
                if done.returncode != 0:
                    _unavailable(f"{' '.join(step)} failed: {done.stderr[-2000:]}")
            stamp.write_text(wanted)
    return python


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


class Server:
    """``python -m mt5linux`` with the stand-in terminal, stopped by its pid."""

    def __init__(self, python: Path, site: Path, config: dict[str, Any], cwd: Path) -> None:
        self._python = python
        self._env = _env(
            PYTHONPATH=f"{site}{os.pathsep}{REPO}", MT5LIFECYCLE_STANDIN=json.dumps(config)
        )
        self._cwd = cwd
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: list[str] = []

    def start(self) -> int:
        assert self._proc is None
        proc = subprocess.Popen(
            [str(self._python), "-m", "mt5linux", "--host", "127.0.0.1", "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env,
            cwd=self._cwd,
        )
        self._proc = proc
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:  # the server logs every connection: keep its pipe empty
            assert proc.stderr is not None
            for line in proc.stderr:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=30)
            except queue.Empty:
                pytest.fail(f"the mt5linux server did not start: {''.join(self.log)}")
            if line is None:
                pytest.fail(f"the mt5linux server exited: {''.join(self.log)}")
            found = re.search(r"server started on \[127\.0\.0\.1\]:(\d+)", line)
            if found:
                # Started again after a kill, it comes back on the same port.
                self.port = int(found.group(1))
                return self.port

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


class Driver:
    """The broker, in the 3.12 environment, one command at a time."""

    def __init__(self, python: Path, errors: Path) -> None:
        self._errors = errors.open("w")
        self._proc = subprocess.Popen(
            [str(python), str(BRIDGE / "mt5linux_driver.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            env=_env(PYTHONPATH=str(REPO)),
        )
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("@@"):
                self._answers.put(json.loads(line[2:]))
        self._answers.put(None)

    def __call__(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self._proc.stdin.flush()
        try:
            answer = self._answers.get(timeout=60)
        except queue.Empty:
            answer = None
        if answer is None:
            pytest.fail(f"the driver gave no answer to {op}: {Path(self._errors.name).read_text()}")
        return answer

    def login(self, password: str = PASSWORD, before: bool = False) -> dict[str, Any]:
        return self("login", login=LOGIN, server=SERVER, password=password, before=before)

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._errors.close()


class Bridge:
    """A server, a driver whose broker talks to it, and what reached the terminal."""

    def __init__(self, server: Server, driver: Driver, submissions: Path, data_path: Path) -> None:
        self.server = server
        self.driver = driver
        self._submissions = submissions
        self.data_path = data_path

    def submissions(self) -> list[str]:
        """The function of every call that handed the password over, in order."""
        if not self._submissions.exists():
            return []
        lines = self._submissions.read_text("utf-8").splitlines()
        return [json.loads(line)["function"] for line in lines]

    def script(self, code: str) -> None:
        answer = self.driver("script", code=code)
        assert "raised" not in answer, answer

    def eval(self, code: str) -> Any:
        answer = self.driver("eval", code=code)
        assert "raised" not in answer, answer
        return answer["value"]


@pytest.fixture
def bridge(bridge_python: Path, tmp_path: Path) -> Iterator[Bridge]:
    site = tmp_path / "site"
    (site / "MetaTrader5").mkdir(parents=True)
    shutil.copy(BRIDGE / "standin_metatrader5.py", site / "MetaTrader5" / "__init__.py")
    submissions = tmp_path / "submissions.jsonl"
    data_path = tmp_path / "terminal"
    config = {
        "accounts": [[LOGIN, PASSWORD, SERVER]],
        "submissions": str(submissions),
        "data_path": str(data_path),
    }
    (tmp_path / "server").mkdir()
    server = Server(bridge_python, site, config, tmp_path / "server")
    driver = Driver(bridge_python, tmp_path / "driver.err")
    try:
        server.start()
        assert driver("setup", port=server.port, **SETUP)["longest_call"] == 4.0
        yield Bridge(server, driver, submissions, data_path)
    finally:
        driver.close()
        server.kill()


def _version(bridge_python: Path) -> str:
    return bridge_python.parent.parent.name


# -- one submission per attempt -----------------------------------------------------------


def test_a_login_hands_the_password_over_once_and_never_to_initialize(bridge: Bridge) -> None:
    result = bridge.driver.login()
    assert result["ok"] and result["account"] == [LOGIN, SERVER]
    assert bridge.submissions() == ["login"]
    calls = bridge.eval("[c for c in m.fake.calls if c in ('initialize', 'login')]")
    assert calls == ["initialize", "login"]
    assert bridge.driver("status")["status"] == "CONNECTED"
    assert bridge.driver("account")["account"] == [LOGIN, SERVER]


def test_a_late_answer_that_took_effect_is_a_success(bridge: Bridge) -> None:
    bridge.script("m.fake.delay('login', 1.5)")  # logged in at once, answered 1.5 s late
    result = bridge.driver.login()
    # mt5linux gave up at 1 s ("result expired"); account_info() said: logged in.
    assert result["ok"] and result["account"] == [LOGIN, SERVER], result
    assert 1.0 < result["seconds"] < 3.0
    assert bridge.submissions() == ["login"]


def test_a_late_answer_that_did_not_take_effect_is_network_and_no_try(bridge: Bridge) -> None:
    bridge.script("m.fake.fail_logins(-10005, 'IPC timeout'); m.fake.delay('login', 1.5)")
    result = bridge.driver.login()
    assert (result["ok"], result["reason"]) == (False, "NETWORK"), result
    assert "result expired" in result["message"]
    assert bridge.submissions() == ["login"]
    assert bridge.driver.login()["ok"], "the next attempt goes through"
    assert bridge.submissions() == ["login", "login"]


def test_a_late_refusal_is_a_password_try_the_journal_tells(bridge: Bridge) -> None:
    # The broker refused the password, the answer was lost: it was a try all the same.
    bridge.script("m.fake.delay('login', 1.5)")
    result = bridge.driver.login(password="not-the-password")
    assert (result["ok"], result["reason"]) == (False, "AUTH_FAILED"), result
    assert "failed (Invalid account)" in result["message"]
    assert "not-the-password" not in json.dumps(result)


def test_the_password_reaches_the_broker_at_most_max_login_attempts_times(
    bridge: Bridge,
) -> None:
    bridge.script("m.fake.delay('login', 1.5)")  # the first refusal's answer comes late
    outcome = bridge.driver(
        "lifecycle", login=LOGIN, server=SERVER, password="not-the-password", seconds=600
    )
    assert (outcome["state"], outcome["reason"]) == ("FAILED", "LOGIN_ATTEMPTS_EXHAUSTED")
    assert outcome["attempts"] == 5
    assert [reason for reason, _ in outcome["failures"]] == ["AUTH_FAILED"] * 5
    assert bridge.submissions() == ["login"] * 5, "once per attempt, five in a row"


# -- the server killed, a restart's fresh client ------------------------------------------


def test_a_killed_server_is_down_until_a_restart_brings_a_fresh_client(
    bridge: Bridge, bridge_python: Path
) -> None:
    assert bridge.driver.login()["ok"]
    bridge.server.kill()
    assert bridge.driver("status")["status"] == "DOWN"
    result = bridge.driver.login(before=True)
    assert (result["ok"], result["reason"]) == (False, "NETWORK"), result
    assert bridge.submissions() == ["login"], "nothing handed over to a dead bridge"
    restarted = bridge.driver("restart")
    # mt5linux 1.1.1 retries its connection for its timeout and then raises
    # AttributeError from its own error path; 1.0.11 is refused at once.
    assert restarted["raised"] == "TerminalUnavailable", restarted
    expected = "AttributeError" if _version(bridge_python).startswith("1.1") else "Connection"
    assert expected in restarted["message"]
    assert restarted["seconds"] < 4.0, "within the restart's deadline"
    bridge.server.start()  # back on the same port
    assert "raised" not in bridge.driver("restart")
    assert bridge.driver.login(before=True)["ok"]
    assert bridge.submissions() == ["login", "login"]


def test_a_client_that_cannot_connect_never_blocks_past_the_deadline(
    bridge: Bridge, bridge_python: Path
) -> None:
    bridge.server.kill()
    # A client whose own timeout (30 s) is far past the broker's deadline (0.5 + 0.5 s).
    bridge.driver(
        "setup",
        port=bridge.server.port,
        client_timeout=30.0,
        call_timeout=0.5,
        login_timeout_ms=500,
    )
    result = bridge.driver.login()
    assert (result["ok"], result["reason"]) == (False, "NETWORK"), result
    assert result["seconds"] < 1.5
    status = bridge.driver("status")
    assert status["status"] == "DOWN" and status["seconds"] < 1.0
    restarted = bridge.driver("restart")
    assert restarted["raised"] == "TerminalUnavailable" and restarted["seconds"] < 1.5
    assert bridge.submissions() == []


# -- a closure's trades ---------------------------------------------------------------------


def test_a_closure_closes_every_trade_once_and_the_history_tells_how(bridge: Bridge) -> None:
    bridge.script(
        "m.fake.open_position(7001, 'EURUSD', 1.0);"
        "m.fake.open_position(7002, 'EURUSD', 2.0, close_retcodes=[10004, 10009]);"
        "m.fake.open_position(7003, 'XAUUSD', 0.5, close_retcodes=10028);"
        "m.fake.pending_order(8001, 'EURUSD')"
    )
    outcome = bridge.driver(
        "lifecycle", login=LOGIN, server=SERVER, password=PASSWORD, then="account_closed"
    )
    assert outcome["state"] == "ACCOUNT_CLOSED"
    assert outcome["outcomes"] == {
        "7001": ["CLOSED", 10009],
        "7002": ["CLOSED", 10009],
        "7003": ["FAILED", 10028],
        "8001": ["CANCELLED", 10009],
    }
    sent = bridge.eval("[r.get('position') or r.get('order') for r in m.fake.requests]")
    assert sorted(sent) == [7001, 7002, 7002, 7003, 8001], "one request per try, no more"
    assert bridge.submissions() == ["login"]
    # The closing stopped the terminal; a next owner (a new broker) reads the history.
    bridge.driver("setup", port=bridge.server.port, **SETUP)
    answer = bridge.driver("outcome", kind="position", ticket=7001)
    assert "outcome" in answer, answer
    closed = answer["outcome"]
    assert (closed["retcode"], closed["remaining"]) == (10009, 0.0)
    assert closed["comment"].startswith("position 7001 closed by deal")
    cancelled = bridge.driver("outcome", kind="order", ticket=8001)["outcome"]
    assert cancelled["comment"] == "order 8001 cancelled"
    assert bridge.driver("outcome", kind="position", ticket=7003)["outcome"] is None


def test_nothing_is_traded_on_a_terminal_that_answers_for_another_account(
    bridge: Bridge,
) -> None:
    assert bridge.driver.login()["ok"]
    bridge.script("m.fake.open_position(7001, 'EURUSD', 1.0); m.fake.cross_wire(777)")
    assert bridge.driver("account")["account"] == [777, SERVER]
    closing = bridge.driver("close", ticket=7001, symbol="EURUSD", volume=1.0)
    assert closing["retcode"] is None
    assert closing["comment"].startswith("logged in to another account: 777")
    assert bridge.driver("positions")["raised"] == "TerminalUnavailable"
    assert bridge.eval("m.fake.requests") == []


def test_a_hung_terminal_is_dead_at_the_deadline_whatever_the_bridge_waits(
    bridge: Bridge,
) -> None:
    assert bridge.driver.login()["ok"]
    bridge.driver(
        "setup",
        port=bridge.server.port,
        client_timeout=30.0,
        call_timeout=0.5,
        login_timeout_ms=500,
    )
    bridge.script("m.held['info'] = m.fake.hang('terminal_info')")
    status = bridge.driver("status")
    assert status["status"] == "DOWN" and 0.4 < status["seconds"] < 1.5
    bridge.script("m.held['info'].release()")
    assert "raised" not in bridge.driver("restart"), "a fresh client, on a fresh thread"
    assert bridge.driver("status")["status"] == "CONNECTED"
