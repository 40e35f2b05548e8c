"""How close RedisStateStore gets to what Redis itself allows, one process, one client.

Run: ``python benchmarks/redis_store.py`` (needs ``redis-server`` and
``redis-benchmark`` on the PATH). By default it starts a private redis-server on a
free port, so that ``INFO commandstats`` counts this run's commands alone; pass
``--port 6379`` to measure an existing server instead (its other clients then blur
the command counts, never the throughput ratio's baseline, which is measured there
too).

It prints, from one run:
- Redis commands and round trips per transition, from ``INFO commandstats`` deltas
  (a script's inner GET/SET/DEL/INCR are commands, not round trips; the EVALSHA that
  ran them is the one round trip), and per login step as ``Lifecycle`` takes it (the
  login lock, then the result's commit, which gives the lock back in the same script);
- transitions per second from one process (commits of a realistic snapshot change,
  each checked against its version), next to the ceiling ``redis-benchmark -c 1 -P 1
  -t set`` measures on the same server in the same run, and their ratio (goal:
  one round trip per transition and at least 40% of the ceiling);
- the cost of the outbox: a commit that appends one notification (SPEC section 14,
  in the same script and round trip) next to the same commit without, commands and
  transitions per second, from interleaved rounds;
- ``commit_many`` and ``load_many`` of 10,000 instances, the latter next to a bare
  pipelined MGET of the same keys.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mt5lifecycle.adapters.redis._schema import FIELDS, LAST_COMMIT, VERSION
from mt5lifecycle.adapters.redis.store import BATCH, RedisStateStore
from mt5lifecycle.core.answers import Account
from mt5lifecycle.core.records import Notification
from mt5lifecycle.core.snapshot import Snapshot, utc
from mt5lifecycle.core.states import AlertKind, ConnectionState, Due, Reason, State
from mt5lifecycle.ports import Commit, LockToken

T0 = 1767225600.0


def flow() -> list[Snapshot]:
    """A realistic sequence: two failed logins with backoff, then connected."""
    return [
        Snapshot(status=State.CONNECTING, next_due=T0, due=Due.LOGIN),
        Snapshot(
            status=State.CONNECTING,
            login_attempt_count=1,
            last_login_attempt=utc(T0),
            login_failure_reason=Reason.AUTH_FAILED,
            next_due=T0 + 5,
            due=Due.LOGIN,
            failed_since_success=True,
        ),
        Snapshot(
            status=State.CONNECTING,
            login_attempt_count=2,
            last_login_attempt=utc(T0 + 5),
            login_failure_reason=Reason.AUTH_FAILED,
            next_due=T0 + 15,
            due=Due.LOGIN,
            failed_since_success=True,
        ),
        Snapshot(
            status=State.CONNECTED,
            connection_state=ConnectionState.CONNECTED,
            last_login_attempt=utc(T0 + 15),
            ever_logged_in=True,
            account=Account(5550001, "Broker-Demo"),
        ),
    ]


def alert(instance_id: str) -> Notification:
    """What a failed login has to tell: the size of a real outbox entry."""
    return Notification(
        kind=AlertKind.LOGIN_FAILURE,
        instance_id=instance_id,
        reason=Reason.AUTH_FAILED,
        message="login 1 of 5 failed: Invalid account (code -6); next try in 5 s",
        at=utc(T0),
    )


@contextmanager
def private_server() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server on port {port} did not start")
        yield port
    finally:
        # Stopped by its own pid, never by name: other servers on this machine are not ours.
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def commandstats(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: after[k] - before.get(k, 0) for k in after if k != "info"}
    return {k: v for k, v in out.items() if v}


def ceiling(port: int, requests: int) -> float:
    """``redis-benchmark -c 1 -P 1 -t set``: one client, one request per round trip."""
    result = subprocess.run(
        [
            "redis-benchmark",
            "-p",
            str(port),
            "-c",
            "1",
            "-P",
            "1",
            "-t",
            "set",
            "-n",
            str(requests),
            "-q",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    # Its -q output redraws a progress line with \r; the figure is on the last one.
    found = re.findall(r"SET: ([0-9.]+) requests per second", result.stdout)
    if not found:
        raise RuntimeError(f"cannot read redis-benchmark's output: {result.stdout!r}")
    return float(found[-1])


def run(port: int, seconds: float, instances: int, rounds: int) -> None:
    client = redis.Redis(host="127.0.0.1", port=port)
    client.ping()
    prefix = f"mt5l-bench-{uuid.uuid4().hex}"
    store = RedisStateStore(client, prefix=prefix)
    snapshots = flow()
    try:
        # Warm up: scripts loaded, connection open.
        version = store.commit("warm", snapshots[0], expected_version=0)
        store.load("warm")

        n = 2000
        before = commandstats(client)
        for k in range(n):
            version = store.commit("warm", snapshots[k % len(snapshots)], expected_version=version)
        commits = delta(before, commandstats(client))
        before = commandstats(client)
        for _ in range(n):
            # As Lifecycle logs in: the lock, then the result's commit, which gives the
            # lock back in the same script (LockToken.release_on_commit).
            lock = store.acquire_lock("warm", 30.0)
            assert lock is not None
            releasing = LockToken(lock.instance_id, lock.token, release_on_commit=True)
            version = store.commit(
                "warm",
                snapshots[version % len(snapshots)],
                expected_version=version,
                lock=releasing,
            )
        logins = delta(before, commandstats(client))
        before = commandstats(client)
        for _ in range(n):
            store.load("warm")
        loads = delta(before, commandstats(client))

        print(f"Redis {client.info('server')['redis_version']} on port {port}")
        print("per transition (commit of a snapshot change):")
        print(
            f"  round trips {commits.get('evalsha', 0) / n:.2f}, commands "
            f"{sum(commits.values()) / n:.2f} ({breakdown(commits, n)})"
        )
        print("per login step (acquire_lock, then the commit that releases it, as Lifecycle does):")
        print(
            f"  round trips {logins.get('evalsha', 0) / n:.2f}, commands "
            f"{sum(logins.values()) / n:.2f} ({breakdown(logins, n)})"
        )
        print("per load:")
        print(
            f"  round trips {loads.get('evalsha', 0) / n:.2f}, commands "
            f"{sum(loads.values()) / n:.2f} ({breakdown(loads, n)})"
        )

        # Interleaved rounds, medians reported: on a shared machine a neighbour's
        # burst then skews one round of each figure, not one figure wholesale.
        # Two clients: redis-py's default (a connection pool, which checks the
        # connection on every command: two getpid and one poll, beside the send and
        # the receive) and a one-connection client (single_connection_client=True),
        # the same shape as redis-benchmark's -c 1.
        single = redis.Redis(host="127.0.0.1", port=port, single_connection_client=True)
        pinned = RedisStateStore(single, prefix=prefix)
        pinned_version = pinned.commit("pinned", snapshots[0], expected_version=0)
        rates: dict[str, list[float]] = {"single": [], "pooled": []}
        driver: dict[str, list[float]] = {"single": [], "pooled": []}
        ceilings: list[float] = []
        for _ in range(rounds):
            for name in ("single", "pooled"):
                count, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds / rounds / 2:
                    for k in range(100):
                        if name == "single":
                            pinned_version = pinned.commit(
                                "pinned",
                                snapshots[k % len(snapshots)],
                                expected_version=pinned_version,
                            )
                        else:
                            version = store.commit(
                                "warm", snapshots[k % len(snapshots)], expected_version=version
                            )
                    count += 100
                rates[name].append(count / (time.perf_counter() - start))
            ceilings.append(ceiling(port, 20000))
            for name, driven in (("single", single), ("pooled", client)):
                start = time.perf_counter()
                for _ in range(5000):
                    driven.set(f"{prefix}:driver", "CONNECTED")
                driver[name].append(5000 / (time.perf_counter() - start))
        single.close()
        baseline = median(ceilings)
        print(f"throughput, one process, one connection (median of {rounds} interleaved rounds):")
        print(f"  redis-benchmark SET  {baseline:10.0f}  {figures(ceilings)} (-c 1 -P 1 -n 20000)")
        for name, label in (
            ("single", "one-connection client (single_connection_client=True)"),
            ("pooled", "redis-py's default pooled client"),
        ):
            ratios = [r / b for r, b in zip(rates[name], ceilings, strict=True)]
            to_driver = [r / d for r, d in zip(rates[name], driver[name], strict=True)]
            print(f"  {label}:")
            print(f"    transitions/s      {median(rates[name]):10.0f}  {figures(rates[name])}")
            print(
                f"    ratio              {median(ratios):10.1%}  {shares(ratios)}"
                + (" (goal: at least 40%)" if name == "single" else "")
            )
            print(
                f"    redis-py SET       {median(driver[name]):10.0f}  "
                f"{figures(driver[name])} (5000 SETs, same client)"
            )
            print(f"    ratio to its SET   {median(to_driver):10.1%}  {shares(to_driver)}")
        print(f"  hiredis installed    {hiredis()!s:>10}")

        outbox(client, port, prefix, snapshots, seconds, rounds)

        ids = [f"bench-{i}" for i in range(instances)]
        start = time.perf_counter()
        results = store.commit_many([Commit(i, snapshots[3], 0) for i in ids])
        written = time.perf_counter() - start
        assert results == [1] * instances
        start = time.perf_counter()
        found = store.load_many(ids)
        loaded = time.perf_counter() - start
        assert len(found) == instances
        start = time.perf_counter()
        for offset in range(0, instances, BATCH):
            pipe = client.pipeline(transaction=False)
            for instance_id in ids[offset : offset + BATCH]:
                pipe.mget([f"{prefix}:{instance_id}:{s}" for s in READ])
            pipe.execute()
        bare = time.perf_counter() - start
        print(f"{instances} instances:")
        print(f"  commit_many          {written * 1000:8.1f} ms")
        print(f"  load_many            {loaded * 1000:8.1f} ms  (decoded and checked)")
        print(f"  bare pipelined MGET  {bare * 1000:8.1f} ms  (same keys, raw bytes, baseline)")
        print(f"  ratio                {bare / loaded:8.1%}  of the bare MGET speed")
    finally:
        doomed = list(client.scan_iter(match=f"{prefix}:*", count=5000))
        for offset in range(0, len(doomed), 5000):
            client.delete(*doomed[offset : offset + 5000])
        client.close()


READ = (*(f.suffix for f in FIELDS), VERSION, LAST_COMMIT)
"""The string keys ``load`` reads (it also asks the two outbox lists' lengths)."""


def outbox(
    client: redis.Redis,
    port: int,
    prefix: str,
    snapshots: list[Snapshot],
    seconds: float,
    rounds: int,
) -> None:
    """A commit with one outbox entry next to the same commit without, interleaved."""
    single = redis.Redis(host="127.0.0.1", port=port, single_connection_client=True)
    store = RedisStateStore(single, prefix=prefix)
    version = {"plain": store.commit("plain", snapshots[0], expected_version=0)}
    version["outbox"] = store.commit("outbox", snapshots[0], expected_version=0)
    entries = {"plain": (), "outbox": (alert("outbox"),)}

    def commits(name: str, n: int) -> None:
        for k in range(n):
            version[name] = store.commit(
                name,
                snapshots[k % len(snapshots)],
                expected_version=version[name],
                outbox=entries[name],
            )
        # Handed over, as the relay does, so the list stays the size it has in use.
        if entries[name]:
            single.delete(store.key(name, "notifications"))

    counted: dict[str, dict[str, int]] = {}
    for name in ("plain", "outbox"):
        before = commandstats(client)
        commits(name, 2000)
        counted[name] = delta(before, commandstats(client))
    rates: dict[str, list[float]] = {"plain": [], "outbox": []}
    for _ in range(rounds):
        for name in ("plain", "outbox"):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / rounds / 4:
                commits(name, 100)
                count += 100
            rates[name].append(count / (time.perf_counter() - start))
    single.close()
    print("a commit with one notification in its outbox (one-connection client):")
    for name, label in (("plain", "without an outbox entry"), ("outbox", "with one entry")):
        stats = counted[name]
        print(
            f"  {label:24} round trips {stats.get('evalsha', 0) / 2000:.2f}, commands "
            f"{sum(stats.values()) / 2000:.2f} ({breakdown(stats, 2000)})"
        )
    ratios = [o / p for o, p in zip(rates["outbox"], rates["plain"], strict=True)]
    print(f"  transitions/s without {median(rates['plain']):10.0f}  {figures(rates['plain'])}")
    print(f"  transitions/s with    {median(rates['outbox']):10.0f}  {figures(rates['outbox'])}")
    print(f"  ratio                 {median(ratios):10.1%}  {shares(ratios)} (with / without)")


def figures(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in values) + "]"


def shares(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0%}" for v in values) + "]"


def hiredis() -> bool:
    from redis.utils import HIREDIS_AVAILABLE

    return bool(HIREDIS_AVAILABLE)


def breakdown(counts: dict[str, int], n: int) -> str:
    return ", ".join(f"{name} {calls / n:.2f}" for name, calls in sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, help="measure this server instead of a private one")
    parser.add_argument("--seconds", type=float, default=5.0, help="commit time over all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved throughput rounds")
    parser.add_argument("--instances", type=int, default=10_000, help="load_many size")
    args = parser.parse_args()
    for tool in ("redis-benchmark",) + (() if args.port else ("redis-server",)):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on the PATH")
    if args.port:
        run(args.port, args.seconds, args.instances, args.rounds)
    else:
        with private_server() as port:
            run(port, args.seconds, args.instances, args.rounds)


if __name__ == "__main__":
    main()
