"""Chaos on a real cluster (chat nodes and routers as processes on RabbitMQ, Redis and two
MariaDB shards): kill -9 a router or a chat node, restart RabbitMQ or Redis, stop MariaDB, each
while dozens of visitors and their agents keep writing. Then check what was acknowledged.

Every sender behaves like the widget and the console: one message at a time, each with a fresh
client id; an ``error`` (``try_again``), a lost connection or no answer makes it send the same
id again until it gets its ``ack``. So at the end every message sent was acked, and each test
checks (``check_ledger``):

- every acked message is stored exactly once in MariaDB, under the seq of its ack, and nothing
  else is stored (no false ack, no phantom row);
- no conversation holds one seq twice, and one sender's acked seqs only grow;
- no connection was shown one (conversation, seq) twice;
- every acked message reached the other side of its conversation. Each test says whether it
  asserts live delivery or live delivery completed by ``resume``.

Tests that stop a shared server (RabbitMQ, Redis, MariaDB) start it again in a ``finally`` and
wait until it answers, leaving it as they found it. Everything runs on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pymysql
import pytest
import redis
from websockets.exceptions import ConnectionClosed, WebSocketException

from tests.support.clients import Http, WsClient, login, new_visitor, ws
from tests.support.cluster import Cluster, Proc, cluster, rabbitmqctl
from tests.support.resilient_client import resume_after
from tests.support.waiting import wait_until, wait_until_async

pytestmark = [pytest.mark.mariadb, pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

# Senders write as fast as their acks come back, with this pause; the per-connection rate limit
# is lifted so the load is not throttled into 4429 closes.
VISITOR_PAUSE_S = 0.05
AGENT_PAUSE_S = 0.2
LOAD_ENV = {"TIDEDESK_RATE_LIMIT_PER_10S": "10000"}
# No ack nor error this long after sending: the sender sends the same id again.
REPLY_TIMEOUT_S = 20.0
# A sender gives up (and the test fails) when one message is not acked within this.
SEND_DEADLINE_S = 150.0
# Waits for conditions (recovery, storage, delivery); generous, they normally take seconds.
WAIT_S = 90.0
# After a Redis restart, agents must be announced again within this (about 1 s in practice;
# the regular heartbeat, every 30 s with the default presence TTL, must not be what does it).
ANNOUNCE_S = 15.0

_ids = itertools.count(1)
_run = uuid.uuid4().hex[:6]


def new_cid(prefix: str) -> str:
    return f"{prefix}-{_run}-{next(_ids)}"


# -- the ledger of what was sent and acked ----------------------------------------------------

@dataclass(eq=False)
class Sent:
    conv: str
    cid: str
    sender: str  # "visitor:<conv>" or "agent:<agent id>:<conv>": one sequential sender
    first_sent: float
    seq: int | None = None
    acked_at: float | None = None
    tries: int = 0


@dataclass
class Ledger:
    sent: list[Sent] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_times: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def acked(self, since: float = 0.0) -> list[Sent]:
        return [s for s in self.sent if s.acked_at is not None and s.acked_at >= since]

    def acked_seqs(self, conv: str) -> set[int]:
        return {s.seq for s in self.sent if s.conv == conv and s.seq is not None}

    async def wait_acked(self, count: int, since: float = 0.0, timeout: float = WAIT_S) -> None:
        await wait_until_async(f"{count} acks since t={since:.1f}",
                               lambda: len(self.acked(since)) >= count, timeout)


async def wait_reply(client: WsClient, cid: str, start: int) -> dict[str, Any] | None:
    """The ack or error for ``cid`` after frame ``start``; None if the connection closed or
    nothing came in time."""
    try:
        return await client.wait_for(
            lambda f: f.get("id") == cid and f.get("type") in ("ack", "error"),
            timeout=REPLY_TIMEOUT_S, start=start)
    except AssertionError:
        return None


class Participant:
    """A visitor or an agent console: its connections (a reconnect adds one) and its sends."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.conns: list[WsClient] = []

    @property
    def client(self) -> WsClient:
        return self.conns[-1]

    def frame(self, sent: Sent) -> dict[str, Any]:
        raise NotImplementedError

    async def reconnect(self) -> None:
        raise NotImplementedError

    def convs(self) -> list[str]:
        raise NotImplementedError

    async def send_until_acked(self, sent: Sent) -> None:
        deadline = time.monotonic() + SEND_DEADLINE_S
        while time.monotonic() < deadline:
            client = self.client
            if client.closed.done():
                await self.reconnect()
                continue
            start = len(client.frames)
            sent.tries += 1
            try:
                await client.send(self.frame(sent))
            except ConnectionClosed:
                # Lost: let the reader see the close (it yields), then reconnect.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(client.closed), 5)
                await asyncio.sleep(0.05)
                continue
            reply = await wait_reply(client, sent.cid, start)
            if reply is None:
                continue  # closed or silent: send the same id again
            if reply["type"] == "ack":
                if sent.seq is None:
                    sent.seq, sent.acked_at = int(reply["seq"]), time.monotonic()
                assert reply["seq"] == sent.seq, f"{sent.cid} acked twice with other seqs"
                return
            code = str(reply.get("code"))
            self.ledger.errors[code] += 1
            self.ledger.error_times.append(time.monotonic())
            assert code == "try_again", f"unexpected error for {sent.cid}: {reply}"
            await asyncio.sleep(0.2)
        raise AssertionError(f"{sent.cid} not acked in {SEND_DEADLINE_S}s "
                             f"({sent.tries} tries, last frames {self.client.frames[-4:]})")

    def seen(self, conv: str) -> set[int]:
        """Seqs of ``conv`` shown on any of this participant's connections."""
        return {f["seq"] for c in self.conns for f in c.of_type("message")
                if f.get("conversation_id") == conv}

    def last_seen(self, conv: str) -> int:
        """The last seq of an unbroken run from 1: what a client resumes after."""
        return resume_after(self.seen(conv))

    async def resume_gaps(self) -> None:
        """For every conversation with an acked seq not shown yet: send ``resume`` after the
        last unbroken seq (an error reply, e.g. ``try_again``, is answered by the next call)."""
        for conv in self.convs():
            if not self.ledger.acked_seqs(conv) - self.seen(conv):
                continue
            frame: dict[str, Any] = {"type": "resume", "after_seq": self.last_seen(conv)}
            if isinstance(self, Agent):
                frame["conversation_id"] = conv
            with contextlib.suppress(ConnectionClosed):
                await self.client.send(frame)

    def duplicates(self) -> list[tuple[str, int]]:
        """(conversation, seq) pairs one connection was shown more than once."""
        dups = []
        for c in self.conns:
            count = Counter((str(f.get("conversation_id")), int(f["seq"]))
                            for f in c.of_type("message"))
            dups += [key for key, n in count.items() if n > 1]
        return dups


class Visitor(Participant):
    def __init__(self, ledger: Ledger, nodes: Sequence[Proc], name: str) -> None:
        super().__init__(ledger)
        self.nodes = list(nodes)  # the first is where it starts; reconnects try them in order
        self.name = name
        self.token = self.conv = ""
        self.reconnect_delay = 0.0
        self.reconnects: list[tuple[float, float]] = []  # (lost at, resumed at)
        self.reconnected_to: list[str] = []

    async def open(self) -> None:
        _, self.token, client = await new_visitor(self.nodes[0], name=self.name)  # type: ignore[arg-type]
        self.conv = client.of_type("hello")[0]["conversation_id"]
        self.conns.append(client)

    async def open_politely(self) -> None:
        """Open, and while the answer is ``busy`` (close 1013) try again shortly, like the
        widget."""
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                await self.open()
                return
            except AssertionError as exc:
                if "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                self.ledger.errors["busy (new visitor)"] += 1
                await asyncio.sleep(0.5)

    def convs(self) -> list[str]:
        return [self.conv]

    def frame(self, sent: Sent) -> dict[str, Any]:
        return {"type": "message", "id": sent.cid, "body": f"{sent.cid} from {self.name}"}

    async def reconnect(self) -> None:
        """Like the widget: wait a little, connect to whichever node answers, send resume with
        the last seq seen."""
        lost = time.monotonic()
        await asyncio.sleep(self.reconnect_delay)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for node in self.nodes:
                try:
                    client = await ws(node, "/ws/visitor", self.token)  # type: ignore[arg-type]
                except (OSError, WebSocketException):
                    continue
                try:
                    hello = await client.wait_type("hello", timeout=10)
                except AssertionError:  # refused (busy, draining): try again shortly
                    await client.close()
                    continue
                assert hello["conversation_id"] == self.conv, hello
                self.conns.append(client)
                await client.send({"type": "resume", "after_seq": self.last_seen(self.conv)})
                self.reconnects.append((lost, time.monotonic()))
                self.reconnected_to.append(node.name)
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"visitor {self.name} could not reconnect in {WAIT_S}s")


class Agent(Participant):
    def __init__(self, ledger: Ledger, node: Proc, email: str, agent_id: str) -> None:
        super().__init__(ledger)
        self.node, self.email, self.agent_id = node, email, agent_id

    async def open(self) -> None:
        client = await ws(self.node, "/ws/agent", await login(self.node, self.email))  # type: ignore[arg-type]
        await client.wait_type("hello")
        self.conns.append(client)

    def convs(self) -> list[str]:
        return list(dict.fromkeys(f["conversation_id"] for c in self.conns
                                  for f in c.of_type("assigned")))

    def frame(self, sent: Sent) -> dict[str, Any]:
        return {"type": "message", "conversation_id": sent.conv, "id": sent.cid,
                "body": f"{sent.cid} from {self.email}"}

    async def reconnect(self) -> None:
        raise AssertionError(f"the console of {self.email} lost its connection: "
                             f"{self.client.closed.result()}")


async def visitor_loop(v: Visitor) -> None:
    while not v.ledger.stop.is_set():
        sent = Sent(v.conv, new_cid("v"), f"visitor:{v.conv}", time.monotonic())
        v.ledger.sent.append(sent)
        await v.send_until_acked(sent)
        await asyncio.sleep(VISITOR_PAUSE_S)


async def agent_loop(a: Agent, conv: str) -> None:
    while not a.ledger.stop.is_set():
        sent = Sent(conv, new_cid("a"), f"agent:{a.agent_id}:{conv}", time.monotonic())
        a.ledger.sent.append(sent)
        await a.send_until_acked(sent)
        await asyncio.sleep(AGENT_PAUSE_S)


# -- the cluster under load -------------------------------------------------------------------

@dataclass
class Load:
    c: Cluster
    ledger: Ledger
    visitors: list[Visitor]
    agents: list[Agent]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(visitor_loop(v)) for v in self.visitors]
        self.tasks += [asyncio.create_task(agent_loop(a, conv))
                       for a in self.agents for conv in a.convs()]

    async def finish(self) -> None:
        """Stop writing; every sender's last message still gets its ack."""
        self.ledger.stop.set()
        await asyncio.gather(*self.tasks)
        assert all(s.seq is not None for s in self.ledger.sent)

    async def close(self) -> None:
        for p in [*self.visitors, *self.agents]:
            for conn in p.conns:
                await conn.close()


async def start_load(c: Cluster, visitor_nodes: Sequence[Proc], agent_node: Proc, *,
                     visitors: int = 24, agents: int = 2) -> Load:
    """``agents`` consoles on ``agent_node``, ``visitors`` visitors on ``visitor_nodes[0]``,
    each chat assigned, then everybody writing."""
    ledger = Ledger()
    ids = [c.add_agent(f"chaos{i}@shop.test", max_chats=visitors) for i in range(agents)]
    consoles = [Agent(ledger, agent_node, f"chaos{i}@shop.test", aid) for i, aid in enumerate(ids)]
    for a in consoles:
        await a.open()
    await wait_until_async("agents online",
                           lambda: all(c.agent_online(aid) for aid in ids), WAIT_S)
    people = [Visitor(ledger, visitor_nodes, f"v{i}") for i in range(visitors)]
    await asyncio.gather(*(v.open() for v in people))
    for v in people:
        await v.client.wait_type("assigned", timeout=WAIT_S)
    await wait_until_async("every chat assigned",
                           lambda: sum(len(a.convs()) for a in consoles) == visitors, WAIT_S)
    load = Load(c, ledger, people, consoles)
    load.start()
    return load


# -- probes -----------------------------------------------------------------------------------

def http_get(proc: Proc, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}{path}", timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric(proc: Proc, name: str) -> float:
    _, text = http_get(proc, "/metrics")
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def watch_readiness(procs: Sequence[Proc], want: int, timeout: float = WAIT_S) -> None:
    """Until every process answered /readyz with ``want`` at least once."""
    pending = set(range(len(procs)))
    deadline = time.monotonic() + timeout
    while pending:
        for i in list(pending):
            if (await asyncio.to_thread(http_get, procs[i], "/readyz"))[0] == want:
                pending.discard(i)
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"/readyz of {[procs[i].name for i in pending]} never "
                                 f"answered {want} in {timeout:.0f}s")
        await asyncio.sleep(0.1)


# -- checks -----------------------------------------------------------------------------------

def stored_rows(c: Cluster) -> dict[str, list[tuple[int, str]]]:
    """(seq, client id) of every stored message, by conversation, read from every shard."""
    rows: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for url in c.env["TIDEDESK_DATABASE_URL"].split(","):
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                               database=urlparse(url).path.lstrip("/"))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT conversation_id, seq, client_id FROM message")
                for conv, seq, cid in cur.fetchall():
                    rows[conv].append((int(seq), cid))
        finally:
            conn.close()
    return rows


async def check_ledger(load: Load) -> dict[str, list[tuple[int, str]]]:
    """Stored exactly once with the acked seq, nothing else stored, seqs unique per conversation
    and growing per sender. Waits for the routers to catch up first."""
    ledger = load.ledger
    acked = ledger.acked()
    assert len(acked) == len(ledger.sent)
    deadline = time.monotonic() + WAIT_S
    while True:
        rows = await asyncio.to_thread(stored_rows, load.c)
        stored_ids = {cid for items in rows.values() for _, cid in items}
        missing = [s for s in acked if s.cid not in stored_ids]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} of {len(acked)} acked messages never stored, "
                                 f"e.g. {missing[:3]}")
        await asyncio.sleep(0.3)
    by_cid = {s.cid: s for s in ledger.sent}
    for conv, items in rows.items():
        twice = [seq for seq, n in Counter(seq for seq, _ in items).items() if n > 1]
        assert not twice, f"conversation {conv} stores seq(s) {twice} twice"
        assert len({cid for _, cid in items}) == len(items), f"{conv}: a client id twice"
        for seq, cid in items:
            sent = by_cid.get(cid)
            assert sent is not None and sent.conv == conv, f"stored but never sent: {cid}"
            assert sent.seq == seq, f"{cid} acked as seq {sent.seq}, stored as seq {seq}"
    by_sender: dict[str, list[int]] = defaultdict(list)
    for s in ledger.sent:
        assert s.seq is not None
        by_sender[s.sender].append(s.seq)
    for sender, seqs in by_sender.items():
        assert all(a < b for a, b in itertools.pairwise(seqs)), f"{sender}: seqs {seqs}"
    return rows


async def check_delivered(people: Sequence[Participant], ledger: Ledger, what: str,
                          resume: bool = False, timeout: float = WAIT_S) -> None:
    """Every acked message of each participant's conversations reached them (with ``resume``:
    asking for gaps every 2 s, as a client does), and no connection was shown a
    (conversation, seq) twice."""

    def missing() -> list[tuple[str, int]]:
        out = []
        for p in people:
            for conv in p.convs():
                out += [(conv, seq) for seq in sorted(ledger.acked_seqs(conv) - p.seen(conv))]
        return out

    deadline = time.monotonic() + timeout
    while missing() and time.monotonic() < deadline:
        if resume:
            for p in people:
                await p.resume_gaps()
        with contextlib.suppress(AssertionError):
            await wait_until_async(what, lambda: not missing(), 2.0, every=0.1)
    gone = missing()
    assert not gone, f"{what}: {len(gone)} acked messages never shown, e.g. {gone[:5]}"
    for p in people:
        assert not p.duplicates(), f"{what}: shown twice on one connection: {p.duplicates()[:5]}"


# -- shared servers: stop, start, and always leave them running ------------------------------

MARIADB_PIDFILE = "/run/mysqld/mysqld.pid"
MARIADB_DOWN_S = 4.0
MARIADBD = "/usr/sbin/mariadbd"
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
               "--port", "6379", "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
               "--logfile", "/var/log/redis/ci.log"]


def mariadb_answers() -> bool:
    try:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                               connect_timeout=2)
    except pymysql.err.MySQLError:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return bool(cur.fetchone() == (1,))
    finally:
        conn.close()


def mariadb_stop() -> None:
    # By its pid file: only this machine's server, never another mariadbd (containers).
    subprocess.run(["start-stop-daemon", "--stop", "--oknodo", "--retry", "30",
                    "--pidfile", MARIADB_PIDFILE, "--exec", MARIADBD],
                   check=True, capture_output=True, timeout=90)


def mariadb_start() -> None:
    if not mariadb_answers():
        subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background",
                        "--pidfile", MARIADB_PIDFILE, "--exec", MARIADBD],
                       check=True, capture_output=True, timeout=30)
    wait_until("MariaDB to answer", mariadb_answers, 90)


def redis_answers() -> bool:
    r = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False
    finally:
        r.close()


def redis_stop() -> None:
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
                   capture_output=True, timeout=30)
    wait_until("Redis to stop", lambda: not redis_answers(), 30)


def redis_start() -> None:
    if not redis_answers():
        subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
    wait_until("Redis to answer", redis_answers, 30)


def rabbitmq_start() -> None:
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")


@contextlib.contextmanager
def restarts(start: Callable[[], None], healthy: Callable[[], bool], name: str) -> Iterator[None]:
    """The block may stop a shared server; afterwards it runs again, whatever happened."""
    if not healthy():
        pytest.fail(f"{name} is not running before the test; start it first")
    try:
        yield
    finally:
        start()


def rabbitmq_answers() -> bool:
    try:
        rabbitmqctl("await_startup")
    except subprocess.SubprocessError:
        return False
    return True


def start_cluster(c: Cluster, env: dict[str, str] | None = None
                  ) -> tuple[Proc, Proc, Proc, Proc]:
    c.env.update(LOAD_ENV)
    c.env.update(env or {})
    return (c.start("chatnode", "node1"), c.start("chatnode", "node2"),
            c.start("router", "router1"), c.start("router", "router2"))


# -- the tests --------------------------------------------------------------------------------

def test_kill_9_router_mid_batch(tmp_path: Path) -> None:
    """Asserts live delivery, no resume: a message whose router died before it acked RabbitMQ
    is redelivered to the other router, which stores nothing new (idempotent) and delivers it
    again; the chat node shows each seq once per connection."""
    with cluster(tmp_path) as c:
        node1, node2, router1, _ = start_cluster(c)

        async def scenario() -> None:
            load = await start_load(c, [node1], node2)
            await load.ledger.wait_acked(300)
            # Kill while router1 has messages in a batch: in flight, not yet acked to RabbitMQ.
            await wait_until_async("router1 busy with a batch",
                                   lambda: metric(router1, "tidedesk_router_inflight") > 0
                                   and metric(router1, "tidedesk_messages_stored_total") > 0,
                                   WAIT_S, every=0.01)
            router1.kill(signal.SIGKILL)
            killed_at = time.monotonic()
            await load.ledger.wait_acked(300, since=killed_at)
            await load.finish()
            await check_ledger(load)
            await check_delivered(load.agents, load.ledger, "agents, live")
            await check_delivered(load.visitors, load.ledger, "visitors, live")
            print(f"\nrouter kill: {len(load.ledger.sent)} messages, "
                  f"{len(load.ledger.acked(killed_at))} acked after the kill")
            await load.close()

        asyncio.run(scenario())


def test_kill_9_chat_node_clients_resume_elsewhere(tmp_path: Path) -> None:
    """Visitors on node1, agents on node2; node1 is killed. Visitors reconnect to node2 after
    0.5-1.5 s and send ``resume`` with their last seq: asserts that they end up with every
    acked message (their own, and the agent's, including what the agent wrote while they were
    away), none twice on a connection; agents got everything live."""
    with cluster(tmp_path) as c:
        node1, node2, _, _ = start_cluster(c)

        async def scenario() -> None:
            load = await start_load(c, [node1, node2], node2, visitors=20)
            for i, v in enumerate(load.visitors):
                v.reconnect_delay = 0.5 + (i % 11) / 10
            await load.ledger.wait_acked(150)
            node1.kill(signal.SIGKILL)
            killed_at = time.monotonic()
            await wait_until_async("every visitor reconnected",
                                   lambda: all(v.reconnects for v in load.visitors), WAIT_S)
            assert {n for v in load.visitors for n in v.reconnected_to} == {"node2"}
            back = time.monotonic()
            await load.ledger.wait_acked(100, since=back)
            await load.finish()
            await check_ledger(load)
            # What agents wrote while each visitor was away (those come from resume).
            meanwhile = sum(1 for v in load.visitors for s in load.ledger.acked(killed_at)
                            if s.conv == v.conv and s.sender.startswith("agent:")
                            and s.acked_at is not None and s.acked_at <= v.reconnects[0][1])
            assert meanwhile > 0, "the agents wrote nothing while the visitors were away"
            await check_delivered(load.visitors, load.ledger, "visitors after resume")
            await check_delivered(load.agents, load.ledger, "agents, live")
            print(f"\nchat node kill: {len(load.ledger.sent)} messages; {meanwhile} agent "
                  f"messages written while visitors were away")
            await load.close()

        asyncio.run(scenario())


def test_rabbitmq_restart_under_load(tmp_path: Path) -> None:
    """``rabbitmqctl stop_app`` / ``start_app`` under load. Asserts ``try_again`` errors (never
    an ack) while it is down, /readyz 503 on every node and router while down and 200 after
    (they reconnect by themselves), and live delivery of everything acked (no resume)."""
    with cluster(tmp_path) as c:
        procs = start_cluster(c)
        node1, node2 = procs[0], procs[1]

        async def scenario() -> None:
            load = await start_load(c, [node1], node2, visitors=20)
            await load.ledger.wait_acked(150)
            with restarts(rabbitmq_start, rabbitmq_answers, "RabbitMQ"):
                await asyncio.to_thread(rabbitmqctl, "stop_app")
                down_at = time.monotonic()
                await watch_readiness(procs, 503)
                await wait_until_async("try_again while RabbitMQ is down",
                                       lambda: load.ledger.errors["try_again"] > 0, WAIT_S)
                await asyncio.to_thread(rabbitmq_start)
            await watch_readiness(procs, 200)
            up_at = time.monotonic()
            await load.ledger.wait_acked(150, since=up_at)
            await load.finish()
            await check_ledger(load)
            await check_delivered(load.agents, load.ledger, "agents, live")
            await check_delivered(load.visitors, load.ledger, "visitors, live")
            print(f"\nRabbitMQ restart: {len(load.ledger.sent)} messages, "
                  f"{load.ledger.errors['try_again']} try_again, down→ready "
                  f"{up_at - down_at:.1f}s")
            await load.close()

        asyncio.run(scenario())


def test_redis_restart_under_load(tmp_path: Path) -> None:
    """Redis shut down (nothing kept) and started again under load, default presence TTL.
    Asserts no acked message lost, seqs never repeat (every message sent after the restart has
    a seq above every seq acked before it; the re-seed gap of 100 is expected), agents are
    announced again within ``ANNOUNCE_S`` and new visitors get an agent (not the offline
    ticket), and delivery live *or after resume*: presence and owners are gone until the
    nodes re-announce them, so messages routed in between reach their readers only through
    ``resume``."""
    with cluster(tmp_path) as c:
        procs = start_cluster(c)  # presence TTL 90 s: heartbeat every 30 s
        node1, node2 = procs[0], procs[1]

        async def scenario() -> None:
            load = await start_load(c, [node1], node2, visitors=20)
            await load.ledger.wait_acked(150)
            with restarts(redis_start, redis_answers, "Redis"):
                await asyncio.to_thread(redis_stop)
                down_at = time.monotonic()
                await watch_readiness([node1, node2], 503)
                await wait_until_async("try_again while Redis is down",
                                       lambda: load.ledger.errors["try_again"] > 0, WAIT_S)
                restart_at = time.monotonic()
                await asyncio.to_thread(redis_start)
            await watch_readiness(procs, 200)
            up_at = time.monotonic()
            await load.ledger.wait_acked(150, since=up_at)
            # A node notices within a second that the store forgot it and announces its agents
            # again, long before its next regular heartbeat; then they take new chats (until
            # then a new chat would find nobody online and become a ticket).
            await wait_until_async("agents announced again soon after Redis is back",
                                   lambda: all(c.agent_online(a.agent_id) for a in load.agents),
                                   ANNOUNCE_S)
            newcomers = [Visitor(load.ledger, [node1], f"new{i}") for i in range(4)]
            for v in newcomers:
                await v.open_politely()
                first = await v.client.wait_for(lambda f: f.get("type") == "assigned" or (
                    f.get("type") == "state" and f.get("state") == "offline"), timeout=WAIT_S)
                assert first["type"] == "assigned", first
            await load.finish()
            await check_ledger(load)
            # Seqs never repeat: everything sent after the restart began has a seq above
            # every seq acked before it (the counters were re-seeded from the database).
            before = {v.conv: max(s.seq for s in load.ledger.acked() if s.conv == v.conv
                                  and s.seq is not None and s.acked_at is not None
                                  and s.acked_at < restart_at) for v in load.visitors}
            for v in load.visitors:
                later = [s.seq for s in load.ledger.sent if s.conv == v.conv
                         and s.first_sent >= restart_at and s.seq is not None]
                assert later and min(later) > before[v.conv], (v.conv, before[v.conv], later)
            await check_delivered(load.agents, load.ledger, "agents, live + resume", resume=True)
            await check_delivered(load.visitors, load.ledger, "visitors, live + resume",
                                  resume=True)
            jumps = [min(s.seq for s in load.ledger.sent if s.conv == conv
                         and s.seq is not None and s.seq > top) - top
                     for conv, top in before.items()]
            print(f"\nRedis restart: {len(load.ledger.sent)} messages, "
                  f"{load.ledger.errors['try_again']} try_again, seq jumps "
                  f"{min(jumps)}..{max(jumps)}, "
                  f"{load.ledger.errors['busy (new visitor)']} busy answers to newcomers, "
                  f"down→ready {up_at - down_at:.1f}s")
            for v in newcomers:
                await v.client.close()
            await load.close()

        asyncio.run(scenario())


def test_mariadb_stopped_under_load(tmp_path: Path) -> None:
    """MariaDB stopped for a few seconds under load. Asserts: the routers' database breaker
    opens (router /readyz 503), a new visitor gets 503 ``busy`` from POST /api/v1/visitors and
    a visitor connecting gets the ``busy`` error frame and close 1013, connected visitors and
    agents keep getting acks (no error at all), and after MariaDB is back everything acked is
    stored and delivered live, without any manual step."""
    with cluster(tmp_path) as c:
        node1, node2, router1, router2 = start_cluster(c)

        async def scenario() -> None:
            status, data = await Http(node1).request("POST", "/api/v1/visitors", {})  # type: ignore[arg-type]
            assert status == 201, data
            latecomer = data["token"]
            load = await start_load(c, [node1], node2, visitors=20)
            await load.ledger.wait_acked(150)
            with restarts(mariadb_start, mariadb_answers, "MariaDB"):
                stopping_at = time.monotonic()
                await asyncio.to_thread(mariadb_stop)
                down_at = time.monotonic()
                await watch_readiness([router1, router2], 503)
                status, data = await Http(node1).request("POST", "/api/v1/visitors",  # type: ignore[arg-type]
                                                         {"name": "too late"})
                assert (status, data["error"]["code"]) == (503, "busy"), (status, data)
                client = await ws(node1, "/ws/visitor", latecomer)  # type: ignore[arg-type]
                frame = await client.wait_type("error")
                assert frame["code"] == "busy", frame
                assert (await client.closed)[0] == 1013
                await load.ledger.wait_acked(100, since=down_at)
                # Down for a few seconds: the routers keep failing and hold the backlog.
                await asyncio.sleep(max(0.0, down_at + MARIADB_DOWN_S - time.monotonic()))
                acked_while_down = len(load.ledger.acked(down_at))
                assert not load.ledger.errors, load.ledger.errors
                await asyncio.to_thread(mariadb_start)
            up_at = time.monotonic()
            await watch_readiness([router1, router2], 200)
            await load.ledger.wait_acked(100, since=up_at)
            await load.finish()
            assert not load.ledger.errors, load.ledger.errors
            await check_ledger(load)
            await check_delivered(load.agents, load.ledger, "agents, live")
            await check_delivered(load.visitors, load.ledger, "visitors, live")
            print(f"\nMariaDB stop: {len(load.ledger.sent)} messages, {acked_while_down} acked "
                  f"while it was down, down {up_at - down_at:.1f}s "
                  f"(+{down_at - stopping_at:.1f}s to stop)")
            await load.close()

        asyncio.run(scenario())
