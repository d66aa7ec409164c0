"""P8: the first confirmed publish after RabbitMQ is back (issue 17): a publisher keeps one
message in flight while ``rabbitmqctl stop_app`` holds the broker down for ``--down`` seconds,
then ``start_app``; measured from ``start_app``'s return (the broker runs again) to the first
confirm, with the broker's reconnect policy of today (first retry 25-50 ms, doubling to at most
1 s, unconfirmed publishes written again) beside the old backoff (0.1-0.2 s doubling to 5 s),
in the same run on a throwaway vhost. Restarts the shared RabbitMQ: run under
``flock /work/.heavy.lock``.

Goal: the first ack within 5 s of the broker being back.
Usage: ``python -m bench.p8_broker_restart [--down 3] [--reps 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
import uuid

from bench.common import emit_json, goal_line, header, spread
from tidedesk.broker import BrokerUnavailable, node_queue
from tidedesk.rabbitmq import RabbitBroker


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


async def run(args: argparse.Namespace) -> None:
    header("P8 first confirmed publish after a RabbitMQ stop/start")
    vhost = f"tidedesk-bench-{uuid.uuid4().hex[:8]}"
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    new: list[float] = []
    old: list[float] = []
    try:
        for rep in range(args.reps):
            new.append(await first_ack_after_restart(vhost, args.down))
            old.append(await first_ack_after_restart(vhost, args.down, reconnect_min_s=0.2,
                                                     reconnect_max_s=5.0))
            print(f"  repetition {rep + 1}/{args.reps}: today {new[-1]:.2f} s, "
                  f"old backoff {old[-1]:.2f} s", flush=True)
    finally:
        ctl("start_app")
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)
    print(f"{args.reps} repetitions, down {args.down:.0f} s; median [min .. max]")
    print(f"  s from start_app to the first confirm   today {spread(new, '{:.2f}')}   "
          f"old backoff {spread(old, '{:.2f}')}")
    print(goal_line("P8 first ack after the broker is back, s", new, "<= 5", lambda v: v <= 5))
    emit_json("P8", {"today_s": new, "old_policy_s": old, "down_s": args.down})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--down", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
