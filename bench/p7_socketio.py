"""P7: python-socketio with its Redis manager relaying the same visitor → agent traffic across two
processes (no persistence) vs Tidedesk end to end.

Socket.IO side: two bench/p7_socketio_server.py processes (CPU 0) sharing a Redis channel of
their own on this machine's Redis. V visitor sockets on process 1 and A agent sockets on
process 2; each agent joins its room; each visitor keeps W messages in flight to an agent's
room (the next one on the server's acknowledgement), the message crossing Redis pub/sub to
reach the agent. Tidedesk side: exactly P2's maximum run (HAProxy, chat node, RabbitMQ, router
with MariaDB commits, acks only after RabbitMQ confirmed). Both measured back to back in every
repetition, this client on CPU 1, both spoken over Tornado's WebSocket client (the Engine.IO v4
framing is a few lines below) so the client costs the same on both sides.

Goal: Tidedesk delivers at least as many messages per second (≥ 1×).
Usage: ``python -m bench.p7_socketio [--visitors 20] [--agents 2] [--window 4] [--seconds 5]
[--reps 3] [--profile DIR | --cpu-profile DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.common import (
    REPO,
    batch_bodies,
    cpu_line,
    cpu_seconds,
    emit_json,
    free_port,
    goal_line,
    haproxy,
    header,
    pin_self,
    spread,
    start_pinned,
    subprocess_on_cpu,
    tidedesk_cluster,
    wait_http,
    workdir,
)
from bench.p2_end_to_end import BODY_CHARS, tidedesk_run
from bench.profile import cpu_sampled, cpu_sampler_env, report, sampled
from tidedesk.loadplan import latency_summary

REDIS_URL = "redis://127.0.0.1:6379/0"


PROFILE_SETUP_S = 4.0  # logins, opens and the ramp-up before the steady state


class SioSocket:
    """A Socket.IO v5 client over Engine.IO v4's WebSocket transport (no polling)."""

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self.ws = ws
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.on_event: Any = None

    @classmethod
    async def open(cls, port: int) -> SioSocket:
        ws = await websocket_connect(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
        opened = await ws.read_message()  # 0{"sid": ..., "pingInterval": ...}
        assert opened is not None and str(opened).startswith("0"), opened
        await ws.write_message("40")  # connect to the default namespace
        joined = await ws.read_message()
        assert joined is not None and str(joined).startswith("40"), joined
        return cls(ws)

    async def emit(self, event: str, data: Any) -> asyncio.Future[Any]:
        ack_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[ack_id] = fut
        await self.ws.write_message(f"42{ack_id}" + json.dumps([event, data]))
        return fut

    async def read(self) -> None:
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                return
            text = str(raw)
            if text == "2":  # Engine.IO ping
                await self.ws.write_message("3")
            elif text.startswith("43"):
                ack_id = int(text[2:text.index("[")])
                fut = self.acks.pop(ack_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(json.loads(text[text.index("["):]))
            elif text.startswith("42") and self.on_event is not None:
                self.on_event(*json.loads(text[2:]))


async def socketio_run(port1: int, port2: int, args: argparse.Namespace) -> dict[str, Any]:
    agents = await asyncio.gather(*(SioSocket.open(port2) for _ in range(args.agents)))
    visitors = await asyncio.gather(*(SioSocket.open(port1) for _ in range(args.visitors)))
    readers = [asyncio.create_task(s.read()) for s in (*agents, *visitors)]
    sent_at: dict[str, float] = {}
    lat: list[float] = []
    delivered = 0

    def on_event(event: str, data: dict[str, Any]) -> None:
        nonlocal delivered
        t = sent_at.pop(data["id"], None)
        if event == "message" and t is not None:
            delivered += 1
            lat.append(time.perf_counter() - t)

    run_id = uuid.uuid4().hex[:6]
    for i, a in enumerate(agents):
        a.on_event = on_event
        await (await a.emit("join", f"agent-{run_id}-{i}"))
    body = ("load " * (BODY_CHARS // 5 + 1))[:BODY_CHARS]
    stop_at = time.perf_counter() + args.seconds
    counter = itertools.count()

    async def visitor(i: int, s: SioSocket) -> None:
        room = f"agent-{run_id}-{i % args.agents}"

        async def lane() -> None:
            while time.perf_counter() < stop_at:
                mid = f"{run_id}-{i}-{next(counter)}"
                sent_at[mid] = time.perf_counter()
                ack = await s.emit("message", {"to": room, "id": mid, "body": body})
                await asyncio.wait_for(ack, 10)

        await asyncio.gather(*(lane() for _ in range(args.window)))

    t0 = time.perf_counter()
    await asyncio.gather(*(visitor(i, s) for i, s in enumerate(visitors)))
    wall = time.perf_counter() - t0
    await asyncio.sleep(0.5)  # deliveries still crossing Redis
    for task in readers:
        task.cancel()
    for s in (*agents, *visitors):
        s.ws.close()
    return {"per_s": delivered / wall, "latency": latency_summary(lat)}


async def run(args: argparse.Namespace) -> None:
    header("P7 python-socketio + AsyncRedisManager (two processes) vs Tidedesk end to end")
    channel = f"tidedesk-bench-{uuid.uuid4().hex[:8]}"
    cpu_out = Path(args.cpu_profile) if args.cpu_profile else None
    if cpu_out is not None:
        cpu_out.mkdir(parents=True, exist_ok=True)
    with workdir("p7") as wd, \
            tidedesk_cluster(wd, **(cpu_sampler_env(cpu_out) if cpu_out else {})) as c:
        router = start_pinned(c, "router", "p7-router")
        node = start_pinned(c, "chatnode", "p7-chat")
        ports = [free_port(), free_port()]
        server = [sys.executable, str(REPO / "bench" / "p7_socketio_server.py")]
        with subprocess_on_cpu([*server, str(ports[0]), REDIS_URL, channel],
                               wd / "sio1.log") as sio1, \
                subprocess_on_cpu([*server, str(ports[1]), REDIS_URL, channel],
                                  wd / "sio2.log") as sio2, \
                haproxy(wd, [node.port]) as hport:
            for p in ports:
                wait_http(f"http://127.0.0.1:{p}/healthz")
            pin_self()
            url = f"http://127.0.0.1:{hport}"
            td: list[float] = []
            sio: list[float] = []
            td_p99: list[float] = []
            sio_p99: list[float] = []
            td_p50: list[float] = []
            sio_p50: list[float] = []
            client0, t0 = time.process_time(), time.perf_counter()
            cpu0 = {"tidedesk": cpu_seconds(node.popen.pid) + cpu_seconds(router.popen.pid),
                    "socketio": cpu_seconds(sio1.pid) + cpu_seconds(sio2.pid)}
            for rep in range(args.reps):
                order = ("tidedesk", "socketio") if rep % 2 == 0 else ("socketio", "tidedesk")
                for who in order:
                    if who == "tidedesk" and rep == 0 and args.profile:
                        out = Path(args.profile)
                        out.mkdir(parents=True, exist_ok=True)
                        # Sample the steady state only: logins and opens come first.
                        run_task = asyncio.ensure_future(tidedesk_run(c, url, args, 0))
                        await asyncio.sleep(PROFILE_SETUP_S)
                        span = max(1.0, args.seconds - PROFILE_SETUP_S)
                        with sampled(node.popen.pid, out / "p7-chatnode.raw", span), \
                                sampled(router.popen.pid, out / "p7-router.raw", span):
                            await asyncio.sleep(span + 1.5)  # py-spy stops by itself
                        r = await run_task
                    elif who == "tidedesk" and rep == 0 and cpu_out is not None:
                        run_task = asyncio.ensure_future(tidedesk_run(c, url, args, 0))
                        await asyncio.sleep(PROFILE_SETUP_S)
                        with cpu_sampled({"p7-chatnode": node.popen.pid,
                                          "p7-router": router.popen.pid}, cpu_out):
                            await asyncio.sleep(max(1.0, args.seconds - PROFILE_SETUP_S))
                        r = await run_task
                    elif who == "tidedesk":
                        r = await tidedesk_run(c, url, args, 0)
                    if who == "tidedesk":
                        td.append(r["messages"]["delivered_per_s"])
                        td_p99.append(r["latency"]["p99_ms"])
                        td_p50.append(r["latency"]["p50_ms"])
                    else:
                        s = await socketio_run(ports[0], ports[1], args)
                        sio.append(s["per_s"])
                        sio_p99.append(s["latency"]["p99_ms"])
                        sio_p50.append(s["latency"]["p50_ms"])
                print(f"  repetition {rep + 1}/{args.reps}: Tidedesk {td[-1]:.0f} msg/s, "
                      f"Socket.IO {sio[-1]:.0f} msg/s", flush=True)
            wall, client_cpu = time.perf_counter() - t0, time.process_time() - client0
            batches = {"chat node": batch_bodies(node.port), "router": batch_bodies(router.port)}
            cpu = {"tidedesk": cpu_seconds(node.popen.pid) + cpu_seconds(router.popen.pid)
                   - cpu0["tidedesk"],
                   "socketio": cpu_seconds(sio1.pid) + cpu_seconds(sio2.pid)
                   - cpu0["socketio"]}
    ratio = [t / s for t, s in zip(td, sio, strict=True)]
    print(f"{args.reps} repetitions; {args.visitors} visitors, {args.agents} agents, "
          f"{args.window} in flight per visitor, {args.seconds:.0f} s each; "
          f"median [min .. max]")
    print(f"  msg/s delivered   Tidedesk {spread(td)}   Socket.IO {spread(sio)}")
    print(f"  p99 at max (ms)   Tidedesk {spread(td_p99)}   Socket.IO {spread(sio_p99)}")
    print(f"  p50 at max (ms)   Tidedesk {spread(td_p50)}   Socket.IO {spread(sio_p50)}")
    p50_ratio = [t / s for t, s in zip(td_p50, sio_p50, strict=True) if s > 0]
    # The goals: >= 1.0x at 50 conversations, >= 0.5x and p50 <= 3x at 10.
    if args.p50_goal is not None:
        print(goal_line("P7 p50: Tidedesk / Socket.IO+Redis", p50_ratio,
                        f"<= {args.p50_goal:g}", lambda r: r <= args.p50_goal))
    else:
        print(f"  P7 p50: Tidedesk / Socket.IO+Redis           {spread(p50_ratio, '{:.2f}'):>26}")
    print(goal_line("P7 msg/s: Tidedesk / Socket.IO+Redis", ratio, f">= {args.rate_goal:g}",
                    lambda r: r >= args.rate_goal))
    print(cpu_line(wall, client_cpu, f"servers: Tidedesk chat node + router "
                   f"{cpu['tidedesk']:.1f} s, Socket.IO x2 {cpu['socketio']:.1f} s"))
    for who, per_queue in batches.items():
        if per_queue:
            print(f"  envelopes per AMQP message published by the {who}: " + ", ".join(
                f"{q} {v:.1f}" for q, v in sorted(per_queue.items())))
    if args.profile:
        print(report(Path(args.profile) / "p7-chatnode.raw", "the chat node"))
        print(report(Path(args.profile) / "p7-router.raw", "the router"))
    if cpu_out is not None:
        print(report(cpu_out / "p7-chatnode.raw", "the chat node", cpu=True))
        print(report(cpu_out / "p7-router.raw", "the router", cpu=True))
    emit_json("P7", {"tidedesk": td, "socketio": sio, "ratio": ratio, "tidedesk_p99": td_p99,
                     "socketio_p99": sio_p99, "tidedesk_p50": td_p50,
                     "socketio_p50": sio_p50, "client_cpu_s": client_cpu, "wall_s": wall,
                     "server_cpu_s": cpu})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, default=20)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rate-goal", type=float, default=1.0,
                        help="the msg/s ratio goal (issue 17: 1.0 at 50 conversations, 0.5 at 10)")
    parser.add_argument("--p50-goal", type=float, default=None,
                        help="the p50 ratio goal, if any (issue 17: 3 at 10 conversations)")
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy the chat node and the router in the first Tidedesk run")
    parser.add_argument("--cpu-profile", metavar="DIR",
                        help="sample their CPU time instead (bench/cpu_sampler), same run")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
