"""The web tests' world: the app on a real uvicorn, on a free loopback port.

uvicorn runs in a thread of the test process, so a test drives the fleet (a
``FakeClock``, ``run_for``) between requests and reads the in-memory backends
directly. The listening socket is bound and listening before the server thread
starts: a request sent at once waits in the backlog, so nothing ever polls for the
server to come up. Stopping sets ``should_exit`` and joins the thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from mt5lifecycle import Backends, Credentials, Fleet, Policy
from mt5lifecycle.builtin.memory import MemoryArchive
from mt5lifecycle.ports import Notifier
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends, run_for
from mt5lifecycle.web import create_app

T0 = 1767225600.0
OPERATOR = f"op-{uuid.uuid4().hex}{uuid.uuid4().hex}"
VIEWER = f"vw-{uuid.uuid4().hex}{uuid.uuid4().hex}"
TOKENS = {"alice": (OPERATOR, "operator"), "bob": (VIEWER, "viewer")}
PASSWORD = f"pw-{uuid.uuid4().hex}"
"""Unique to this run: finding it anywhere it must not be is unambiguous."""


@contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """``app`` on uvicorn at a free loopback port, for the block; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


class World:
    """In-memory backends, a fleet on a fake clock, and the app served over HTTP."""

    def __init__(
        self,
        *,
        with_fleet: bool = True,
        notifier: Notifier | None = None,
        fleet_policy: Policy | None = None,
        **app_options: Any,
    ) -> None:
        self.clock = FakeClock(T0)
        self.broker = FakeBroker(self.clock)
        self.backends: Backends = memory_backends(broker=self.broker, clock=self.clock)
        if notifier is not None:
            self.backends = attrs.evolve(self.backends, notifier=notifier)
        self.fleet: Fleet | None = (
            Fleet(self.backends, fleet_policy, workers=1) if with_fleet else None
        )
        self.app = create_app(self.backends, tokens=TOKENS, fleet=self.fleet, **app_options)
        self.url = ""

    @property
    def archive(self) -> MemoryArchive:
        archive = self.backends.archive
        assert isinstance(archive, MemoryArchive)
        return archive

    @property
    def notifier(self) -> RecordingNotifier:
        notifier = self.backends.notifier
        assert isinstance(notifier, RecordingNotifier)
        return notifier

    def client(self, token: str | None = OPERATOR) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=5.0)

    def account(self, instance_id: str, login: int = 5012345) -> None:
        """Store credentials and start the instance in the fleet (or the store)."""
        self.backends.credentials.put(instance_id, Credentials(login, "Broker-Demo", PASSWORD))
        if self.fleet is not None:
            self.fleet.add(instance_id)
        else:
            from mt5lifecycle import Lifecycle

            Lifecycle(instance_id, self.backends).start()

    def run(self, seconds: float) -> None:
        """Play ``seconds`` of the fleet's time (everything due in them runs)."""
        assert self.fleet is not None
        run_for(self.fleet, self.clock, seconds)

    def everything_archived(self) -> str:
        a = self.archive
        return repr((a.transitions, a.login_failures, a.trade_outcomes, a.closures, a.audits))


@pytest.fixture
def make_world() -> Iterator[Callable[..., World]]:
    stops: list[Callable[[], None]] = []

    def make(**options: Any) -> World:
        world = World(**options)
        context = serving(world.app)
        world.url = context.__enter__()

        def stop() -> None:
            context.__exit__(None, None, None)

        stops.append(stop)
        if world.fleet is not None:
            stops.append(world.fleet.close)
        return world

    yield make
    for stop in reversed(stops):
        stop()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger at DEBUG, the server thread's included."""
    caplog.set_level(logging.DEBUG)
    return caplog
