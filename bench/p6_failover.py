"""P6: two chat nodes with N visitors (5 000 by default), one killed: time until all are back vs a
cold connect of N, and the share of missed messages replayed.

Per repetition, a fresh cluster: a router and chat nodes A and B (CPU 0) behind HAProxy
(generated config: leastconn, /readyz checks every 500 ms, redispatch), this client on CPU 1.

1. Agents (100 chats each) sign in directly on B, the node that will survive.
2. N visitors are created, then connect through HAProxy like widgets opening a page at the same
   moment: each starts after 0.25-0.5 s (the widget's first backoff step) and retries with the
   widget's backoff on failure. Cold connect time = start → the last hello. Every chat is
   then assigned to an agent.
3. Chat node A is killed (SIGKILL). Every agent sends one message to each of its chats over the
   next 5 s (again with the same id when answered ``try_again``, as the console does).
   Visitors whose socket died reconnect exactly as the widget does (equal-jitter backoff from
   0.5 s doubling, reconnect through HAProxy, ``resume`` with the last seq seen).
   Time until all are back = kill → the last of them has its hello and sent its resume.
4. Every message an agent had acked must reach its visitor: the ones the dead node's visitors
   missed must arrive after they reconnect (replayed).

Goals: back within 2× the cold connect time; 100% of missed messages replayed.
Usage: ``python -m bench.p6_failover [--visitors 5000] [--reps 2]``
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from typing import Any

from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    websocket_connect,
)

from bench.common import (
    agents_for,
    cpu_line,
    emit_json,
    goal_line,
    haproxy,
    header,
    pin_self,
    raise_nofile,
    spread,
    start_pinned,
    tidedesk_cluster,
    workdir,
)

# The widget's reconnect backoff (chatnode/static/widget.js): full range doubles from 0.5 s up
# to 30 s, the delay drawn from its upper half.
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 30.0
CREATE_CONCURRENCY = 200
RECONNECT_DEADLINE_S = 120.0
DELIVERY_DEADLINE_S = 30.0
ASSIGN_DEADLINE_S = 120.0
# The widget sets no handshake timeout of its own (the browser's is minutes); a short one
# here would abandon slow handshakes the node still works on and retry: a storm of our making.
HANDSHAKE_TIMEOUT_S = 60.0
# Each agent's one message per chat goes out over this long after the kill.
AGENT_SPREAD_S = 5.0
# Failed connection attempts by kind (HTTP status of the handshake, or exception), per run.
FAILURES: dict[str, int] = {}


def backoff_s(attempt: int, rnd: float) -> float:
    cap = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(attempt, 16))
    return float(cap / 2 + rnd * cap / 2)


class Visitor:
    def __init__(self, token: str, ws_url: str) -> None:
        self.url = f"{ws_url}/ws/visitor?token={token}"
        self.conv_id = ""
        self.ws: WebSocketClientConnection | None = None
        self.seqs_first: set[int] = set()   # agent messages seen on the first connection
        self.seqs_later: set[int] = set()   # ... and after a reconnect
        self.assigned = asyncio.Event()
        self.lost_at: float | None = None
        self.back_at: float | None = None
        self.connections = 0
        self.attempts = 0
        self.connected_at: float | None = None

    async def connect(self, rng: random.Random, first_delay: bool) -> None:
        """Connect (with the widget's backoff between attempts); hello; resume if needed."""
        attempt = 0
        deadline = time.perf_counter() + RECONNECT_DEADLINE_S
        while time.perf_counter() < deadline:
            if attempt or first_delay:
                await asyncio.sleep(backoff_s(attempt, rng.random()))
            attempt += 1
            self.attempts += 1
            try:
                ws = await websocket_connect(self.url, connect_timeout=HANDSHAKE_TIMEOUT_S)
                raw = await asyncio.wait_for(ws.read_message(), HANDSHAKE_TIMEOUT_S)
            except Exception as exc:  # refused, reset, a 502/503 handshake: try again later
                kind = getattr(exc, "code", None) or type(exc).__name__
                FAILURES[str(kind)] = FAILURES.get(str(kind), 0) + 1
                continue
            if raw is None:
                continue
            hello = json.loads(raw)
            if hello.get("type") != "hello":
                ws.close()
                continue
            self.conv_id = hello["conversation_id"]
            if hello.get("state") == "assigned":
                self.assigned.set()
            self.connections += 1
            self.ws = ws
            if self.connections > 1:
                seen = self.seqs_first | self.seqs_later
                await ws.write_message(json.dumps({"type": "resume",
                                                   "after_seq": max(seen, default=0)}))
                self.back_at = time.perf_counter()
            self.connected_at = time.perf_counter()
            return
        raise TimeoutError("visitor could not connect within the deadline")

    async def read(self, rng: random.Random) -> None:
        while True:
            assert self.ws is not None
            raw = await self.ws.read_message()
            if raw is None:
                self.lost_at = time.perf_counter()
                await self.connect(rng, first_delay=True)
                continue
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "assigned":
                self.assigned.set()
            elif kind == "message" and frame.get("from") == "agent":
                (self.seqs_first if self.connections == 1 else self.seqs_later).add(frame["seq"])


class Agent:
    def __init__(self) -> None:
        self.ws: WebSocketClientConnection | None = None
        self.chats: list[str] = []
        self.acked: dict[str, int] = {}     # client id → seq
        self.sent: dict[str, str] = {}      # client id → conversation
        self.closed: str | None = None      # why the server closed this console, if it did
        self.errors: dict[str, int] = {}    # error frames by code
        self.retry: set[str] = set()        # client ids answered try_again

    async def start(self, http_base: str, ws_base: str, email: str, password: str) -> None:
        http = AsyncHTTPClient()
        resp = await http.fetch(f"{http_base}/api/v1/auth/login", method="POST",
                                body=json.dumps({"email": email, "password": password}))
        token = json.loads(resp.body)["access_token"]
        self.ws = await websocket_connect(f"{ws_base}/ws/agent?token={token}",
                                          max_message_size=1 << 24)

    async def read(self) -> None:
        assert self.ws is not None
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                self.closed = f"{self.ws.close_code} {self.ws.close_reason}"
                return
            frame = json.loads(raw)
            if frame.get("type") == "assigned":
                self.chats.append(frame["conversation_id"])
            elif frame.get("type") == "ack":
                self.acked[frame["id"]] = frame["seq"]
            elif frame.get("type") == "error":
                code = str(frame.get("code"))
                self.errors[code] = self.errors.get(code, 0) + 1
                if code == "try_again" and frame.get("id") in self.sent:
                    self.retry.add(frame["id"])

    async def say_to_all(self, over_s: float) -> None:
        """One message to each chat, spread over ``over_s`` (a person types; a console does
        not fire a hundred messages in one go); a ``try_again`` is sent again with the same
        id, as the console does, until the delivery deadline."""
        assert self.ws is not None
        gap = over_s / max(1, len(self.chats))
        for conv in self.chats:
            client_id = uuid.uuid4().hex
            self.sent[client_id] = conv
            if not await self._send(client_id):
                return
            await asyncio.sleep(gap)
        deadline = time.perf_counter() + DELIVERY_DEADLINE_S
        while time.perf_counter() < deadline and len(self.acked) < len(self.sent):
            await asyncio.sleep(1.0)
            for client_id in list(self.retry):
                self.retry.discard(client_id)
                if not await self._send(client_id):
                    return

    async def _send(self, client_id: str) -> bool:
        assert self.ws is not None
        try:
            await self.ws.write_message(json.dumps({
                "type": "message", "conversation_id": self.sent[client_id], "id": client_id,
                "body": "still there?"}))
        except WebSocketClosedError:
            return False
        return True


async def create_tokens(base: str, n: int) -> list[str]:
    http = AsyncHTTPClient(force_instance=True, max_clients=CREATE_CONCURRENCY)
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(i: int) -> str:
        async with sem:
            resp = await http.fetch(f"{base}/api/v1/visitors", method="POST",
                                    body=json.dumps({"name": f"p6 {i}"}), request_timeout=60)
            return str(json.loads(resp.body)["token"])

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        http.close()


async def wait_until(pred: Any, timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.1)
    return bool(pred())


async def one_run(n: int, rep: int) -> dict[str, Any]:
    rng = random.Random(rep)
    FAILURES.clear()
    with workdir("p6") as wd, tidedesk_cluster(wd, TIDEDESK_WS_PING_INTERVAL_S="20") as c:
        start_pinned(c, "router", "p6-router")
        node_a = start_pinned(c, "chatnode", "p6-chat-a")
        node_b = start_pinned(c, "chatnode", "p6-chat-b")
        with haproxy(wd, [node_a.port, node_b.port]) as hport:
            pin_self()
            base, ws_base = f"http://127.0.0.1:{hport}", f"ws://127.0.0.1:{hport}"
            agents = [Agent() for _ in range((n + 99) // 100)]
            logins = agents_for(c, len(agents), max_chats=100)
            b_http, b_ws = f"http://127.0.0.1:{node_b.port}", f"ws://127.0.0.1:{node_b.port}"
            await asyncio.gather(*(a.start(b_http, b_ws, lg.email, lg.password)
                                   for a, lg in zip(agents, logins, strict=True)))
            agent_readers = [asyncio.create_task(a.read()) for a in agents]
            tokens = await create_tokens(base, n)
            visitors = [Visitor(t, ws_base) for t in tokens]

            t0 = time.perf_counter()
            await asyncio.gather(*(v.connect(rng, first_delay=True) for v in visitors))
            cold_s = time.perf_counter() - t0
            readers = [asyncio.create_task(v.read(rng)) for v in visitors]
            assigned_ok = await wait_until(lambda: all(v.assigned.is_set() for v in visitors),
                                           ASSIGN_DEADLINE_S)
            assigned = sum(v.assigned.is_set() for v in visitors)
            print(f"  run {rep + 1}: cold connect of {n} in {cold_s:.1f} s; assigned {assigned}"
                  f" ({'all' if assigned_ok else 'not all'} within {ASSIGN_DEADLINE_S:.0f} s)",
                  flush=True)

            cold_failures = dict(FAILURES)
            FAILURES.clear()
            t_kill = time.perf_counter()
            node_a.kill(signal.SIGKILL)
            talk = asyncio.gather(*(a.say_to_all(AGENT_SPREAD_S) for a in agents))
            await asyncio.sleep(1.0)  # every socket on A has noticed by now
            lost = [v for v in visitors if v.lost_at is not None and v.lost_at >= t_kill]
            back_ok = await wait_until(lambda: all(v.back_at is not None for v in lost),
                                       RECONNECT_DEADLINE_S)
            back_s = max((v.back_at or time.perf_counter()) for v in lost) - t_kill \
                if lost else 0.0

            await talk
            sent = sum(len(a.sent) for a in agents)
            by_conv: dict[str, int] = {}
            for a in agents:
                for client_id, seq in a.acked.items():
                    by_conv[a.sent[client_id]] = seq

            def received() -> int:
                return sum(1 for v in visitors if by_conv.get(v.conv_id) in
                           (v.seqs_first | v.seqs_later))

            await wait_until(lambda: received() >= len(by_conv), DELIVERY_DEADLINE_S)
            # A message the agent never had acked promises nothing; the rest must all arrive.
            missed = [v for v in lost
                      if v.conv_id in by_conv and by_conv[v.conv_id] not in v.seqs_first]
            replayed = [v for v in missed if by_conv.get(v.conv_id) in v.seqs_later]
            dropped = [a.closed for a in agents if a.closed]
            agent_errors: dict[str, int] = {}
            for a in agents:
                for code, count in a.errors.items():
                    agent_errors[code] = agent_errors.get(code, 0) + count
            if dropped:
                print(f"  run {rep + 1}: {len(dropped)} agent consoles were closed by the chat "
                      f"node: {dropped[:3]}", flush=True)
            result = {
                "visitors": n, "assigned": assigned, "agents_dropped": len(dropped),
                "cold_s": cold_s, "back_s": back_s, "lost": len(lost),
                "back_all": back_ok, "agent_sent": sent, "agent_acked": len(by_conv),
                "delivered": received(), "missed": len(missed), "replayed": len(replayed),
                "connect_attempts_max": max((v.attempts for v in visitors), default=0),
                "connect_attempts_total": sum(v.attempts for v in visitors),
                "agent_errors": agent_errors, "cold_failures": cold_failures,
                "reconnect_failures": dict(FAILURES),
            }
            for task in [*readers, *agent_readers]:
                task.cancel()
            await asyncio.gather(*readers, *agent_readers, return_exceptions=True)
            for v in visitors:
                if v.ws is not None:
                    v.ws.close()
            for a in agents:
                if a.ws is not None:
                    a.ws.close()
            print(f"  run {rep + 1}: {len(lost)} visitors lost their node; all back in "
                  f"{back_s:.1f} s ({back_ok}); {len(replayed)}/{len(missed)} missed messages "
                  f"replayed; {received()}/{len(by_conv)} acked agent messages delivered "
                  f"({sent} sent; agent errors {agent_errors or 'none'}); connect attempts "
                  f"{result['connect_attempts_total']} for {n} visitors + {len(lost)} "
                  f"reconnects (at most {result['connect_attempts_max']} for one); failed "
                  f"attempts: cold {cold_failures or 'none'}, after the kill "
                  f"{result['reconnect_failures'] or 'none'}", flush=True)
            return result


async def run(args: Any) -> None:
    header(f"P6 failover: two chat nodes, {args.visitors} visitors, one node killed")
    print(f"  open-file limit {raise_nofile()}")
    t0, client0 = time.perf_counter(), time.process_time()
    results = []
    for rep in range(args.reps):
        results.append(await one_run(args.visitors, rep))
    wall, client_cpu = time.perf_counter() - t0, time.process_time() - client0
    ratio = [r["back_s"] / r["cold_s"] for r in results]
    share = [r["replayed"] / r["missed"] if r["missed"] else 1.0 for r in results]
    print(f"{args.reps} runs of {args.visitors} visitors; median [min .. max]")
    print(f"  cold connect of {args.visitors} (s)  {spread([r['cold_s'] for r in results])}")
    print(f"  back after the kill (s)      {spread([r['back_s'] for r in results])}   "
          f"({spread([r['lost'] for r in results], '{:.0f}')} visitors had to reconnect)")
    print(goal_line("P6 back after kill / cold connect", ratio, "<= 2",
                    lambda r: r <= 2))
    print(goal_line("P6 missed messages replayed (share)", share, "= 1.00",
                    lambda r: r >= 1.0, "{:.4f}"))
    print(cpu_line(wall, client_cpu))
    emit_json("P6", {"runs": results, "ratio": ratio, "replayed_share": share,
                     "client_cpu_s": client_cpu, "wall_s": wall})


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=2)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
