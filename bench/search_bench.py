"""Search on MariaDB over two shards: the FULLTEXT index of words and CJK pairs (what
``GET /api/v1/search`` runs, ``tidedesk/storage/search.py``) vs a ``LIKE '%…%'`` scan of the same
rows, at a million messages.

Not a test: it prints figures and never fails on timing. The rows are made here, in throwaway
databases dropped at the end: bodies of 8-30 English words and runs of Chinese characters, with
the searched words planted at known rates (``invoice`` in 1 %, ``退货`` in 0.5 %, ``xylophone``
in 0.001 % ...). Loading uses the router's own batch insert (``Storage.messages.insert_sync``)
with the index in place, as in production. (Dropping the index to load and adding it after
was tried: MariaDB 10.11 then matched nothing until the table was rebuilt.)

Both sides answer the same question over both shards: the best 20 messages that contain the
word. The index ranks by relevance; the scan, which cannot rank, returns the newest 20 (it
reads every row either way). Each query runs ``--reps`` times on the index and ``--scan-reps``
times on the scan; p50 and p95 per side, and the ratio of the p95s, are printed.

Usage: ``python -m bench.search_bench [--messages 1000000] [--shards 2] [--reps 30]
[--scan-reps 3]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from typing import Any

import pymysql

from bench.common import emit_json, goal_line, header
from tidedesk.search_text import like_pattern, query_terms
from tidedesk.storage import Storage, new_id

WORDS = ("hello please order delivery package tracking number blue jacket size return "
         "exchange payment card account password address shipping warehouse today tomorrow "
         "thanks help question price discount coupon cancel change colour stock available "
         "week month store online app login email phone receipt problem broken damaged").split()
# (word, share of messages it is planted in)
PLANTED = (("invoice", 0.01), ("refund", 0.005), ("退货", 0.005), ("发票", 0.002),
           ("开发票", 0.001), ("xylophone", 0.00001))
CJK_FIRST, CJK_SPAN = 0x4E00, 3000


def body(rng: random.Random) -> str:
    parts = [rng.choice(WORDS) for _ in range(rng.randint(8, 30))]
    if rng.random() < 0.4:
        parts.insert(rng.randrange(len(parts)),
                     "".join(chr(CJK_FIRST + rng.randrange(CJK_SPAN))
                             for _ in range(rng.randint(4, 20))))
    for word, share in PLANTED:
        if rng.random() < share:
            parts.insert(rng.randrange(len(parts) + 1), word)
    return " ".join(parts)


def load(storage: Storage, messages: int, batch: int = 5000) -> float:
    """Insert ``messages`` rows (10 per conversation) with the router's batch insert; seconds."""
    rng = random.Random(14)
    t0 = time.perf_counter()
    conv, seq = new_id(), 0
    rows: list[dict[str, Any]] = []
    for i in range(messages):
        if seq == 10:
            conv, seq = new_id(), 0
        seq += 1
        rows.append({"conversation_id": conv, "seq": seq, "client_id": f"c{seq}",
                     "sender_type": "visitor" if seq % 2 else "agent", "sender_id": "v",
                     "sender_name": "", "body": body(rng), "private": False,
                     "ts": 1.7e9 + i})
        if len(rows) == batch:
            storage.messages.insert_sync(rows)
            rows = []
    if rows:
        storage.messages.insert_sync(rows)
    return time.perf_counter() - t0


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def scan(conns: list[Any], word: str, limit: int = 20) -> int:
    """The baseline: a LIKE scan of every shard, newest ``limit`` of each, merged."""
    found: list[tuple[Any, ...]] = []
    for conn in conns:
        with conn.cursor() as cur:
            cur.execute("SELECT conversation_id, seq, body, ts FROM message WHERE body LIKE %s "
                        "ORDER BY ts DESC LIMIT %s", (like_pattern(word), limit))
            found.extend(cur.fetchall())
    return len(sorted(found, key=lambda r: -r[3])[:limit])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--scan-reps", type=int, default=3)
    args = parser.parse_args()
    header(f"search: FULLTEXT (words + CJK pairs) vs LIKE scan, {args.messages:,} messages "
           f"over {args.shards} MariaDB shards")
    names = [f"tidedesk_bench_search_{uuid.uuid4().hex[:8]}_{i}" for i in range(args.shards)]
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    storage = Storage([f"mysql://root@127.0.0.1:3306/{n}" for n in names], pool_size=2)
    conns = [pymysql.connect(host="127.0.0.1", user="root", password="", database=n,
                             autocommit=True, charset="utf8mb4") for n in names]
    try:
        storage.migrate_all()
        loaded = load(storage, args.messages)
        for conn in conns:  # settle the index's insert cache before timing queries
            with conn.cursor() as cur:
                cur.execute("OPTIMIZE TABLE message")
                cur.fetchall()
        print(f"  loaded {args.messages:,} rows with the index in place in {loaded:.0f} s "
              f"({args.messages / loaded:,.0f} rows/s)", flush=True)
        index_times: list[float] = []
        scan_times: list[float] = []
        ratios: list[float] = []
        figures: dict[str, Any] = {}
        for word, share in PLANTED:
            terms = query_terms(word)
            storage.search.messages_sync(terms, 20, None)  # warm the caches
            times = []
            hits = 0
            for _ in range(args.reps):
                t = time.perf_counter()
                hits = len(storage.search.messages_sync(terms, 20, None))
                times.append(time.perf_counter() - t)
            scans = []
            for _ in range(args.scan_reps):
                t = time.perf_counter()
                scan(conns, word)
                scans.append(time.perf_counter() - t)
            index_times.extend(times)
            scan_times.extend(scans)
            ratio = p(scans, 0.95) / p(times, 0.95)
            ratios.append(ratio)
            figures[word] = {"share": share, "hits": hits, "index_p50_ms": p(times, .5) * 1e3,
                             "index_p95_ms": p(times, .95) * 1e3,
                             "scan_p50_ms": p(scans, .5) * 1e3, "scan_p95_ms": p(scans, .95) * 1e3}
            print(f"  {word:<10} in {share:>7.3%}: index p50 {p(times, .5) * 1e3:7.1f} ms p95 "
                  f"{p(times, .95) * 1e3:7.1f} ms | scan p50 {p(scans, .5) * 1e3:7.0f} ms p95 "
                  f"{p(scans, .95) * 1e3:7.0f} ms | {ratio:6.0f}x  ({hits} results)", flush=True)
        p95 = p(index_times, 0.95) * 1e3
        print(f"  all queries: index p95 {p95:.1f} ms, scan p95 "
              f"{p(scan_times, 0.95) * 1e3:.0f} ms, ratio of p95s "
              f"{p(scan_times, .95) / p(index_times, .95):.0f}x")
        print(goal_line("index p95 (ms)", [p95], "<= 200", lambda v: v <= 200))
        print(goal_line("scan p95 / index p95, per word", ratios, ">= 20x", lambda v: v >= 20,
                        "{:.0f}"))
        emit_json("search", {"messages": args.messages, "shards": args.shards,
                             "index_p95_ms": p95, "median_ratio": statistics.median(ratios),
                             "words": figures})
    finally:
        storage.close()
        for conn in conns:
            conn.close()
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


if __name__ == "__main__":
    main()
