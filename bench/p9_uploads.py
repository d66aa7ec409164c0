"""P9: upload throughput and server memory while 20 clients upload 10 MB at once.

A fresh ``tidedesk dev`` (embedded: SQLite, the local-directory blob store) on CPU 0, and this
client on CPU 1. Each repetition: 20 visitors each upload one 10 MB file (text, so no image
re-encoding) at the same moment over their own connection. The server's peak resident memory
(VmHWM, reset through /proc/PID/clear_refs before the burst) minus its resident memory before
it, divided by the uploads in flight, is the memory one upload costs. The baseline, measured in
the same run: a bare Tornado server with Tornado's default upload handling (the body buffered
whole), bench/upload_sink.py, given the same burst.

Goal: Tidedesk's server grows by at most 2 MB per upload in flight (uploads stream to disk and
storage), where the buffered baseline grows by at least the file size.
Usage: ``python -m bench.p9_uploads [--reps 3] [--clients 20] [--mb 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from bench.common import (
    emit_json,
    free_port,
    goal_line,
    header,
    pin_self,
    rss_bytes,
    spread,
    subprocess_on_cpu,
    wait_http,
    workdir,
)

MB = 1_000_000


def peak_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


async def burst(port: int, tokens: list[str], body: bytes, ctype: str) -> tuple[float, int]:
    """(seconds, answers that were 201) for one upload per token, all at once."""
    http = AsyncHTTPClient(force_instance=True, max_clients=len(tokens))

    async def one(token: str) -> int:
        resp = await http.fetch(HTTPRequest(
            f"http://127.0.0.1:{port}/api/v1/attachments", method="POST", body=body,
            headers={"Content-Type": ctype, "Authorization": f"Bearer {token}"},
            request_timeout=120), raise_error=False)
        return resp.code

    started = time.perf_counter()
    codes = await asyncio.gather(*(one(t) for t in tokens))
    http.close()
    return time.perf_counter() - started, sum(c == 201 for c in codes)


async def visitors(port: int, n: int) -> list[str]:
    http = AsyncHTTPClient(force_instance=True)
    out = []
    for i in range(n):
        resp = await http.fetch(HTTPRequest(f"http://127.0.0.1:{port}/api/v1/visitors",
                                            method="POST", body=json.dumps({"name": f"p8 {i}"})))
        out.append(json.loads(resp.body)["token"])
    http.close()
    return out


def measure(pid: int, port: int, tokens: list[str], body: bytes, ctype: str
            ) -> tuple[float, float, int]:
    """(MB per upload in flight, MB/s, uploads stored) of one burst."""
    asyncio.run(burst(port, tokens[:2], body, ctype))  # warm: allocator, thread pools
    time.sleep(0.5)
    before = rss_bytes(pid)
    reset_peak(pid)
    seconds, ok = asyncio.run(burst(port, tokens, body, ctype))
    grown = max(0, peak_bytes(pid) - before)
    return grown / len(tokens) / MB, len(tokens) * len(body) / MB / seconds, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--mb", type=int, default=10)
    args = parser.parse_args()
    pin_self()
    header(f"P9 uploads: {args.clients} clients x {args.mb} MB at once")
    body, ctype = multipart(b"0123456789abcdef" * (args.mb * MB // 16))
    ours: list[float] = []
    base: list[float] = []
    speed: list[float] = []
    base_speed: list[float] = []
    with workdir("p8") as wd:
        port = free_port()
        env = {**os.environ, "TIDEDESK_PORT": str(port), "TIDEDESK_DATA_DIR": str(wd / "data"),
               "TIDEDESK_LOG_LEVEL": "WARNING", "TIDEDESK_RATE_LIMIT_IP_PER_MIN": "0",
               "TIDEDESK_RATE_LIMIT_TOKEN_PER_MIN": "0",
               "TIDEDESK_ATTACHMENT_MAX_BYTES": str(args.mb * MB + 1)}
        for key in ("TIDEDESK_BROKER_URL", "TIDEDESK_REDIS_URL", "TIDEDESK_DATABASE_URL"):
            env.pop(key, None)
        cmd = [sys.executable, "-m", "tidedesk.cli", "dev"]
        with subprocess_on_cpu(cmd, wd / "tidedesk.log", env=env) as proc:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            tokens = asyncio.run(visitors(port, args.clients))
            for _ in range(args.reps):
                per, mbps, ok = measure(proc.pid, port, tokens, body, ctype)
                assert ok == args.clients, f"only {ok} of {args.clients} uploads stored"
                ours.append(per)
                speed.append(mbps)
            stored = sum(p.stat().st_size for p in Path(wd / "data" / "attachments").rglob("*")
                         if p.is_file())
        sink_port = free_port()
        with subprocess_on_cpu([sys.executable, "-m", "bench.upload_sink", str(sink_port)],
                               wd / "sink.log") as sink:
            wait_http(f"http://127.0.0.1:{sink_port}/readyz")
            for _ in range(args.reps):
                per, mbps, _ = measure(sink.pid, sink_port, ["x"] * args.clients, body, ctype)
                base.append(per)
                base_speed.append(mbps)
    print(f"  Tidedesk: {spread(ours)} MB per upload in flight, {spread(speed, '{:.0f}')} MB/s; "
          f"{stored / MB:.0f} MB stored")
    print(f"  buffered Tornado baseline: {spread(base)} MB per upload in flight, "
          f"{spread(base_speed, '{:.0f}')} MB/s")
    ratios = [o / b for o, b in zip(ours, base, strict=True) if b > 0]
    print(f"  memory per upload, Tidedesk / baseline: {spread(ratios, '{:.2f}')}")
    print(f"  throughput, Tidedesk / baseline: "
          f"{spread([o / b for o, b in zip(speed, base_speed, strict=True)], '{:.2f}')}")
    print(goal_line("P9 server memory per upload in flight (MB)", ours, "<= 2 MB",
                    lambda v: v <= 2.0))
    emit_json("P9", {"mb_per_upload": ours, "baseline_mb_per_upload": base,
                     "mb_per_s": speed, "baseline_mb_per_s": base_speed})


if __name__ == "__main__":
    main()


