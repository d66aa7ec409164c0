"""Chaos on a real cluster (chat nodes and routers as processes on RabbitMQ, Redis and two
MariaDB shards): kill -9 a router or a chat node, restart RabbitMQ or Redis, stop MariaDB, each
while dozens of visitors and their agents keep writing. Then check what was acknowledged.

Every sender is the shared widget-like client (``tests.support.resilient_client``): one
message at a time, each with a fresh client id; an ``error`` (``try_again``), a lost connection
or no answer makes it send the same id again until it gets its ``ack``. So at the end every
message sent was acked, and each test checks (``check_ledger``):

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
from urllib.parse import urlparse

import pymysql
import pytest
import redis

from tests.support.clients import Http, login, ws
from tests.support.cluster import Cluster, Proc, cluster, rabbitmqctl
from tests.support.resilient_client import Ledger, ResilientClient, Sent
from tests.support.waiting import wait_until, wait_until_async

pytestmark = [pytest.mark.mariadb, pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

# Senders write as fast as their acks come back, with this pause; the per-connection rate limit
# is lifted so the load is not throttled into 4429 closes.
VISITOR_PAUSE_S = 0.05
AGENT_PAUSE_S = 0.2
LOAD_ENV = {"TIDEDESK_RATE_LIMIT_PER_10S": "10000"}
# How a sender resends (REPLY_TIMEOUT_S), gives up (SEND_DEADLINE_S) and reconnects
# (RECONNECT_WITHIN_S) is the shared client's: tests/support/resilient_client.py.
# Waits for conditions (recovery, storage, delivery); generous, they normally take seconds.
WAIT_S = 90.0
# After a Redis restart, agents must be announced again within this (about 1 s in practice;
# the regular heartbeat, every 30 s with the default presence TTL, must not be what does it).
ANNOUNCE_S = 15.0

_ids = itertools.count(1)
_run = uuid.uuid4().hex[:6]


def new_cid(prefix: str) -> str:
    return f"{prefix}-{_run}-{next(_ids)}"


# -- the participants: visitors and consoles on the shared client -----------------------------

def own_conv(v: ResilientClient) -> str:
    assert v.conversation_id is not None, f"{v.name} has no conversation"
    return v.conversation_id


async def open_visitor(ledger: Ledger, nodes: Sequence[Proc], name: str) -> ResilientClient:
    """A new visitor on ``nodes[0]`` who has written once (so their conversation exists and is
    being routed); a reconnect tries ``nodes`` in order, like the widget behind a list of
    servers."""
    status, data = await Http(nodes[0]).request("POST", "/api/v1/visitors",  # type: ignore[arg-type]
                                                {"name": name})
    assert status == 201, data
    v = ResilientClient(name, [f"ws://127.0.0.1:{n.port}/ws/visitor?token={data['token']}"
                               for n in nodes], "visitor", reconnect="on_demand", ledger=ledger)
    await v.open()
    # The socket opens no conversation (issue 13): the visitor's first message does, and it
    # is in the ledger like every other (its conversation known once the new hello named it).
    sent = Sent("", new_cid("v"), "", time.monotonic())
    await v.send_until_acked(sent)
    sent.conv = own_conv(v)
    sent.sender = f"visitor:{sent.conv}"
    ledger.sent.append(sent)
    return v


async def open_politely(ledger: Ledger, nodes: Sequence[Proc], name: str) -> ResilientClient:
    """Open, and while the answer is ``busy`` (close 1013) try again shortly, like the
    widget."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return await open_visitor(ledger, nodes, name)
        except AssertionError as exc:
            if "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            ledger.errors["busy (new visitor)"] += 1
            await asyncio.sleep(0.5)


async def open_console(ledger: Ledger, node: Proc, email: str) -> ResilientClient:
    """An agent's console; losing its connection fails the test."""
    token = await login(node, email)  # type: ignore[arg-type]
    a = ResilientClient(email, f"ws://127.0.0.1:{node.port}/ws/agent?token={token}", "agent",
                        reconnect="never", ledger=ledger)
    await a.open()
    return a


def node_names(v: ResilientClient, nodes: Sequence[Proc]) -> list[str]:
    """The names of the nodes ``v`` reconnected to."""
    by_url = {url: n.name for url, n in zip(v.urls, nodes, strict=True)}
    return [by_url[url] for url in v.reconnected_to]


async def visitor_loop(v: ResilientClient) -> None:
    conv = own_conv(v)
    while not v.ledger.stop.is_set():
        sent = Sent(conv, new_cid("v"), f"visitor:{conv}", time.monotonic())
        v.ledger.sent.append(sent)
        await v.send_until_acked(sent)
        await asyncio.sleep(VISITOR_PAUSE_S)


async def agent_loop(a: ResilientClient, agent_id: str, conv: str) -> None:
    while not a.ledger.stop.is_set():
        sent = Sent(conv, new_cid("a"), f"agent:{agent_id}:{conv}", time.monotonic())
        a.ledger.sent.append(sent)
        await a.send_until_acked(sent)
        await asyncio.sleep(AGENT_PAUSE_S)


# -- the cluster under load -------------------------------------------------------------------

@dataclass
class Load:
    c: Cluster
    ledger: Ledger
    visitors: list[ResilientClient]
    agents: list[ResilientClient]
    agent_ids: list[str]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(visitor_loop(v)) for v in self.visitors]
        self.tasks += [asyncio.create_task(agent_loop(a, aid, conv))
                       for a, aid in zip(self.agents, self.agent_ids, strict=True)
                       for conv in a.convs()]

    async def finish(self) -> None:
        """Stop writing; every sender's last message still gets its ack."""
        self.ledger.stop.set()
        await asyncio.gather(*self.tasks)
        assert all(s.seq is not None for s in self.ledger.sent)

    async def close(self) -> None:
        for p in [*self.visitors, *self.agents]:
            await p.stop()


async def start_load(c: Cluster, visitor_nodes: Sequence[Proc], agent_node: Proc, *,
                     visitors: int = 24, agents: int = 2) -> Load:
    """``agents`` consoles on ``agent_node``, ``visitors`` visitors on ``visitor_nodes[0]``,
    each chat assigned, then everybody writing."""
    ledger = Ledger()
    ids = [c.add_agent(f"chaos{i}@shop.test", max_chats=visitors) for i in range(agents)]
    consoles = [await open_console(ledger, agent_node, f"chaos{i}@shop.test")
                for i in range(agents)]
    await wait_until_async("agents online",
                           lambda: all(c.agent_online(aid) for aid in ids), WAIT_S)
    people = list(await asyncio.gather(*(open_visitor(ledger, visitor_nodes, f"v{i}")
                                         for i in range(visitors))))
    for v in people:
        await v.link.wait_type("assigned", timeout=WAIT_S)
    await wait_until_async("every chat assigned",
                           lambda: sum(len(a.convs()) for a in consoles) == visitors, WAIT_S)
    load = Load(c, ledger, people, consoles, ids)
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


async def check_delivered(people: Sequence[ResilientClient], ledger: Ledger, what: str,
                          resume: bool = False, timeout: float = WAIT_S) -> None:
    """Every acked message of each participant's conversations reached them (with ``resume``:
    asking for gaps every 2 s, as a client does), and no connection was shown a
    (conversation, seq) twice."""

    def missing() -> list[tuple[str, int]]:
        out = []
        for p in people:
            for conv in p.convs():
                out += [(conv, seq) for seq in sorted(ledger.acked_seqs(conv) - p.shown(conv))]
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
            await load.ledger.wait_acked(300, timeout=WAIT_S)
            # Kill while router1 has messages in a batch: in flight, not yet acked to RabbitMQ.
            await wait_until_async("router1 busy with a batch",
                                   lambda: metric(router1, "tidedesk_router_inflight") > 0
                                   and metric(router1, "tidedesk_messages_stored_total") > 0,
                                   WAIT_S, every=0.01)
            router1.kill(signal.SIGKILL)
            killed_at = time.monotonic()
            await load.ledger.wait_acked(300, since=killed_at, timeout=WAIT_S)
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
            await load.ledger.wait_acked(150, timeout=WAIT_S)
            node1.kill(signal.SIGKILL)
            killed_at = time.monotonic()
            await wait_until_async("every visitor reconnected",
                                   lambda: all(v.reconnects for v in load.visitors), WAIT_S)
            assert {n for v in load.visitors for n in node_names(v, [node1, node2])} == {"node2"}
            back = time.monotonic()
            await load.ledger.wait_acked(100, since=back, timeout=WAIT_S)
            await load.finish()
            await check_ledger(load)
            # What agents wrote while each visitor was away (those come from resume).
            meanwhile = sum(1 for v in load.visitors for s in load.ledger.acked(killed_at)
                            if s.conv == own_conv(v) and s.sender.startswith("agent:")
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
            await load.ledger.wait_acked(150, timeout=WAIT_S)
            with restarts(rabbitmq_start, rabbitmq_answers, "RabbitMQ"):
                await asyncio.to_thread(rabbitmqctl, "stop_app")
                down_at = time.monotonic()
                await watch_readiness(procs, 503)
                await wait_until_async("try_again while RabbitMQ is down",
                                       lambda: load.ledger.errors["try_again"] > 0, WAIT_S)
                await asyncio.to_thread(rabbitmq_start)
            await watch_readiness(procs, 200)
            up_at = time.monotonic()
            await load.ledger.wait_acked(150, since=up_at, timeout=WAIT_S)
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
            await load.ledger.wait_acked(150, timeout=WAIT_S)
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
            await load.ledger.wait_acked(150, since=up_at, timeout=WAIT_S)
            # A node notices within a second that the store forgot it and announces its agents
            # again, long before its next regular heartbeat; then they take new chats (until
            # then a new chat would find nobody online and become a ticket).
            await wait_until_async("agents announced again soon after Redis is back",
                                   lambda: all(c.agent_online(aid) for aid in load.agent_ids),
                                   ANNOUNCE_S)
            newcomers = []
            for i in range(4):
                v = await open_politely(load.ledger, [node1], f"new{i}")
                newcomers.append(v)
                first = await v.link.wait_for(lambda f: f.get("type") == "assigned" or (
                    f.get("type") == "state" and f.get("state") == "offline"), timeout=WAIT_S)
                assert first["type"] == "assigned", first
            await load.finish()
            await check_ledger(load)
            # Seqs never repeat: everything sent after the restart began has a seq above
            # every seq acked before it (the counters were re-seeded from the database).
            convs = [own_conv(v) for v in load.visitors]
            before = {conv: max(s.seq for s in load.ledger.acked() if s.conv == conv
                                and s.seq is not None and s.acked_at is not None
                                and s.acked_at < restart_at) for conv in convs}
            for conv in convs:
                later = [s.seq for s in load.ledger.sent if s.conv == conv
                         and s.first_sent >= restart_at and s.seq is not None]
                assert later and min(later) > before[conv], (conv, before[conv], later)
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
                await v.stop()
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
            await load.ledger.wait_acked(150, timeout=WAIT_S)
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
                await load.ledger.wait_acked(100, since=down_at, timeout=WAIT_S)
                # Down for a few seconds: the routers keep failing and hold the backlog.
                await asyncio.sleep(max(0.0, down_at + MARIADB_DOWN_S - time.monotonic()))
                acked_while_down = len(load.ledger.acked(down_at))
                assert not load.ledger.errors, load.ledger.errors
                await asyncio.to_thread(mariadb_start)
            up_at = time.monotonic()
            await watch_readiness([router1, router2], 200)
            await load.ledger.wait_acked(100, since=up_at, timeout=WAIT_S)
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


def test_kill_9_routers_between_delivery_and_commit(tmp_path: Path) -> None:
    """Issue 17: a router delivers a message as soon as it is durable (in RabbitMQ) and commits
    it beside. The history table is locked (this test's own databases), so every router hangs
    in its commit: acked messages are shown live while none of them is stored; then both
    routers are killed with -9 mid-commit and a new one started. Asserts that what was shown
    before the commit is stored afterwards under the seq its ack gave, once, and no connection
    shows anything twice although the new router delivers it again."""
    with cluster(tmp_path) as c:
        node1, node2, router1, router2 = start_cluster(c)

        async def scenario() -> None:
            load = await start_load(c, [node1], node2, visitors=12)
            await load.ledger.wait_acked(100, timeout=WAIT_S)
            locks = []
            try:
                for url in c.env["TIDEDESK_DATABASE_URL"].split(","):
                    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root",
                                           password="", autocommit=True,
                                           database=urlparse(url).path.lstrip("/"))
                    with conn.cursor() as cur:
                        cur.execute("LOCK TABLES message WRITE")
                    locks.append(conn)
                locked_at = time.monotonic()

                def stored_now() -> set[str]:
                    cids: set[str] = set()
                    for conn in locks:  # the lock holder may read the table
                        with conn.cursor() as cur:
                            cur.execute("SELECT client_id FROM message")
                            cids |= {row[0] for row in cur.fetchall()}
                    return cids

                before = stored_now()  # committed before the lock (their acks may come later)

                def shown_not_stored() -> list[Sent]:
                    acked = [s for s in load.ledger.acked(locked_at)
                             if s.seq is not None and s.cid not in before]
                    return [s for s in acked
                            if any(s.seq in p.shown(s.conv) for p in load.agents)]

                await wait_until_async("messages shown live while no commit can happen",
                                       lambda: len(shown_not_stored()) >= 20, WAIT_S)
                early = shown_not_stored()
                assert stored_now() == before, "a row was committed despite the lock"
                router1.kill(signal.SIGKILL)
                router2.kill(signal.SIGKILL)
            finally:
                for conn in locks:
                    with contextlib.suppress(pymysql.err.MySQLError):
                        conn.cursor().execute("UNLOCK TABLES")
                    conn.close()
            c.start("router", "router3")
            unlocked_at = time.monotonic()
            await load.ledger.wait_acked(100, since=unlocked_at, timeout=WAIT_S)
            await load.finish()
            rows = await check_ledger(load)
            stored = {cid: seq for items in rows.values() for seq, cid in items}
            assert all(stored.get(s.cid) == s.seq for s in early)
            await check_delivered(load.agents, load.ledger, "agents, live")
            await check_delivered(load.visitors, load.ledger, "visitors, live")
            print(f"\nrouters killed between delivery and commit: {len(load.ledger.sent)} "
                  f"messages, {len(early)} shown before any commit")
            await load.close()

        asyncio.run(scenario())
