"""Agent bots at the router (issue 16): a site may send its new conversations to a bot first.

The bot's state per conversation lives in the shared store (``bot:<conversation id>``), so any
router can act on it: the bot's name, the pool to hand off to, how long it may take to answer,
and the deadline of the visitor message it has not answered yet. A hand-off (the bot's own
call, or the deadline passing) drops the state, sends the visitor "connecting you to a
person" in their language as a system message (stored like any other, once per
conversation), and routes the chat to the pool like a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tidedesk.broker import INBOUND_QUEUE, Broker
from tidedesk.envelopes import MessageEvent, inbound_encoder
from tidedesk.i18n import text
from tidedesk.resume import reseed_floor
from tidedesk.storage import Storage
from tidedesk.store import Store

log = logging.getLogger(__name__)

# How long a conversation's bot state is kept (a chat with a bot rarely lasts a day).
BOT_STATE_TTL_SECS = 86400
HANDOFF_MESSAGE_ID = "tidedesk-handoff"


def bot_key(conv_id: str) -> str:
    return f"bot:{conv_id}"


class Bots:
    def __init__(self, *, broker: Broker, store: Store, storage: Storage,
                 clock: Callable[[], float], envelope_format: str,
                 route: Callable[[str, str, str | None], Awaitable[None]]) -> None:
        self.broker = broker
        self.store = store
        self.storage = storage
        self.clock = clock
        self._encode = inbound_encoder(envelope_format)
        self._route = route  # (conversation, visitor, pool or None = the bot's) -> routed
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    async def state(self, conv_id: str) -> dict[str, Any] | None:
        raw = await self.store.kv_get(bot_key(conv_id), self.clock())
        return json.loads(raw) if raw else None

    async def _save(self, conv_id: str, state: dict[str, Any]) -> None:
        await self.store.kv_set(bot_key(conv_id), json.dumps(state), BOT_STATE_TTL_SECS,
                                self.clock())

    async def start(self, conv_id: str, visitor_id: str, bot: dict[str, Any],
                    pool: str) -> None:
        await self._save(conv_id, {"name": bot["name"], "pool": pool, "visitor_id": visitor_id,
                                   "timeout_s": bot["timeout_s"], "deadline": 0})

    async def on_message(self, conv_id: str, from_: str, sender_id: str) -> None:
        """A visitor's message starts the bot's clock; the bot's answer (its API token) stops
        it."""
        state = await self.state(conv_id)
        if state is None:
            return
        if from_ == "visitor" and not state["deadline"]:
            state["deadline"] = self.clock() + state["timeout_s"]
            await self._save(conv_id, state)
            loop = asyncio.get_running_loop()
            handle = loop.call_later(state["timeout_s"] + 0.05, self._check_soon, conv_id)
            self._timers.add(handle)
        elif from_ == "agent" and sender_id.startswith("api:") and state["deadline"]:
            state["deadline"] = 0
            await self._save(conv_id, state)

    def _check_soon(self, conv_id: str) -> None:
        task = asyncio.ensure_future(self._check(conv_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, conv_id: str) -> None:
        try:
            state = await self.state(conv_id)
            if state is not None and state["deadline"] and self.clock() >= state["deadline"]:
                log.info("bot did not answer in time; handing off",
                         extra={"conversation_id": conv_id})
                await self.handoff(conv_id, None, by="bot-timeout")
        except Exception as exc:  # the store or broker is down: the chat stays with the bot
            log.warning("bot timeout check failed", extra={"conversation_id": conv_id,
                                                           "error": str(exc)})

    async def handoff(self, conv_id: str, pool: str | None, *, by: str) -> bool:
        """Hand the conversation from its bot to people; False when no bot holds it."""
        state = await self.state(conv_id)
        if state is None:
            return False
        await self.store.kv_delete(bot_key(conv_id))
        visitor = await self.storage.visitors.get(state["visitor_id"])
        await self._say(conv_id, state["visitor_id"], state["name"],
                        text("handoff", visitor.locale if visitor else "en"))
        await self.storage.audit.record(by, "conversation.handoff", conv_id,
                                        {"pool": pool or state["pool"]})
        await self._route(conv_id, state["visitor_id"], pool or state["pool"])
        return True

    async def _say(self, conv_id: str, visitor_id: str, name: str, body: str) -> None:
        """A system message on the durable path (seq, inbound queue), once per conversation."""
        now = self.clock()
        assigned = await self.store.assign_seq(conv_id, HANDOFF_MESSAGE_ID, now)
        if assigned is None:
            floor = reseed_floor(await self.storage.messages.max_seq(conv_id),
                                 conversation_is_new=False)
            await self.store.seed_seq(conv_id, floor)
            assigned = await self.store.assign_seq(conv_id, HANDOFF_MESSAGE_ID, now)
        if assigned is None:
            return
        await self.broker.publish(INBOUND_QUEUE, self._encode(MessageEvent(
            conversation_id=conv_id, visitor_id=visitor_id, seq=assigned[0],
            id=HANDOFF_MESSAGE_ID, from_="system", sender_id="", name=name, body=body,
            ts=now)))

    def stop(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
