"""Attachments in cluster mode on real servers, as the Swarm stack runs them: two chat nodes
and a router on RabbitMQ, Redis and two MariaDB shards, files stored in MariaDB
(``TIDEDESK_ATTACHMENTS_URL=database``, the stack's default) and encrypted at rest. A file
taken in by one node is delivered through the broker and served by the other."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pymysql
import pytest
from PIL import Image

from tests.support.clients import login, new_visitor, ws
from tests.support.cluster import cluster
from tests.support.uploads import fetch, upload
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.mariadb, pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), "green").save(buf, "PNG")
    return buf.getvalue()


def test_image_through_two_nodes_stored_in_mariadb(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.env.update({"TIDEDESK_ATTACHMENTS_URL": "database",
                      "TIDEDESK_ENCRYPT_MESSAGE_BODIES": "true"})
        agent_id = c.add_agent("agent@shop.test")
        node1 = c.start("chatnode", "node1")
        node2 = c.start("chatnode", "node2")
        c.start("router", "router1")

        async def scenario() -> None:
            token = await login(node2, "agent@shop.test")  # type: ignore[arg-type]
            console = await ws(node2, "/ws/agent", token)  # type: ignore[arg-type]
            await console.wait_type("hello")
            await wait_until_async("the agent online", lambda: c.agent_online(agent_id), 30)
            _, vtoken, visitor = await new_visitor(node1)  # type: ignore[arg-type]
            conv = visitor.of_type("hello")[-1]["conversation_id"]
            await console.wait_type("assigned", conversation_id=conv, timeout=30)
            image = _png()
            status, att = await upload(node1.port, vtoken, image, "box.png")
            assert status == 201, att
            await visitor.send({"type": "message", "id": "with-photo", "body": "look",
                                "attachments": [att["id"]]})
            await visitor.wait_type("ack", id="with-photo", timeout=15)
            got = await console.wait_type("message", id="with-photo", timeout=15)
            assert got["attachments"][0]["id"] == att["id"]
            # Node 2 serves what node 1 took in; a signed link from node 2 works on node 1.
            status, headers, body = await fetch(node2.port, att["url"], token)
            assert status == 200 and headers["Content-Type"] == "image/png"
            assert Image.open(io.BytesIO(body)).size == (300, 200)
            _, _, raw = await fetch(node2.port, att["url"] + "/link", token)
            link = json.loads(raw)
            assert (await fetch(node1.port, link["thumbnail_url"]))[0] == 200
            # History from the shard carries the metadata.
            async def stored() -> bool:
                _, _, page = await fetch(node2.port, f"/api/v1/conversations/{conv}/messages",
                                         token)
                msgs = json.loads(page)["messages"]
                return bool(msgs and msgs[-1].get("attachments"))

            await wait_until_async("the message in history", stored, 15)
            await console.close()
            await visitor.close()

        asyncio.run(asyncio.wait_for(scenario(), 120))
        # At rest: parts in MariaDB, sealed (no PNG signature), name and list sealed too.
        urls = c.env["TIDEDESK_DATABASE_URL"].split(",")
        found = b""
        for url in urls:
            db = url.rsplit("/", 1)[1]
            conn = pymysql.connect(host="127.0.0.1", user="root", database=db)
            with conn.cursor() as cur:
                cur.execute("SELECT data FROM blobpart")
                found += b"".join(bytes(r[0]) for r in cur.fetchall())
                cur.execute("SHOW TABLES LIKE 'attachment'")
                if cur.fetchone():
                    cur.execute("SELECT name FROM attachment")
                    assert all(not r[0].startswith("box") for r in cur.fetchall())
            conn.close()
        assert found.startswith(b"TDB1") or b"TDB1" in found
        assert b"\x89PNG" not in found
