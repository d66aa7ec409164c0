"""P5: memory per idle connection at 10 000 connections vs a bare Tornado server holding as many.

A fresh cluster-mode chat node (CPU 0, WebSocket pings every 20 s as in production) and a fresh
bench/echo_server.py (same ping interval) per repetition; this client (CPU 1) opens N visitor
sockets to the chat node (each a distinct visitor, created once before the first repetition,
so every socket is a real conversation with its hello and queue position) and N plain sockets
to the echo server, lets them sit idle, and reads each server's resident memory (VmRSS) before
and after. Per connection = (after - before) / N.

The open-file limit is raised to the hard limit (20 000 on this machine, which is why client
and servers are separate processes). When N sockets plus the visitor-creation requests would
use up one source address's ephemeral ports, the client connects from several 127.0.0.x.

Goal: the chat node uses at most 2× the echo server's memory per connection.
Usage: ``python -m bench.p5_idle_memory [--connections 10000] [--reps 2] [--idle 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from bench.common import (
    cpu_line,
    cpu_seconds,
    echo_server,
    emit_json,
    goal_line,
    header,
    pin_self,
    raise_nofile,
    rss_bytes,
    spread,
    start_pinned,
    tidedesk_cluster,
    workdir,
)
from tidedesk.loadplan import loopback_sources, sources_needed

CONCURRENCY = 200  # connects in flight at once
PING_S = "20"


def port_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
        lo, hi = f.read().split()
    return int(lo), int(hi)


async def bounded(n: int, make: Any) -> list[Any]:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> Any:
        async with sem:
            return await make(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def create_visitors(port: int, n: int, sources: itertools.cycle[str]) -> list[str]:
    http = AsyncHTTPClient(force_instance=True, max_clients=CONCURRENCY)

    async def make(i: int) -> str:
        resp = await http.fetch(HTTPRequest(f"http://127.0.0.1:{port}/api/v1/visitors",
                                            method="POST", body=json.dumps({"name": f"p5 {i}"}),
                                            network_interface=next(sources),
                                            request_timeout=60))
        return str(json.loads(resp.body)["token"])

    try:
        return await bounded(n, make)
    finally:
        http.close()


async def hold(urls: list[str], sources: itertools.cycle[str], hello: bool) -> list[Any]:
    async def make(i: int) -> Any:
        ws = await websocket_connect(HTTPRequest(urls[i], network_interface=next(sources),
                                                 connect_timeout=60, request_timeout=60))
        if hello:
            raw = await ws.read_message()
            assert raw is not None and '"hello"' in raw, raw
        return ws

    return await bounded(len(urls), make)


async def measure(pid: int, urls: list[str], sources: itertools.cycle[str], hello: bool,
                  idle_s: float) -> tuple[float, float]:
    """(bytes per connection, connects per second)."""
    before = rss_bytes(pid)
    t0 = time.perf_counter()
    sockets = await hold(urls, sources, hello)
    rate = len(sockets) / (time.perf_counter() - t0)
    await asyncio.sleep(idle_s)
    after = rss_bytes(pid)
    for ws in sockets:
        ws.close()
    await asyncio.sleep(1)
    return (after - before) / len(urls), rate


async def run(args: argparse.Namespace) -> None:
    header(f"P5 memory per idle connection at {args.connections} connections vs bare Tornado")
    limit = raise_nofile()
    print(f"  open-file limit {limit}")
    n = args.connections
    needed = sources_needed(2 * n, port_range(), "127.0.0.1")
    sources = itertools.cycle(loopback_sources(needed))
    print(f"  connecting from {needed} source address(es)")
    per_conn: dict[str, list[float]] = {"tidedesk": [], "echo": []}
    rates: dict[str, list[float]] = {"tidedesk": [], "echo": []}
    idle_rss: dict[str, list[float]] = {"tidedesk": [], "echo": []}
    t0, client0 = time.perf_counter(), time.process_time()
    with workdir("p5") as wd, tidedesk_cluster(wd, TIDEDESK_WS_PING_INTERVAL_S=PING_S) as c:
        pin_self()
        tokens: list[str] = []
        for rep in range(args.reps):
            node = start_pinned(c, "chatnode", f"p5-chat-{rep}")
            if not tokens:
                tokens = await create_visitors(node.port, n, sources)
            idle_rss["tidedesk"].append(rss_bytes(node.popen.pid) / 2**20)
            urls = [f"ws://127.0.0.1:{node.port}/ws/visitor?token={t}" for t in tokens]
            per, rate = await measure(node.popen.pid, urls, sources, True, args.idle)
            per_conn["tidedesk"].append(per)
            rates["tidedesk"].append(rate)
            node_cpu = cpu_seconds(node.popen.pid)
            node.kill()
            with echo_server(wd, float(PING_S)) as (port, pid):
                idle_rss["echo"].append(rss_bytes(pid) / 2**20)
                per, rate = await measure(pid, [f"ws://127.0.0.1:{port}/ws"] * n, sources,
                                          False, args.idle)
                per_conn["echo"].append(per)
                rates["echo"].append(rate)
            print(f"  repetition {rep + 1}/{args.reps}: chat node "
                  f"{per_conn['tidedesk'][-1] / 1024:.1f} KiB/conn, echo "
                  f"{per_conn['echo'][-1] / 1024:.1f} KiB/conn (chat node CPU {node_cpu:.1f} s)",
                  flush=True)
    wall, client_cpu = time.perf_counter() - t0, time.process_time() - client0
    ratio = [t / e for t, e in zip(per_conn["tidedesk"], per_conn["echo"], strict=True)]
    kib = {k: [v / 1024 for v in vs] for k, vs in per_conn.items()}
    print(f"{args.reps} repetitions, {n} idle connections each; median [min .. max]")
    print(f"  KiB per connection   chat node {spread(kib['tidedesk'])}   echo "
          f"{spread(kib['echo'])}")
    print(f"  RSS before (MiB)     chat node {spread(idle_rss['tidedesk'])}   echo "
          f"{spread(idle_rss['echo'])}")
    print(f"  connects/s           chat node {spread(rates['tidedesk'])}   echo "
          f"{spread(rates['echo'])}")
    print(goal_line("P5 memory/conn: chat node / echo", ratio, "<= 2",
                    lambda r: r <= 2))
    print(cpu_line(wall, client_cpu))
    emit_json("P5", {"bytes_per_conn": per_conn, "ratio": ratio, "connect_rates": rates,
                     "client_cpu_s": client_cpu, "wall_s": wall})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--idle", type=float, default=3.0,
                        help="seconds the sockets sit idle before the memory is read")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
