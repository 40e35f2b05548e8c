"""How much PostgresCredentialStore.get() costs over a bare one-row SELECT.

Creates a throwaway database on the PostgreSQL at 127.0.0.1:5432 (user postgres),
stores N credentials, then times, in the same run and on the same table:

- baseline: a bare psycopg ``SELECT ... WHERE instance_id = %s`` on one open
  autocommit connection (no pool, no decryption);
- store: ``PostgresCredentialStore.get()`` through its pool, including the AES-GCM
  decryption and building ``Credentials``.

It prints p50/p99 of each and their ratio, then drops the database.

    python benchmarks/credentials.py [--rows 1000] [--reads 5000] [--dsn "host=..."]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid

import psycopg
from psycopg import sql

from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.core.credentials import Credentials


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres")
    args = parser.parse_args()

    database = f"mt5l_bench_{uuid.uuid4().hex}"
    admin = f"{args.dsn} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    dsn = f"{args.dsn} dbname={database}"
    try:
        ids = [f"acct-{n:06d}" for n in range(args.rows)]
        rng = random.Random(5)
        reads = [rng.choice(ids) for _ in range(args.reads)]
        key = PostgresCredentialStore.generate_key()
        with PostgresCredentialStore(dsn, keys=key) as store:
            started = time.perf_counter()
            for n, instance_id in enumerate(ids):
                store.put(
                    instance_id,
                    Credentials(login=10_000 + n, server="Bench-Server", password=f"pw-{n}"),
                )
            put_each = (time.perf_counter() - started) / len(ids)

            query = sql.SQL(
                "SELECT login, server, key_id, nonce, ciphertext FROM {} WHERE instance_id = %s"
            ).format(sql.Identifier(store.schema, "credentials"))
            baseline: list[float] = []
            measured: list[float] = []
            with psycopg.connect(dsn, autocommit=True) as conn:
                # Warm both paths (prepared statements, pool connection) before timing.
                for instance_id in reads[:200]:
                    conn.execute(query, (instance_id,)).fetchone()
                    store.get(instance_id)
                # Interleaved, so drift on the machine hits both alike.
                for instance_id in reads:
                    t0 = time.perf_counter()
                    conn.execute(query, (instance_id,)).fetchone()
                    t1 = time.perf_counter()
                    store.get(instance_id)
                    t2 = time.perf_counter()
                    baseline.append(t1 - t0)
                    measured.append(t2 - t1)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )

    b50, b99 = _percentiles(baseline)
    m50, m99 = _percentiles(measured)
    print(f"credentials: {args.rows} rows, {args.reads} reads, put {put_each * 1e6:.0f} us each")
    print(f"baseline  bare psycopg SELECT   p50 {b50 * 1e6:8.1f} us   p99 {b99 * 1e6:8.1f} us")
    print(f"store     get() via pool+AEAD   p50 {m50 * 1e6:8.1f} us   p99 {m99 * 1e6:8.1f} us")
    print(f"ratio     store / baseline      p50 {m50 / b50:8.2f}x     p99 {m99 / b99:8.2f}x")


if __name__ == "__main__":
    main()
