"""Taking and assigning conversations from the console or the REST API (issue 13):
``POST /api/v1/conversations/{id}/take`` and ``.../assign``.

A take or an assignment to an agent is answered at once (200, or 409 with a reason) because it
is one atomic store operation (``claim`` for a waiting chat or a ticket, ``handover`` for one
an agent holds), safe against routers and other chat nodes doing the same; the deliveries that
follow are the ones a router sends for an assignment. An assignment to a pool is a routing
decision and goes to the routers as a transfer (202): they move the chat to a free agent of that
pool, or to its queue, or refuse it with an error frame to the caller's console.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from chatnode.access import site_allows
from chatnode.errors import ServiceError
from tidedesk.auth import Principal
from tidedesk.delivery import deliver
from tidedesk.frames import (
    AgentAssignedFrame,
    AgentRef,
    Frame,
    QueueFrame,
    StateFrame,
    UnassignedFrame,
    VisitorAssignedFrame,
    visitor_summary,
)
from tidedesk.lifecycle import can_take
from tidedesk.routing_rules import RoutingConfig
from tidedesk.site_directory import SiteDirectory
from tidedesk.storage import Storage
from tidedesk.storage.records import Conversation
from tidedesk.store import Store

Deliver = Callable[[str, Frame], Awaitable[None]]


class Assignments:
    def __init__(self, *, store: Store, storage: Storage, broker: Any,
                 publish: Callable[[dict[str, Any]], Awaitable[None]],
                 routing: RoutingConfig | None, envelope_format: str = "binary",
                 clock: Callable[[], float] = time.time,
                 directory: SiteDirectory | None = None) -> None:
        self.store = store
        self.storage = storage
        self.directory = directory  # which pools each site has (agents see their sites)
        self.broker = broker
        self.publish = publish
        self.routing = routing
        self.envelope_format = envelope_format
        self.clock = clock

    async def _deliver(self, who: str, frame: Frame) -> None:
        await deliver(self.broker, self.store, who, frame, self.clock(), self.envelope_format)

    async def _conversation(self, conv_id: str) -> Conversation:
        conv = await self.storage.conversations.get(conv_id)
        if conv is None:
            raise ServiceError(404, "not_found", f"no conversation {conv_id!r}")
        if conv.state == "closed":
            raise ServiceError(409, "conversation_closed", "this conversation is closed")
        return conv

    async def _check_room(self, agent_id: str, who: str) -> None:
        load = await self.store.agent_get(agent_id)
        if load is None or load.status != "online":
            raise ServiceError(409, "not_online", f"{who} not online: open the console and set "
                               "the status to online first")
        if load.open_chats >= load.max_chats:
            raise ServiceError(409, "no_free_slot", f"{who} already at the limit of "
                               f"{load.max_chats} chats: close one first")

    # -- take ----------------------------------------------------------------------------------
    async def take(self, principal: Principal, conv_id: str) -> dict[str, Any]:
        """The caller takes a waiting or offline chat of one of their pools (supervisors: any
        pool). 409 when someone else was faster or the caller has no free slot."""
        conv = await self._conversation(conv_id)
        owner = await self.store.owner(conv_id)
        if owner == principal.id:
            return self._answer(conv_id, principal.id)
        if owner is not None or not can_take(conv.state):
            raise ServiceError(409, "taken", "another agent has this conversation now")
        agent = await self.storage.agents.get(principal.id)
        if agent is None:
            raise ServiceError(401, "invalid_token", "this account no longer exists")
        if not principal.is_supervisor and conv.pool not in agent.pool_list:
            raise ServiceError(403, "forbidden", f"this conversation waits in pool {conv.pool!r}"
                               ", which is not one of yours")
        if self.directory is not None and not site_allows(
                principal.role, agent.pool_list, await self.directory.site_pools(conv.site)):
            raise ServiceError(403, "forbidden", f"this conversation is of site {conv.site!r}, "
                               "which none of your pools belongs to")
        await self._check_room(principal.id, "you are")
        if not await self.store.claim(conv_id, principal.id, self.clock()):
            if await self.store.owner(conv_id) is not None:
                raise ServiceError(409, "taken", "another agent was faster")
            raise ServiceError(409, "no_free_slot", "you have no free slot: close a chat first")
        await self._assigned(conv, principal.id, previous=None)
        await self.storage.audit.record(f"agent:{principal.id}", "conversation.take", conv_id,
                                        {"state": conv.state})
        return self._answer(conv_id, principal.id)

    # -- assign --------------------------------------------------------------------------------
    async def assign(self, principal: Principal, conv_id: str,
                     body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A supervisor moves a chat to an agent (200 at once, or 409) or to a pool (202: the
        routers place it there or refuse it with an error frame to the caller's console)."""
        agent_id, pool = body.get("agent_id"), body.get("pool")
        if (agent_id is None) == (pool is None) or set(body) - {"agent_id", "pool"}:
            raise ServiceError(400, "invalid_body", 'send {"agent_id": str} or {"pool": str}')
        conv = await self._conversation(conv_id)
        if pool is not None:
            pools = self.routing.pools if self.routing is not None else ()
            if not isinstance(pool, str) or (pools and pool not in pools):
                raise ServiceError(400, "invalid_field", "'pool' must be one of "
                                   f"{', '.join(pools)}")
            await self.storage.audit.record(f"agent:{principal.id}", "conversation.assign",
                                            conv_id, {"pool": pool})
            await self.publish({"kind": "transfer", "conversation_id": conv_id,
                                "by": principal.id, "to_pool": pool})
            return 202, {"conversation_id": conv_id, "pool": pool, "state": "routing"}
        target_id = str(agent_id)
        if not isinstance(agent_id, str | int) or not target_id.isdigit():
            raise ServiceError(400, "invalid_field", "'agent_id' must be an agent id")
        target = await self.storage.agents.get(target_id)
        if target is None or not target.active:
            raise ServiceError(404, "not_found", f"no agent {target_id!r}")
        owner = await self.store.owner(conv_id)
        if owner == target_id:
            return 200, self._answer(conv_id, target_id)
        await self._check_room(target_id, "that agent is")
        if owner is not None:
            result = await self.store.handover(conv_id, owner, target_id, self.clock())
            if result == "not_owner":
                raise ServiceError(409, "taken", "the conversation moved meanwhile; look again")
            if result == "no_room":
                raise ServiceError(409, "no_free_slot", "that agent became busy; try another")
        elif not await self.store.claim(conv_id, target_id, self.clock()):
            raise ServiceError(409, "taken", "the conversation was taken meanwhile, or that "
                               "agent became busy; look again")
        await self._assigned(conv, target_id, previous=owner)
        await self.storage.audit.record(f"agent:{principal.id}", "conversation.assign", conv_id,
                                        {"from": owner, "to_agent": target_id})
        return 200, self._answer(conv_id, target_id)

    # -- what follows an assignment ------------------------------------------------------------
    @staticmethod
    def _answer(conv_id: str, agent_id: str) -> dict[str, Any]:
        return {"conversation_id": conv_id, "state": "assigned", "agent_id": agent_id}

    async def _assigned(self, conv: Conversation, agent_id: str, *,
                        previous: str | None) -> None:
        """The store says ``agent_id`` owns it now: out of the queue, the row, the ticket's
        assignee, and everybody told (the same frames a router sends)."""
        was_waiting = await self.store.dequeue(conv.pool, conv.id)
        await self.storage.conversations.update(conv.id, state="assigned", agent_id=agent_id)
        await self.storage.tickets.set_assignee(conv.id, agent_id)
        load = await self.store.agent_get(agent_id)
        visitor = await self.storage.visitors.get(conv.visitor_id)
        await self._deliver(f"visitor:{conv.visitor_id}", VisitorAssignedFrame(
            agent=AgentRef(id=agent_id, name=load.name if load else "")))
        await self._deliver(f"visitor:{conv.visitor_id}", StateFrame(state="assigned"))
        await self._deliver(f"agent:{agent_id}", AgentAssignedFrame(
            conversation_id=conv.id, visitor=visitor_summary(conv.visitor_id, visitor),
            last_seq=await self.store.last_seq(conv.id)
            or await self.storage.messages.max_seq(conv.id)))
        if previous is not None:
            await self._deliver(f"agent:{previous}", UnassignedFrame(conversation_id=conv.id))
        if was_waiting:  # the ones behind it moved up
            waiting = await self.store.waiting(conv.pool)
            convs = {c.id: c for c in
                     await self.storage.conversations.many([c for c, _ in waiting])}
            for position, (waiting_id, _) in enumerate(waiting, start=1):
                if waiting_id in convs:
                    await self._deliver(f"visitor:{convs[waiting_id].visitor_id}",
                                        QueueFrame(position=position))
