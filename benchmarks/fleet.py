"""What a fleet costs: throughput, memory per instance, Redis round trips, restore time.

Run: ``python benchmarks/fleet.py`` (about 3 minutes on 2 cores) or ``--quick``
(about 30 s, smaller fleets; the figures are noisier). Part 3 and 4 start a private
``redis-server`` on a free port, so ``INFO commandstats`` counts this run alone.

Every figure is printed next to a baseline measured in the same run, with the ratio
and the goal (PASS/FAIL) of issue 9:

1. In-memory events per second of ``Lifecycle`` driving a realistic mix on many
   connected instances, against the bare ``transitions`` engine (our shared
   ``MACHINE`` on ``_Step`` models; a two-state machine), against one
   ``transitions.Machine`` per model, and against a plain-dict table.
   Goals: >= 50,000 events/s; >= 40 % of the bare ``Event.trigger`` rate.
2. Memory per idle ``CONNECTED`` instance in a ``Fleet`` of 100,000 (tracemalloc),
   against a bare slotted object, a ``Machine`` per instance and ``add_model``.
   Goal: <= 1 KiB per instance.
3. 10,000 instances through a full login cycle on Redis: round trips per transition
   and transitions per second, ``Fleet(workers=1)`` against ``Fleet(workers=8)``
   (group commit through ``commit_many``). Goals: one round trip per transition;
   >= 20,000 transitions/s with pipelining.
4. Restoring 10,000 instances from Redis: ``load_many``, ``Fleet.add_many`` (batched
   reads) and, for comparison, ``Fleet.add`` one at a time. Goal: < 1 s.

Two prototypes live here and nowhere else, to show what a change to the core would
reach: ``dispatch_decide`` (``decide`` without ``Event.trigger`` on the hot path) and
``batched_reconnect`` (a ``run_due`` that decides all due instances, then writes them
with one ``commit_many``). They touch private attributes and are labelled
"prototype" in the output.

``--parts 12`` runs the in-memory parts only (no Redis); parts 3 and 4 run together.

Round trips are counted on the client: a ``redis.Connection`` subclass counts each
``send_packed_command`` (one per single command, one per pipeline). ``INFO
commandstats`` (server side) is printed next to it, as commands per transition.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import itertools
import pstats
import shutil
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

import attrs
import redis
from redis.connection import Connection
from transitions import Machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis_store import commandstats, delta, private_server

import mt5lifecycle.runtime.lifecycle as lifecycle_module
from mt5lifecycle import Credentials, Fleet, Lifecycle
from mt5lifecycle.adapters.redis import RedisStateStore
from mt5lifecycle.builtin.memory import NullArchive
from mt5lifecycle.builtin.notify import NullNotifier
from mt5lifecycle.core.machine import (
    _BLANK,
    _STATUS,
    EFFECTS,
    EVENTS,
    GUARDS,
    MACHINE,
    TABLE,
    Decision,
    Facts,
    _archived_reason,
    _Step,
    machine_state,
)
from mt5lifecycle.core.policy import Policy
from mt5lifecycle.core.records import LoginResult, Order, Position, TradeResult
from mt5lifecycle.core.snapshot import Snapshot, replace
from mt5lifecycle.core.states import ConnectionState, Due, State, TerminalStatus
from mt5lifecycle.ports import StateStore
from mt5lifecycle.runtime.backends import Backends
from mt5lifecycle.testing import FakeClock, memory_backends

POLICY = Policy()
RESULTS: list[tuple[str, str, str, str, str]] = []
"""(figure, value, baseline, ratio, goal verdict) rows for the summary."""


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def record(figure: str, value: str, baseline: str, ratio: str, goal: str) -> None:
    RESULTS.append((figure, value, baseline, ratio, goal))


class QuietBroker:
    """A broker that keeps nothing per instance: every login works, every terminal is up."""

    __slots__ = ()

    _OK = LoginResult.success()

    def login(self, instance_id: str, credentials: Credentials, *, logged_in_before: bool) -> Any:
        return self._OK

    def status(self, instance_id: str) -> TerminalStatus:
        return TerminalStatus.CONNECTED

    def restart(self, instance_id: str) -> None:
        pass

    def stop(self, instance_id: str) -> None:
        pass

    def positions(self, instance_id: str) -> Sequence[Position]:
        return ()

    def orders(self, instance_id: str) -> Sequence[Order]:
        return ()

    def close_position(self, instance_id: str, position: Position, volume: float) -> TradeResult:
        raise NotImplementedError("the benchmark broker holds no positions")

    def cancel_order(self, instance_id: str, order: Order) -> TradeResult:
        raise NotImplementedError("the benchmark broker holds no orders")


def lean_backends(state: StateStore | None = None) -> Backends:
    """``memory_backends()`` with the default null archive and notifier."""
    base = memory_backends(broker=QuietBroker(), clock=FakeClock())
    backends = attrs.evolve(base, archive=NullArchive(), notifier=NullNotifier())
    if state is not None:
        backends = attrs.evolve(backends, state=state)
    return backends


def credentials_for(backends: Backends, ids: Sequence[str]) -> None:
    creds = Credentials(12345, "Demo-Server", "not-a-secret")
    for instance_id in ids:
        backends.credentials.put(instance_id, creds)


def versions(lifecycles: Sequence[Lifecycle]) -> int:
    return sum(lc._version for lc in lifecycles)


# --- 1. events per second ------------------------------------------------------------

MIX = (
    "terminal_failed; +30 s: run_due (restart_due, login_succeeded); "
    "connection_lost; +10 s: run_due (reconnect check: login_succeeded); "
    "terminal_failed; reset; run_due (login, login_succeeded)"
)
"""Eight transitions per instance and cycle, each through lock/credentials/broker
as the runtime does them; every instance starts and ends a cycle CONNECTED."""


def lifecycle_cycle(lcs: Sequence[Lifecycle], clock: FakeClock) -> None:
    for lc in lcs:
        lc.terminal_failed()
    clock.advance(POLICY.restart_backoff[0])
    for lc in lcs:
        lc.run_due()
    for lc in lcs:
        lc.connection_lost()
    clock.advance(POLICY.network_retry_delay)
    for lc in lcs:
        lc.run_due()
    for lc in lcs:
        lc.terminal_failed()
    for lc in lcs:
        lc.reset()
    for lc in lcs:
        lc.run_due()


def lifecycle_rate(instances: int, seconds: float) -> float:
    backends = lean_backends()
    clock = backends.clock
    assert isinstance(clock, FakeClock)
    ids = [f"bot-{i}" for i in range(instances)]
    credentials_for(backends, ids)
    lcs = [Lifecycle(i, backends, POLICY) for i in ids]
    for lc in lcs:
        lc.start()
        lc.run_due()
        assert lc.state is State.CONNECTED
    lifecycle_cycle(lcs, clock)  # warm
    before, start = versions(lcs), time.perf_counter()
    while time.perf_counter() - start < seconds:
        lifecycle_cycle(lcs, clock)
    elapsed = time.perf_counter() - start
    assert all(lc.state is State.CONNECTED for lc in lcs)
    return (versions(lcs) - before) / elapsed


def our_machine_rate(models: int, seconds: float) -> float:
    """Our shared MACHINE, the same eight triggers per cycle, on reused ``_Step`` models."""
    connected = Snapshot(status=State.CONNECTED, connection_state=ConnectionState.CONNECTED)
    failed = Snapshot(status=State.FAILED, due=Due.RESTART)
    facts = Facts()
    steps = [_Step("CONNECTED", connected, facts, POLICY, 0.0) for _ in range(models)]
    t = MACHINE.events
    cycle = [
        (t["terminal_failed"], failed),
        (t["restart_due"], failed),
        (t["login_succeeded"], connected),
        (t["connection_lost"], connected),
        (t["login_succeeded"], connected),
        (t["terminal_failed"], failed),
        (t["reset"], failed),
        (t["login_succeeded"], connected),
    ]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for event, snap in cycle:
            trigger = event.trigger
            for step in steps:
                step.snap = snap
                trigger(step)
        count += len(cycle) * models
    elapsed = time.perf_counter() - start
    assert all(step.state == "CONNECTED" for step in steps)
    return count / elapsed


class Bare:
    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


def two_state_rate(models: int, seconds: float) -> float:
    machine = Machine(
        model=None,
        states=["A", "B"],
        transitions=[["go", "A", "B"], ["back", "B", "A"]],
        initial=None,
        auto_transitions=False,
    )
    go, back = machine.events["go"].trigger, machine.events["back"].trigger
    objs = [Bare("A") for _ in range(models)]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for obj in objs:
            go(obj)
        for obj in objs:
            back(obj)
        count += 2 * models
    return count / (time.perf_counter() - start)


# A small lifecycle-like table, as a user of transitions would write it today.
SMALL_STATES = ["CONNECTING", "CONNECTED", "FAILED", "INACTIVE", "ACCOUNT_CLOSED"]
SMALL_TRANSITIONS: list[list[Any]] = [
    ["login_succeeded", "CONNECTING", "CONNECTED"],
    ["login_failed", "CONNECTING", "CONNECTING"],
    ["terminal_failed", ["CONNECTING", "CONNECTED"], "FAILED"],
    ["restart_due", "FAILED", "CONNECTING"],
    ["connection_lost", "CONNECTED", "CONNECTING"],
    ["account_closed", ["CONNECTING", "CONNECTED", "FAILED"], "ACCOUNT_CLOSED"],
    ["account_banned", ["CONNECTING", "CONNECTED", "FAILED"], "INACTIVE"],
    ["reset", ["FAILED", "INACTIVE"], "CONNECTING"],
    ["disable", ["CONNECTING", "CONNECTED", "FAILED", "INACTIVE"], "INACTIVE"],
]
SMALL_CYCLE = (
    "terminal_failed",
    "restart_due",
    "login_succeeded",
    "connection_lost",
    "login_succeeded",
    "terminal_failed",
    "reset",
    "login_succeeded",
)


class Model:
    """What a user hands to ``transitions.Machine``: a plain object."""


def machine_per_model(n: int) -> list[Model]:
    models = [Model() for _ in range(n)]
    for model in models:
        Machine(
            model=model,
            states=SMALL_STATES,
            transitions=SMALL_TRANSITIONS,
            initial="CONNECTED",
            auto_transitions=False,
        )
    return models


def machine_per_model_rate(models: int, seconds: float) -> float:
    objs = machine_per_model(models)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for event in SMALL_CYCLE:
            for obj in objs:
                getattr(obj, event)()
        count += len(SMALL_CYCLE) * models
    elapsed = time.perf_counter() - start
    assert all(obj.state == "CONNECTED" for obj in objs)  # type: ignore[attr-defined]
    return count / elapsed


def dict_rate(models: int, seconds: float) -> float:
    table: dict[str, dict[str, str]] = {}
    for event, sources, dest in SMALL_TRANSITIONS:
        for source in [sources] if isinstance(sources, str) else sources:
            table.setdefault(source, {})[event] = dest
    objs = [Bare("CONNECTED") for _ in range(models)]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for event in SMALL_CYCLE:
            for obj in objs:
                obj.state = table[obj.state][event]
        count += len(SMALL_CYCLE) * models
    elapsed = time.perf_counter() - start
    assert all(obj.state == "CONNECTED" for obj in objs)
    return count / elapsed


NO_FACTS = Facts()


def dispatch_decide(
    snapshot: Snapshot | None, event: str, policy: Policy, now: float, facts: Facts = NO_FACTS
) -> Decision | None:
    """A prototype of ``decide`` without the engine on the hot path: the rows of
    ``TABLE`` for (state, event), their guards and effects called in plain Python,
    first match wins, exactly as ``transitions`` picks them."""
    source = machine_state(snapshot)
    rows = _DISPATCH.get((source, event))
    if rows is None:
        return None
    step = _Step(source, snapshot if snapshot is not None else _BLANK, facts, policy, now)
    chosen = next(
        (row for row in rows if all(g(step) for g in row[0]) and not any(u(step) for u in row[1])),
        None,
    )
    if chosen is None:
        return None
    dest = chosen[2]
    for effect in chosen[3]:
        effect(step)
    step.changes["status"] = _STATUS[dest]
    new = replace(step.snap, step.changes)
    return Decision(
        event=event,
        source=source,
        dest=dest,
        snapshot=new,
        alerts=tuple(step.alerts),
        commands=tuple(step.commands),
        reason=_archived_reason(new, event, facts),
    )


Rows = list[
    tuple[
        tuple[Callable[[_Step], bool], ...],
        tuple[Callable[[_Step], bool], ...],
        str,
        tuple[Callable[[_Step], None], ...],
    ]
]
_DISPATCH: dict[tuple[str, str], Rows] = {}
for _row in TABLE:
    for _source in _row.sources:
        _DISPATCH.setdefault((_source, _row.event), []).append(
            (
                tuple(GUARDS[g] for g in _row.guards),
                tuple(GUARDS[g] for g in _row.unless),
                _row.dest,
                tuple(EFFECTS[e] for e in _row.effects),
            )
        )


def dispatch_rate(instances: int, seconds: float) -> float:
    """``lifecycle_rate`` with ``dispatch_decide`` in place of ``decide`` (prototype)."""
    engine = lifecycle_module.decide  # type: ignore[attr-defined]
    lifecycle_module.decide = dispatch_decide  # type: ignore[attr-defined]
    try:
        return lifecycle_rate(instances, seconds)
    finally:
        lifecycle_module.decide = engine  # type: ignore[attr-defined]


def part1(quick: bool) -> None:
    instances = 500 if quick else 1000
    seconds = 0.6 if quick else 2.0
    rounds = 3 if quick else 5
    print(f"\n1. Events per second, one process ({instances} instances, median of {rounds} rounds)")
    print(f"   mix per instance and cycle: {MIX}")
    runs: dict[str, list[float]] = {k: [] for k in ("lc", "ours", "two", "per", "dict", "proto")}
    for _ in range(rounds):
        runs["lc"].append(lifecycle_rate(instances, seconds))
        runs["proto"].append(dispatch_rate(instances, seconds / 2))
        runs["ours"].append(our_machine_rate(instances, seconds / 2))
        runs["two"].append(two_state_rate(instances, seconds / 2))
        runs["per"].append(machine_per_model_rate(min(instances, 1000), seconds / 2))
        runs["dict"].append(dict_rate(instances, seconds / 2))
    lc = median(runs["lc"])
    ours, two = median(runs["ours"]), median(runs["two"])
    per, plain = median(runs["per"]), median(runs["dict"])
    r_ours = median([a / b for a, b in zip(runs["lc"], runs["ours"], strict=True)])
    r_two = median([a / b for a, b in zip(runs["lc"], runs["two"], strict=True)])
    rows = [
        ("Lifecycle, in-memory backends", lc, runs["lc"]),
        ("(i) MACHINE Event.trigger on _Step", ours, runs["ours"]),
        ("(ii) 2-state Machine Event.trigger", two, runs["two"]),
        ("(b) one Machine per model, bound triggers", per, runs["per"]),
        ("(c) plain dict table", plain, runs["dict"]),
        ("prototype: Lifecycle, TABLE dispatch w/o engine", median(runs["proto"]), runs["proto"]),
    ]
    for name, value, values in rows:
        print(f"   {name:44} {value:12,.0f} /s  {figures(values)}")
    print(f"   Lifecycle >= 50,000 events/s: {lc:,.0f}  {verdict(lc >= 50_000)}")
    print(f"   Lifecycle / (i): {r_ours:.1%}  (goal >= 40%)  {verdict(r_ours >= 0.40)}")
    print(f"   Lifecycle / (ii): {r_two:.1%}")
    print(f"   Lifecycle / (b): {lc / per:.1%};  Lifecycle / (c): {lc / plain:.2%}")
    proto = median(runs["proto"])
    r_proto = median([b / a for a, b in zip(runs["lc"], runs["proto"], strict=True)])
    print(f"   prototype / Lifecycle: {r_proto:.2f}x (decide without Event.trigger; not the core)")
    record(
        "Lifecycle events/s, in-memory (8-event mix)",
        f"{lc:,.0f}/s",
        "—",
        "—",
        f">= 50,000: {verdict(lc >= 50_000)}",
    )
    record(
        "… against bare MACHINE Event.trigger (i)",
        f"{lc:,.0f}/s",
        f"{ours:,.0f}/s",
        f"{r_ours:.0%}",
        f">= 40%: {verdict(r_ours >= 0.40)}",
    )
    record("… against a 2-state Machine (ii)", f"{lc:,.0f}/s", f"{two:,.0f}/s", f"{r_two:.0%}", "—")
    record(
        "… against a Machine per model (b)", f"{lc:,.0f}/s", f"{per:,.0f}/s", f"{lc / per:.0%}", "—"
    )
    record(
        "… against a plain dict table (c)",
        f"{lc:,.0f}/s",
        f"{plain:,.0f}/s",
        f"{lc / plain:.1%}",
        "—",
    )

    record(
        "Prototype: Lifecycle deciding by TABLE dispatch, no engine",
        f"{proto:,.0f}/s",
        f"{lc:,.0f}/s (Lifecycle)",
        f"{r_proto:.2f}x",
        f">= 50,000: {verdict(proto >= 50_000)}",
    )


# --- 2. memory per idle instance ---------------------------------------------------


def traced(build: Callable[[], object], top: int = 0) -> tuple[int, object, list[str]]:
    """Bytes ``build()``'s result keeps alive (tracemalloc, after a collection), and
    the ``top`` source lines that allocated most of them."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        first = tracemalloc.take_snapshot() if top else None
        kept = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        lines: list[str] = []
        if first is not None:
            diff = tracemalloc.take_snapshot().compare_to(first, "lineno")
            for stat in diff[:top]:
                frame = stat.traceback[0]
                name = Path(frame.filename)
                where = f"{name.parent.name}/{name.name}:{frame.lineno}"
                lines.append(f"{stat.size_diff:>12,} B  {stat.count_diff:>9,} blocks  {where}")
    finally:
        tracemalloc.stop()
    return after - before, kept, lines


def fleet_of(backends: Backends, ids: Sequence[str]) -> Fleet:
    fleet = Fleet(backends, POLICY, workers=1)
    for instance_id in ids:
        fleet.add(instance_id)
    fleet.run_due()
    return fleet


def add_model_many(n: int) -> tuple[Machine, list[Model]]:
    machine = Machine(
        model=None,
        states=SMALL_STATES,
        transitions=SMALL_TRANSITIONS,
        initial="CONNECTED",
        auto_transitions=False,
    )
    models = [Model() for _ in range(n)]
    for model in models:
        machine.add_model(model)
    return machine, models


def part2(quick: bool) -> None:
    n = 20_000 if quick else 100_000
    m = 1000 if quick else 2000
    print(f"\n2. Memory per idle CONNECTED instance (tracemalloc, {n:,} instances)")
    backends = lean_backends()
    ids = [f"bot-{i}" for i in range(n)]
    credentials_for(backends, ids)
    size, kept, where = traced(lambda: fleet_of(backends, ids), top=8)
    fleet = kept
    assert isinstance(fleet, Fleet)
    assert all(fleet[i].state is State.CONNECTED for i in ids[:: max(1, n // 100)])
    per = size / n
    del fleet, kept
    bare, objs, _ = traced(lambda: [Bare("CONNECTED") for _ in range(n)])
    bare_per = bare / n
    del objs
    # The transitions figures are measured on fewer instances: building a Machine per
    # model is slow, and the cost per instance does not depend on the count.
    machines, models, _ = traced(lambda: machine_per_model(m))
    per_machine = machines / m
    del models
    added, pair, _ = traced(lambda: add_model_many(m))
    add_model = added / m
    del pair
    print(f"   Fleet(workers=1) instance, everything held    {per:8,.0f} B")
    print(f"   where the fleet's {size:,} B were allocated (largest source lines):")
    for line in where:
        print("     " + line)
    print(
        f"   bare slotted object (1 slot) in a list        {bare_per:8,.0f} B  "
        f"(ratio {per / bare_per:.1f}x)"
    )
    print(
        f"   transitions.Machine per instance              {per_machine:8,.0f} B  "
        f"({m:,} instances; ratio ours/this {per / per_machine:.1%})"
    )
    print(
        f"   add_model on one Machine (bound triggers)     {add_model:8,.0f} B  "
        f"({m:,} instances; ratio ours/this {per / add_model:.1%})"
    )
    print(f"   goal <= 1 KiB per idle instance: {verdict(per <= 1024)}")
    record(
        f"Memory per idle CONNECTED instance ({n:,})",
        f"{per:,.0f} B",
        f"{bare_per:,.0f} B (bare slotted object)",
        f"{per / bare_per:.1f}x",
        f"<= 1024 B: {verdict(per <= 1024)}",
    )
    record(
        "… against a Machine per instance",
        f"{per:,.0f} B",
        f"{per_machine:,.0f} B",
        f"{per / per_machine:.0%}",
        "—",
    )
    record(
        "… against add_model on one Machine",
        f"{per:,.0f} B",
        f"{add_model:,.0f} B",
        f"{per / add_model:.0%}",
        "—",
    )


# --- 3 and 4. Redis ------------------------------------------------------------------


class CountingConnection(Connection):
    """Counts round trips: one per command sent alone, one per pipeline."""

    sent = itertools.count()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        next(CountingConnection.sent)
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def sent() -> int:
    # itertools.count has no peek: read its repr ("count(N)").
    return int(repr(CountingConnection.sent)[6:-1])


def warm_pool(client: redis.Redis, connections: int) -> None:
    """Open the pool's connections now, so their handshakes are not counted later."""
    pool = client.connection_pool
    held = [pool.get_connection() for _ in range(connections)]
    for connection in held:
        pool.release(connection)


def server_cpu(admin: redis.Redis) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Phase:
    """Round trips, server commands, transitions and wall time of one phase."""

    def __init__(self, admin: redis.Redis, lcs: Callable[[], Sequence[Lifecycle]]) -> None:
        self.admin = admin
        self.lcs = lcs

    def __enter__(self) -> Phase:
        self.stats = commandstats(self.admin)
        self.server_cpu = server_cpu(self.admin)
        self.trips = sent()
        self.versions = versions(self.lcs())
        self.cpu = time.process_time()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start
        self.cpu = time.process_time() - self.cpu
        self.round_trips = sent() - self.trips
        self.server_cpu = server_cpu(self.admin) - self.server_cpu
        self.commands = delta(self.stats, commandstats(self.admin))
        self.transitions = versions(self.lcs()) - self.versions
        # Kept phases must not keep their fleet alive: a heap of earlier rounds'
        # instances would make the garbage collector slow down the later rounds.
        del self.lcs, self.admin

    def cpu_line(self) -> str:
        t = max(self.transitions, 1)
        return (
            f"{'':37}CPU per transition: this process {self.cpu / t * 1e6:5.0f} us, "
            f"redis-server {self.server_cpu / t * 1e6:5.0f} us"
        )

    def line(self, name: str) -> str:
        t = max(self.transitions, 1)
        cmds = ", ".join(f"{k} {v / t:.2f}" for k, v in sorted(self.commands.items()))
        return (
            f"   {name:34} {self.elapsed * 1000:8.0f} ms {self.transitions / self.elapsed:9,.0f} "
            f"transitions/s  {self.round_trips / t:6.3f} round trips/transition  ({cmds})"
        )


def bench_client(port: int) -> redis.Redis:
    return redis.Redis(
        connection_pool=redis.ConnectionPool(
            host="127.0.0.1", port=port, connection_class=CountingConnection
        )
    )


def warm_store(store: RedisStateStore) -> None:
    """Load the scripts now, so that SCRIPT LOAD is not counted later."""
    store.load("warm")
    store.commit("warm", Snapshot(status=State.CONNECTING), expected_version=0)
    store.commit_many([("warm", Snapshot(status=State.CONNECTED), 1, None)])
    store.acquire_many(["warm"], 1.0)
    store.acquire_lock("warm-2", 1.0)
    store.delete("warm")
    store.delete("warm-2")


def cleanup(admin: redis.Redis, prefix: str) -> None:
    doomed = list(admin.scan_iter(match=f"{prefix}:*", count=5000))
    for offset in range(0, len(doomed), 5000):
        admin.delete(*doomed[offset : offset + 5000])


def lone_run(port: int, n: int) -> dict[str, Phase]:
    """``n`` lone ``Lifecycle`` objects, no fleet: each transition as it happens."""
    client = bench_client(port)
    admin = redis.Redis(host="127.0.0.1", port=port)
    prefix = f"mt5l-fleet-bench-{uuid.uuid4().hex}"
    store = RedisStateStore(client, prefix=prefix)
    warm_store(store)
    warm_pool(client, 2)
    backends = lean_backends(store)
    ids = [f"bot-{i}" for i in range(n)]
    credentials_for(backends, ids)
    lcs = [Lifecycle(i, backends, POLICY) for i in ids]
    clock = backends.clock
    assert isinstance(clock, FakeClock)
    phases: dict[str, Phase] = {}
    try:
        with Phase(admin, lambda: lcs) as phases["start (load + write)"]:
            for lc in lcs:
                lc.start()
        with Phase(admin, lambda: lcs) as phases["run_due (login: lock + write)"]:
            for lc in lcs:
                lc.run_due()
        with Phase(admin, lambda: lcs) as phases["connection_lost (event)"]:
            for lc in lcs:
                lc.connection_lost()
        clock.advance(POLICY.network_retry_delay)
        with Phase(admin, lambda: lcs) as phases["run_due (reconnect check)"]:
            for lc in lcs:
                lc.run_due()
        assert all(lc.state is State.CONNECTED for lc in lcs)
        return phases
    finally:
        cleanup(admin, prefix)
        client.close()
        admin.close()


def redis_run(
    port: int, n: int, workers: int, profile: bool
) -> tuple[dict[str, Phase], list[cProfile.Profile]]:
    """One fleet of ``n`` through add_many, login, reconnect; its phases."""
    client = bench_client(port)
    admin = redis.Redis(host="127.0.0.1", port=port)
    prefix = f"mt5l-fleet-bench-{uuid.uuid4().hex}"
    store = RedisStateStore(client, prefix=prefix)
    warm_store(store)
    warm_pool(client, workers + 2)
    backends = lean_backends(store)
    ids = [f"bot-{i}" for i in range(n)]
    credentials_for(backends, ids)
    fleet = Fleet(backends, POLICY, workers=workers)
    clock = backends.clock
    assert isinstance(clock, FakeClock)

    def lcs() -> list[Lifecycle]:
        return [fleet[i] for i in fleet]

    phases: dict[str, Phase] = {}
    profiles: list[cProfile.Profile] = []
    try:
        with Phase(admin, lcs) as phases["add_many (start)"]:
            fleet.add_many(ids)
        with Phase(admin, lcs) as phases["run_due (login)"]:
            fleet.run_due()
        assert all(fleet[i].state is State.CONNECTED for i in ids)
        with Phase(admin, lcs) as phases["connection_lost (event, one by one)"]:
            for instance_id in ids:
                fleet[instance_id].connection_lost()
        clock.advance(POLICY.network_retry_delay)
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
        with Phase(admin, lcs) as phases["run_due (reconnect check)"]:
            fleet.run_due()
        if profile:
            profiler.disable()
            profiles.append(profiler)
        assert all(fleet[i].state is State.CONNECTED for i in ids)
        if workers == 1:
            connected = Snapshot(status=State.CONNECTED, connection_state=ConnectionState.CONNECTED)
            with Phase(admin, lambda: ()) as phases["baseline: store.commit_many alone"]:
                store.commit_many([(f"x-{i}", connected, 0, None) for i in range(n)])
            phases["baseline: store.commit_many alone"].transitions = n
        return phases, profiles
    finally:
        fleet.close()
        cleanup(admin, prefix)
        client.close()
        admin.close()


def restore_run(port: int, n: int) -> dict[str, float]:
    """Write ``n`` CONNECTED instances, then time the ways of bringing them back."""
    client = redis.Redis(host="127.0.0.1", port=port)
    prefix = f"mt5l-fleet-bench-{uuid.uuid4().hex}"
    store = RedisStateStore(client, prefix=prefix)
    ids = [f"bot-{i}" for i in range(n)]
    connected = Snapshot(
        status=State.CONNECTED, connection_state=ConnectionState.CONNECTED, ever_logged_in=True
    )
    out: dict[str, float] = {}
    try:
        assert store.commit_many([(i, connected, 0, None) for i in ids]) == [1] * n
        start = time.perf_counter()
        found = store.load_many(ids)
        out["load_many"] = time.perf_counter() - start
        assert len(found) == n
        # What a fleet's read-back of its idle members asks each interval first.
        start = time.perf_counter()
        assert len(store.versions(ids)) == n
        out["versions"] = time.perf_counter() - start

        backends = lean_backends(store)
        credentials_for(backends, ids)
        fleet = Fleet(backends, POLICY, workers=1)
        start = time.perf_counter()
        for instance_id in ids:
            fleet.add(instance_id)
        out["add"] = time.perf_counter() - start
        assert all(fleet[i].state is State.CONNECTED for i in ids)

        fleet = Fleet(backends, POLICY, workers=1)
        start = time.perf_counter()
        fleet.add_many(ids)
        out["batched"] = time.perf_counter() - start
        assert all(fleet[i].state is State.CONNECTED for i in ids)
        assert fleet.next_due == backends.clock.now()
        return out
    finally:
        doomed = list(client.scan_iter(match=f"{prefix}:*", count=5000))
        for offset in range(0, len(doomed), 5000):
            client.delete(*doomed[offset : offset + 5000])
        client.close()


def part3and4(quick: bool) -> None:
    n = 2000 if quick else 10_000
    lone_n = 1000 if quick else 2000
    print(f"\n3. {n:,} instances through a full login cycle on Redis (private redis-server)")
    print("   round trips: counted on the client (one per command sent alone, one per")
    print("   pipeline); commands per transition from INFO commandstats (server side)")
    with private_server() as port:
        admin = redis.Redis(host="127.0.0.1", port=port)
        print(f"   Redis {admin.info('server')['redis_version']} on port {port}")
        admin.close()
        lone = lone_run(port, lone_n)
        print(f"   {lone_n:,} lone Lifecycle objects, no Fleet (each transition written as it")
        print("   happens):")
        for name, phase in lone.items():
            print(phase.line(name))
        results: dict[int, list[dict[str, Phase]]] = {1: [], 8: []}
        profiles: list[cProfile.Profile] = []
        rounds = 1 if quick else 3
        for r in range(rounds + 1):
            for workers in (1, 8):
                # The last round is profiled, and left out of the figures.
                phases, prof = redis_run(port, n, workers, r == rounds and workers == 1)
                if r < rounds:
                    results[workers].append(phases)
                elif prof:
                    profiles = prof
        summary: dict[int, dict[str, float]] = {}
        for workers in (1, 8):
            print(f"   Fleet(workers={workers}) (best of {rounds} rounds):")
            summary[workers] = {}
            for name in results[workers][0]:
                best = min((run[name] for run in results[workers]), key=lambda p: p.elapsed)
                print(best.line(name))
                print(best.cpu_line())
                summary[workers][name] = best.transitions / best.elapsed
                summary[workers][name + " trips"] = best.round_trips / max(best.transitions, 1)
            best_cycle = min(
                results[workers],
                key=lambda run: run["add_many (start)"].elapsed + run["run_due (login)"].elapsed,
            )
            total = best_cycle["add_many (start)"].elapsed + best_cycle["run_due (login)"].elapsed
            trips = (
                best_cycle["add_many (start)"].round_trips
                + best_cycle["run_due (login)"].round_trips
            )
            print(
                f"   {'full login cycle (add_many + run_due)':34} {total * 1000:8.0f} ms "
                f"{2 * n / total:9,.0f} transitions/s  "
                f"{trips / (2 * n):6.3f} round trips/transition"
            )
            summary[workers]["cycle"] = 2 * n / total
            summary[workers]["cycle_s"] = total
            summary[workers]["cycle trips"] = trips / (2 * n)
        lone_plain = lone["connection_lost (event)"].round_trips / max(
            lone["connection_lost (event)"].transitions, 1
        )
        lone_check = lone["run_due (reconnect check)"].round_trips / max(
            lone["run_due (reconnect check)"].transitions, 1
        )
        lone_login = lone["run_due (login: lock + write)"].round_trips / max(
            lone["run_due (login: lock + write)"].transitions, 1
        )
        fastest = max((1, 8), key=lambda w: summary[w]["cycle"])
        fleet_trips = summary[fastest]["cycle trips"]
        print(
            f"   one round trip per transition: lone Lifecycle, plain transition "
            f"{max(lone_plain, lone_check):.2f} {verdict(max(lone_plain, lone_check) <= 1.0)}; "
            f"lone login {lone_login:.2f} (the lock, then the result); Fleet, full login "
            f"cycle {fleet_trips:.3f} {verdict(fleet_trips <= 1.0)}"
        )
        rates = {
            "logins": summary[fastest]["run_due (login)"],
            "reconnect checks": summary[fastest]["run_due (reconnect check)"],
        }
        # The goal is the rate of the writes the fleet pipelines for instances due
        # together (the passes); the full cycle also starts the instances (add_many),
        # start-up work with a goal of its own (part 4), and is shown beside it.
        print(
            f"   pipelined >= 20,000 transitions/s (Fleet(workers={fastest})): "
            + ", ".join(f"{k} {v:,.0f}/s {verdict(v >= 20_000)}" for k, v in rates.items())
            + f"; full login cycle, starts included, {summary[fastest]['cycle']:,.0f}/s"
        )
        record(
            "Redis round trips per transition, lone Lifecycle, plain transition",
            f"{max(lone_plain, lone_check):.2f}",
            "1 (goal)",
            "—",
            f"<= 1: {verdict(max(lone_plain, lone_check) <= 1.0)}",
        )
        record(
            "Redis round trips per transition, lone Lifecycle, login",
            f"{lone_login:.2f}",
            "1 (goal)",
            "—",
            "the lock, then the result (see docs/performance.md)",
        )
        record(
            f"Redis round trips per transition, Fleet(workers={fastest}), full login cycle",
            f"{fleet_trips:.3f}",
            "1 (goal)",
            "—",
            f"<= 1: {verdict(fleet_trips <= 1.0)}",
        )
        for workers in (1, 8):
            record(
                f"Full login cycle of {n:,}, Fleet(workers={workers})",
                f"{summary[workers]['cycle_s']:.2f} s",
                "—",
                f"{summary[workers]['cycle']:,.0f} transitions/s",
                "— (starts included; the goal is the passes' rate below)",
            )
        alone = summary[1]["baseline: store.commit_many alone"]
        for name in ("run_due (login)", "run_due (reconnect check)"):
            for workers in (1, 8):
                record(
                    f"Pipelined transitions/s, {name}, Fleet(workers={workers})",
                    f"{summary[workers][name]:,.0f}/s",
                    f"{alone:,.0f}/s (commit_many alone)",
                    f"{summary[workers][name] / alone:.0%}",
                    f">= 20,000: {verdict(summary[workers][name] >= 20_000)}",
                )
        if profiles:
            text = io.StringIO()
            stats = pstats.Stats(*profiles, stream=text)
            stats.sort_stats("tottime").print_stats(14)
            print("   where the reconnect checks' time goes (cProfile, Fleet(workers=1),")
            print("   sorted by own time):")
            for row in text.getvalue().splitlines():
                if row.strip() and not row.lstrip().startswith(("Ordered", "List")):
                    print("     " + row.strip()[:120])

        print(f"\n4. Restoring {n:,} instances from Redis")
        restores = [restore_run(port, n) for _ in range(1 if quick else 3)]
        load = median(r["load_many"] for r in restores)
        add = median(r["add"] for r in restores)
        batched = median(r["batched"] for r in restores)
        versions = median(r["versions"] for r in restores)
        print(
            f"   RedisStateStore.load_many            {load * 1000:8.0f} ms  "
            f"{verdict(load < 1.0)} (goal < 1 s)"
        )
        print(
            f"   Fleet.add each (Lifecycle.start loads one by one) {add * 1000:8.0f} ms  "
            f"{verdict(add < 1.0)}"
        )
        print(
            f"   Fleet.add_many (batched reads)        {batched * 1000:8.0f} ms  "
            f"{verdict(batched < 1.0)}  ({add / batched:.1f}x faster than add one by one)"
        )
        print(
            f"   idle read-back per interval: RedisStateStore.versions {versions * 1000:6.0f} ms"
            f"  ({versions / n * 1e6:.1f} us per member; load_many of all: {load * 1000:.0f} ms)"
        )
        record(
            f"Idle read-back of {n:,} members per interval: RedisStateStore.versions",
            f"{versions * 1000:,.0f} ms",
            f"{load * 1000:,.0f} ms (load_many, what it read before)",
            f"{versions / load:.0%}",
            "—",
        )
        record(
            f"Restore {n:,}: RedisStateStore.load_many",
            f"{load * 1000:,.0f} ms",
            "—",
            "—",
            f"< 1 s: {verdict(load < 1.0)}",
        )
        record(
            f"Restore {n:,}: Fleet.add one by one",
            f"{add * 1000:,.0f} ms",
            f"{load * 1000:,.0f} ms (load_many)",
            f"{add / load:.1f}x",
            "— (the batched path below is the one to use)",
        )
        record(
            f"Restore {n:,}: Fleet.add_many",
            f"{batched * 1000:,.0f} ms",
            f"{add * 1000:,.0f} ms (add one by one)",
            f"{batched / add:.0%}",
            f"< 1 s: {verdict(batched < 1.0)}",
        )


def figures(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:,.0f}" for v in values) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 30 s, smaller fleets")
    parser.add_argument(
        "--parts", default="1234", help="which parts to run, e.g. 12 (default: all)"
    )
    args = parser.parse_args()
    if ("3" in args.parts or "4" in args.parts) and shutil.which("redis-server") is None:
        sys.exit("redis-server is not on the PATH")
    assert set(EVENTS) >= set(SMALL_CYCLE)
    start = time.perf_counter()
    print(f"Python {sys.version.split()[0]}; {'quick' if args.quick else 'full'} run")
    if "1" in args.parts:
        part1(args.quick)
    if "2" in args.parts:
        part2(args.quick)
    if "3" in args.parts or "4" in args.parts:
        part3and4(args.quick)
    print(f"\nSummary ({time.perf_counter() - start:.0f} s)")
    if args.quick:
        print("(quick run: smaller fleets and fewer rounds; the goals are set for 100,000")
        print(" and 10,000 instances, so take the verdicts from a full run)")
    print("| figure | measured | baseline | ratio | goal |")
    print("| --- | --- | --- | --- | --- |")
    for row in RESULTS:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
