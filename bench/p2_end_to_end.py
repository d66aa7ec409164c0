"""P2: end to end, visitor → agent through HAProxy, a chat node, RabbitMQ, a router and MariaDB,
vs the bare Tornado echo server.

A router and a chat node (cluster mode on this machine's RabbitMQ, Redis and MariaDB) and
HAProxy (generated config, see bench/common.py) pinned to CPU 0, the echo server on CPU 0, this
client (``tidedesk loadgen``'s engine) on CPU 1. Every repetition, back to back:

1. Tidedesk maximum: V visitors and A agents through HAProxy, each visitor keeping W messages
   in flight (closed loop: the next message goes on its ack); messages delivered to the agents
   per second.
2. Echo maximum: V sockets, W frames in flight each, the same JSON frame; echoes per second.
3. Tidedesk at half its maximum (open loop, fixed intervals): p99 of visitor send → agent
   receives.
4. Echo at that same offered rate: p99 of send → echo.

Goals: Tidedesk max ≥ 25% of the echo's; its p99 at half rate ≤ 5× the echo's at the same rate.
Echo through HAProxy (closed loop) is printed too, to show what the balancer hop costs.
Usage: ``python -m bench.p2_end_to_end [--visitors 20] [--agents 2] [--window 4]
[--seconds 5] [--reps 3] [--profile DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import (
    agents_for,
    cpu_line,
    cpu_seconds,
    echo_closed_loop,
    echo_open_loop,
    echo_server,
    emit_json,
    goal_line,
    haproxy,
    header,
    message_frame,
    pin_self,
    spread,
    start_pinned,
    tidedesk_cluster,
    workdir,
)
from bench.profile import report, sampled
from tidedesk.loadgen import run_load
from tidedesk.loadplan import LoadPlan, check_plan

BODY_CHARS = 40


async def tidedesk_run(c: Any, url: str, args: argparse.Namespace, rate: float
                       ) -> dict[str, Any]:
    # Fresh agents every run: chats left open by earlier runs would fill their slots.
    agents = agents_for(c, args.agents, max_chats=min(100, args.visitors))
    plan = check_plan(LoadPlan(url=url, visitors=args.visitors, agents=tuple(agents),
                               ramp_up_s=0.5, hold_s=args.seconds, ramp_down_s=0, rate=rate,
                               window=args.window, body_chars=BODY_CHARS, drain_s=5))
    return await run_load(plan)


async def run(args: argparse.Namespace) -> None:
    header("P2 end to end visitor → agent (HAProxy, chat node, RabbitMQ, router, MariaDB) "
           "vs bare echo")
    frame = message_frame(BODY_CHARS)
    with workdir("p2") as wd, tidedesk_cluster(wd) as c, echo_server(wd) as (echo_port, _):
        router = start_pinned(c, "router", "p2-router")
        node = start_pinned(c, "chatnode", "p2-chat")
        with haproxy(wd, [node.port]) as hport, haproxy(wd, [echo_port]) as echo_hport:
            pin_self()
            url = f"http://127.0.0.1:{hport}"
            fig: dict[str, list[float]] = {k: [] for k in (
                "td_max", "echo_max", "echo_haproxy_max", "td_p99_half", "echo_p99_half",
                "td_p50_half", "echo_p50_half", "td_ack_p99_half")}
            errors: list[dict[str, int]] = []
            cpu0 = {n: cpu_seconds(p.popen.pid) for n, p in (("router", router),
                                                                 ("chatnode", node))}
            client0, t0 = time.process_time(), time.perf_counter()
            for rep in range(args.reps):
                if rep == 0 and args.profile:
                    out = Path(args.profile)
                    out.mkdir(parents=True, exist_ok=True)
                    with sampled(node.popen.pid, out / "p2-chatnode.raw", args.seconds), \
                            sampled(router.popen.pid, out / "p2-router.raw", args.seconds):
                        top = await tidedesk_run(c, url, args, 0)
                else:
                    top = await tidedesk_run(c, url, args, 0)
                errors.append(top["errors"])
                fig["td_max"].append(top["messages"]["delivered_per_s"])
                e = await echo_closed_loop(echo_port, args.visitors, args.window, args.seconds,
                                           frame)
                fig["echo_max"].append(e["per_s"])
                eh = await echo_closed_loop(echo_hport, args.visitors, args.window,
                                            args.seconds, frame)
                fig["echo_haproxy_max"].append(eh["per_s"])
                half_total = top["messages"]["delivered_per_s"] / 2
                half = await tidedesk_run(c, url, args, max(0.01, half_total / args.visitors))
                errors.append(half["errors"])
                fig["td_p99_half"].append(half["latency"]["p99_ms"])
                fig["td_p50_half"].append(half["latency"]["p50_ms"])
                fig["td_ack_p99_half"].append(half["ack_latency"]["p99_ms"])
                eh2 = await echo_open_loop(echo_port, args.visitors, half_total, args.seconds,
                                           frame)
                fig["echo_p99_half"].append(eh2["latency"]["p99_ms"])
                fig["echo_p50_half"].append(eh2["latency"]["p50_ms"])
                print(f"  repetition {rep + 1}/{args.reps}: Tidedesk {fig['td_max'][-1]:.0f} "
                      f"msg/s max, p99 {fig['td_p99_half'][-1]:.1f} ms at {half_total:.0f}/s; "
                      f"echo {fig['echo_max'][-1]:.0f}/s, p99 {fig['echo_p99_half'][-1]:.2f} ms"
                      f"; errors {top['errors'] or 'none'} / {half['errors'] or 'none'}",
                      flush=True)
            wall = time.perf_counter() - t0
            client_cpu = time.process_time() - client0
            cpu = {n: cpu_seconds(p.popen.pid) - cpu0[n] for n, p in (("router", router),
                                                                        ("chatnode", node))}
    ratio_max = [t / e for t, e in zip(fig["td_max"], fig["echo_max"], strict=True)]
    ratio_p99 = [t / e for t, e in zip(fig["td_p99_half"], fig["echo_p99_half"], strict=True)]
    print(f"{args.reps} repetitions; {args.visitors} visitors, {args.agents} agents, "
          f"{args.window} in flight per visitor, {args.seconds:.0f} s holds; "
          f"median [min .. max]")
    print(f"  max msg/s       Tidedesk {spread(fig['td_max'])}   echo {spread(fig['echo_max'])}"
          f"   echo via HAProxy {spread(fig['echo_haproxy_max'])}")
    print(f"  at half rate    Tidedesk p50 {spread(fig['td_p50_half'])} ms, p99 "
          f"{spread(fig['td_p99_half'])} ms (ack p99 {spread(fig['td_ack_p99_half'])} ms)")
    print(f"                  echo     p50 {spread(fig['echo_p50_half'], '{:.2f}')} ms, p99 "
          f"{spread(fig['echo_p99_half'], '{:.2f}')} ms")
    print(goal_line("P2 max msg/s: Tidedesk / echo", ratio_max, ">= 0.25",
                    lambda r: r >= 0.25))
    print(goal_line("P2 p99 at half rate: Tidedesk / echo", ratio_p99, "<= 5",
                    lambda r: r <= 5, "{:.1f}"))
    print(cpu_line(wall, client_cpu,
                   f"chat node {cpu['chatnode']:.1f} s, router {cpu['router']:.1f} s"))
    if args.profile:
        print(report(Path(args.profile) / "p2-chatnode.raw", "the chat node at maximum rate"))
        print(report(Path(args.profile) / "p2-router.raw", "the router at maximum rate"))
    emit_json("P2", {**fig, "ratio_max": ratio_max, "ratio_p99": ratio_p99, "errors": errors,
                     "client_cpu_s": client_cpu, "wall_s": wall, "server_cpu_s": cpu})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, default=20)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", metavar="DIR",
                        help="sample the chat node and router with py-spy during the first "
                             "maximum run; print where the time goes")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
