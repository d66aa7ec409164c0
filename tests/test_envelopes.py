"""Broker envelopes (tidedesk/envelopes.py): round trips, schema errors, JSON from older nodes,
grouped deliveries (binary v2) and what a node before them does with one; then a real chat node
and router on RabbitMQ reading JSON envelopes queued by an older version, dropping poison
messages without getting stuck, showing it all on their /metrics, and sending a message to
the agent and the visitor's other tab on one node in one envelope."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.clients import (
    add_agent,
    agent_socket,
    embedded,
    login,
    new_visitor,
    wait_agent_online,
    ws,
)
from tests.support.cluster import cluster
from tests.support.metrics import moved, scrape, value
from tests.support.waiting import wait_until_async
from tidedesk.broker import INBOUND_QUEUE, node_queue
from tidedesk.envelopes import (
    BINARY_V1,
    BINARY_V2,
    AgentStatusEvent,
    CloseEvent,
    EnvelopeError,
    InboundEvent,
    MessageEvent,
    OpenedEvent,
    TransferEvent,
    decode_deliveries,
    decode_delivery,
    decode_inbound,
    delivery_encoder,
    encode_deliveries,
    encode_delivery,
    encode_delivery_json,
    encode_inbound,
    encode_inbound_json,
    event_from_mapping,
    inbound_encoder,
)
from tidedesk.frames import AttachmentMeta

EVENTS: dict[str, InboundEvent] = {
    "message": MessageEvent("c1", "v1", 7, "m-1", "visitor", "v1", "Vera", "Hi!", 1.7e9),
    "private note": MessageEvent("c1", "v1", 8, "m-2", "agent", "3", "Ann", "VIP", 1.7e9, True),
    "message with attachments": MessageEvent(
        "c1", "v1", 9, "m-3", "visitor", "v1", "", "", 1.7e9,
        attachments=(AttachmentMeta("a" * 32, "box.png", "image/png", 2048),
                     AttachmentMeta("b" * 32, "发票.pdf", "application/pdf", 99))),
    "opened": OpenedEvent("c1", "v1", ("vip", "new")),
    "close": CloseEvent("c1", "agent:3"),
    "transfer to pool": TransferEvent("c1", "3", to_pool="experts"),
    "transfer to agent": TransferEvent("c1", "3", to_agent="4"),
    "agent status": AgentStatusEvent("3", "away", ("general",), 5, "Ann"),
}

FRAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "message": ("agent:3", {"type": "message", "conversation_id": "c1", "seq": 2, "id": "m",
                            "from": "agent", "body": "您好", "ts": 1.7e9, "name": "Ann"}),
    "private message": ("agent:3", {"type": "message", "conversation_id": "c1", "seq": 3,
                                    "id": "n", "from": "agent", "body": "x", "ts": 1.0,
                                    "private": True}),
    "message with a future field": ("visitor:v1", {
        "type": "message", "conversation_id": "c1", "seq": 2, "id": "m", "from": "agent",
        "body": "b", "ts": 1.0, "reactions": ["+1"]}),
    "message without ts (sent as a map)": ("visitor:v1", {
        "type": "message", "conversation_id": "c1", "seq": 2, "id": "m", "from": "agent",
        "body": "b"}),
    "message with attachments": ("visitor:v1", {
        "type": "message", "conversation_id": "c1", "seq": 4, "id": "m", "from": "agent",
        "body": "", "ts": 1.0, "attachments": [
            {"id": "c" * 32, "name": "label.pdf", "content_type": "application/pdf",
             "size": 5, "url": f"/api/v1/attachments/{'c' * 32}"}]}),
    "state": ("visitor:v1", {"type": "state", "state": "queued"}),
    "assigned": ("agent:3", {"type": "assigned", "conversation_id": "c1", "last_seq": 0,
                             "visitor": {"id": "v1", "name": "Vera", "tags": ["vip"]}}),
    "typing": ("visitor:v1", {"type": "typing", "on": True, "conversation_id": "c1",
                              "from": "agent"}),
}


@pytest.mark.parametrize("name", EVENTS)
def test_events_round_trip_in_binary_and_in_the_json_of_older_nodes(name: str) -> None:
    event = EVENTS[name]
    binary = encode_inbound(event)
    assert binary[:1] == BINARY_V1
    assert decode_inbound(binary) == event
    legacy = encode_inbound_json(event)
    assert json.loads(legacy)["kind"] == event.KIND
    assert decode_inbound(legacy) == event
    assert decode_inbound(b"  \n" + legacy) == event  # leading white space is still JSON
    assert len(binary) < len(legacy)


@pytest.mark.parametrize("name", FRAMES)
def test_deliveries_round_trip_in_binary_and_json(name: str) -> None:
    who, frame = FRAMES[name]
    for body in (encode_delivery(who, frame), encode_delivery_json(who, frame)):
        assert decode_delivery(body) == (who, frame)
    assert len(encode_delivery(who, frame)) < len(encode_delivery_json(who, frame))


@given(body=st.text(max_size=300), name=st.text(max_size=40),
       seq=st.integers(min_value=0, max_value=2**53), ts=st.floats(allow_nan=False),
       private=st.booleans())
def test_any_message_survives_both_encodings(body: str, name: str, seq: int, ts: float,
                                             private: bool) -> None:
    event = MessageEvent("c", "v", seq, "id", "agent", "3", name, body, ts, private)
    assert decode_inbound(encode_inbound(event)) == event
    frame = {"type": "message", "conversation_id": "c", "seq": seq, "id": "id",
             "from": "agent", "body": body, "ts": ts, "name": name, "private": private}
    who, got = decode_delivery(encode_delivery("visitor:v", frame))
    expected = {k: v for k, v in frame.items()
                if (k, v) not in (("name", ""), ("private", False))}
    assert who == "visitor:v" and got == expected


GROUP = ("visitor:v1", "agent:3")  # the visitor's other tab and the agent, on one node


@pytest.mark.parametrize("name", FRAMES)
def test_a_grouped_delivery_names_every_recipient_and_carries_the_frame_once(name: str
                                                                           ) -> None:
    _, frame = FRAMES[name]
    body = encode_deliveries(GROUP, frame)
    assert body[:1] == BINARY_V2
    assert decode_deliveries(body) == (GROUP, frame)
    # One recipient: binary v1, what every node since binary envelopes reads.
    single = encode_deliveries(GROUP[:1], frame)
    assert single == encode_delivery(GROUP[0], frame)
    assert decode_deliveries(single) == (GROUP[:1], frame)
    assert decode_deliveries(encode_delivery_json(GROUP[0], frame)) == (GROUP[:1], frame)
    assert len(body) < 2 * len(single)
    with pytest.raises(EnvelopeError, match="2 recipients"):
        decode_delivery(body)  # the one-recipient reader never drops the second one


class _DeliveryBeforeV2(msgspec.Struct, array_like=True):
    to: str
    frame: dict[str, Any] | list[Any]


def _decode_delivery_before_v2(body: bytes) -> tuple[str, Any]:
    """What a chat node of the version before grouped deliveries runs (tidedesk/envelopes.py
    at be31425): binary v1 (an array-like [to, frame] Struct) or JSON by the first byte,
    anything else an unknown format."""
    if body[:1] == BINARY_V1:
        old = msgspec.msgpack.decode(body[1:], type=_DeliveryBeforeV2)
        return old.to, old.frame
    if body.lstrip()[:1] == b"{":
        data = json.loads(body)
        return data["to"], data["frame"]
    raise EnvelopeError(f"unknown envelope format (first byte {body[:1]!r}); expected "
                        f"{BINARY_V1!r} (binary v1) or a JSON object")


def test_a_node_before_grouped_deliveries_refuses_one_loudly_and_shows_it_to_nobody() -> None:
    """Rolling upgrade, the risky direction: a new router sends a grouped delivery to an old
    chat node. The old node must not show the frame to the first recipient and silently drop
    the rest: it refuses the whole envelope as an unknown format (its hub logs that at ERROR
    and counts it in tidedesk_envelopes_rejected_total{queue="delivery"}). Hence
    TIDEDESK_ENVELOPE_FORMAT=binary-v1 while old nodes run (docs/envelopes.md)."""
    _, frame = FRAMES["message"]
    with pytest.raises(EnvelopeError, match="unknown envelope format"):
        _decode_delivery_before_v2(encode_deliveries(GROUP, frame))
    # Why a new version byte and not a trailing field of v1: msgspec decodes an array-like
    # Struct from a longer array and ignores the extra slots, so the old node would have shown
    # the frame to the first recipient and said nothing of the second.
    trailing = BINARY_V1 + msgspec.msgpack.encode([GROUP[0], frame, list(GROUP[1:])])
    assert _decode_delivery_before_v2(trailing) == (GROUP[0], frame)
    # binary-v1 writes one v1 envelope per recipient: the old node reads each.
    for who in GROUP:
        assert _decode_delivery_before_v2(delivery_encoder("binary-v1")(who, frame))[0] == who


def _binary(*values: Any) -> bytes:
    return BINARY_V1 + msgspec.msgpack.encode(list(values))


_IN, _OUT = decode_inbound, decode_delivery
BAD: dict[str, tuple[Callable[[bytes], object], bytes, str]] = {
    "empty": (_IN, b"", "unknown envelope format"),
    "neither binary nor JSON": (_IN, b"hello", "unknown envelope format"),
    "JSON array": (_IN, b"[1, 2]", "unknown envelope format"),
    "broken JSON": (_IN, b'{"kind": ', "not valid JSON"),
    "JSON without kind": (_IN, b'{"conversation_id": "c"}', "unknown event kind None"),
    "JSON unknown kind": (_IN, b'{"kind": "explode"}', "unknown event kind 'explode'"),
    "JSON missing field": (_IN, b'{"kind": "close"}', "close event without 'conversation_id'"),
    "JSON seq as text": (_IN, encode_inbound_json(EVENTS["message"]).replace(
        b'"seq": 7', b'"seq": "7"'), "Expected `int`, got `str` - at `seq`"),
    "JSON negative seq": (_IN, encode_inbound_json(EVENTS["message"]).replace(
        b'"seq": 7', b'"seq": -1'), "Expected `int` >= 0 - at `seq`"),
    "JSON unknown sender": (_IN, encode_inbound_json(EVENTS["message"]).replace(
        b'"visitor", "s', b'"robot", "s'), "Invalid enum value 'robot' - at `from`"),
    "transfer to nowhere": (_IN, b'{"kind": "transfer", "conversation_id": "c", "by": "3"}',
                            "exactly one of to_agent and to_pool"),
    "binary transfer to both": (_IN, _binary(4, "c", "3", "4", "general"),
                                "exactly one of to_agent and to_pool"),
    "binary not msgpack": (_IN, BINARY_V1 + b"\xc1", "binary inbound event"),
    "binary unknown tag": (_IN, _binary(99, "c"), "binary inbound event"),
    "binary too short": (_IN, _binary(3), "binary close event"),
    "binary wrong status": (_IN, _binary(5, "3", "asleep"),
                            "Invalid enum value 'asleep' - at `status`"),
    "delivery to no role": (_OUT, encode_delivery("bob", {"type": "state"}), "regex"),
    "delivery frame without type": (_OUT, encode_delivery_json("visitor:v", {"on": True}),
                                    "'type'"),
    "JSON delivery without frame": (_OUT, b'{"to": "visitor:v"}', "JSON delivery"),
    "binary delivery frame a list": (_OUT, _binary("visitor:v", [1, 2]), "binary delivery"),
    "delivery not an envelope": (_OUT, b"\x00\x01", "unknown envelope format"),
    "v2 delivery to nobody": (decode_deliveries,
                              BINARY_V2 + msgspec.msgpack.encode([[], {"type": "state"}]),
                              "binary v2 delivery: Expected `array` of length >= 1"),
    "v2 delivery to no role": (decode_deliveries,
                               BINARY_V2 + msgspec.msgpack.encode([["visitor:v", "bob"],
                                                                   {"type": "state"}]),
                               "binary v2 delivery"),
    "v2 delivery not msgpack": (decode_deliveries, BINARY_V2 + b"\xc1", "binary v2 delivery"),
    "v2 delivery frame without type": (decode_deliveries,
                                       BINARY_V2 + msgspec.msgpack.encode([list(GROUP),
                                                                           {"on": True}]),
                                       "'type'"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_envelopes_are_refused_with_a_clear_reason(name: str) -> None:
    decode, body, reason = BAD[name]
    with pytest.raises(EnvelopeError) as err:
        decode(body)
    assert reason in str(err.value)


def test_events_from_mappings_ignore_unknown_keys_and_fill_defaults() -> None:
    event = event_from_mapping({"kind": "opened", "conversation_id": "c", "visitor_id": "v",
                                "added_in_v9": 1})
    assert event == OpenedEvent("c", "v", ())


def test_json_format_writes_what_older_routers_read() -> None:
    for name, event in EVENTS.items():
        body = inbound_encoder("json")(event)
        assert json.loads(body)["kind"] == event.KIND, name  # what the old router parsed
        assert inbound_encoder("binary")(event)[:1] == BINARY_V1
    who, frame = FRAMES["message"]
    assert json.loads(delivery_encoder("json")(who, frame)) == {"to": who, "frame": frame}
    assert delivery_encoder("binary")(who, frame)[:1] == BINARY_V1


def test_embedded_server_chats_with_json_envelopes(tmp_path: Path) -> None:
    """TIDEDESK_ENVELOPE_FORMAT=json (the first step of a rolling upgrade) works end to end."""
    async def scenario() -> None:
        async with embedded(tmp_path, envelope_format="json") as rt:
            assert rt.router is not None and rt.router.envelope_format == "json"
            ann_id = add_agent(rt, "ann@shop.test", pools=("general", "experts", "training"))
            agent = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann_id)
            _, _, visitor = await new_visitor(rt, opening=None)
            assert (await visitor.say("hello in JSON"))["seq"] == 1
            conv_id = (await agent.wait_type("assigned"))["conversation_id"]
            assert (await agent.wait_type("message", seq=1))["body"] == "hello in JSON"
            assert (await agent.say("hi", conversation_id=conv_id))["seq"] == 2
            await visitor.wait_type("message", seq=2)
            await visitor.close()
            await agent.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("envelope_format, per_message", [("binary", 1), ("binary-v2", 1),
                                                         ("binary-v1", 2), ("json", 2)])
def test_a_message_reaches_the_agent_and_the_visitors_other_tab_in_one_envelope(
        tmp_path: Path, envelope_format: str, per_message: int) -> None:
    """Both recipients are on the one embedded node: ``binary`` sends them one envelope,
    ``binary-v1`` and ``json`` (the upgrade settings) one each; all three show it to both."""
    async def scenario() -> None:
        async with embedded(tmp_path, envelope_format=envelope_format) as rt:
            ann_id = add_agent(rt, "ann@shop.test")
            agent = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann_id)
            _, token, tab_a = await new_visitor(rt)
            tab_b = await ws(rt, "/ws/visitor", token)
            await tab_b.wait_type("hello")
            conv_id = (await agent.wait_type("assigned"))["conversation_id"]
            await agent.send({"type": "resume", "conversation_id": conv_id, "after_seq": 0})
            await agent.wait_type("message", seq=1)  # (tab B's hello said last_seq 1)
            for seq in (2, 3):
                before = await scrape(rt.port)
                assert (await tab_a.say(f"question {seq}"))["seq"] == seq
                assert (await agent.wait_type("message", seq=seq))["body"] == f"question {seq}"
                assert (await tab_b.wait_type("message", seq=seq))["body"] == f"question {seq}"
                after = await scrape(rt.port)
                assert moved(before, after, "tidedesk_deliveries_published_total") \
                    == per_message
            for client, seqs in ((agent, [1, 2, 3]), (tab_b, [2, 3])):
                assert [f["seq"] for f in client.of_type("message")] == seqs  # once, in order
            for client in (tab_a, tab_b, agent):
                await client.close()

    asyncio.run(scenario())


def _publish(url: str, queue: str, *bodies: bytes) -> None:
    """What an older (or broken) node would put on a queue: raw bodies, persistent."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


@pytest.mark.mariadb
@pytest.mark.redis
@pytest.mark.rabbitmq
@pytest.mark.slow
def test_cluster_reads_older_json_envelopes_drops_poison_and_reports_metrics(
        tmp_path: Path) -> None:
    with cluster(tmp_path, shards=1) as c:
        ann_id = c.add_agent("ann@shop.test")
        node = c.start("chatnode", "node1")
        router = c.start("router", "router1")
        url = c.env["TIDEDESK_BROKER_URL"]

        async def scenario() -> None:
            node_before, router_before = await scrape(node.port), await scrape(router.port)
            agent = await ws(node, "/ws/agent", await login(node, "ann@shop.test"))  # type: ignore[arg-type]
            await agent.wait_type("hello")
            await wait_until_async("ann online at the router", lambda: c.agent_online(ann_id), 10)
            visitor_id, _, visitor = await new_visitor(node, opening=None)  # type: ignore[arg-type]
            assert (await visitor.say("first, through the new chat node"))["type"] == "ack"
            conv_id = (await agent.wait_type("assigned", timeout=10))["conversation_id"]
            # The opening message may be stored before the chat has its agent (issue 13): the
            # console catches up from `assigned`'s last_seq, as the real one does.
            await agent.send({"type": "resume", "conversation_id": conv_id, "after_seq": 0})
            await agent.wait_type("message", seq=1)

            # Poison: never redelivered (it would fail again), never blocking what follows.
            _publish(url, INBOUND_QUEUE, BINARY_V1 + b"\xc1", b'{"kind": "message"}',
                     b"not an envelope")
            _publish(url, node_queue("node1"), BINARY_V1 + b"garbage")
            # Rolling upgrade: JSON an older chat node queued, and an older router's delivery.
            legacy = MessageEvent(conv_id, visitor_id, 2, "legacy-1", "visitor", visitor_id,
                                  "", "queued by an older chat node", time.time())
            _publish(url, INBOUND_QUEUE, encode_inbound_json(legacy))
            _publish(url, node_queue("node1"), encode_delivery_json(
                f"visitor:{visitor_id}", {"type": "typing", "on": True,
                                          "conversation_id": conv_id, "from": "agent"}))
            got = await agent.wait_type("message", seq=2, timeout=10)
            assert got["body"] == "queued by an older chat node" and got["id"] == "legacy-1"
            await visitor.wait_type("typing", on=True)
            # A grouped delivery (binary v2), as a new router writes it, reaches both.
            _publish(url, node_queue("node1"), encode_deliveries(
                (f"visitor:{visitor_id}", f"agent:{ann_id}"),
                {"type": "typing", "on": False, "conversation_id": conv_id, "from": "system"}))
            await visitor.wait_type("typing", on=False)
            await agent.wait_type("typing", on=False)
            assert await c.storage.messages.count(conv_id) == 2

            await asyncio.sleep(0.5)  # a requeued poison message would be counted again
            node_after, router_after = await scrape(node.port), await scrape(router.port)
            assert moved(router_before, router_after, "tidedesk_envelopes_rejected_total",
                         queue="inbound") == 3
            assert moved(node_before, node_after, "tidedesk_envelopes_rejected_total",
                         queue="delivery") == 1
            # The router role's own metrics moved with the traffic.
            assert value(router_after, "tidedesk_ready") == 1
            assert value(router_after, "tidedesk_db_write_failures_total") == 0
            assert moved(router_before, router_after, "tidedesk_router_events_total",
                         kind="message") == 2
            assert moved(router_before, router_after, "tidedesk_router_events_total",
                         kind="opened") == 1
            assert moved(router_before, router_after, "tidedesk_router_batch_size_sum") == 2
            assert moved(router_before, router_after, "tidedesk_db_write_seconds_count") >= 1
            assert moved(router_before, router_after, "tidedesk_assignments_total",
                         pool="general") == 1
            assert (router_before.keys() | router_after.keys()) >= {
                ("tidedesk_waiting_visitors", (("pool", "general"),))}
            assert moved(router_before, router_after, "tidedesk_publish_confirm_seconds_count",
                         queue="delivery") >= 4
            # ... and the chat node's.
            assert value(node_after, "tidedesk_connections", role="visitor") == 1
            assert value(node_after, "tidedesk_connections", role="agent") == 1
            assert moved(node_before, node_after, "tidedesk_messages_in_total",
                         role="visitor") == 1
            assert moved(node_before, node_after, "tidedesk_messages_out_total") >= 3
            assert moved(node_before, node_after,
                         "tidedesk_delivery_latency_seconds_count") >= 3
            assert moved(node_before, node_after, "tidedesk_publish_confirm_seconds_count",
                         queue="inbound") >= 3  # agent status, opened, message
            assert moved(node_before, node_after, "tidedesk_http_request_duration_seconds_count",
                         handler="LoginHandler", method="POST") == 1
            await visitor.close()
            await agent.close()

        asyncio.run(scenario())
        router_log = router.log_path.read_text()
        assert router_log.count("dropping undecodable inbound message") == 3
        assert "dropping undecodable delivery" in node.log_path.read_text()
