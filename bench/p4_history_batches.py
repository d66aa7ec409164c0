"""History writes on MariaDB: batches of 100 rows in one transaction vs single-row autocommit.

Not a test: it prints figures and never fails on timing. Both modes write the same kind of
rows (a message of 120 characters, spread over 50 conversations) into the ``message`` table of
a throwaway database created here and dropped at the end, on the real MariaDB of this machine.

- batched:  ``Storage.messages.insert`` with 100 rows at a time, one after the other, exactly
            what a router's Batcher does: ``insert_many ... ON CONFLICT IGNORE`` inside one
            transaction, through the thread pool and the circuit breaker.
- single:   one ``INSERT`` per row in autocommit mode (one commit, so one log flush, per row),
            through the same peewee model and connection pool.

Every repetition runs both modes back to back, in alternating order, so the ratio compares
like with like even when the machine is shared; the ratios are taken within each repetition,
then the median and the spread [min .. max] are printed.

Usage: ``python bench/p4_history_batches.py [--rows 5000] [--single-rows 1000] [--reps 7]
[--batch 100] [--host 127.0.0.1] [--port 3306] [--user root]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

import pymysql

from tidedesk.storage import Storage, new_id

BODY = ("Hello, I ordered the blue jacket last week and the tracking link says it is still "
        "in the warehouse; can you check?")[:120]


def make_rows(n: int, convs: list[str], start: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        conv = convs[i % len(convs)]
        start[conv] += 1
        seq = start[conv]
        rows.append({"conversation_id": conv, "seq": seq, "client_id": f"c{seq}-{i}",
                     "sender_type": "visitor", "sender_id": "v", "sender_name": "Bench",
                     "body": BODY, "private": False, "ts": time.time()})
    return rows


async def batched(storage: Storage, rows: list[dict[str, Any]], batch: int
                  ) -> tuple[float, float]:
    """(rows/s, client CPU µs per row)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(rows), batch):
        await storage.messages.insert(rows[i:i + batch])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(rows) / wall, cpu / len(rows) * 1e6


def single(storage: Storage, rows: list[dict[str, Any]]) -> tuple[float, float]:
    shard = storage.main
    model = shard["Message"]
    t0, c0 = time.perf_counter(), time.process_time()
    with shard.db.connection_context():  # peewee autocommits each statement outside atomic()
        for row in rows:
            model.insert(row).on_conflict_ignore().execute()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(rows) / wall, cpu / len(rows) * 1e6


def server_facts(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog, "
                    "@@log_bin")
        version, flush, sync_binlog, log_bin = cur.fetchone()
    return (f"MariaDB {version}, innodb_flush_log_at_trx_commit={flush}, "
            f"log_bin={log_bin}, sync_binlog={sync_binlog}")


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return (f"{fmt.format(statistics.median(values))} "
            f"[{fmt.format(min(values))} .. {fmt.format(max(values))}]")


async def run(args: argparse.Namespace) -> None:
    name = f"tidedesk_bench_{uuid.uuid4().hex[:10]}"
    admin = pymysql.connect(host=args.host, port=args.port, user=args.user,
                            password=args.password, autocommit=True)
    print(server_facts(admin))
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    admin.close()
    url = f"mysql://{args.user}:{args.password}@{args.host}:{args.port}/{name}"
    storage = Storage([url], pool_size=2)
    try:
        storage.migrate_all()
        convs = [new_id() for _ in range(50)]
        seqs = dict.fromkeys(convs, 0)
        await batched(storage, make_rows(500, convs, seqs), args.batch)  # warm-up
        single(storage, make_rows(100, convs, seqs))
        batch_rates: list[float] = []
        single_rates: list[float] = []
        ratios: list[float] = []
        cpu_b: list[float] = []
        cpu_s: list[float] = []
        for rep in range(args.reps):
            b_rows = make_rows(args.rows, convs, seqs)
            s_rows = make_rows(args.single_rows, convs, seqs)
            if rep % 2 == 0:
                b, cb = await batched(storage, b_rows, args.batch)
                s, cs = await asyncio.to_thread(single, storage, s_rows)
            else:
                s, cs = await asyncio.to_thread(single, storage, s_rows)
                b, cb = await batched(storage, b_rows, args.batch)
            batch_rates.append(b)
            single_rates.append(s)
            ratios.append(b / s)
            cpu_b.append(cb)
            cpu_s.append(cs)
            print(f"  rep {rep + 1}/{args.reps}: batched {b:8.0f} rows/s   single {s:6.0f} "
                  f"rows/s   ratio {b / s:5.1f}x   (load {os.getloadavg()[0]:.1f})", flush=True)
        print(f"\n{args.reps} repetitions; batches of {args.batch} in one transaction "
              f"({args.rows} rows per repetition) vs single-row autocommit "
              f"({args.single_rows} rows); median [min .. max]:")
        print(f"  batched rows/s : {spread(batch_rates)}")
        print(f"  single rows/s  : {spread(single_rates)}")
        print(f"  ratio          : {spread(ratios, '{:.1f}')}x   (goal >= 10x)")
        print(f"  client CPU per row, µs: batched {spread(cpu_b, '{:.1f}')}, "
              f"single {spread(cpu_s, '{:.1f}')}")
        print(f"  wall per row, µs: batched {1e6 / statistics.median(batch_rates):.1f}, "
              f"single {1e6 / statistics.median(single_rates):.1f}")
    finally:
        storage.close()
        admin = pymysql.connect(host=args.host, port=args.port, user=args.user,
                                password=args.password, autocommit=True)
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000, help="batched rows per repetition")
    parser.add_argument("--single-rows", type=int, default=1000,
                        help="single-row inserts per repetition")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
