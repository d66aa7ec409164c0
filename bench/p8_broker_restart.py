"""P8: the first confirmed publish after RabbitMQ is back (issue 17), two cases:

- ``stop``: a publisher keeps one message in flight while ``rabbitmqctl stop_app`` holds the
  broker down for ``--down`` seconds, then ``start_app``; measured from ``start_app``'s return
  (the broker runs again) to the first confirm, with the broker's reconnect policy of today
  (first retry 25-50 ms, doubling to at most 1 s, unconfirmed publishes written again) beside
  the old backoff (0.1-0.2 s doubling to 5 s), in the same run on a throwaway vhost. The
  connections close cleanly. Restarts the shared RabbitMQ: run under
  ``flock /work/.heavy.lock``.
- ``half-open``: the publisher reaches RabbitMQ through tests/support/forward.py's half-open
  forwarder, which for ``--down`` seconds swallows everything on the open connection without
  closing it and refuses new ones, then forwards new connections again (the old one stays
  silent: a broker restarted behind a NAT or a proxy). Measured from the restore to the first
  confirm, with today's liveness probe (a silent connection asked a question after 1.5 s,
  dropped after 1.5 s more) beside the heartbeat alone (the 15 s heartbeat, checked by pika
  every 20 s), in the same run. Also counts, from the queue, confirmed messages lost (must be
  0) and stored twice (at most the one in flight at the cut, whose confirm was swallowed).
  Does not touch the shared broker beyond a throwaway vhost.

Goal: the first ack within 5 s of the broker being back.
Usage: ``python -m bench.p8_broker_restart [--down 3] [--reps 3] [--case both|stop|half-open]``
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
import uuid

from bench.common import emit_json, goal_line, header, spread
from tests.support.forward import half_open
from tests.support.processes import free_port
from tests.support.rabbit import drain
from tidedesk.broker import BrokerUnavailable, node_queue
from tidedesk.rabbitmq import PROBE_QUIET_SECS, RabbitBroker


def ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def first_ack_after_restart(vhost: str, down_s: float, **policy: float) -> float:
    broker = RabbitBroker(f"amqp://guest:guest@127.0.0.1:5672/{vhost}", **policy)
    await broker.start()
    node = f"p8-{uuid.uuid4().hex[:6]}"
    await broker.declare_node_queue(node)
    target = node_queue(node)
    back_at: list[float] = []
    acked_after: list[float] = []
    stop = asyncio.Event()

    async def publisher() -> None:
        while not stop.is_set():
            try:
                await broker.publish(target, b"x")
            except BrokerUnavailable:
                await asyncio.sleep(0.02)  # a client resending at once
                continue
            if back_at and not acked_after:
                acked_after.append(time.monotonic() - back_at[0])
                stop.set()

    task = asyncio.create_task(publisher())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(ctl, "stop_app")
    await asyncio.sleep(down_s)
    try:
        await asyncio.to_thread(ctl, "start_app")  # returns once the broker runs again
    finally:
        back_at.append(time.monotonic())
    try:
        await asyncio.wait_for(stop.wait(), 60)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await broker.close()
    return acked_after[0] if acked_after else float("nan")


async def first_ack_after_half_open(vhost: str, down_s: float,
                                    probe: bool) -> tuple[float, int, int]:
    """(s from the restore to the first confirm, confirmed messages missing from the queue,
    messages stored twice)."""
    port = free_port()
    with half_open(port, 5672) as link:
        broker = RabbitBroker(f"amqp://guest:guest@127.0.0.1:{port}/{vhost}",
                              probe_quiet_s=PROBE_QUIET_SECS if probe else None)
        await broker.start()
        node = f"p8h-{uuid.uuid4().hex[:6]}"
        await broker.declare_node_queue(node)
        target = node_queue(node)
        confirmed: list[bytes] = []
        back_at: list[float] = []
        acked_after: list[float] = []
        stop = asyncio.Event()

        async def publisher() -> None:  # one in flight; a failed one sent again, same id
            i = 0
            while not stop.is_set():
                body = f"m{i:06d}".encode()
                try:
                    await broker.publish(target, body)
                except BrokerUnavailable:
                    await asyncio.sleep(0.02)
                    continue
                confirmed.append(body)
                i += 1
                if back_at and not acked_after:
                    acked_after.append(time.monotonic() - back_at[0])
                    stop.set()

        task = asyncio.create_task(publisher())
        await asyncio.sleep(0.5)
        link.cut()
        await asyncio.sleep(down_s)
        link.restore()
        back_at.append(time.monotonic())
        try:
            await asyncio.wait_for(stop.wait(), 90)
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await broker.close()
    stored = await asyncio.to_thread(
        drain, f"amqp://guest:guest@127.0.0.1:5672/{vhost}", target)
    lost = len(set(confirmed) - set(stored))
    doubled = len(stored) - len(set(stored))
    return (acked_after[0] if acked_after else float("nan")), lost, doubled


async def run(args: argparse.Namespace) -> None:
    header("P8 first confirmed publish after a RabbitMQ stop/start and a half-open link")
    vhost = f"tidedesk-bench-{uuid.uuid4().hex[:8]}"
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    new: list[float] = []
    old: list[float] = []
    probed: list[float] = []
    heartbeat: list[float] = []
    lost = doubled = 0
    try:
        for rep in range(args.reps):
            if args.case in ("both", "stop"):
                new.append(await first_ack_after_restart(vhost, args.down))
                old.append(await first_ack_after_restart(vhost, args.down, reconnect_min_s=0.2,
                                                         reconnect_max_s=5.0))
                print(f"  repetition {rep + 1}/{args.reps}, stop/start: today {new[-1]:.2f} s, "
                      f"old backoff {old[-1]:.2f} s", flush=True)
            if args.case in ("both", "half-open"):
                for probe, into in ((True, probed), (False, heartbeat)):
                    s, n_lost, n_doubled = await first_ack_after_half_open(vhost, args.down,
                                                                           probe)
                    into.append(s)
                    lost, doubled = lost + n_lost, doubled + n_doubled
                print(f"  repetition {rep + 1}/{args.reps}, half-open: probe {probed[-1]:.2f} s, "
                      f"heartbeat only {heartbeat[-1]:.2f} s", flush=True)
    finally:
        if args.case in ("both", "stop"):
            ctl("start_app")
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)
    print(f"{args.reps} repetitions, down {args.down:.0f} s; median [min .. max]")
    if new:
        print(f"  s from start_app to the first confirm   today {spread(new, '{:.2f}')}   "
              f"old backoff {spread(old, '{:.2f}')}")
        print(goal_line("P8 first ack after the broker is back, s", new, "<= 5",
                        lambda v: v <= 5))
    if probed:
        print(f"  half-open: s from the restore to the first confirm   probe "
              f"{spread(probed, '{:.2f}')}   heartbeat only {spread(heartbeat, '{:.2f}')}")
        print(f"  half-open: confirmed messages lost {lost}, stored twice {doubled} "
              f"(at most one per run: the one in flight at the cut)")
        print(goal_line("P8 half-open: first ack after the broker is back, s", probed, "<= 5",
                        lambda v: v <= 5))
    emit_json("P8", {"today_s": new, "old_policy_s": old, "half_open_probe_s": probed,
                     "half_open_heartbeat_s": heartbeat, "half_open_lost": lost,
                     "half_open_doubled": doubled, "down_s": args.down})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--down", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--case", choices=("both", "stop", "half-open"), default="both",
                        help="half-open alone leaves the shared broker running")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
