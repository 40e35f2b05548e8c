"""The shipped alert rules: valid, one per AlertKind plus the operational ones, and
firing and resolving with the library's own flows, checked by ``promtool test rules``.

Nothing in the promtool test is typed by hand: each flow drives the real runtime (a
lone ``Lifecycle``, or one ``Fleet`` per worker process sharing ``memory_backends``)
on a ``FakeClock``, each process with a ``PrometheusMetrics`` on a private registry,
and every registry is scraped every ``SCRAPE`` seconds of simulated time, as
Prometheus would (the clock takes the scrapes as it moves, so a scrape taken while a
slow terminal call runs sees what was done by then). The samples become promtool
``input_series`` (a series that disappears gets the staleness marker Prometheus
writes when a target stops exposing it). The expected alerts come from what the
library did during the same flow, never from the series:

* each ``AlertKind`` notified at time t makes its rule fire at the first scrape at or
  after t. Per instance, a state-like rule resolves at the first scrape after the
  instance logged in again (``LOGIN_RECOVERED``) or an operator acted on it (reset,
  closure confirmed); event-like ones (``LOGIN_RECOVERED``, ``CREDENTIALS_DELETED``)
  last their window; without per-instance series every rule lasts its window
  (``WINDOWS``);
* ``BROKER_SERVER_DOWN`` fires for the server (not the target: one alert however many
  workers take it as down) until the server's ``BROKER_SERVER_RECOVERED``, give or
  take the probe interval the other workers need to see it; ``MT5BrokerServerRecovered``
  follows for 15 minutes;
* ``MT5NotificationsSetAside`` fires for an hour after the relay set a notification
  aside (the state store says when); ``MT5ScheduleLag`` fires 10 minutes after the
  due steps started running late (``lag`` as the runtime reported it) and resolves 5
  minutes after they stopped.

Every rule is checked at every checkpoint, so a rule that fires when nothing was
notified fails too. A flow of one process runs twice, as two targets scraped side by
side: one with per-instance series and one without, which also shows that a rule
never fires twice for one target. A flow of several worker processes runs once per
mode, its workers scraped side by side.

To look at the promtool test file the tests run:

    python tests/rules/test_rules.py [OUT] [--rules PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

import attrs
import pytest
from prometheus_client import CollectorRegistry

from mt5lifecycle import AlertKind, Credentials, Fleet, Lifecycle, Policy, Reason, State
from mt5lifecycle.adapters.prometheus import PrometheusMetrics
from mt5lifecycle.builtin.memory import MemoryStateStore
from mt5lifecycle.core.health import FleetHealth, Health
from mt5lifecycle.core.records import Notification
from mt5lifecycle.core.states import TerminalStatus
from mt5lifecycle.runtime.backends import Backends
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends, run_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "mt5lifecycle" / "rules" / "alerts.yml"

SCRAPE = 15
"""Seconds between scrapes (and rule evaluations) of simulated time."""
JOB = "mt5lifecycle"
INSTANCE_ID = "acc-1"
PASSWORD = "s3cret-never-a-label"
NEW_PASSWORD = "n3w-s3cret-never-a-label"
POLICY = Policy()

RULE_OF = {
    AlertKind.LOGIN_FAILURE: "MT5LoginFailure",
    AlertKind.REPEATED_LOGIN_FAILURE: "MT5RepeatedLoginFailure",
    AlertKind.LOGIN_RECOVERED: "MT5LoginRecovered",
    AlertKind.ACCOUNT_BANNED: "MT5AccountBanned",
    AlertKind.ACCOUNT_CLOSED: "MT5AccountClosed",
    AlertKind.AUTO_RECOVERY_FAILURE: "MT5AutoRecoveryFailure",
    AlertKind.CREDENTIALS_DELETED: "MT5CredentialsDeleted",
    AlertKind.BROKER_SERVER_DOWN: "MT5BrokerServerDown",
    AlertKind.BROKER_SERVER_RECOVERED: "MT5BrokerServerRecovered",
}
SEVERITY = {
    AlertKind.LOGIN_FAILURE: "critical",
    AlertKind.REPEATED_LOGIN_FAILURE: "warning",
    AlertKind.LOGIN_RECOVERED: "info",
    AlertKind.ACCOUNT_BANNED: "critical",
    AlertKind.ACCOUNT_CLOSED: "critical",
    AlertKind.AUTO_RECOVERY_FAILURE: "critical",
    AlertKind.CREDENTIALS_DELETED: "info",
    AlertKind.BROKER_SERVER_DOWN: "critical",
    AlertKind.BROKER_SERVER_RECOVERED: "info",
}
SET_ASIDE = "MT5NotificationsSetAside"
LAG = "MT5ScheduleLag"
OPERATIONAL = {SET_ASIDE: "critical", LAG: "warning"}
"""Rules that are not AlertKinds (they watch the library itself), with their severity."""
ALL_RULES = (*RULE_OF.values(), *OPERATIONAL)
WINDOWS = {
    AlertKind.LOGIN_FAILURE: 3600,
    AlertKind.REPEATED_LOGIN_FAILURE: 900,
    AlertKind.LOGIN_RECOVERED: 900,
    AlertKind.ACCOUNT_BANNED: 3600,
    AlertKind.ACCOUNT_CLOSED: 3600,
    AlertKind.AUTO_RECOVERY_FAILURE: 3600,
    AlertKind.CREDENTIALS_DELETED: 900,
}
"""How long a rule fires after its event when it follows a fleet counter."""
EVENTS = frozenset({AlertKind.LOGIN_RECOVERED, AlertKind.CREDENTIALS_DELETED})
"""Rules that follow a fleet counter in both modes."""
SERVER_KINDS = frozenset({AlertKind.BROKER_SERVER_DOWN, AlertKind.BROKER_SERVER_RECOVERED})
"""Rules that follow the per-server gauge, the same in both modes: one alert per server."""
STATE_OF = {
    AlertKind.LOGIN_FAILURE: "FAILED",
    AlertKind.ACCOUNT_BANNED: "INACTIVE",
    AlertKind.ACCOUNT_CLOSED: "ACCOUNT_CLOSED",
    AlertKind.AUTO_RECOVERY_FAILURE: "FAILED",
}
"""Per instance, the rule follows ``mt5lifecycle_instance_state`` in this state."""
RECOVERED_WINDOW = 900
SET_ASIDE_WINDOW = 3600
LAG_THRESHOLD = 1.0
LAG_RANGE = 300
LAG_FOR = 600
"""MT5ScheduleLag: p99 over ``LAG_THRESHOLD`` s, rated over ``LAG_RANGE``, for ``LAG_FOR``."""


# --- the simulated world ------------------------------------------------------------

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Notified:
    kind: AlertKind
    at: float
    """Seconds from the start of the flow."""
    reason: Reason | None
    instance_id: str


@dataclass
class Played:
    """One process of a flow, scraped as one target: what was scraped, what happened."""

    flow: str
    per_instance: bool
    target: str
    scrapes: list[dict[SeriesKey, float]] = field(default_factory=list)
    notified: list[Notified] = field(default_factory=list)
    actions: list[tuple[float, str]] = field(default_factory=list)
    """When an operator acted (reset, confirm_closure), and on which instance."""
    set_aside: list[float] = field(default_factory=list)
    """When the relay set a notification of this process's instances aside."""
    lags: list[tuple[float, float]] = field(default_factory=list)
    """(when, seconds late) of every due step, as the runtime reported it."""
    servers: dict[str, str] = field(default_factory=dict)
    """Instance id -> the ``server`` label of its broker server."""


def server_label(server: str) -> str:
    # The runtime keys broker servers as the terminal's server list does (case and
    # surrounding spaces aside), and the gauge is labelled with that key.
    return server.strip().casefold()


class ScrapedClock(FakeClock):
    """A ``FakeClock`` that Prometheus scrapes: moving it past a scrape instant takes
    that scrape. Nothing happens between two readings of a fake clock, so a scrape at
    instant s taken on the way from a to b (a <= s < b) sees the world as of a: what
    falls due at a scrape's instant is done before that scrape."""

    def __init__(self) -> None:
        super().__init__()
        self.t0 = self.now()
        self.taken = 0
        self.scrape: Callable[[], None] = lambda: None

    def advance(self, seconds: float) -> float:
        before = self.now()
        now = super().advance(seconds)
        self._take(lambda instant: before <= instant < now)
        return now

    def advance_to(self, when: float) -> float:
        before = self.now()
        now = super().advance_to(when)
        self._take(lambda instant: before <= instant < now)
        return now

    def take_through_now(self) -> None:
        now = self.now()
        self._take(lambda instant: instant <= now)

    def _take(self, due: Callable[[float], bool]) -> None:
        while due(self.t0 + self.taken * SCRAPE):
            self.taken += 1
            self.scrape()


class Broker(FakeBroker):
    """``FakeBroker`` whose terminals may answer slowly: each status call takes
    ``answer_time`` seconds of the clock, as a terminal on a starved host does."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.fake_clock = clock
        self.answer_time = 0.0

    def status(self, instance_id: str) -> TerminalStatus:
        if self.answer_time:
            self.fake_clock.advance(self.answer_time)
        return super().status(instance_id)


class Channel(RecordingNotifier):
    """A notifier whose channel may be down: every try is recorded, one while down raises."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def notify(self, notification: Notification) -> None:
        super().notify(notification)
        if self.down:
            raise ConnectionError("the mail server refused the connection")


class Recorded(PrometheusMetrics):
    """The shipped adapter, also noting when each lag was reported: MT5ScheduleLag's
    expectations are computed from these, not from the series."""

    def __init__(
        self, registry: CollectorRegistry, *, per_instance: bool, clock: FakeClock
    ) -> None:
        super().__init__(registry, per_instance=per_instance)
        self.clock = clock
        self.lags: list[tuple[float, float]] = []

    def lag(self, seconds: float) -> None:
        self.lags.append((self.clock.now(), seconds))
        super().lag(seconds)


class Process:
    """One worker process: its own registry and notifier, the shared stores and broker."""

    def __init__(self, base: Backends, per_instance: bool, target: str, clock: FakeClock) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Recorded(self.registry, per_instance=per_instance, clock=clock)
        self.channel = Channel()
        self.backends = attrs.evolve(base, metrics=self.metrics, notifier=self.channel)
        self.per_instance = per_instance
        self.target = target
        self.instance_ids: set[str] = set()
        self.scrapes: list[dict[SeriesKey, float]] = []

    def scrape(self) -> None:
        scrape: dict[SeriesKey, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                # prometheus-client's *_created series say when a counter was born;
                # no rule reads them.
                if sample.name.endswith("_created"):
                    continue
                scrape[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        self.scrapes.append(scrape)


class Together:
    """Several fleets on one clock, as ``run_for`` drives one."""

    def __init__(self, fleets: Sequence[Fleet]) -> None:
        self.fleets = fleets

    @property
    def next_due(self) -> float | None:
        due = [d for d in (f.next_due for f in self.fleets) if d is not None]
        return min(due) if due else None

    def run_due(self) -> float | None:
        for fleet in self.fleets:
            fleet.run_due()
        return self.next_due


@dataclass(frozen=True)
class Flow:
    play: Callable[[Sim], None]
    processes: int = 1
    fleet: bool = False
    """A ``Fleet`` per process (the relay retries on its own schedule); else a lone
    ``Lifecycle`` for ``INSTANCE_ID``."""

    @property
    def name(self) -> str:
        return self.play.__name__


class Sim:
    """The real runtime on shared ``memory_backends``, scraped every ``SCRAPE`` seconds."""

    def __init__(self, flow: Flow, per_instance: bool, targets: Sequence[str]) -> None:
        self.flow = flow
        self.clock = ScrapedClock()
        self.broker = Broker(self.clock)
        base = memory_backends(self.broker, self.clock)
        assert isinstance(base.state, MemoryStateStore)
        self.state: MemoryStateStore = base.state
        self.base = base
        self.processes = [Process(base, per_instance, t, self.clock) for t in targets]
        self.clock.scrape = self._scrape
        self.t0 = self.clock.t0
        self.actions: list[tuple[float, str]] = []
        self.servers: dict[str, str] = {}
        self.fleets: list[Fleet] = []
        self._lifecycle: Lifecycle | None = None
        self.driver: Together | Lifecycle
        if flow.fleet:
            self.fleets = [Fleet(p.backends, POLICY, workers=1) for p in self.processes]
            self.driver = Together(self.fleets)
        else:
            self._lifecycle = Lifecycle(INSTANCE_ID, self.processes[0].backends)
            self.processes[0].instance_ids.add(INSTANCE_ID)
            self.driver = self._lifecycle

    @property
    def lifecycle(self) -> Lifecycle:
        assert self._lifecycle is not None, "a fleet flow has no lone lifecycle"
        return self._lifecycle

    def put_credentials(
        self, instance_id: str = INSTANCE_ID, server: str = "Demo-Server", password: str = PASSWORD
    ) -> None:
        login = 12345 + len(self.servers)
        self.base.credentials.put(instance_id, Credentials(login, server, password))
        self.servers[instance_id] = server_label(server)

    def add(self, process: int, instance_ids: Sequence[str]) -> None:
        self.fleets[process].add_many(instance_ids)
        self.processes[process].instance_ids.update(instance_ids)

    def instance(self, instance_id: str) -> Lifecycle:
        if self._lifecycle is not None:
            return self.lifecycle
        return next(f[instance_id] for f in self.fleets if instance_id in f)

    def channels(self, *, down: bool) -> None:
        for process in self.processes:
            process.channel.down = down

    def until(self, offset: float) -> None:
        """Run the runtime up to ``offset`` seconds from the start, scraping on the way."""
        run_for(self.driver, self.clock, max(0.0, self.t0 + offset - self.clock.now()))

    def operator(self, action: Callable[[], object], instance_id: str = INSTANCE_ID) -> None:
        self.actions.append((self.clock.now() - self.t0, instance_id))
        action()

    def finish(self) -> list[Played]:
        self.clock.take_through_now()
        aside = self.state.set_aside_notifications()
        out = []
        for process in self.processes:
            mine = process.instance_ids
            seen: dict[str, Notified] = {}
            for n in process.channel.notifications:
                assert n.instance_id in mine, (n.instance_id, process.target)
                # A channel that was down saw each try; one notification is one id.
                seen.setdefault(
                    n.id, Notified(n.kind, n.at.timestamp() - self.t0, n.reason, n.instance_id)
                )
            out.append(
                Played(
                    flow=self.flow.name,
                    per_instance=process.per_instance,
                    target=process.target,
                    scrapes=process.scrapes,
                    notified=sorted(seen.values(), key=lambda n: n.at),
                    actions=list(self.actions),
                    set_aside=sorted(
                        a.at.timestamp() - self.t0
                        for a in aside
                        if a.notification.instance_id in mine
                    ),
                    lags=[(at - self.t0, s) for at, s in process.metrics.lags],
                    servers=dict(self.servers),
                )
            )
        return out

    def _scrape(self) -> None:
        for process in self.processes:
            process.scrape()


# --- the flows ------------------------------------------------------------------------

# Actions happen 7 s past a scrape, so that "the first scrape at or after" is never
# ambiguous; due times (backoffs, restarts) fall where the policy puts them.
OFF = 7


def auth_exhaustion(sim: Sim) -> None:
    """Five wrong passwords: REPEATED at the 3rd, LOGIN_FAILURE at the 5th; the right
    password is stored and an operator resets: success."""
    sim.put_credentials()
    sim.broker.fail_logins(INSTANCE_ID, Reason.AUTH_FAILED, times=5)
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(10 * 60 + OFF)
    # Unchanged credentials that exhausted their attempts are refused (SPEC 15).
    sim.put_credentials(password=NEW_PASSWORD)
    sim.operator(sim.lifecycle.reset)
    sim.until(100 * 60)


def three_failures_then_success(sim: Sim) -> None:
    """Three wrong passwords then a success: REPEATED, then LOGIN_RECOVERED."""
    sim.put_credentials()
    sim.broker.fail_logins(INSTANCE_ID, Reason.AUTH_FAILED, times=3)
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(40 * 60)


def ban_then_lift(sim: Sim) -> None:
    """The broker bans a connected account; later lifts the ban and an operator resets."""
    sim.put_credentials()
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(5 * 60 + OFF)
    sim.broker.ban_account(INSTANCE_ID)
    sim.lifecycle.account_banned()
    sim.until(20 * 60 + OFF)
    sim.broker.lift_ban(INSTANCE_ID)
    sim.operator(sim.lifecycle.reset)
    sim.until(100 * 60)


def closure_confirmed(sim: Sim) -> None:
    """The broker closes an account with a position open; an operator confirms."""
    sim.put_credentials()
    sim.broker.open_position(INSTANCE_ID, 1001, "EURUSD", 0.1)
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(5 * 60 + OFF)
    sim.broker.close_account(INSTANCE_ID)
    sim.lifecycle.account_closed()
    sim.until(15 * 60 + OFF)
    sim.operator(sim.lifecycle.confirm_closure)
    sim.until(100 * 60)


def crash_until_recovery_exhausted(sim: Sim) -> None:
    """The terminal crashes and no restart brings it back; fixed, an operator resets."""
    sim.put_credentials()
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(3 * 60 + OFF)
    sim.broker.fail_restarts(INSTANCE_ID, None)
    sim.broker.crash_terminal(INSTANCE_ID)
    sim.lifecycle.terminal_failed()
    sim.until(20 * 60 + OFF)
    sim.broker.fail_restarts(INSTANCE_ID, 0)
    sim.operator(sim.lifecycle.reset)
    sim.until(100 * 60)


def credentials_missing(sim: Sim) -> None:
    """Started with no credentials stored; they are added and an operator resets."""
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(10 * 60 + OFF)
    sim.put_credentials()
    sim.operator(sim.lifecycle.reset)
    sim.until(100 * 60)


LIVE = "Broker-Live"
OTHER = "Other-Server"


def broker_server_outage(sim: Sim) -> None:
    """Two workers, four accounts each on one broker server and one on another: the
    server stops answering for 15 minutes. The checks of its 8 terminals find them
    disconnected within ``server_outage_window``; the 5th
    (``server_outage_threshold``) takes the server down: one BROKER_SERVER_DOWN, from
    whichever worker that was. Logins wait, one probe per ``server_probe_interval``;
    the first probe after the server is back brings one BROKER_SERVER_RECOVERED, and
    the other worker sees it at its next look."""
    live: list[list[str]] = []
    for k in range(len(sim.processes)):
        ids = [f"w{k + 1}-live-{i}" for i in range(4)]
        for instance_id in ids:
            sim.put_credentials(instance_id, LIVE)
        sim.put_credentials(f"w{k + 1}-other", OTHER)
        live.append(ids)
    sim.until(60 + OFF)
    for k, ids in enumerate(live):
        sim.add(k, [*ids, f"w{k + 1}-other"])
    sim.until(5 * 60 + OFF)
    sim.broker.server_down(LIVE)
    sim.until(20 * 60 + OFF)
    sim.broker.server_up(LIVE)
    sim.until(60 * 60)


def closure_while_the_channel_is_down(sim: Sim) -> None:
    """The broker closes an account while the notifier's channel is down: after its
    tries the ACCOUNT_CLOSED notification is set aside, and Alertmanager tells a
    person (MT5NotificationsSetAside, MT5AccountClosed). With the channel back, an
    operator confirms the closure, whose CREDENTIALS_DELETED is delivered."""
    sim.put_credentials()
    sim.broker.open_position(INSTANCE_ID, 1001, "EURUSD", 0.1)
    sim.until(60 + OFF)
    sim.add(0, [INSTANCE_ID])
    sim.until(5 * 60 + OFF)
    sim.channels(down=True)
    sim.broker.close_account(INSTANCE_ID)
    sim.instance(INSTANCE_ID).account_closed()
    sim.until(30 * 60 + OFF)
    sim.channels(down=False)
    sim.operator(sim.instance(INSTANCE_ID).confirm_closure)
    sim.until(100 * 60)


def slow_terminals(sim: Sim) -> None:
    """For 15 minutes the terminals take 4 s to answer a connection check: 20 checks a
    minute need 80 s, so the fleet falls behind (MT5ScheduleLag, after its 10
    minutes); then they answer at once again, the backlog clears and it resolves."""
    ids = [f"acc-{i}" for i in range(1, 21)]
    for instance_id in ids:
        sim.put_credentials(instance_id)
    sim.until(60 + OFF)
    sim.add(0, ids)
    sim.until(10 * 60 + OFF)
    sim.broker.answer_time = 4.0
    sim.until(25 * 60 + OFF)
    sim.broker.answer_time = 0.0
    sim.until(50 * 60)


FLOWS: dict[str, Flow] = {
    flow.name: flow
    for flow in (
        Flow(auth_exhaustion),
        Flow(three_failures_then_success),
        Flow(ban_then_lift),
        Flow(closure_confirmed),
        Flow(crash_until_recovery_exhausted),
        Flow(credentials_missing),
        Flow(broker_server_outage, processes=2, fleet=True),
        Flow(closure_while_the_channel_is_down, fleet=True),
        Flow(slow_terminals, fleet=True),
    )
}


def target(per_instance: bool, process: int) -> str:
    """``bot-1``, ``bot-3``, ... export per-instance series; ``bot-2``, ``bot-4``, ... do not."""
    return f"bot-{2 * process + (1 if per_instance else 2)}:9464"


def play(flow: str, per_instance: bool) -> list[Played]:
    spec = FLOWS[flow]
    sim = Sim(spec, per_instance, [target(per_instance, k) for k in range(spec.processes)])
    spec.play(sim)
    return sim.finish()


# --- from samples to promtool input_series ----------------------------------------


def series_name(key: SeriesKey, target: str) -> str:
    name, labels = key
    pairs = sorted([*labels, ("instance", target), ("job", JOB)])
    return name + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in pairs) + "}"


def number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def encode(values: Sequence[float | None]) -> str:
    """promtool's notation: ``vxN`` is N+1 samples of v, ``_xN`` is N missing ones,
    ``stale`` the marker Prometheus writes when a series leaves a scrape."""
    tokens: list[str] = []
    seen = False
    for value in values:
        if value is None:
            tokens.append("stale" if seen else "_")
            seen = False
        else:
            tokens.append(number(value))
            seen = True
    out: list[str] = []
    i = 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j] == tokens[i]:
            j += 1
        run = j - i
        token = tokens[i]
        if token == "stale" or run == 1:
            out.extend([token] * run)
        elif token == "_":
            out.append(f"_x{run}")
        else:
            out.append(f"{token}x{run - 1}")
        i = j
    return " ".join(out)


def input_series(played: Played) -> dict[str, str]:
    keys = sorted({key for scrape in played.scrapes for key in scrape})
    return {
        series_name(key, played.target): encode([scrape.get(key) for scrape in played.scrapes])
        for key in keys
    }


# --- the expected alerts ----------------------------------------------------------

Labels = dict[str, str]


@dataclass(frozen=True)
class Firing:
    """A rule expected to fire from ``start`` (inclusive) to ``end`` (exclusive)."""

    rule: str
    labels: tuple[tuple[str, str], ...]
    start: int
    end: float
    fuzzy: tuple[tuple[float, float], ...] = ()
    """Open spans where the answer may go either way (a range's edge, a Prometheus
    version, another worker's next look): no check falls inside them."""


def firing(
    rule: str, labels: Labels, start: int, end: float, *fuzzy: tuple[float, float]
) -> Firing:
    pairs = tuple(sorted((k, v) for k, v in labels.items() if v))
    return Firing(rule, pairs, start, end, fuzzy)


def first_scrape(at: float) -> int:
    return math.ceil(at / SCRAPE - 1e-9) * SCRAPE


def expected(group: Sequence[Played]) -> list[Firing]:
    out = [f for played in group for f in target_firings(played)]
    return out + server_firings(group)


def target_firings(played: Played) -> list[Firing]:
    """The rules that fire per scrape target (and, with per-instance series, per account)."""
    out: list[Firing] = []
    target = {"job": JOB, "instance": played.target}
    for n in played.notified:
        if n.kind in SERVER_KINDS:
            continue
        start = first_scrape(n.at)
        labels: Labels = {"severity": SEVERITY[n.kind], "kind": n.kind.value, **target}
        if played.per_instance and n.kind not in EVENTS:
            labels["instance_id"] = n.instance_id
            if n.kind in STATE_OF:
                labels["state"] = STATE_OF[n.kind]
                labels["reason"] = "" if n.reason is None else n.reason.value
            ends = [at for at, who in played.actions if who == n.instance_id and at > n.at]
            ends += [
                m.at
                for m in played.notified
                if m.kind is AlertKind.LOGIN_RECOVERED
                and m.instance_id == n.instance_id
                and m.at > n.at
            ]
            end: float = first_scrape(min(ends)) if ends else math.inf
            out.append(firing(RULE_OF[n.kind], labels, start, end))
        else:
            end = start + WINDOWS[n.kind]
            # Prometheus 2 ranges include their left edge, Prometheus 3 does not.
            out.append(firing(RULE_OF[n.kind], labels, start, end, (end - 2 * SCRAPE, end)))
    for at in played.set_aside:
        start = first_scrape(at)
        end = start + SET_ASIDE_WINDOW
        labels = {"severity": OPERATIONAL[SET_ASIDE], **target}
        out.append(firing(SET_ASIDE, labels, start, end, (end - 2 * SCRAPE, end)))
    late = [at for at, seconds in played.lags if seconds > LAG_THRESHOLD]
    if late:
        gaps = [b - a for a, b in itertools.pairwise(late)]
        # The expectation below holds for one stretch of late steps; say so if not.
        assert max(gaps, default=0) < LAG_RANGE - 2 * SCRAPE, "late steps in several stretches"
        held = first_scrape(late[0]) + LAG_FOR
        over = first_scrape(late[-1]) + LAG_RANGE
        if over > held:
            labels = {"severity": OPERATIONAL[LAG], **target}
            # Edges: the rate's extrapolation and histogram_quantile's interpolation
            # move them by a scrape or two.
            edges = ((held - 2 * SCRAPE, held + 2 * SCRAPE), (over - 2 * SCRAPE, over + 2 * SCRAPE))
            out.append(firing(LAG, labels, held, over, *edges))
    return out


def server_firings(group: Sequence[Played]) -> list[Firing]:
    """The broker server rules: one alert per server, whichever workers take it as down.

    The worker whose probe found the server back shows it up at once; the others at
    their next look, within ``server_probe_interval``: MT5BrokerServerDown resolves,
    and MT5BrokerServerRecovered fires, somewhere in that span.
    """
    notes = sorted(
        (n for p in group for n in p.notified if n.kind in SERVER_KINDS), key=lambda n: n.at
    )
    servers = {i: s for p in group for i, s in p.servers.items()}
    probe = POLICY.server_probe_interval
    out: list[Firing] = []
    for n in notes:
        if n.kind is not AlertKind.BROKER_SERVER_DOWN:
            continue
        server = servers[n.instance_id]
        labels = {"job": JOB, "server": server}
        down: Labels = {"severity": SEVERITY[n.kind], "kind": n.kind.value, **labels}
        back = [
            m.at
            for m in notes
            if m.kind is AlertKind.BROKER_SERVER_RECOVERED
            and m.at > n.at
            and servers[m.instance_id] == server
        ]
        if not back:
            out.append(firing(RULE_OF[n.kind], down, first_scrape(n.at), math.inf))
            continue
        seen_by_one, seen_by_all = first_scrape(back[0]), first_scrape(back[0] + probe)
        looking = (seen_by_one - SCRAPE, seen_by_all)
        out.append(firing(RULE_OF[n.kind], down, first_scrape(n.at), seen_by_all, looking))
        kind = AlertKind.BROKER_SERVER_RECOVERED
        recovered: Labels = {"severity": SEVERITY[kind], "kind": kind.value, **labels}
        end = seen_by_all + RECOVERED_WINDOW
        window_edge = (seen_by_one + RECOVERED_WINDOW - 2 * SCRAPE, end + SCRAPE)
        out.append(firing(RULE_OF[kind], recovered, seen_by_all, end, looking, window_edge))
    return out


def summary(rule: str, labels: Labels) -> str:
    iid = labels.get("instance_id")
    who = f"MT5 instance {iid}" if iid else f"An MT5 instance behind {labels.get('instance')}"
    if rule == "MT5LoginFailure":
        return f"{who} gave up logging in" + (f" ({labels['reason']})" if iid else "")
    if rule == "MT5RepeatedLoginFailure":
        return f"{who} keeps failing to log in"
    if rule == "MT5LoginRecovered":
        return f"MT5 instances behind {labels['instance']} logged in again after failing"
    if rule == "MT5AccountBanned":
        return f"{who} was banned by the broker"
    if rule == "MT5AccountClosed":
        return f"{who}: the broker closed its account"
    if rule == "MT5AutoRecoveryFailure":
        return f"{who}: automatic restarts ran out"
    if rule == "MT5CredentialsDeleted":
        return f"MT5 credentials deleted behind {labels['instance']} after a confirmed closure"
    if rule == "MT5BrokerServerDown":
        return f"MT5 broker server {labels['server']} is down"
    if rule == "MT5BrokerServerRecovered":
        return f"MT5 broker server {labels['server']} answers again"
    if rule == SET_ASIDE:
        return f"MT5 notifications set aside behind {labels['instance']}: nobody was told"
    if rule == LAG:
        return f"The MT5 fleet behind {labels['instance']} runs its due steps late"
    raise AssertionError(rule)


def rule_blocks(rules_text: str) -> dict[str, str]:
    """Each rule's name -> its text in the rules file."""
    out: dict[str, str] = {}
    for block in re.split(r"\n\s*- alert: ", rules_text)[1:]:
        name, _, body = block.partition("\n")
        out[name.strip()] = body
    return out


def constant_annotations(rules_text: str) -> dict[str, dict[str, str]]:
    """Each rule's description and runbook_url: fixed strings, read from the rules."""
    out: dict[str, dict[str, str]] = {}
    for name, block in rule_blocks(rules_text).items():
        description = re.search(r'\n\s*description: "([^"\\]*)"\n', block)
        runbook = re.search(r"\n\s*runbook_url: (\S+)", block)
        assert description and runbook, f"{name}: description or runbook_url not found"
        out[name] = {"description": description[1], "runbook_url": runbook[1]}
    return out


def checkpoints(firings: Iterable[Firing], last: int) -> list[int]:
    points = set(range(0, last + 1, 10 * 60)) | {last}
    for f in firings:
        edges = [f.start - SCRAPE, f.start, f.start + SCRAPE]
        if f.end != math.inf:
            end = int(f.end)
            edges += [end - SCRAPE, end, end + SCRAPE]
        for low, high in f.fuzzy:
            edges += [int(low), int(high)]
        points.update(t for t in edges if 0 <= t <= last)
    return sorted(points)


def alert_tests(
    firings: Sequence[Firing], last: int, annotations: dict[str, dict[str, str]]
) -> list[dict[str, object]]:
    tests: list[dict[str, object]] = []
    for t in checkpoints(firings, last):
        for rule in ALL_RULES:
            mine = [f for f in firings if f.rule == rule]
            if any(low < t < high for f in mine for low, high in f.fuzzy):
                continue
            now = sorted({f.labels for f in mine if f.start <= t < f.end})
            if not mine and t % 600 and t != last:
                continue
            tests.append(
                {
                    "eval_time": f"{t}s",
                    "alertname": rule,
                    "exp_alerts": [
                        {
                            "exp_labels": dict(labels),
                            "exp_annotations": {
                                "summary": summary(rule, dict(labels)),
                                **annotations[rule],
                            },
                        }
                        for labels in now
                    ],
                }
            )
    return tests


# --- the test file ----------------------------------------------------------------


PER_INSTANCE_TARGET = target(per_instance=True, process=0)
FLEET_TARGET = target(per_instance=False, process=0)

Group = tuple[str, list[Played]]


def groups() -> list[Group]:
    """A flow of one process on two targets scraped side by side, one exporting
    per-instance series and the other not, so that the group checks both modes and
    that a rule never fires twice for one target. A flow of several workers once per
    mode (a rule that aggregates over workers cannot tell two modes apart)."""
    out: list[Group] = []
    for name, flow in FLOWS.items():
        if flow.processes == 1:
            out.append(
                (
                    f"{name}: {PER_INSTANCE_TARGET} per_instance=True, "
                    f"{FLEET_TARGET} per_instance=False",
                    [*play(name, per_instance=True), *play(name, per_instance=False)],
                )
            )
            continue
        for per_instance in (True, False):
            played = play(name, per_instance)
            workers = ", ".join(p.target for p in played)
            out.append((f"{name}: workers {workers} per_instance={per_instance}", played))
    return out


def build(
    rules: Path = RULES, rule_file: str | None = None, played: Sequence[Group] | None = None
) -> dict[str, object]:
    annotations = constant_annotations(rules.read_text(encoding="utf-8"))
    tests = []
    for name, targets in groups() if played is None else played:
        series: dict[str, str] = {}
        last = 0
        for one in targets:
            series.update(input_series(one))
            last = max(last, (len(one.scrapes) - 1) * SCRAPE)
        tests.append(
            {
                "name": name,
                "interval": f"{SCRAPE}s",
                "input_series": [{"series": s, "values": v} for s, v in sorted(series.items())],
                "alert_rule_test": alert_tests(expected(targets), last, annotations),
            }
        )
    return {
        "rule_files": [rule_file or str(rules)],
        "evaluation_interval": f"{SCRAPE}s",
        "tests": tests,
    }


def to_yaml(value: object, indent: int = 0) -> str:
    """Block YAML for the promtool file; scalars are JSON strings, which YAML reads."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{json.dumps(k)}:\n{to_yaml(v, indent + 2)}")
            else:
                lines.append(f"{pad}{json.dumps(k)}: {to_yaml(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            text = to_yaml(item, indent + 2)
            lines.append(f"{pad}- {text.lstrip()}")
        return "\n".join(lines)
    return json.dumps(value)


HEADER = """\
# promtool unit tests of mt5lifecycle/rules/alerts.yml, generated by
# tests/rules/test_rules.py from flows played on the real library. Do not edit.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="where to write (default: stdout)")
    parser.add_argument("--rules", type=Path, default=RULES, help="the rules file")
    args = parser.parse_args(argv)
    # The flows fail logins on purpose; their WARNING lines are not news here.
    logging.basicConfig(level=logging.ERROR)
    text = HEADER + to_yaml(build(args.rules.resolve())) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


# --- the tests ------------------------------------------------------------------

RUNBOOKS = ROOT / "docs" / "operations" / "alerts.md"
DASHBOARD = ROOT / "docs" / "grafana" / "fleet-dashboard.json"
INSTALL = "apt-get install -y --no-install-recommends prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"promtool is not installed; CI must install it ({INSTALL})")
        pytest.skip(f"promtool is not installed ({INSTALL}); CI runs these tests")
    return path


@pytest.fixture(scope="module")
def played() -> list[Group]:
    return groups()


@pytest.fixture(scope="module")
def built(played: list[Group]) -> dict[str, object]:
    return build(RULES, played=played)


@pytest.fixture(scope="module")
def promtool_file(built: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("promtool") / "alerts_test.yml"
    path.write_text(HEADER + to_yaml(built) + "\n", encoding="utf-8")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def rules_text() -> str:
    return RULES.read_text(encoding="utf-8")


def rule_labels() -> dict[str, dict[str, str]]:
    """Each rule's ``kind`` and ``severity`` labels, as the rules file gives them."""
    return {
        name: dict(re.findall(r"^\s+(kind|severity): (\w+)$", block, re.M))
        for name, block in rule_blocks(rules_text()).items()
    }


def test_the_rules_file_ships_with_the_package() -> None:
    shipped = files("mt5lifecycle").joinpath("rules/alerts.yml").read_text(encoding="utf-8")
    assert shipped == rules_text()


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALL_RULES)} rules found" in result.stdout


def test_there_is_one_rule_per_alert_kind() -> None:
    """Every AlertKind has exactly one rule, labelled with it; the operational rules
    (not AlertKinds) carry no kind label, so routing by kind never mistakes them."""
    labels = rule_labels()
    kinds = [rule["kind"] for rule in labels.values() if "kind" in rule]
    assert sorted(kinds) == sorted(k.value for k in AlertKind)
    by_kind = {rule["kind"]: name for name, rule in labels.items() if "kind" in rule}
    assert by_kind == {k.value: rule for k, rule in RULE_OF.items()}
    assert {name for name, rule in labels.items() if "kind" not in rule} == set(OPERATIONAL)
    severities = {name: rule.get("severity") for name, rule in labels.items()}
    assert severities == {**{RULE_OF[k]: SEVERITY[k] for k in AlertKind}, **OPERATIONAL}


def test_every_runbook_url_points_at_its_runbook_section() -> None:
    headings = re.findall(r"^#{2,3} (\w+)$", RUNBOOKS.read_text(encoding="utf-8"), re.M)
    anchors = {h.lower() for h in headings}
    urls = {
        name: re.findall(r"runbook_url: docs/operations/alerts\.md#(\S+)$", block, re.M)
        for name, block in rule_blocks(rules_text()).items()
    }
    assert set(urls) == set(ALL_RULES)
    assert urls == {name: [name.lower()] for name in ALL_RULES}
    assert {name.lower() for name in ALL_RULES} <= anchors


def test_the_flows_show_every_rule_firing_and_resolving_in_both_modes(
    played: list[Group], built: dict[str, object]
) -> None:
    seen: set[tuple[str, bool, str]] = set()
    tests = built["tests"]
    assert isinstance(tests, list)
    for (_, targets), group in zip(played, tests, strict=True):
        mode_of = {p.target: p.per_instance for p in targets}
        modes = set(mode_of.values())
        fired: dict[tuple[str, str], set[bool]] = {}
        for check in group["alert_rule_test"]:
            rule = check["alertname"]
            now: dict[tuple[str, str], set[bool]] = {}
            for alert in check["exp_alerts"]:
                instance = alert["exp_labels"].get("instance")
                if instance is not None:
                    now[(rule, instance)] = {mode_of[instance]}
                elif len(modes) == 1:
                    # Aggregated over the workers: only a group of one mode tells.
                    now[(rule, "all workers")] = modes
            for key, key_modes in now.items():
                fired[key] = key_modes
                seen.update((rule, mode, "fires") for mode in key_modes)
            for key, key_modes in fired.items():
                if key[0] == rule and key not in now:
                    seen.update((rule, mode, "resolves") for mode in key_modes)
    for rule in ALL_RULES:
        for per_instance in (True, False):
            assert (rule, per_instance, "fires") in seen, f"{rule} never fires ({per_instance=})"
            assert (rule, per_instance, "resolves") in seen, (
                f"{rule} never resolves ({per_instance=})"
            )


def test_the_outage_is_one_down_and_one_recovered_across_workers(played: list[Group]) -> None:
    """What the server rules are tested against: the flow really is one outage seen by
    two workers, not two outages, nor one worker's."""
    for name, targets in played:
        if not name.startswith("broker_server_outage"):
            continue
        kinds = [(n.kind, p.target) for p in targets for n in p.notified if n.kind in SERVER_KINDS]
        assert sorted(k.value for k, _ in kinds) == [
            "BROKER_SERVER_DOWN",
            "BROKER_SERVER_RECOVERED",
        ]
        shown = {
            p.target
            for p in targets
            for scrape in p.scrapes
            for (series, labels), value in scrape.items()
            if series == "mt5lifecycle_broker_server_down" and value == 1
        }
        assert shown == {p.target for p in targets}, "each worker takes the server as down"
        # Every other login went on: no account used up a count on the down server.
        for p in targets:
            assert not [n for n in p.notified if n.kind is AlertKind.LOGIN_FAILURE]
            assert not [n for n in p.notified if n.kind is AlertKind.AUTO_RECOVERY_FAILURE]


def test_the_operational_flows_exercise_their_rules(played: list[Group]) -> None:
    by_flow = {name.split(":")[0]: targets for name, targets in played}
    assert all(p.set_aside for p in by_flow["closure_while_the_channel_is_down"])
    for p in by_flow["slow_terminals"]:
        late = [seconds for _, seconds in p.lags if seconds > LAG_THRESHOLD]
        assert late and max(late) > 60, "the fleet fell more than a check interval behind"
        assert p.lags[-1][1] == 0, "and caught up"


def test_the_input_series_never_hold_a_password(promtool_file: Path) -> None:
    text = promtool_file.read_text(encoding="utf-8")
    assert PASSWORD not in text
    assert NEW_PASSWORD not in text
    assert "mt5lifecycle_instance_state" in text
    assert "mt5lifecycle_broker_server_down" in text


def test_the_rules_fire_and_resolve_as_the_library_notifies(
    promtool: str, promtool_file: Path
) -> None:
    result = run(promtool, "test", "rules", str(promtool_file))
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]


def exported_series() -> set[str]:
    """Every series the adapter exports, each of its methods called once."""
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    metrics.transition("acc-1", None, State.CONNECTING, None)
    metrics.login("acc-1", None, 0)
    metrics.restart("acc-1", 1)
    metrics.error("archive", "acc-1")
    notification = Notification(
        kind=AlertKind.LOGIN_FAILURE,
        instance_id="acc-1",
        reason=None,
        message="m",
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    metrics.alert(notification)
    metrics.set_aside(notification)
    metrics.lag(0.5)
    metrics.server("demo-server", True)
    health = Health(
        instance_id="acc-1",
        healthy=True,
        connected=True,
        identity_verified=True,
        last_check_age=3.0,
        reason=None,
        uptime_5m=1.0,
        uptime_1h=1.0,
        uptime_1d=1.0,
    )
    metrics.health(
        FleetHealth(
            instances=1,
            connected=1,
            healthy=1,
            unhealthy=(),
            uptime_5m=1.0,
            uptime_1h=1.0,
            uptime_1d=1.0,
        )
    )
    metrics.instance_health([health])
    return {
        sample.name
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_rules_and_the_dashboard_read_only_series_the_adapter_exports() -> None:
    exported = exported_series()
    for text in (rules_text(), *dashboard_queries()):
        used = set(re.findall(r"mt5lifecycle_[a-z_]+", text))
        assert used <= exported, used - exported


def test_the_dashboard_shows_every_series_a_rule_reads() -> None:
    """An operator paged by a rule finds what it read on the dashboard."""
    shown = {s for expr in dashboard_queries() for s in re.findall(r"mt5lifecycle_[a-z_]+", expr)}
    read = set(re.findall(r"mt5lifecycle_[a-z_]+", rules_text())) - {"mt5lifecycle_exporter_info"}
    assert read <= shown, read - shown


def test_the_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules = [
        {
            "record": f"dashboard_query_{i}",
            "expr": re.sub(r"\$__(rate_)?interval", "1m", expr).replace("$job", ".*"),
        }
        for i, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(to_yaml({"groups": [{"name": "dashboard", "rules": rules}]}) + "\n")
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":
    sys.exit(main())
