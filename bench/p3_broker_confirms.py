"""Publish rate on RabbitMQ: pipelined confirms vs unconfirmed vs waiting on each confirm.

Not a test: it prints figures and never fails on timing. All three modes publish persistent
messages to the same kind of durable classic queue the chat nodes publish to, on the same
machine, in one run; every repetition runs all modes back to back (in rotating order), so the
ratios compare like with like even when the machine is shared. The client's CPU time per
message is printed too: unlike rates, it hardly depends on what else the machine is doing.
The queue is purged between runs and deleted at the end.

- pipelined:  ``RabbitBroker.publish`` from W concurrent senders (W publishes always in flight),
              each awaiting its own confirm; this is what a busy chat node does.
- unconfirmed: raw ``basic_publish`` on a channel without confirm mode, timed until a
               ``queue_declare`` round trip on the same channel returns (so the broker has read
               every message, though it promised nothing about them).
- wait-each:  ``RabbitBroker.publish`` from one sender, one message at a time.

Usage: ``python bench/p3_broker_confirms.py [--url amqp://...] [--messages 10000]
[--wait-each-messages 500] [--windows 256,1024] [--reps 15] [--body-bytes 256]
[--queue-type classic|quorum] [--no-coalesce]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from tidedesk.pika_writes import coalesce_writes
from tidedesk.rabbitmq import RabbitBroker


async def _raw_channel(url: str, coalesce: bool) -> tuple[AsyncioConnection, Any]:
    """A plain pika channel (no confirm mode) on its own connection."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Any] = loop.create_future()
    conn = AsyncioConnection(
        pika.URLParameters(url),
        on_open_callback=lambda c: opened.set_result(c),
        on_open_error_callback=lambda _c, exc: opened.set_exception(exc),
        custom_ioloop=loop,
    )
    await opened
    if coalesce:  # the same transport as RabbitBroker's, so the comparison is fair
        coalesce_writes(conn)
    ch_open: asyncio.Future[Any] = loop.create_future()
    conn.channel(on_open_callback=lambda ch: ch_open.set_result(ch))
    return conn, await ch_open


async def _roundtrip(ch: Any, queue: str) -> int:
    """Passive declare: returns once the broker processed everything sent before on ``ch``."""
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    ch.queue_declare(queue, passive=True, callback=lambda frame: done.set_result(frame))
    frame = await done
    return int(frame.method.message_count)


async def _purge(ch: Any, queue: str) -> None:
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    ch.queue_purge(queue, callback=lambda frame: done.set_result(frame))
    await done


async def pipelined(broker: RabbitBroker, queue: str, n: int, window: int, body: bytes) -> float:
    per_sender, extra = divmod(n, window)

    async def sender(count: int) -> None:
        for _ in range(count):
            await broker.publish(queue, body)

    t0 = time.perf_counter()
    await asyncio.gather(*(sender(per_sender + (i < extra)) for i in range(window)))
    return n / (time.perf_counter() - t0)


async def wait_each(broker: RabbitBroker, queue: str, n: int, body: bytes) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await broker.publish(queue, body)
    return n / (time.perf_counter() - t0)


async def unconfirmed(ch: Any, queue: str, n: int, body: bytes) -> float:
    props = pika.BasicProperties(delivery_mode=2)
    t0 = time.perf_counter()
    for i in range(n):
        ch.basic_publish("", queue, body, props)
        if i % 500 == 499:
            await asyncio.sleep(0)  # let the loop write, as a real sender would
    await _roundtrip(ch, queue)
    return n / (time.perf_counter() - t0)


def _spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:>10,.0f}  [{min(values):,.0f} .. {max(values):,.0f}]"


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f}x  [{min(values):.2f} .. {max(values):.2f}]"


async def main(args: argparse.Namespace) -> None:
    queue = f"tidedesk-bench.{uuid.uuid4().hex[:8]}.inbound"
    body = b"x" * args.body_bytes
    windows = [int(w) for w in args.windows.split(",")]
    broker = RabbitBroker(args.url, inbound_queue=queue,  # declares the durable queue
                          inbound_queue_type=args.queue_type, coalesce=not args.no_coalesce)
    await broker.start()
    if not broker.ready:
        raise SystemExit(f"RabbitMQ at {args.url} is not reachable")
    conn, ch = await _raw_channel(args.url, not args.no_coalesce)
    n, n_each = args.messages, args.wait_each_messages
    modes: dict[str, tuple[int, Callable[[], Awaitable[float]]]] = {
        **{f"pipelined w={w}": (n, functools.partial(pipelined, broker, queue, n, w, body))
           for w in windows},
        "unconfirmed": (n, lambda: unconfirmed(ch, queue, n, body)),
        "wait-each": (n_each, lambda: wait_each(broker, queue, n_each, body)),
    }
    rates: dict[str, list[float]] = {name: [] for name in modes}
    cpu_us: dict[str, list[float]] = {name: [] for name in modes}
    load_before = os.getloadavg()[0]
    try:
        await pipelined(broker, queue, 2000, windows[0], body)  # warm-up
        await unconfirmed(ch, queue, 2000, body)
        await _purge(ch, queue)
        names = list(modes)
        for rep in range(args.reps):
            # rotate the order so that drift on a shared machine hits every mode alike
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                count, run = modes[name]
                cpu0 = time.process_time()
                rates[name].append(await run())
                cpu_us[name].append((time.process_time() - cpu0) / count * 1e6)
                await _purge(ch, queue)
            print(f"repetition {rep + 1}/{args.reps} done", flush=True)
    finally:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ch.queue_delete(queue, callback=lambda frame: done.set_result(frame))
        await done
        conn.close()
        await broker.close()

    print()
    print(f"RabbitMQ publish rate, persistent {args.body_bytes}-byte messages to a durable "
          f"{args.queue_type} queue, frames {'one by one' if args.no_coalesce else 'coalesced'}")
    print(f"{args.reps} repetitions of {n} messages ({n_each} for wait-each), modes interleaved; "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  {'mode':<18} {'msg/s median [min .. max]':>36}   client CPU us/msg (median)")
    for name in modes:
        print(f"  {name:<18} {_spread(rates[name]):>36}   {statistics.median(cpu_us[name]):6.1f}")
    print("Ratios within each repetition, median [min .. max]:")
    for w in windows:
        pipe = rates[f"pipelined w={w}"]
        vs_unconf = [p / u for p, u in zip(pipe, rates["unconfirmed"], strict=True)]
        vs_each = [p / e for p, e in zip(pipe, rates["wait-each"], strict=True)]
        print(f"  pipelined w={w} / unconfirmed   {_ratio(vs_unconf)}   (goal >= 0.60)")
        print(f"  pipelined w={w} / wait-each     {_ratio(vs_each)}   (goal >= 5)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--wait-each-messages", type=int, default=500)
    parser.add_argument("--windows", default="256,1024",
                        help="comma-separated numbers of publishes in flight (>= 200)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--body-bytes", type=int, default=256)
    parser.add_argument("--queue-type", choices=("classic", "quorum"), default="classic",
                        help="type of the inbound queue (classic is the production default)")
    parser.add_argument("--no-coalesce", action="store_true",
                        help="send pika's frames one by one (pika's own behaviour)")
    asyncio.run(main(parser.parse_args()))
