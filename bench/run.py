"""Run the benchmark suite: ``python -m bench.run [--quick] [P1 P2 ...]`` (what scripts/bench.sh
runs). Benchmarks run one at a time (the machine has two cores), each in its own process; their
output streams through, then the goal lines of all of them are printed together. Never fails
on timing: the exit status is 0 unless a benchmark crashed.

``bench/envelope_bytes.py`` (the bytes the binary broker envelope saves against JSON) runs at
the end when it exists.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# name → (module, normal arguments, --quick arguments)
# Issue 17 at 10 conversations: >= 0.5x the msg/s and a p50 <= 3x (at 50: >= 1.0x, the default).
P7Q10_GOALS = ["--rate-goal", "0.5", "--p50-goal", "3"]
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "P1": ("bench.p1_roundtrip", [], ["--reps", "2", "--seconds", "2"]),
    "P2": ("bench.p2_end_to_end", [], ["--reps", "1", "--seconds", "3"]),
    "P3": ("bench.p3_broker_confirms", ["--reps", "5", "--messages", "10000"],
           ["--reps", "2", "--messages", "3000", "--wait-each-messages", "200"]),
    "P4": ("bench.p4_history_batches", ["--reps", "5"],
           ["--reps", "2", "--rows", "2000", "--single-rows", "400"]),
    "P5": ("bench.p5_idle_memory", [], ["--reps", "1", "--connections", "2000"]),
    "P6": ("bench.p6_failover", [], ["--reps", "1", "--visitors", "500"]),
    "P7": ("bench.p7_socketio", [], ["--reps", "1", "--seconds", "3"]),
    "P8": ("bench.p8_broker_restart", [], ["--reps", "1"]),
    "P8H": ("bench.p8_broker_restart", ["--case", "half-open"],
            ["--case", "half-open", "--reps", "1"]),
    # The quiet desk (issue 17): one message in flight per conversation, 10 and 50 of them.
    "P2Q": ("bench.p2_end_to_end", ["--window", "1", "--visitors", "10"],
            ["--window", "1", "--visitors", "10", "--reps", "1", "--seconds", "3"]),
    "P7Q10": ("bench.p7_socketio", ["--window", "1", "--visitors", "10", *P7Q10_GOALS],
              ["--window", "1", "--visitors", "10", *P7Q10_GOALS, "--reps", "1",
               "--seconds", "3"]),
    "P7Q50": ("bench.p7_socketio", ["--window", "1", "--visitors", "50"],
              ["--window", "1", "--visitors", "50", "--reps", "1", "--seconds", "3"]),
    "P9": ("bench.p9_uploads", [], ["--reps", "1"]),
    "S1": ("bench.search_bench", [], ["--messages", "50000", "--reps", "10"]),
    # The memory soak (issue 17): 30 minutes each, so only when named.
    "P10": ("bench.p10_soak", ["--case", "cluster"], ["--case", "cluster", "--quick"]),
    "P10E": ("bench.p10_soak", ["--case", "embedded"], ["--case", "embedded", "--quick"]),
}
# Run only when named (too long for the whole suite).
OPT_IN = {"P10", "P10E"}
WHAT = {
    "P1": "chat-node round trip (ping/pong; connect + auth + session lookup + hello) vs echo",
    "P2": "visitor → agent through HAProxy, RabbitMQ, router, MariaDB vs echo: max, p99 at half",
    "P3": "RabbitMQ publisher confirms: pipelined vs unconfirmed vs one at a time",
    "P4": "history writes: batches of 100 vs single-row inserts on MariaDB",
    "P5": "memory per idle connection at 10 000 connections vs bare Tornado",
    "P6": "two chat nodes, 5 000 visitors, one killed: back vs cold connect, replayed share",
    "P7": "python-socketio + Redis manager (two processes) vs Tidedesk end to end",
    "P8": "first confirmed publish after a 3 s RabbitMQ stop/start (today's backoff vs the "
          "old) and after a 3 s half-open link (probe vs heartbeat alone)",
    "P8H": "P8's half-open case alone (the shared broker keeps running)",
    "P2Q": "P2 at one message in flight per conversation (the quiet desk), 10 conversations",
    "P7Q10": "P7 at one message in flight, 10 conversations (goal >= 0.5x, p50 <= 3x)",
    "P7Q50": "P7 at one message in flight, 50 conversations (goal >= 1.0x)",
    "P9": "20 clients upload 10 MB at once: server memory per upload in flight vs buffered",
    "S1": "search p95 at 1M messages over 2 MariaDB shards: FULLTEXT vs LIKE scan (issue 14)",
    "P10": "30-min soak, 300 visitors at 1 msg/s coming and going, cluster: RSS and Redis flat?",
    "P10E": "P10 against the embedded server (tidedesk dev)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="P", help="benchmarks to run (default all but "
                        + " and ".join(sorted(OPT_IN)) + ", which run only when named: "
                        + ", ".join(f"{k} {v}" for k, v in WHAT.items()) + ")")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and one or two repetitions (a smoke run, ~1.5 min)")
    parser.add_argument("--json", metavar="OUT", help="write every benchmark's figures here")
    args = parser.parse_args(argv)
    names = [n.upper() for n in args.names] or [n for n in SUITE if n not in OPT_IN]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(SUITE)}")
    summary: list[str] = []
    figures: list[dict[str, object]] = []
    crashed: list[str] = []
    t0 = time.perf_counter()
    for name in names:
        module, normal, quick = SUITE[name]
        cmd = [sys.executable, "-m", module, *(quick if args.quick else normal)]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=BENCH.parent)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("BENCH-JSON "):
                figures.append(json.loads(line[len("BENCH-JSON "):]))
                continue
            print(line, end="", flush=True)
            if "goal" in line and ("met" in line or "MISSED" in line or "(goal" in line):
                summary.append(f"{name}: {line.strip()}")
        if proc.wait() != 0:
            crashed.append(name)
            summary.append(f"{name}: crashed (exit {proc.returncode}), output above")
        summary.append(f"{name}: took {time.perf_counter() - started:.0f} s")
    envelope = BENCH / "envelope_bytes.py"
    if envelope.exists():
        print("\n=== envelope bytes (bench/envelope_bytes.py)", flush=True)
        if subprocess.run([sys.executable, str(envelope)], cwd=BENCH.parent,
                          check=False).returncode != 0:
            crashed.append("envelope_bytes")
    print(f"\n=== summary ({time.perf_counter() - t0:.0f} s; figures on a shared machine are "
          f"noisy: read the spreads)")
    for line in summary:
        print("  " + line)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
