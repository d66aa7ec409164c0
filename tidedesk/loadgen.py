"""``tidedesk loadgen``: visitors and agents over real WebSockets, following docs/protocol.md.

Agents sign in (password, TOTP when they have a secret) and connect first; then visitors
arrive evenly over the ramp-up (``POST /api/v1/visitors``, then ``/ws/visitor``), wait to be
assigned, send messages at the planned rate (or closed loop), and leave over the ramp-down.
Latency is visitor send → the agent's console receiving the message, both clocks being this
process's. Every wait has a deadline: the run never outlives :attr:`LoadPlan.total_s` by more
than a few seconds. The plan, the schedule and the report are pure (:mod:`tidedesk.loadplan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tidedesk.loadplan import (
    AgentLogin,
    LoadPlan,
    Tally,
    build_report,
    phase_at,
    progress_line,
    start_offsets,
    stop_offsets,
)

log = logging.getLogger(__name__)
# Logins and visitor creations in flight at once: enough to ramp thousands of visitors a
# second, few enough not to look like an attack to HAProxy's per-address connection limit.
HTTP_CONCURRENCY = 64
# How often the progress line is redrawn on a terminal.
PROGRESS_EVERY_S = 0.5
# Longest frame a load client accepts (an agent's hello lists all its chats).
MAX_FRAME_BYTES = 1 << 22


class _Window(asyncio.Semaphore):
    """A visitor's messages in flight: the closed loop's limit, and what to wait for before
    the visitor leaves. ``release`` is called once per ack or error of a message."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.in_flight = 0

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        super().release()


class _LoadRun:
    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.tally = Tally()
        self.run_id = uuid.uuid4().hex[:8]
        self.sent_at: dict[str, float] = {}
        self.delivered_ids: set[str] = set()
        self.acked_ids: set[str] = set()
        self.http = AsyncHTTPClient(force_instance=True, max_clients=HTTP_CONCURRENCY)
        self._sources = itertools.cycle(plan.source_addresses or (None,))
        self.stopping = False

    # -- transport -------------------------------------------------------------------------
    def _request(self, url: str, **kw: Any) -> HTTPRequest:
        return HTTPRequest(url, network_interface=next(self._sources),
                           connect_timeout=self.plan.connect_timeout_s,
                           request_timeout=self.plan.connect_timeout_s, **kw)

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        resp = await self.http.fetch(
            self._request(self.plan.url.rstrip("/") + path, method="POST",
                          headers={"Content-Type": "application/json"},
                          body=json.dumps(body)), raise_error=False)
        try:
            data = json.loads(resp.body or b"{}")
        except ValueError:
            data = {}
        return resp.code, data

    async def ws(self, path: str, token: str) -> WebSocketClientConnection:
        url = f"{self.plan.ws_base}{path}?token={quote(token)}"
        return await websocket_connect(self._request(url),
                                       max_message_size=MAX_FRAME_BYTES)

    # -- agents ----------------------------------------------------------------------------
    async def agent(self, login: AgentLogin, ready: asyncio.Event) -> None:
        body: dict[str, Any] = {"email": login.email, "password": login.password}
        if login.totp_secret:
            import pyotp

            body["totp"] = pyotp.TOTP(login.totp_secret).now()
        try:
            status, data = await self.post("/api/v1/auth/login", body)
            if status != 200:
                self.tally.error(f"agent_login_{status}")
                return
            conn = await self.ws("/ws/agent", data["access_token"])
        except (TimeoutError, OSError, KeyError, HTTPClientError) as exc:
            self.tally.error(f"agent_connect_{type(exc).__name__}")
            return
        try:
            while True:
                raw = await conn.read_message()
                if raw is None:
                    if not self.stopping:
                        self.tally.error(f"agent_closed_{conn.close_code}")
                    return
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "hello":
                    self.tally.agents_ready += 1
                    ready.set()
                elif kind == "message" and frame.get("from") == "visitor":
                    self._delivered(str(frame.get("id")))
                elif kind == "error":
                    self.tally.error(f"agent_{frame.get('code')}")
        finally:
            conn.close()

    def _delivered(self, client_id: str) -> None:
        sent = self.sent_at.get(client_id)
        if sent is None:
            return  # an earlier run's message in a resumed chat
        if client_id in self.delivered_ids:
            self.tally.duplicates += 1
            return
        self.delivered_ids.add(client_id)
        now = time.perf_counter()
        self.tally.delivered_one(now, now - sent)

    # -- visitors --------------------------------------------------------------------------
    async def visitor(self, index: int, t0: float, start: float, stop: float) -> None:
        await asyncio.sleep(max(0.0, t0 + start - time.perf_counter()))
        began = time.perf_counter()
        try:
            status, data = await self.post("/api/v1/visitors", {"name": f"load {index}"})
            if status != 201:
                self.tally.connects_failed += 1
                self.tally.error(f"visitor_create_{status}")
                return
            conn = await self.ws("/ws/visitor", data["token"])
        except (TimeoutError, OSError, KeyError, HTTPClientError) as exc:
            self.tally.connects_failed += 1
            self.tally.error(f"visitor_connect_{type(exc).__name__}")
            return
        assigned, hello = asyncio.Event(), asyncio.Event()
        window = _Window(self.plan.window)
        reader = asyncio.create_task(self._visitor_reader(conn, assigned, window, began, hello))
        try:
            try:
                # The socket opens no conversation: an opening message (not measured) does.
                await asyncio.wait_for(hello.wait(), self.plan.assign_timeout_s)
                if not assigned.is_set():
                    await conn.write_message(json.dumps(
                        {"type": "message", "id": f"lg{self.run_id}-{index}-open",
                         "body": "hello"}))
                await asyncio.wait_for(assigned.wait(), self.plan.assign_timeout_s)
            except TimeoutError:
                self.tally.error("not_assigned")
                return
            self.tally.assigned += 1
            await self._send_until(conn, index, t0 + stop, window)
            # Closing now would lose the acks still on their way: wait for them (bounded).
            deadline = time.perf_counter() + self.plan.drain_s
            while window.in_flight and time.perf_counter() < deadline:
                await asyncio.sleep(0.02)
        finally:
            conn.close()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(reader, 2.0)

    async def _visitor_reader(self, conn: WebSocketClientConnection, assigned: asyncio.Event,
                              window: _Window, began: float, hello: asyncio.Event) -> None:
        while True:
            raw = await conn.read_message()
            if raw is None:
                if conn.close_code not in (None, 1000, 1005):
                    self.tally.error(f"visitor_closed_{conn.close_code}")
                return
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "hello" and hello.is_set():
                pass  # the opening message's hello: the connection was counted already
            elif kind == "hello":
                now = time.perf_counter()
                self.tally.connected(now, now - began)
                if frame.get("state") == "assigned":
                    assigned.set()
                hello.set()
            elif kind == "assigned":
                assigned.set()
            elif kind == "ack":
                client_id = str(frame.get("id"))
                sent = self.sent_at.get(client_id)
                if sent is not None and client_id not in self.acked_ids:
                    self.acked_ids.add(client_id)
                    self.tally.acked += 1
                    self.tally.ack_latency_s.append(time.perf_counter() - sent)
                    window.release()
            elif kind == "error":
                self.tally.error(str(frame.get("code")))
                if frame.get("id") is not None:
                    window.release()
            elif kind in ("reconnect", "busy"):
                self.tally.error(kind)

    async def _send_until(self, conn: WebSocketClientConnection, index: int, stop_at: float,
                          window: _Window) -> None:
        body = ("load " * (self.plan.body_chars // 5 + 1))[:self.plan.body_chars]
        interval = 1.0 / self.plan.rate if self.plan.rate else 0.0
        # Visitors start sending at different phases of the interval, so the offered load is
        # smooth rather than in bursts of every visitor at once.
        next_at = time.perf_counter() + (interval * (index % 97) / 97 if interval else 0.0)
        for k in itertools.count():
            if interval:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            else:
                remaining = stop_at - time.perf_counter()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(window.acquire(), remaining)
                except TimeoutError:
                    return
            now = time.perf_counter()
            if now >= stop_at or conn.protocol is None:
                return
            client_id = f"lg{self.run_id}-{index}-{k}"
            self.sent_at[client_id] = now
            self.tally.sent_one(now)
            window.in_flight += 1
            try:
                await conn.write_message(json.dumps(
                    {"type": "message", "id": client_id, "body": body}))
            except Exception:  # tornado raises WebSocketClosedError / StreamClosedError
                self.tally.error("send_failed")
                return

    # -- the run ---------------------------------------------------------------------------
    def outstanding(self) -> bool:
        if self.tally.acked < self.tally.sent:
            return True
        return bool(self.plan.agents) and self.tally.delivered < self.tally.acked

    async def run(self, progress: Callable[[str], None] | None) -> dict[str, Any]:
        plan = self.plan
        t0, cpu0 = time.perf_counter(), time.process_time()
        ticker = (asyncio.create_task(self._progress(progress, t0))
                  if progress is not None else None)
        agent_ready = asyncio.Event()
        agents = [asyncio.create_task(self.agent(a, agent_ready)) for a in plan.agents]
        if agents:
            deadline = time.perf_counter() + plan.connect_timeout_s
            while (self.tally.agents_ready < len(agents) and time.perf_counter() < deadline
                   and not all(t.done() for t in agents)):
                await asyncio.sleep(0.05)
        t_visitors = time.perf_counter()
        starts = start_offsets(plan.visitors, plan.ramp_up_s)
        stops = stop_offsets(plan.visitors, plan.ramp_up_s, plan.hold_s, plan.ramp_down_s)
        visitors = [asyncio.create_task(self.visitor(i, t_visitors, starts[i], stops[i]))
                    for i in range(plan.visitors)]
        bound = plan.ramp_up_s + plan.hold_s + plan.ramp_down_s + plan.connect_timeout_s
        done, pending = await asyncio.wait(visitors, timeout=bound)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                self.tally.error(f"visitor_{type(task.exception()).__name__}")
                log.warning("visitor task failed", exc_info=task.exception())
        # Let the last acks and deliveries arrive, up to drain_s.
        drain_until = time.perf_counter() + plan.drain_s
        while self.outstanding() and time.perf_counter() < drain_until:
            await asyncio.sleep(0.05)
        self.stopping = True
        for task in agents:
            task.cancel()
        await asyncio.gather(*agents, *pending, return_exceptions=True)
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        if self.tally.sent > self.tally.acked:
            self.tally.errors["unacked"] = self.tally.sent - self.tally.acked
        if plan.agents and self.tally.acked > self.tally.delivered:
            self.tally.errors["undelivered"] = self.tally.acked - self.tally.delivered
        if len(plan.agents) > self.tally.agents_ready:
            self.tally.errors["agents_not_ready"] = len(plan.agents) - self.tally.agents_ready
        self.http.close()
        return build_report(plan, self.tally, elapsed_s=time.perf_counter() - t0,
                            cpu_s=time.process_time() - cpu0)

    async def _progress(self, write: Callable[[str], None], t0: float) -> None:
        plan = self.plan
        while True:
            t = time.perf_counter() - t0
            write(progress_line(elapsed_s=t, total_s=plan.total_s, phase=phase_at(plan, t),
                                connected=self.tally.connects_ok, visitors=plan.visitors,
                                sent=self.tally.sent, delivered=self.tally.delivered,
                                errors=sum(self.tally.errors.values())))
            await asyncio.sleep(PROGRESS_EVERY_S)


async def run_load(plan: LoadPlan, progress: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """Run ``plan`` (already checked with :func:`tidedesk.loadplan.check_plan`) and return the
    report (:func:`tidedesk.loadplan.build_report`)."""
    return await _LoadRun(plan).run(progress)
