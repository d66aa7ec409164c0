"""Broker envelopes: bytes and encode + decode time, binary v1 (msgspec MessagePack) vs JSON.

Not a test: it prints figures and never fails on timing. For each representative envelope the
JSON baseline is what the previous version put on the queues (``json.dumps(..., ensure_ascii=
False)`` of a dict, read back with ``json.loads``, no schema check), measured in the same run,
back to back with the binary encoding, in rotating order over several repetitions. Times are
the median over the repetitions of the mean per envelope; the spread is min-max.

Three ways are timed:
- ``json``: the old path, dict → JSON bytes → dict (nothing checked);
- ``binary``: the new path, Struct → ``encode_inbound`` / ``encode_delivery`` → schema-checked
  decode (``decode_inbound`` / ``decode_delivery``);
- ``json+schema``: what a new router does with JSON an older chat node queued (the old
  encoding, the new schema-checked decode).

Usage: ``python bench/envelope_bytes.py [--reps 7] [--n 20000]``
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, too

from tidedesk.envelopes import (
    AgentStatusEvent,
    InboundEvent,
    MessageEvent,
    OpenedEvent,
    decode_delivery,
    decode_inbound,
    encode_delivery,
    encode_delivery_json,
    encode_inbound,
    event_to_mapping,
)

CONV = "9f3c2a7b1e4d4c0a8b6f5e2d1c0b9a87"  # ids look like the real ones (uuid4 hex)
VISITOR = "4b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5e"
TS = 1764300000.123456


def _message(body: str, name: str = "Vera", sender: str = "visitor") -> MessageEvent:
    return MessageEvent(CONV, VISITOR, 42, "c-1764300000123-7", sender,  # type: ignore[arg-type]
                        VISITOR if sender == "visitor" else "17", name, body, TS)


def _message_frame(event: MessageEvent) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "message", "conversation_id": event.conversation_id,
                             "seq": event.seq, "id": event.id, "from": event.from_,
                             "body": event.body, "ts": event.ts}
    if event.name:
        frame["name"] = event.name
    return frame


SHORT = _message("Hi, where is my order?")
CHINESE = _message("您好，我的订单什么时候发货？我昨天下午付的款，订单号是 20261128-8848。",
                   "王小明")
LONG = _message("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 70)  # ~4000 chars

INBOUND: dict[str, InboundEvent] = {
    "inbound: short chat message": SHORT,
    "inbound: Chinese text": CHINESE,
    "inbound: long message (4000 chars)": LONG,
    "inbound: opened (tags)": OpenedEvent(CONV, VISITOR, ("vip", "returning")),
    "inbound: agent status": AgentStatusEvent("17", "online", ("general", "experts"), 3,
                                              "Ann Agent"),
}
DELIVERIES: dict[str, tuple[str, dict[str, Any]]] = {
    "delivery: short message frame": ("agent:17", _message_frame(SHORT)),
    "delivery: Chinese message frame": ("agent:17", _message_frame(CHINESE)),
    "delivery: long message frame": (f"visitor:{VISITOR}", _message_frame(LONG)),
    "delivery: state frame": (f"visitor:{VISITOR}", {"type": "state", "state": "assigned"}),
    "delivery: queue position": (f"visitor:{VISITOR}", {"type": "queue", "position": 3}),
    "delivery: assigned (agent)": ("agent:17", {
        "type": "assigned", "conversation_id": CONV, "last_seq": 0,
        "visitor": {"id": VISITOR, "name": "Vera", "tags": ["vip"], "locale": "en"}}),
}

Case = tuple[Callable[[], bytes], Callable[[bytes], object]]


def _json_bytes(mapping: dict[str, Any]) -> bytes:
    return json.dumps(mapping, ensure_ascii=False).encode()  # exactly what older nodes sent


def _cases() -> dict[str, dict[str, Case]]:
    """name → way → (encode, decode), every way carrying the same content."""
    out: dict[str, dict[str, Case]] = {}
    for name, event in INBOUND.items():
        as_json = functools.partial(_json_bytes, event_to_mapping(event))
        out[name] = {"json": (as_json, json.loads),
                     "binary": (functools.partial(encode_inbound, event), decode_inbound),
                     "json+schema": (as_json, decode_inbound)}
    for name, (who, frame) in DELIVERIES.items():
        as_json = functools.partial(encode_delivery_json, who, frame)
        out[name] = {"json": (as_json, json.loads),
                     "binary": (functools.partial(encode_delivery, who, frame), decode_delivery),
                     "json+schema": (as_json, decode_delivery)}
    return out


def _time_per_envelope(encode: Callable[[], bytes], decode: Callable[[bytes], object],
                       n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        decode(encode())
    return (time.perf_counter() - started) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions (default 7)")
    parser.add_argument("--n", type=int, default=20000,
                        help="envelopes per way per repetition (default 20000)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.n < 1:
        parser.error("--reps and --n must be at least 1")
    cases = _cases()
    ways = ("json", "binary", "json+schema")

    print("Bytes per envelope (binary v1 = 1 version byte + MessagePack, vs JSON as before)")
    print(f"{'envelope':<38} {'JSON':>6} {'binary':>7} {'saved':>7}")
    total_json = total_bin = 0
    for name, by_way in cases.items():
        size_json = len(by_way["json"][0]())
        size_bin = len(by_way["binary"][0]())
        assert by_way["binary"][1](by_way["binary"][0]()) is not None  # it decodes
        total_json += size_json
        total_bin += size_bin
        print(f"{name:<38} {size_json:>6} {size_bin:>7} {1 - size_bin / size_json:>7.0%}")
    print(f"{'all of the above':<38} {total_json:>6} {total_bin:>7} "
          f"{1 - total_bin / total_json:>7.0%}")

    times: dict[str, dict[str, list[float]]] = {n: {w: [] for w in ways} for n in cases}
    for rep in range(args.reps):
        order = ways[rep % 3:] + ways[:rep % 3]  # rotate, so no way always runs first
        for name, by_way in cases.items():
            for way in order:
                times[name][way].append(_time_per_envelope(*by_way[way], args.n))

    print(f"\nEncode + decode time per envelope, microseconds: median of {args.reps} "
          f"repetitions x {args.n} envelopes [min-max]")
    print(f"{'envelope':<38} {'json (old)':>18} {'binary':>18} {'json+schema':>18} "
          f"{'binary/json':>11}")

    def cell(values: list[float]) -> str:
        return (f"{statistics.median(values) * 1e6:5.2f} "
                f"[{min(values) * 1e6:.2f}-{max(values) * 1e6:.2f}]")

    for name in cases:
        t = times[name]
        ratio = statistics.median(t["binary"]) / statistics.median(t["json"])
        print(f"{name:<38} {cell(t['json']):>18} {cell(t['binary']):>18} "
              f"{cell(t['json+schema']):>18} {ratio:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
