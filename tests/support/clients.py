"""An embedded Tidedesk on 127.0.0.1 and real HTTP/WebSocket clients for it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.routing import write_routing
from tests.support.waiting import wait_until_async
from tidedesk.auth import hash_password
from tidedesk.runtime import Runtime
from tidedesk.settings import load_settings

_ids = itertools.count(1)


def new_client_id() -> str:
    return f"c{next(_ids)}"


@contextlib.asynccontextmanager
async def embedded(tmp_path: Path, routing: str | None = None,
                   **overrides: Any) -> AsyncIterator[Runtime]:
    """A real embedded server (chat node + router + SQLite) on a free loopback port."""
    if routing is not None:
        overrides["routing_file"] = str(write_routing(tmp_path, routing))
    settings = load_settings(env={}, data_dir=str(tmp_path / "data"), port=0,
                             ws_ping_interval_s=0, **overrides)
    runtime = Runtime(settings, "dev")
    await runtime.start(port=0)
    try:
        yield runtime
    finally:
        await runtime.stop(drain=False)


class Http:
    def __init__(self, runtime: Runtime) -> None:
        self.base = f"http://127.0.0.1:{runtime.port}"
        self.client = AsyncHTTPClient()

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                      raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else (b"" if method in ("POST", "PUT") else None))
        resp = await self.client.fetch(HTTPRequest(self.base + path, method=method,
                                                   headers=headers, body=data),
                                       raise_error=False)
        text = resp.body.decode() if resp.body else ""
        try:
            return resp.code, json.loads(text)
        except ValueError:
            return resp.code, text


FrameHandler = Callable[[dict[str, Any]], Awaitable[None]]


class WsClient:
    """Reads frames in the background; tests wait for the frames they expect. With
    ``on_frame``, each frame is handed to it before it joins ``frames``, so whoever waits for a
    frame sees what the handler did with it."""

    def __init__(self, conn: ClientConnection, on_frame: FrameHandler | None = None) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []
        self._on_frame = on_frame
        self._new = asyncio.Event()
        self.closed: asyncio.Future[tuple[int | None, str]] = (
            asyncio.get_running_loop().create_future())
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                frame = json.loads(raw)
                if self._on_frame is not None:
                    await self._on_frame(frame)
                self.frames.append(frame)
                self._new.set()
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.conn.protocol.close_rcvd
            if not self.closed.done():
                self.closed.set_result((rcvd.code if rcvd else None,
                                        rcvd.reason if rcvd else ""))
            self._new.set()

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0,
                       start: int = 0) -> dict[str, Any]:
        async def look() -> dict[str, Any]:
            seen = start
            while True:
                for frame in self.frames[seen:]:
                    if pred(frame):
                        return frame
                seen = len(self.frames)
                if self.closed.done():
                    raise AssertionError(f"closed {self.closed.result()} while waiting; "
                                         f"frames: {self.frames[-5:]}")
                self._new.clear()
                await self._new.wait()

        try:
            return await asyncio.wait_for(look(), timeout)
        except TimeoutError:
            raise AssertionError(f"no matching frame in {timeout}s; last frames: "
                                 f"{self.frames[-8:]}") from None

    async def wait_type(self, kind: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        return await self.wait_for(
            lambda f: f.get("type") == kind and all(f.get(k) == v for k, v in match.items()),
            timeout)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    async def say(self, body: str, client_id: str | None = None, **extra: Any) -> dict[str, Any]:
        """Send a message and wait for its ack."""
        client_id = client_id or new_client_id()
        await self.send({"type": "message", "id": client_id, "body": body, **extra})
        return await self.wait_for(lambda f: f.get("id") == client_id
                                   and f.get("type") in ("ack", "error"))

    async def close(self) -> None:
        await self.conn.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def ws(runtime: Runtime, path: str, token: str | None,
             origin: str | None = None) -> WsClient:
    url = f"ws://127.0.0.1:{runtime.port}{path}"
    if token is not None:
        url += f"?token={token}"
    headers = {"Origin": origin} if origin else None
    return WsClient(await connect(url, additional_headers=headers, max_size=2**22))


async def new_visitor(runtime: Runtime, **body: Any) -> tuple[str, str, WsClient]:
    status, data = await Http(runtime).request("POST", "/api/v1/visitors", body)
    assert status == 201, data
    client = await ws(runtime, "/ws/visitor", data["token"])
    await client.wait_type("hello")
    return data["visitor_id"], data["token"], client


def add_agent(runtime: Runtime, email: str, *, pools: tuple[str, ...] = ("general",),
              max_chats: int = 3, password: str = "password1", role: str = "agent",
              totp_secret: str | None = None, name: str | None = None) -> str:
    agent = runtime.storage.agents.create_sync(
        email=email, name=name or email.split("@")[0], password_hash=hash_password(password),
        role=role, pools=pools, max_chats=max_chats, totp_secret=totp_secret)
    return str(agent.id)


async def login(runtime: Runtime, email: str, password: str = "password1") -> str:
    status, data = await Http(runtime).request("POST", "/api/v1/auth/login",
                                               {"email": email, "password": password})
    assert status == 200, data
    return str(data["access_token"])


async def agent_socket(runtime: Runtime, email: str, password: str = "password1") -> WsClient:
    client = await ws(runtime, "/ws/agent", await login(runtime, email, password))
    await client.wait_type("hello")
    return client


# The router takes an agent's `online` status from the broker a few milliseconds after the
# console's hello; on a loaded machine it can take longer.
AGENT_ONLINE_TIMEOUT_S = 5.0


async def wait_agent_online(runtime: Runtime, agent_id: str,
                            timeout: float = AGENT_ONLINE_TIMEOUT_S) -> None:
    """Until the router has taken the agent's ``online`` status, so a new chat can go to it."""

    async def online() -> bool:
        load = await runtime.store.agent_get(agent_id)
        return load is not None and load.status == "online"

    await wait_until_async(f"agent {agent_id} online at the router", online, timeout, every=0.02)
