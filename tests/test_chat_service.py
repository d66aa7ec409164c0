"""The chat node's rules, driven on the real ChatService of an embedded runtime (in-memory
broker and store, SQLite) without a socket: a recording peer stands in for the WebSocket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chatnode.connections import ConnectionState
from chatnode.conversations import Conversations, relay_frame
from chatnode.errors import ServiceError
from chatnode.service import ChatService
from tests.support.clients import add_agent, embedded
from tidedesk import wire
from tidedesk.auth import Principal
from tidedesk.ratelimit import TokenBucket


class RecordingPeer:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.failures: list[tuple[str, int | None]] = []

    def send(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    def send_unseen(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    def fail(self, code: str, message: str, close_code: int | None = None,
             frame_id: str | None = None) -> None:
        self.failures.append((code, close_code))


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def new_conn(role: str) -> ConnectionState:
    return ConnectionState(conn_id=f"{role}-conn", role=role,
                           bucket=TokenBucket.per_window(100, 10.0, 0.0))


def frame(raw: str, role: str = "visitor") -> wire.Frame:
    return wire.parse_frame(raw, role=role, max_body_chars=4000)


async def visitor(service: ChatService) -> tuple[ConnectionState, RecordingPeer]:
    """A connected visitor whose first message opened their conversation (issue 13)."""
    created = await service.create_visitor({"name": "Vera"})
    conn, peer = new_conn("visitor"), RecordingPeer()
    await service.connect_visitor(conn, created["token"], "127.0.0.1")
    await service.visitor_joined(conn, False, peer)
    await service.visitor_frame(conn, frame('{"type": "message", "id": "m1", "body": "Hi"}'),
                                peer)
    return conn, peer


def test_hello_comes_first_and_names_the_conversation(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            assert rt.node is not None
            conn, peer = await visitor(rt.node.service)
            assert conn.session is not None and conn.who.startswith("visitor:")
            hello = peer.frames[0]  # no conversation until the first message
            assert hello["type"] == "hello" and hello["last_seq"] == 0
            assert (hello["conversation_id"], hello["state"]) == (None, "new")
            named = [f for f in peer.frames if f["type"] == "hello"][-1]  # before its ack
            assert named["conversation_id"] == conn.session.conversation_id is not None

    run(scenario())


def test_a_visitor_writing_into_a_closed_chat_reopens_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            assert rt.node is not None
            service = rt.node.service
            conn, peer = await visitor(service)
            assert conn.session is not None
            old = conn.session.conversation_id
            await rt.storage.conversations.update(old, state="closed")
            conn.track({"type": "state", "state": "closed"})
            pending = await service.visitor_frame(
                conn, frame('{"type": "message", "id": "m1", "body": "again"}'), peer)
            assert conn.session.conversation_id != old
            assert pending is not None and pending.conv_id == conn.session.conversation_id
            assert pending.seq == 1 and pending.sender_type == "visitor"
            # new (connect), the first message's conversation, then the new one after the close
            assert [f["type"] for f in peer.frames].count("hello") == 3

    run(scenario())


def test_a_visitor_may_name_only_their_own_conversation(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            assert rt.node is not None
            conn, peer = await visitor(rt.node.service)
            with pytest.raises(ServiceError) as err:
                await rt.node.service.visitor_frame(conn, frame(
                    '{"type": "ping", "conversation_id": "someone-else"}'), peer)
            assert err.value.status == 403

    run(scenario())


def test_agents_cannot_write_to_closed_chats_but_may_add_notes() -> None:
    with pytest.raises(ServiceError) as err:
        Conversations.check_agent_may_write("message", "closed")
    assert err.value.code == "conversation_closed"
    Conversations.check_agent_may_write("note", "closed")
    Conversations.check_agent_may_write("message", "assigned")


def test_typing_and_read_relay_only_the_protocol_fields() -> None:
    relayed = relay_frame({"type": "typing", "on": True, "body": "x", "id": "1"}, "c1", "agent")
    assert relayed == {"type": "typing", "on": True, "conversation_id": "c1", "from": "agent"}


def test_ownership_and_history_checks(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            assert rt.node is not None
            convs = rt.node.service.conversations
            conn, _ = await visitor(rt.node.service)
            assert conn.session is not None and conn.principal is not None
            conv_id = conn.session.conversation_id
            assert conv_id is not None
            assert await convs.history(conn.principal, conv_id, after_seq="1", before_seq=None,
                                       limit=None) == []
            stranger = Principal(kind="visitor", id="not-the-owner")
            with pytest.raises(ServiceError) as err:
                await convs.history(stranger, conv_id, after_seq=None, before_seq=None,
                                    limit=None)
            assert err.value.status == 403
            with pytest.raises(ServiceError) as err:
                await convs.history(conn.principal, conv_id, after_seq="1", before_seq="5",
                                    limit=None)
            assert err.value.code == "invalid_query"
            with pytest.raises(ServiceError) as err:
                await convs.history(conn.principal, conv_id, after_seq=None, before_seq=None,
                                    limit="501")
            assert err.value.code == "invalid_query"
            # (Nobody was online, so the chat is a ticket that agents of its pool may read:
            # an agent of another pool may not.)
            agent_id = add_agent(rt, "ann@shop.test", pools=("other",))
            with pytest.raises(ServiceError) as err:
                await convs.agent_can_see(Principal(kind="agent", id=agent_id, role="agent"),
                                          conv_id)
            assert err.value.status == 403
            boss = Principal(kind="agent", id=agent_id, role="supervisor")
            assert (await convs.agent_can_see(boss, conv_id)).id == conv_id

    run(scenario())


def test_canned_and_audit_reads(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            assert rt.node is not None
            service = rt.node.service
            admin = Principal(kind="agent", id="1", role="admin")
            assert isinstance(await service.canned.visible(admin), list)
            assert isinstance(await service.audit_log(limit="10", before_id=None,
                                                      action="auth."), list)
            with pytest.raises(ServiceError) as err:
                await service.audit_log(limit=None, before_id=None, action="drop table")
            assert err.value.code == "invalid_query"

    run(scenario())
