"""P10: a memory soak. 300 visitors at 1 msg/s for 30 minutes, agents answering and reading,
visitors leaving (their chat closed by its agent) and new ones arriving: does memory stay flat?

Two cases, each against servers started fresh for the run:

- ``cluster``: 2 chat nodes behind HAProxy and 1 router (tests/support/cluster.py: a throwaway
  RabbitMQ vhost, Redis key prefix and MariaDB shard);
- ``embedded``: ``tidedesk dev`` (one process, SQLite, the in-memory store).

The load (this process, ``--visitors`` slots): each slot is one visitor at a time, who creates
itself (``POST /api/v1/visitors``), connects, opens a chat, sends ``--rate`` messages a second
(at most ``--window`` of them unacked: an overloaded server is offered less, as people wait
for their messages to show, rather than a backlog) for about ``--life`` minutes (the first
lives are staggered so that departures spread evenly),
reads what the agent answers, and leaves: the chat's agent closes it (``close``), the visitor
disconnects, and a new visitor takes the slot. Agents (enough for every slot, 100 chats each
at most) read every visitor message (``read`` every 5th) and answer every ``--answer-every``-th.

Every ``--every`` seconds it samples the resident memory (VmRSS) of every server process, and
in the cluster the Redis server's ``used_memory`` (shared with whatever else uses this Redis),
the number of keys under the run's prefix by kind (``seq``, ``cids``, ``hist``, ...) and their
own bytes (``MEMORY USAGE``, summed), and the database's row counts (messages, conversations
open and closed). Then it prints, per series, the slope in KB/min over the first and the second
half of the load and the same slope per message handled (the baseline: KB kept per message,
the issue measured 0.9 KB/message before the fix), and a verdict: *flat* when the second half's
slope is at most ``FLAT_KB_PER_MESSAGE``. At the end (cluster) it checks which Redis keys the
closed conversations left behind, and samples once more after the load stopped.

Not a test: it prints figures and never fails on them.
Usage: ``python -m bench.p10_soak [--case cluster|embedded|both] [--minutes 30] [--quick]
[--visitors 300] [--rate 1] [--life 5] [--every 30]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.common import (
    SERVER_CPU,
    agents_for,
    cpu_line,
    emit_json,
    free_port,
    goal_line,
    haproxy,
    header,
    pin,
    rss_bytes,
    start_pinned,
    subprocess_on_cpu,
    tidedesk_cluster,
    wait_http,
    workdir,
)
from tidedesk.loadplan import AgentLogin

# Flat: the second half keeps at most this many KB per message handled (the leak was
# 0.9 KB/message: this is 1/18 of it, ~16 MB over 30 minutes at 300 messages/s).
FLAT_KB_PER_MESSAGE = 0.05
MAX_CHATS = 100
BODY_CHARS = 40


# -- the load ---------------------------------------------------------------------------------
class Load:
    """Visitor slots and agents; counts what happened (``self.n``)."""

    def __init__(self, url: str, agents: list[AgentLogin], args: argparse.Namespace) -> None:
        self.url = url.rstrip("/")
        self.ws_base = "ws" + self.url[len("http"):]
        self.agents = agents
        self.args = args
        self.n: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.owner_conn: dict[str, WebSocketClientConnection] = {}  # conversation → agent socket
        # Chats whose visitor left before their agent was known: closed when one is.
        self.abandoned: set[str] = set()
        self.stopping = False
        self.http = AsyncHTTPClient(force_instance=True, max_clients=64)
        self.run_id = uuid.uuid4().hex[:6]
        self.body = ("soak " * (BODY_CHARS // 5 + 1))[:BODY_CHARS]
        self._ids = itertools.count()

    @property
    def messages(self) -> int:
        """Messages the servers handled: visitor and agent messages acked."""
        return self.n["visitor_acked"] + self.n["agent_acked"]

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        resp = await self.http.fetch(HTTPRequest(
            self.url + path, method="POST", headers={"Content-Type": "application/json"},
            body=json.dumps(body), connect_timeout=30, request_timeout=30), raise_error=False)
        try:
            return resp.code, json.loads(resp.body or b"{}")
        except ValueError:
            return resp.code, {}

    async def ws(self, path: str, token: str) -> WebSocketClientConnection:
        return await websocket_connect(HTTPRequest(
            f"{self.ws_base}{path}?token={quote(token)}", connect_timeout=30,
            request_timeout=30), max_message_size=1 << 22)

    @staticmethod
    def send(conn: WebSocketClientConnection, frame: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # a closed socket: its reader notices
            conn.write_message(json.dumps(frame))

    async def frames(self, conn: WebSocketClientConnection, who: str,
                     normal: tuple[int | None, ...]) -> AsyncIterator[dict[str, Any]]:
        """The socket's frames until it closes; a close not ``normal`` is counted (unless the
        run is stopping)."""
        while True:
            raw = await conn.read_message()
            if raw is None:
                if conn.close_code not in normal and not self.stopping:
                    self.errors[f"{who}_closed_{conn.close_code}"] += 1
                return
            if isinstance(raw, str):
                yield json.loads(raw)

    # -- agents ------------------------------------------------------------------------------
    async def agent(self, login: AgentLogin, ready: asyncio.Event) -> None:
        """One console for the whole run: signs in again when its socket drops, as a console
        does (a starved machine misses a ping now and then)."""
        while not self.stopping:
            try:
                await self.console(login, ready)
            except (OSError, TimeoutError, HTTPClientError) as exc:
                self.errors[f"agent_{type(exc).__name__}"] += 1
            if not self.stopping:
                self.n["agent_reconnects"] += 1
                await asyncio.sleep(1)

    async def console(self, login: AgentLogin, ready: asyncio.Event) -> None:
        status, data = await self.post("/api/v1/auth/login",
                                       {"email": login.email, "password": login.password})
        if status != 200:
            self.errors[f"agent_login_{status}"] += 1
            return
        conn = await self.ws("/ws/agent", data["access_token"])
        seen: Counter[str] = Counter()
        try:
            async for frame in self.frames(conn, "agent", ()):
                kind = frame.get("type")
                conv = frame.get("conversation_id")
                if kind == "hello":
                    self.n["agents_ready"] += 1
                    ready.set()
                    for chat in frame.get("conversations") or ():  # after a reconnect
                        self.owner_conn[chat["conversation_id"]] = conn
                elif kind == "assigned" and conv:
                    self.owner_conn[conv] = conn
                    if conv in self.abandoned:
                        self.abandoned.discard(conv)
                        self.send(conn, {"type": "close", "conversation_id": conv})
                elif kind == "message" and frame.get("from") == "visitor" and conv:
                    self.n["agent_received"] += 1
                    seen[conv] += 1
                    if seen[conv] % 5 == 0:
                        self.send(conn, {"type": "read", "conversation_id": conv,
                                         "seq": frame.get("seq")})
                    if seen[conv] % self.args.answer_every == 0:
                        self.n["agent_sent"] += 1
                        self.send(conn, {"type": "message", "conversation_id": conv,
                                         "id": f"sa{self.run_id}-{next(self._ids)}",
                                         "body": self.body})
                elif kind == "ack":
                    self.n["agent_acked"] += 1
                elif kind == "closed" and conv:
                    self.n["closed_agent_side"] += 1
                    self.owner_conn.pop(conv, None)
                    seen.pop(conv, None)
                elif kind == "error":
                    self.errors[f"agent_{frame.get('code')}"] += 1
        finally:
            conn.close()

    # -- visitors ----------------------------------------------------------------------------
    async def slot(self, index: int, stop_at: float) -> None:
        life = self.args.life * 60
        first = True
        # Visitors arrive over the ramp, not all in the first second.
        await asyncio.sleep(self.args.ramp * index / self.args.visitors)
        while not self.stopping and time.perf_counter() < stop_at:
            # The first lives end evenly over one life, so visitors leave at a steady pace.
            span = life * (index + 1) / self.args.visitors if first else \
                life * random.uniform(0.8, 1.2)
            first = False
            try:
                await self.visitor(index, min(stop_at, time.perf_counter() + span))
            except Exception as exc:
                self.errors[f"visitor_{type(exc).__name__}"] += 1
                await asyncio.sleep(1)

    async def visitor(self, index: int, leave_at: float) -> None:
        status, data = await self.post("/api/v1/visitors", {"name": f"soak {index}"})
        if status != 201:
            self.errors[f"visitor_create_{status}"] += 1
            await asyncio.sleep(1)
            return
        conn = await self.ws("/ws/visitor", data["token"])
        self.n["visitors"] += 1
        state: dict[str, Any] = {"conv": None, "assigned": asyncio.Event(),
                                 "closed": asyncio.Event(), "hello": asyncio.Event(),
                                 "window": asyncio.Semaphore(self.args.window)}
        reader = asyncio.create_task(self.visitor_reader(conn, state))
        closed = False
        try:
            await asyncio.wait_for(state["hello"].wait(), 30)
            await state["window"].acquire()
            self.send(conn, {"type": "message", "id": f"sv{self.run_id}-{index}-{next(self._ids)}",
                             "body": "hello"})
            self.n["visitor_sent"] += 1
            try:
                await asyncio.wait_for(state["assigned"].wait(), 60)
            except TimeoutError:
                self.errors["not_assigned"] += 1
                return
            interval = 1.0 / self.args.rate
            next_at = time.perf_counter() + random.uniform(0, interval)
            while not self.stopping and conn.protocol is not None:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
                if time.perf_counter() >= leave_at:
                    break
                # A person waits for their messages to show: at most --window unacked, so an
                # overloaded server meets less load instead of a backlog that grows forever.
                try:
                    await asyncio.wait_for(state["window"].acquire(),
                                           max(0.01, leave_at - time.perf_counter()))
                except TimeoutError:
                    break
                self.send(conn, {"type": "message",
                                 "id": f"sv{self.run_id}-{index}-{next(self._ids)}",
                                 "body": self.body})
                self.n["visitor_sent"] += 1
            # Leaving: the agent closes the chat (as a desk does when the visitor has gone).
            await asyncio.sleep(1)  # the last acks
            conv = state["conv"]
            agent = self.owner_conn.get(conv) if conv else None
            if agent is None:
                self.errors["no_owner_to_close"] += 1
                return
            closed = True
            self.send(agent, {"type": "close", "conversation_id": conv})
            try:
                await asyncio.wait_for(state["closed"].wait(), 15)
                self.n["closed"] += 1
            except TimeoutError:
                self.errors["close_timeout"] += 1
        finally:
            if not closed and state["conv"]:
                owner = self.owner_conn.get(state["conv"])
                if owner is not None:
                    self.send(owner, {"type": "close", "conversation_id": state["conv"]})
                else:
                    self.abandoned.add(state["conv"])
            conn.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def visitor_reader(self, conn: WebSocketClientConnection,
                             state: dict[str, Any]) -> None:
        async for frame in self.frames(conn, "visitor", (None, 1000, 1005)):
            kind = frame.get("type")
            if frame.get("conversation_id"):
                state["conv"] = frame["conversation_id"]
            if kind == "hello":
                state["hello"].set()
                if frame.get("state") == "assigned":
                    state["assigned"].set()
            elif kind == "assigned":
                state["assigned"].set()
            elif kind == "ack":
                self.n["visitor_acked"] += 1
                state["window"].release()
            elif kind == "message" and frame.get("from") == "agent":
                self.n["visitor_received"] += 1
                self.send(conn, {"type": "read", "seq": frame.get("seq")})
            elif kind == "state" and frame.get("state") == "closed":
                state["closed"].set()
            elif kind == "error":
                self.errors[str(frame.get("code"))] += 1
                if frame.get("id") is not None:
                    state["window"].release()

    async def start_agents(self) -> list[asyncio.Task[None]]:
        ready = asyncio.Event()
        tasks = [asyncio.create_task(self.agent(a, ready)) for a in self.agents]
        deadline = time.perf_counter() + 30
        while self.n["agents_ready"] < len(tasks) and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        return tasks


# -- sampling ---------------------------------------------------------------------------------
class Probe:
    """What one sample reads: RSS per process, and for the cluster Redis and MariaDB."""

    def __init__(self, procs: dict[str, int], prefix: str | None = None,
                 mysql_url: str | None = None, sqlite_path: Path | None = None) -> None:
        self.procs, self.prefix = procs, prefix
        self.mysql_url, self.sqlite_path = mysql_url, sqlite_path
        self.redis: Any = None
        if prefix is not None:
            import redis

            self.redis = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True)

    def redis_keys(self) -> tuple[Counter[str], int]:
        """Keys under the prefix by kind (the part after the prefix up to ':') and their
        bytes."""
        assert self.prefix is not None
        kinds: Counter[str] = Counter()
        keys = list(self.redis.scan_iter(match=self.prefix + "*", count=2000))
        total = 0
        for i in range(0, len(keys), 1000):
            pipe = self.redis.pipeline(transaction=False)
            for key in keys[i:i + 1000]:
                pipe.memory_usage(key)
            total += sum(int(b or 0) for b in pipe.execute())
        for key in keys:
            parts = key[len(self.prefix):].split(":", 2)
            kinds[":".join(parts[:2]) if parts[0] == "kv" and len(parts) > 1 else parts[0]] += 1
        return kinds, total

    def rows(self) -> dict[str, int]:
        queries = {"messages": "SELECT COUNT(*) FROM message",
                   "conv_open": "SELECT COUNT(*) FROM conversation WHERE state <> 'closed'",
                   "conv_closed": "SELECT COUNT(*) FROM conversation WHERE state = 'closed'"}
        out: dict[str, int] = {}
        if self.sqlite_path is not None:
            with contextlib.closing(sqlite3.connect(self.sqlite_path, timeout=10)) as db:
                for name, sql in queries.items():
                    out[name] = int(db.execute(sql).fetchone()[0])
        elif self.mysql_url is not None:
            with self.mysql() as cur:
                for name, sql in queries.items():
                    cur.execute(sql)
                    out[name] = int(cur.fetchone()[0])
        return out

    @contextlib.contextmanager
    def mysql(self) -> Iterator[Any]:
        """A cursor on the run's MariaDB shard."""
        import pymysql

        assert self.mysql_url is not None
        u = urlparse(self.mysql_url.replace("mysql+pool://", "mysql://"))
        db = pymysql.connect(host=u.hostname, port=u.port or 3306, user=u.username,
                             password=u.password or "", database=u.path.lstrip("/"))
        try:
            with db.cursor() as cur:
                yield cur
        finally:
            db.close()

    def sample(self, t: float, load: Load) -> dict[str, Any]:
        s: dict[str, Any] = {"t": t, "messages": load.messages,
                             "rss_mb": {n: rss_bytes(p) / 2**20 for n, p in self.procs.items()}}
        if self.redis is not None:
            info = self.redis.info("memory")
            kinds, own = self.redis_keys()
            s.update(redis_run_id=self.redis.info("server")["run_id"],
                     redis_used_mb=info["used_memory"] / 2**20, redis_keys=dict(kinds),
                     redis_key_count=sum(kinds.values()), redis_own_mb=own / 2**20)
        with contextlib.suppress(Exception):  # a locked SQLite file: next time
            s["rows"] = self.rows()
        return s

    def leftovers(self) -> dict[str, Any]:
        """Which keys the closed conversations still have, and their longest TTL."""
        if self.redis is None:
            return {}
        ids: list[str] = []
        if self.mysql_url is not None:
            with self.mysql() as cur:
                cur.execute("SELECT id FROM conversation WHERE state = 'closed'")
                ids = [str(r[0]) for r in cur.fetchall()]
        out: dict[str, Any] = {"closed": len(ids)}
        for kind in ("seq", "cids", "hist", "owner"):
            pipe = self.redis.pipeline(transaction=False)
            for conv in ids:
                pipe.pttl(f"{self.prefix}{kind}:{conv}")
            ttls = [int(x) for x in pipe.execute()]
            left = [x for x in ttls if x != -2]
            out[kind] = {"left": len(left),
                         "max_ttl_h": round(max(left) / 3.6e6, 1) if left else None}
        return out


async def sampler(probe: Probe, load: Load, t0: float, every: float,
                  samples: list[dict[str, Any]], stop: asyncio.Event) -> None:
    while True:
        s = await asyncio.to_thread(probe.sample, time.perf_counter() - t0, load)
        samples.append(s)
        rss = "  ".join(f"{n} {v:.0f}" for n, v in s["rss_mb"].items())
        extra = ""
        if "redis_used_mb" in s:
            extra = (f"; Redis used {s['redis_used_mb']:.1f} MB, ours {s['redis_own_mb']:.2f} MB "
                     f"in {s['redis_key_count']} keys {s['redis_keys']}")
        rows = s.get("rows", {})
        print(f"  t={s['t'] / 60:5.1f} min  messages {s['messages']:>8}  RSS MB: {rss}{extra}"
              f"  rows {rows}  errors {dict(load.errors) or 'none'}", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except TimeoutError:
            pass


# -- figures ----------------------------------------------------------------------------------
def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y)."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in points) / den


def halves(samples: list[dict[str, Any]], value: Any) -> dict[str, float]:
    """KB/min and KB/message over the first and the second half of the load."""
    mid = (samples[0]["t"] + samples[-1]["t"]) / 2
    out: dict[str, float] = {}
    for name, part in (("first", [s for s in samples if s["t"] <= mid]),
                       ("second", [s for s in samples if s["t"] >= mid])):
        kb_min = slope([(s["t"] / 60, value(s) * 1024) for s in part])
        msgs = slope([(s["t"] / 60, float(s["messages"])) for s in part])
        out[f"{name}_kb_min"] = kb_min
        out[f"{name}_kb_msg"] = kb_min / msgs if msgs else 0.0
    return out


def redis_restarts(samples: list[dict[str, Any]]) -> list[int]:
    """Indexes of the samples taken first after Redis restarted (another engineer's chaos
    test, on this shared machine): its run id changed, or, in samples without one, the
    agents' sign-in keys vanished."""
    out = []
    for i in range(1, len(samples)):
        a, b = samples[i - 1], samples[i]
        if "redis_run_id" in a and "redis_run_id" in b:
            if a["redis_run_id"] != b["redis_run_id"]:
                out.append(i)
        elif a["redis_keys"].get("kv:refresh-family") and \
                not b["redis_keys"].get("kv:refresh-family"):
            out.append(i)
    return out


def report(case: str, samples: list[dict[str, Any]], after: dict[str, Any] | None,
           load: Load, leftovers: dict[str, Any], wall: float, client_cpu: float) -> None:
    first, last = samples[0], samples[-1]
    rate = (last["messages"] - first["messages"]) / max(1.0, last["t"] - first["t"])
    print(f"\n  {case}: {last['t'] / 60:.1f} min of load, {last['messages']} messages acked "
          f"({rate:.0f}/s), {load.n['visitors']} visitors, {load.n['closed']} chats closed, "
          f"agents received {load.n['agent_received']}, answered {load.n['agent_sent']}; "
          f"errors {dict(load.errors) or 'none'}")
    series: dict[str, Any] = {f"RSS {n} (MB)": (lambda s, n=n: s["rss_mb"][n])
                              for n in first["rss_mb"]}
    if "redis_used_mb" in first:
        series["Redis used_memory (MB, whole server)"] = lambda s: s["redis_used_mb"]
        series["Redis run's keys (MB, MEMORY USAGE)"] = lambda s: s["redis_own_mb"]
    redis_part = samples
    if "redis_used_mb" in first and (restarts := redis_restarts(samples)):
        redis_part = samples[restarts[-1]:]
        print(f"  Redis restarted {len(restarts)} time(s) during the run (at t = "
              + ", ".join(f"{samples[i]['t'] / 60:.1f}" for i in restarts)
              + " min; not by this benchmark): its series are taken from t = "
              f"{redis_part[0]['t'] / 60:.1f} min on")
        if len(redis_part) < 4:
            redis_part = samples
            print("  (too few samples after it: over the whole run, restarts included)")
    print(f"  {'series':<40} {'start':>8} {'end':>8} {'after':>8}  {'KB/min 1st':>10} "
          f"{'KB/min 2nd':>10} {'KB/msg 1st':>10} {'KB/msg 2nd':>10}  verdict")
    verdicts: dict[str, Any] = {}
    for name, value in series.items():
        part = redis_part if name.startswith("Redis") else samples
        h = halves(part, value)
        flat = h["second_kb_msg"] <= FLAT_KB_PER_MESSAGE
        aft = f"{value(after):8.1f}" if after else f"{'-':>8}"
        print(f"  {name:<40} {value(part[0]):8.1f} {value(last):8.1f} {aft}  "
              f"{h['first_kb_min']:10.1f} {h['second_kb_min']:10.1f} {h['first_kb_msg']:10.4f} "
              f"{h['second_kb_msg']:10.4f}  {'flat' if flat else 'NOT FLAT'}")
        verdicts[name] = {"start": value(part[0]), "end": value(last),
                          "after": value(after) if after else None, **h, "flat": flat}
    if "redis_keys" in first:
        mid = min(samples, key=lambda s: abs(s["t"] - last["t"] / 2))
        print(f"  Redis keys under the prefix: start {first['redis_key_count']}, "
              f"half {mid['redis_key_count']}, end {last['redis_key_count']}"
              + (f", after {after['redis_key_count']}" if after else "")
              + f"; by kind at the end {last['redis_keys']}")
    print(f"  rows: start {first.get('rows')}, end {last.get('rows')}")
    if leftovers:
        print(f"  closed conversations' keys left in Redis: {leftovers}")
    for name, v in verdicts.items():
        print(goal_line(f"P10 {case} {name.split(' (')[0]} KB/msg, 2nd half",
                        [v["second_kb_msg"]], f"<= {FLAT_KB_PER_MESSAGE}",
                        lambda r: r <= FLAT_KB_PER_MESSAGE, fmt="{:.4f}"))
    print(f"  verdict (flat = second half keeps <= {FLAT_KB_PER_MESSAGE} KB per message): "
          + ("flat" if all(v["flat"] for v in verdicts.values()) else "NOT flat: "
             + ", ".join(n for n, v in verdicts.items() if not v["flat"])))
    if client_cpu == client_cpu:  # not NaN (a report printed again has no CPU figure)
        print(cpu_line(wall, client_cpu))
    emit_json(f"P10-{case}", {"samples": samples, "after": after, "series": verdicts,
                              "counts": dict(load.n), "errors": dict(load.errors),
                              "leftovers": leftovers, "load_average": os.getloadavg()})


async def drive(case: str, url: str, agents: list[AgentLogin], probe: Probe,
                args: argparse.Namespace) -> None:
    load = Load(url, agents, args)
    agent_tasks = await load.start_agents()
    if load.n["agents_ready"] < len(agents):
        print(f"  only {load.n['agents_ready']} of {len(agents)} agents connected; "
              f"errors {dict(load.errors)}", flush=True)
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    t0, cpu0 = time.perf_counter(), time.process_time()
    sampling = asyncio.create_task(sampler(probe, load, t0, args.every, samples, stop))
    stop_at = t0 + args.minutes * 60
    slots = [asyncio.create_task(load.slot(i, stop_at)) for i in range(args.visitors)]
    await asyncio.wait(slots, timeout=args.minutes * 60 + 60)
    stop.set()
    await sampling
    samples.append(await asyncio.to_thread(probe.sample, time.perf_counter() - t0, load))
    load.stopping = True
    for task in slots:
        task.cancel()
    # The load has stopped: does memory come back down? One more sample after a pause.
    await asyncio.sleep(args.after)
    after = await asyncio.to_thread(probe.sample, time.perf_counter() - t0, load)
    leftovers = await asyncio.to_thread(probe.leftovers)
    for task in agent_tasks:
        task.cancel()
    await asyncio.gather(*slots, *agent_tasks, return_exceptions=True)
    load.http.close()
    report(case, samples, after, load, leftovers, time.perf_counter() - t0,
           time.process_time() - cpu0)


def agents_needed(visitors: int) -> int:
    # Room for every slot plus the chats being closed while their successors arrive.
    return max(1, -(-int(visitors * 1.2) // MAX_CHATS))


# -- the two cases ----------------------------------------------------------------------------
def run_cluster(args: argparse.Namespace) -> None:
    header(f"P10 soak, cluster (2 chat nodes + router): {args.visitors} visitors at "
           f"{args.rate} msg/s for {args.minutes} min, each leaving after ~{args.life} min")
    with workdir("p10c") as wd, tidedesk_cluster(wd) as c:
        router = start_pinned(c, "router", "p10-router")
        nodes = [start_pinned(c, "chatnode", f"p10-chat-{i}") for i in range(2)]
        with haproxy(wd, [n.port for n in nodes]) as port:
            agents = agents_for(c, agents_needed(args.visitors), MAX_CHATS)
            procs = {"router": router.popen.pid,
                     **{f"chat-{i}": n.popen.pid for i, n in enumerate(nodes)}}
            probe = Probe(procs, prefix=c.env["TIDEDESK_REDIS_PREFIX"],
                          mysql_url=c.env["TIDEDESK_DATABASE_URL"].split(",")[0])
            print(f"  Redis prefix {probe.prefix}", flush=True)
            asyncio.run(drive("cluster", f"http://127.0.0.1:{port}", agents, probe, args))


@contextlib.contextmanager
def embedded_server(wd: Path) -> Iterator[tuple[int, int, Path]]:
    from tidedesk.storage import Storage

    port = free_port()
    data = wd / "data"
    data.mkdir()
    db_path = data / "tidedesk.sqlite3"
    env = {**os.environ, "TIDEDESK_PORT": str(port), "TIDEDESK_DATA_DIR": str(data),
           "TIDEDESK_LOG_LEVEL": "WARNING", "TIDEDESK_RATE_LIMIT_IP_PER_MIN": "0",
           "TIDEDESK_RATE_LIMIT_TOKEN_PER_MIN": "0", "TIDEDESK_RATE_LIMIT_PER_10S": "10000",
           # no WebSocket pings, as in the cluster case (tests/support/cluster.py)
           "TIDEDESK_WS_PING_INTERVAL_S": "0"}
    for key in ("TIDEDESK_BROKER_URL", "TIDEDESK_REDIS_URL", "TIDEDESK_DATABASE_URL"):
        env.pop(key, None)
    storage = Storage([f"sqlite:///{db_path}"], pool_size=1)
    storage.migrate_all()
    storage.close()
    with subprocess_on_cpu([sys.executable, "-m", "tidedesk.cli", "dev"], wd / "tidedesk.log",
                           env=env) as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
        pin(proc.pid, SERVER_CPU)
        yield port, proc.pid, db_path


def embedded_agents(db_path: Path, count: int) -> list[AgentLogin]:
    from tidedesk.auth import hash_password
    from tidedesk.storage import Storage

    storage = Storage([f"sqlite:///{db_path}"], pool_size=1)
    stamp = os.urandom(3).hex()
    out = []
    try:
        for i in range(count):
            email = f"soak{stamp}-{i}@bench.test"
            storage.agents.create_sync(email=email, name=f"soak {i}",
                                       password_hash=hash_password("password1"), role="agent",
                                       pools=("general",), max_chats=MAX_CHATS, totp_secret=None)
            out.append(AgentLogin(email, "password1"))
    finally:
        storage.close()
    return out


def run_embedded(args: argparse.Namespace) -> None:
    header(f"P10 soak, embedded (tidedesk dev): {args.visitors} visitors at {args.rate} msg/s "
           f"for {args.minutes} min, each leaving after ~{args.life} min")
    with workdir("p10e") as wd, embedded_server(wd) as (port, pid, db_path):
        agents = embedded_agents(db_path, agents_needed(args.visitors))
        probe = Probe({"dev": pid}, sqlite_path=db_path)
        asyncio.run(drive("embedded", f"http://127.0.0.1:{port}", agents, probe, args))


def reprint(log: Path) -> None:
    """The report of each case in ``log``, from its BENCH-JSON line (samples and counts)."""
    for line in log.read_text(encoding="utf-8").splitlines():
        if not line.startswith("BENCH-JSON "):
            continue
        data = json.loads(line[len("BENCH-JSON "):])
        load = Load("http://-", [], argparse.Namespace())
        load.n.update(data["counts"])
        load.errors.update(data["errors"])
        report(data["bench"].removeprefix("P10-"), data["samples"], data["after"], load,
               data["leftovers"], data["samples"][-1]["t"], float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=("cluster", "embedded", "both"), default="both")
    parser.add_argument("--minutes", type=float, default=30.0, help="load duration (default 30)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 4 minutes, lives of 1 minute, samples every 15 s")
    parser.add_argument("--visitors", type=int, default=300)
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per visitor")
    parser.add_argument("--life", type=float, default=5.0,
                        help="minutes a visitor stays before leaving (±20%%; default 5)")
    parser.add_argument("--window", type=int, default=3,
                        help="a visitor's unacked messages at most; the next waits (default 3)")
    parser.add_argument("--answer-every", type=int, default=5,
                        help="an agent answers every N-th visitor message (default 5)")
    parser.add_argument("--ramp", type=float, default=30.0,
                        help="seconds over which the first visitors arrive (default 30)")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--after", type=float, default=30.0,
                        help="seconds after the load stops for the last sample")
    parser.add_argument("--report", metavar="LOG",
                        help="print the report again from a run's output (its BENCH-JSON line)")
    args = parser.parse_args()
    if args.report:
        reprint(Path(args.report))
        return
    if args.quick:
        args.minutes, args.life, args.every, args.after = min(args.minutes, 4.0), 1.0, 15.0, 15.0
    from bench.common import pin_self, raise_nofile

    def stop(signum: int, _frame: Any) -> None:
        # Out of the event loop and through every ``with``: the servers stop, and the vhost,
        # database and key prefix are dropped.
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    raise_nofile()
    pin_self()
    if args.case in ("cluster", "both"):
        run_cluster(args)
    if args.case in ("embedded", "both"):
        run_embedded(args)


if __name__ == "__main__":
    main()
