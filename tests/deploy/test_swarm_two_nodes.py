"""The stack on a two-node Swarm on this one machine (issue 19, "more than one node").

Node 1 is the local swarm's manager (tests/support/swarm.py). Node 2 is a second dockerd in a
network namespace the test creates, joined as a worker over a veth pair
(tests/support/second_node.py); it gets every image of the stack, so only the placement rules
keep services off it. Node 1 is labelled ``tidedesk.data=true`` and ``tidedesk.edge=true``, node 2
nothing, as docs/deploy.md's "Scale out to a second node" says; then swarm/deploy.sh deploys the
stack as ``shop-2node`` with two chat nodes and two routers.

Checked: Swarm spreads the chat nodes one per node; MariaDB, RabbitMQ, Redis and Prometheus
(and HAProxy, the control plane) never had a task on node 2; HAProxy on node 1 reaches the chat
node on node 2 over the overlay network (VXLAN over the veth); a visitor whose WebSocket HAProxy
gave to node 2's chat node chats with an agent both ways, and both messages are in the history
(MariaDB on node 1, reached from node 2 through the overlay). Everything the test made (stack,
node, namespace, the node's dockerd and files) is removed at the end, also on failure; on
failure `docker service ps`, the logs and node 2's dockerd log go under artifacts/deploy-2node/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.deploy.swarm_stack import (
    AGENT_EMAIL,
    AGENT_PASSWORD,
    REPO,
    TEST_IMAGES,
    Stack,
    build_images,
)
from tests.support.http import http_json, insecure_tls
from tests.support.resilient_client import ResilientClient
from tests.support.second_node import SecondNode
from tests.support.swarm import docker, ensure_swarm
from tests.support.waiting import wait_until, wait_until_async

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

log = logging.getLogger(__name__)

ARTIFACTS = REPO / "artifacts" / "deploy-2node"
PINNED_TO_DATA = ("mariadb", "rabbitmq", "redis", "prometheus", "alertmanager")
MAX_VISITORS = 6  # leastconn over two chat nodes: the second visitor lands on the other one
# A chat node's open visitor WebSockets, from its own /metrics (run inside its container).
CONNECTIONS = (
    "import urllib.request\n"
    "for line in urllib.request.urlopen('http://127.0.0.1:8080/metrics', timeout=5)"
    ".read().decode().splitlines():\n"
    "    if line.startswith('tidedesk_connections{') and 'role=\"visitor\"' in line:\n"
    "        print(int(float(line.split()[-1])))\n"
)


class TwoNodeStack(Stack):
    name = "shop-2node"
    SERVICES_ON = ("haproxy", "chatnode", "routernode", "controlplane", "alertmanager",
                   *PINNED_TO_DATA)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TwoNodeStack,
                                                                           SecondNode, str]]:
    workdir = tmp_path_factory.mktemp("swarm-2node")
    ensure_swarm(workdir)
    build_images()
    TwoNodeStack.remove()  # a leftover from an interrupted run
    node = SecondNode(workdir)
    s = TwoNodeStack(workdir)
    try:
        started = time.monotonic()
        node.start(sorted(set(TEST_IMAGES.values())))
        log.warning("node 2 up, images copied, joined in %.0fs", time.monotonic() - started)
        manager = docker("info", "--format", "{{.Swarm.NodeID}}")
        # docs/deploy.md, "Scale out to a second node": the labels, then the same deploy.
        docker("node", "update", "--label-add", "tidedesk.data=true",
               "--label-add", "tidedesk.edge=true", manager)
        started = time.monotonic()
        s.env = {**s.env, "CHATNODE_REPLICAS": "2", "ROUTERNODE_REPLICAS": "2"}
        s.deploy()
        s.wait_ready(timeout=240)
        s.create_agent()
        log.warning("stack ready on two nodes in %.0fs", time.monotonic() - started)
        yield s, node, docker("node", "inspect", manager, "--format", "{{.Description.Hostname}}")
    finally:
        started = time.monotonic()
        try:
            if not s.passed:
                dest = ARTIFACTS / time.strftime("%Y%m%dT%H%M%S")
                s.save_artifacts(dest)
                (dest / "nodes.txt").write_text(docker("node", "ls", check=False))
                if node.log_path.exists():
                    shutil.copy(node.log_path, dest / node.log_path.name)
            TwoNodeStack.remove()
        finally:
            node.stop()
            log.warning("stack and node 2 removed in %.0fs", time.monotonic() - started)


def hosts_of(service: str, running_only: bool = False) -> list[str]:
    """The node (hostname) of every task of the service, history included."""
    return [str(t["Node"]) for t in TwoNodeStack.tasks(service)
            if not running_only or str(t.get("CurrentState", "")).startswith("Running")]


def node2_visitors(node: SecondNode) -> int:
    cid = node.docker("ps", "-q", "--filter",
                      f"label=com.docker.swarm.service.name={TwoNodeStack.name}_chatnode")
    assert cid and len(cid.split()) == 1, f"not one chat node container on {node.name}: {cid!r}"
    out = node.docker("exec", cid, "python3", "-c", CONNECTIONS, timeout=30)
    return sum(int(n) for n in out.split())


async def new_visitor(s: Stack, name: str) -> ResilientClient:
    tls = insecure_tls()
    status, data = await asyncio.to_thread(http_json, "POST", s.https + "/api/v1/visitors",
                                           {"name": name, "tags": []}, None, 10.0, tls)
    assert status == 201, (status, data)
    client = ResilientClient(name, f"{s.wss}/ws/visitor?token={data['token']}", "visitor",
                             tls=tls)
    await client.start()
    return client


async def say(client: ResilientClient, body: str, conv: str | None = None) -> str:
    cid = await client.send_message(body, conv)
    await wait_until_async(f"{client.name}'s message to be acked", lambda: cid in client.acked,
                           20, every=0.1)
    return cid


async def chat_through_node2(s: TwoNodeStack, node: SecondNode) -> None:
    tls = insecure_tls()
    status, login = await asyncio.to_thread(
        http_json, "POST", s.https + "/api/v1/auth/login",
        {"email": AGENT_EMAIL, "password": AGENT_PASSWORD}, None, 10.0, tls)
    assert status == 200, login
    token = login["access_token"]
    agent = ResilientClient("agent", f"{s.wss}/ws/agent?token={token}", "agent", tls=tls)
    clients = [agent]
    try:
        await agent.start()
        # Open visitors one at a time until node 2's chat node counts one more.
        on_node2 = None
        for i in range(MAX_VISITORS):
            before = await asyncio.to_thread(node2_visitors, node)
            visitor = await new_visitor(s, f"two-node-{i}")  # returns once it said hello
            clients.append(visitor)
            with contextlib.suppress(AssertionError):
                await asyncio.to_thread(
                    wait_until, "node 2's chat node to count one more visitor",
                    lambda b=before: node2_visitors(node) > b, 3, every=0.5)
                on_node2 = visitor
                log.warning("visitor %d of HAProxy went to node 2's chat node", i + 1)
                break
        assert on_node2 is not None, (
            f"HAProxy gave none of {MAX_VISITORS} visitors to the chat node on {node.name}")
        sent_by_visitor = await say(on_node2, "Hello from a visitor on node 2")
        conv = on_node2.conversation_id
        assert conv is not None
        await wait_until_async("the agent to be assigned the node-2 visitor's chat",
                               lambda: conv in agent.convs(), 20, every=0.2)
        await wait_until_async(
            "the agent to be shown the visitor's message",
            lambda: sent_by_visitor in set(agent.conversations[conv].seen.values()), 20,
            every=0.2)
        sent_by_agent = await say(agent, "Hello, node 2, this is the agent", conv)
        await wait_until_async(
            "the visitor on node 2 to be shown the agent's answer",
            lambda: sent_by_agent in set(on_node2.conversations[conv].seen.values()), 20,
            every=0.2)
        status, data = await asyncio.to_thread(
            http_json, "GET", f"{s.https}/api/v1/conversations/{conv}/messages?after_seq=0",
            None, token, 10.0, tls)
        assert status == 200, data
        stored = [str(m["id"]) for m in data["messages"]]
        assert sent_by_visitor in stored and sent_by_agent in stored, stored
        assert len(stored) == len(set(stored)), f"stored twice: {stored}"
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)


def test_two_nodes_chat_across_and_state_stays_on_the_data_node(
        cluster: tuple[TwoNodeStack, SecondNode, str]) -> None:
    s, node, node1 = cluster
    nodes = docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}").splitlines()
    assert sorted(nodes) == sorted([f"{node1} Ready", f"{node.name} Ready"]), nodes
    # Swarm spreads a service's replicas over the nodes: one chat node on each.
    wait_until("a chat node running on each node",
               lambda: sorted(hosts_of("chatnode", running_only=True))
               == sorted([node1, node.name]), 60, every=2)
    # Only the labels keep the stateful services (and HAProxy, the control plane) on node 1:
    # node 2 has their images. No task of theirs was ever placed there.
    for service in (*PINNED_TO_DATA, "haproxy", "controlplane"):
        hosts = hosts_of(service)
        assert hosts and set(hosts) == {node1}, f"{service} had tasks on {set(hosts)}"
    log.warning("placement: %s", {svc: sorted(set(hosts_of(svc, running_only=True)))
                                  for svc in TwoNodeStack.SERVICES_ON})
    # HAProxy (node 1) checks both chat nodes' /readyz: the one on node 2 over the overlay.
    wait_until("HAProxy to see both chat nodes up", lambda: s.haproxy_servers_up() == 2, 60,
               every=2)
    time.sleep(6)  # HAProxy's slowstart (5 s here) has ramped the new servers' weight up
    asyncio.run(chat_through_node2(s, node))
    s.passed = True
