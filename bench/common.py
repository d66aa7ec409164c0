"""What every benchmark shares: spreads and goal lines, CPU pinning, file-descriptor limits,
process memory, a Tidedesk cluster on the local servers (tests/support/cluster.py), HAProxy with a
generated config, the bare Tornado echo server, and WebSocket load loops for the baselines.

Benchmarks print figures; they never fail on timing (a missed goal is printed, not raised).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

from tidedesk.loadplan import latency_summary

REPO = Path(__file__).resolve().parent.parent
# Two CPUs: servers on the first, the load client on the second (when there are two).
SERVER_CPU, CLIENT_CPU = 0, 1


# -- printing ---------------------------------------------------------------------------------
def spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """median [min .. max]"""
    if not values:
        return "n/a"
    return (f"{fmt.format(statistics.median(values))} "
            f"[{fmt.format(min(values))} .. {fmt.format(max(values))}]")


def goal_line(name: str, ratios: Sequence[float], goal: str, ok: Callable[[float], bool],
              fmt: str = "{:.2f}") -> str:
    """The figure's spread and whether its median meets the goal (and whether every
    repetition did: on a shared machine single repetitions stray)."""
    if not ratios:
        verdict = "n/a"
    elif ok(statistics.median(ratios)):
        verdict = "met" + ("" if all(ok(r) for r in ratios) else " (median; not every rep)")
    else:
        verdict = "MISSED" + (" (median; some reps met it)" if any(ok(r) for r in ratios)
                              else "")
    return f"  {name:<44} {spread(ratios, fmt):>26}   goal {goal:<8} {verdict}"


def cpu_line(wall: float, client_cpu: float, servers: str = "") -> str:
    """The report's CPU line: the load client's share of a core (so a reader sees it was not
    the bottleneck), then what the servers used."""
    line = (f"  CPU over the run ({wall:.0f} s): load client {client_cpu:.1f} s "
            f"({client_cpu / wall:.0%} of a core)")
    return f"{line}; {servers}" if servers else line


def header(title: str) -> None:
    load = os.getloadavg()[0]
    print(f"\n=== {title}  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load average {load:.1f} on {os.cpu_count()} CPUs)", flush=True)


def emit_json(name: str, data: dict[str, Any]) -> None:
    """A machine-readable line the suite runner collects (``BENCH-JSON {...}``)."""
    print("BENCH-JSON " + json.dumps({"bench": name, **data}), flush=True)


# -- processes --------------------------------------------------------------------------------
def can_pin() -> bool:
    """taskset is there, there are two CPUs, and BENCH_NO_PIN is not set (to compare)."""
    return (shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
            and not os.environ.get("BENCH_NO_PIN"))


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` to ``cpu`` (best effort: a failure only costs precision)."""
    if can_pin():
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)],
                       capture_output=True, check=False)


def pin_self() -> None:
    if can_pin():
        os.sched_setaffinity(0, {CLIENT_CPU})


def raise_nofile(want: int = 65536) -> int:
    """Raise this process's open-file limit (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def free_port() -> int:
    from tests.support.processes import free_port as _free_port

    return _free_port()


@contextlib.contextmanager
def subprocess_on_cpu(args: list[str], log: Path, cpu: int = SERVER_CPU,
                      env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    # Started on its CPU (taskset execs the program, same pid), not moved there afterwards: a
    # server sizes itself by the CPUs it starts with (HAProxy 2.6 ran two threads on the one
    # core it was then pinned to).
    argv = ["taskset", "-c", str(cpu), *args] if can_pin() else args
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    pin(proc.pid, cpu)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def echo_server(workdir: Path, ping_interval_s: float = 0) -> Iterator[tuple[int, int]]:
    """The bare Tornado WebSocket echo server (bench/echo_server.py): (port, pid)."""
    port = free_port()
    with subprocess_on_cpu([sys.executable, str(REPO / "bench" / "echo_server.py"), str(port),
                            str(ping_interval_s)], workdir / f"echo-{port}.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield port, proc.pid


HAPROXY_CFG = """global
    # about 2 fds per connection: within the 20 000 open files a process may have here
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout http-keep-alive 10s
    option redispatch
    retries 3
frontend public
    bind 127.0.0.1:{port}
    default_backend chatnodes
backend chatnodes
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host haproxy
    # Checks tolerant of a CPU-starved node (a slow /readyz is not a dead node); a killed node
    # refuses connections, and redispatch sends the client to the other one at once.
    timeout check 5s
    default-server check inter 1s fastinter 500ms fall 3 rise 2
{servers}
"""


@contextlib.contextmanager
def haproxy(workdir: Path, backends: Sequence[int]) -> Iterator[int]:
    """HAProxy on loopback in front of ``backends`` (chat node ports): its port.

    The generated config keeps haproxy/haproxy.cfg's balancing (leastconn, /readyz checks,
    tunnel timeouts) but no per-address limits: the whole load comes from one address here.
    """
    port = free_port()
    servers = "\n".join(f"    server node{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
    cfg = workdir / f"haproxy-{port}.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, servers=servers), encoding="utf-8")
    with subprocess_on_cpu(["haproxy", "-db", "-f", str(cfg)], workdir / f"haproxy-{port}.log"):
        wait_http(f"http://127.0.0.1:{port}/readyz")
        yield port


@contextlib.contextmanager
def tidedesk_cluster(workdir: Path, **env: str) -> Iterator[Any]:
    """tests/support/cluster.py's throwaway cluster (vhost, key prefix, MariaDB shards), with the
    per-connection rate limit raised so one socket can carry a benchmark's traffic, and the
    per-address and per-token limits off (every client of a benchmark comes from 127.0.0.x)."""
    from tests.support.cluster import cluster

    with cluster(workdir, shards=1) as c:
        c.env.update({"TIDEDESK_RATE_LIMIT_PER_10S": "10000", "TIDEDESK_LOG_LEVEL": "WARNING",
                      "TIDEDESK_RATE_LIMIT_IP_PER_MIN": "0",
                      "TIDEDESK_RATE_LIMIT_TOKEN_PER_MIN": "0",
                      "TIDEDESK_DB_POOL_SIZE": "4", **env})
        yield c


def start_pinned(c: Any, role: str, name: str, cpu: int = SERVER_CPU) -> Any:
    proc = c.start(role, name)
    pin(proc.popen.pid, cpu)
    return proc


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A scratch folder for configs and server logs; kept (and named) with BENCH_KEEP=1."""
    if os.environ.get("BENCH_KEEP"):
        path = Path(tempfile.mkdtemp(prefix=f"tidedesk-bench-{name}-"))
        print(f"  logs kept in {path}", flush=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"tidedesk-bench-{name}-") as d:
        yield Path(d)


def agents_for(c: Any, count: int, max_chats: int) -> list[Any]:
    from tidedesk.loadplan import AgentLogin

    stamp = os.urandom(3).hex()
    out = []
    for i in range(count):
        email = f"bench{stamp}-{i}@bench.test"
        c.add_agent(email, max_chats=max_chats)
        out.append(AgentLogin(email, "password1"))
    return out


# -- baseline clients (echo) ------------------------------------------------------------------
async def _open(url: str) -> WebSocketClientConnection:
    return await websocket_connect(url)


async def echo_closed_loop(port: int, conns: int, window: int, seconds: float,
                           frame: str) -> dict[str, Any]:
    """``conns`` sockets each keeping ``window`` frames in flight for ``seconds``: replies/s and
    round-trip latency (a reply is matched to its send by order on the socket)."""
    url = f"ws://127.0.0.1:{port}/ws"
    sockets = await asyncio.gather(*(_open(url) for _ in range(conns)))
    lat: list[float] = []
    count = 0
    stop_at = time.perf_counter() + seconds

    async def run(ws: WebSocketClientConnection) -> None:
        nonlocal count
        sent: list[float] = []
        for _ in range(window):
            sent.append(time.perf_counter())
            await ws.write_message(frame)
        while time.perf_counter() < stop_at:
            if await ws.read_message() is None:
                return
            now = time.perf_counter()
            lat.append(now - sent.pop(0))
            count += 1
            sent.append(now)
            await ws.write_message(frame)

    t0 = time.perf_counter()
    await asyncio.gather(*(run(ws) for ws in sockets))
    wall = time.perf_counter() - t0
    for ws in sockets:
        ws.close()
    return {"per_s": count / wall, "latency": latency_summary(lat)}


async def echo_open_loop(port: int, conns: int, total_rate: float, seconds: float,
                         frame: str) -> dict[str, Any]:
    """``total_rate`` frames/s offered, spread over ``conns`` sockets at fixed intervals
    (independent of replies): round-trip latency at that rate."""
    url = f"ws://127.0.0.1:{port}/ws"
    sockets = await asyncio.gather(*(_open(url) for _ in range(conns)))
    lat: list[float] = []
    interval = conns / total_rate
    stop_at = time.perf_counter() + seconds

    async def reader(ws: WebSocketClientConnection, sent: list[float]) -> None:
        while True:
            if await ws.read_message() is None:
                return
            lat.append(time.perf_counter() - sent.pop(0))

    async def writer(i: int, ws: WebSocketClientConnection) -> None:
        sent: list[float] = []
        task = asyncio.create_task(reader(ws, sent))
        next_at = time.perf_counter() + interval * i / conns
        while next_at < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            sent.append(time.perf_counter())
            await ws.write_message(frame)
            next_at += interval
        # the last replies, then stop
        deadline = time.perf_counter() + 3
        while sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()

    await asyncio.gather(*(writer(i, ws) for i, ws in enumerate(sockets)), return_exceptions=True)
    for ws in sockets:
        ws.close()
    return {"latency": latency_summary(lat)}


def message_frame(body_chars: int) -> str:
    """What a visitor's message looks like on the wire, for the echo baselines."""
    body = ("load " * (body_chars // 5 + 1))[:body_chars]
    return json.dumps({"type": "message", "id": "lg0123abcd-12-345", "body": body})


def batch_bodies(port: int) -> dict[str, float]:
    """Envelopes per AMQP message a process published so far, by queue label, from its
    ``tidedesk_broker_batch_bodies`` histogram (issue 17's broker batches); {} without it."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            prefix = f"tidedesk_broker_batch_bodies{suffix}{{queue=\""
            if line.startswith(prefix):
                label = line[len(prefix):].split('"', 1)[0]
                into[label] = float(line.rsplit(" ", 1)[1])
    return {q: sums[q] / counts[q] for q in counts if counts[q] and q in sums}
