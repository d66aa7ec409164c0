"""P1: chat-node round trip vs a bare Tornado WebSocket echo server.

A cluster-mode chat node (MariaDB, Redis, RabbitMQ on this machine; pinned to CPU 0) and the
echo server (bench/echo_server.py, also CPU 0); this client on CPU 1. Two figures, each
measured for the chat node and the echo server back to back in every repetition (alternating
which goes first), the ratio taken within the repetition:

- frames: C authenticated visitor sockets, each sending ``{"type": "ping"}`` and waiting for
  ``pong`` (JSON parse, frame validation, rate limiter, dispatch, JSON answer) vs the same
  frame echoed back. Round trips per second.
- connects: K concurrent loops of "open /ws/visitor with an existing visitor's token, wait for
  hello, close" (token check, the visitor and their open conversation from the connect cache
  in Redis (issue 17; MariaDB only on a miss), presence in Redis, hello with the last seq)
  vs "open, one echo, close". Connections per second.

Goal: the chat node reaches at least 70% of the echo server's rate (each figure).
Usage: ``python -m bench.p1_roundtrip [--conns 20] [--connect-loops 10] [--seconds 3]
[--reps 5] [--profile DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from bench.common import (
    cpu_line,
    cpu_seconds,
    echo_closed_loop,
    echo_server,
    emit_json,
    goal_line,
    header,
    pin_self,
    spread,
    start_pinned,
    tidedesk_cluster,
    workdir,
)
from bench.profile import report, sampled

PING = json.dumps({"type": "ping"})


async def new_visitor_tokens(port: int, n: int) -> list[str]:
    http = AsyncHTTPClient(force_instance=True, max_clients=20)
    tokens = []
    for i in range(n):
        resp = await http.fetch(f"http://127.0.0.1:{port}/api/v1/visitors", method="POST",
                                body=json.dumps({"name": f"p1 {i}"}))
        tokens.append(json.loads(resp.body)["token"])
    http.close()
    return tokens


async def tidedesk_frames(port: int, tokens: list[str], seconds: float) -> float:
    async def open_one(token: str) -> Any:
        ws = await websocket_connect(f"ws://127.0.0.1:{port}/ws/visitor?token={token}")
        while True:  # hello, then maybe queue / assigned
            raw = await ws.read_message()
            if raw is None:
                raise RuntimeError(f"chat node closed the socket: {ws.close_code}")
            if json.loads(raw)["type"] == "hello":
                return ws

    sockets = await asyncio.gather(*(open_one(t) for t in tokens))
    await asyncio.sleep(0.3)  # let queue frames after hello arrive before counting
    for ws in sockets:
        while True:
            try:
                await asyncio.wait_for(ws.read_message(), 0.001)
            except TimeoutError:
                break
    count = 0
    stop_at = time.perf_counter() + seconds

    async def loop(ws: Any) -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await ws.write_message(PING)
            while True:
                raw = await ws.read_message()
                if raw is None:
                    return
                if '"pong"' in raw:
                    break
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(ws) for ws in sockets))
    wall = time.perf_counter() - t0
    for ws in sockets:
        ws.close()
    return count / wall


async def connect_loops(url_for: Any, loops: int, seconds: float, after_open: Any) -> float:
    count = 0
    stop_at = time.perf_counter() + seconds

    async def loop(i: int) -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            ws = await websocket_connect(url_for(i))
            await after_open(ws)
            ws.close()
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(loops)))
    return count / (time.perf_counter() - t0)


async def until_hello(ws: Any) -> None:
    while True:
        raw = await ws.read_message()
        if raw is None or '"hello"' in raw:
            return


async def one_echo(ws: Any) -> None:
    await ws.write_message(PING)
    await ws.read_message()


async def run(args: argparse.Namespace) -> None:
    header("P1 chat-node round trip vs bare Tornado WebSocket echo")
    with workdir("p1") as wd, tidedesk_cluster(wd) as c, echo_server(wd) as (echo_port, _):
        node = start_pinned(c, "chatnode", "p1-chat")
        pin_self()
        tokens = await new_visitor_tokens(node.port, max(args.conns, args.connect_loops))
        frames: dict[str, list[float]] = {"tidedesk": [], "echo": []}
        connects: dict[str, list[float]] = {"tidedesk": [], "echo": []}
        node_cpu0, client_cpu0, t0 = cpu_seconds(node.popen.pid), time.process_time(), \
            time.perf_counter()
        for rep in range(args.reps):
            order = ("tidedesk", "echo") if rep % 2 == 0 else ("echo", "tidedesk")
            # Each figure's pair back to back, with a pause so closes from the last phase
            # are done before the next one counts.
            for who in order:
                await asyncio.sleep(0.5)
                if who == "tidedesk":
                    rate = await tidedesk_frames(node.port, tokens[:args.conns], args.seconds)
                else:
                    rate = (await echo_closed_loop(echo_port, args.conns, 1, args.seconds,
                                                   PING))["per_s"]
                frames[who].append(rate)
            for who in order:
                await asyncio.sleep(0.5)
                if who == "tidedesk":
                    with contextlib.ExitStack() as stack:
                        if rep == 0 and args.profile:
                            Path(args.profile).mkdir(parents=True, exist_ok=True)
                            stack.enter_context(sampled(
                                node.popen.pid, Path(args.profile) / "p1-connect.raw",
                                args.seconds))
                        rate = await connect_loops(
                            lambda i: f"ws://127.0.0.1:{node.port}/ws/visitor?token={tokens[i]}",
                            args.connect_loops, args.seconds, until_hello)
                else:
                    rate = await connect_loops(lambda i: f"ws://127.0.0.1:{echo_port}/ws",
                                               args.connect_loops, args.seconds, one_echo)
                connects[who].append(rate)
            print(f"  repetition {rep + 1}/{args.reps} done", flush=True)
        wall = time.perf_counter() - t0
        node_cpu = cpu_seconds(node.popen.pid) - node_cpu0
        client_cpu = time.process_time() - client_cpu0
    frame_ratio = [t / e for t, e in zip(frames["tidedesk"], frames["echo"], strict=True)]
    conn_ratio = [t / e for t, e in zip(connects["tidedesk"], connects["echo"], strict=True)]
    print(f"{args.reps} repetitions of {args.seconds:.0f} s each; median [min .. max]")
    print(f"  frame round trips/s, {args.conns} sockets   chat node {spread(frames['tidedesk'])}"
          f"   echo {spread(frames['echo'])}")
    print(f"  connects/s, {args.connect_loops} loops            chat node "
          f"{spread(connects['tidedesk'])}   echo {spread(connects['echo'])}")
    print(goal_line("P1 frames: chat node / echo", frame_ratio, ">= 0.70",
                    lambda r: r >= 0.7))
    print(goal_line("P1 connect+hello: chat node / echo", conn_ratio, ">= 0.70",
                    lambda r: r >= 0.7))
    print(cpu_line(wall, client_cpu, f"chat node {node_cpu:.1f} s"))
    if args.profile:
        print(report(Path(args.profile) / "p1-connect.raw", "the chat node taking connects"))
    emit_json("P1", {"frames": frames, "connects": connects, "frame_ratio": frame_ratio,
                     "connect_ratio": conn_ratio, "client_cpu_s": client_cpu, "wall_s": wall})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=20)
    parser.add_argument("--connect-loops", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--profile", metavar="DIR",
                        help="sample the chat node with py-spy during the first connect loop")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
