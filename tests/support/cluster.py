"""A real cluster on loopback — chat nodes and routers as separate processes on
RabbitMQ (a throwaway vhost), Redis (a throwaway key prefix) and MariaDB (throwaway shards)."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.mariadb import databases
from tests.support.processes import free_port, settings_env, stop_process, wait_ready
from tests.support.routing import GENERAL_ONLY, write_routing
from tidedesk.auth import hash_password
from tidedesk.storage import Storage


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def vhost() -> Iterator[str]:
    name = f"tidedesk-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield name
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            rabbitmqctl("delete_vhost", name)


class Proc:
    def __init__(self, role: str, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.role, self.name = role, name
        self.port = free_port()
        self.env = {**env, "TIDEDESK_PORT": str(self.port), "TIDEDESK_NODE_ID": name}
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "tidedesk.cli", self.role],
                                      env=self.env, stdout=log, stderr=log)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.popen is not None
        wait_ready(f"http://127.0.0.1:{self.port}", self.popen, self.name,
                   log=self.log_path.read_text, timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None:
            stop_process(self.popen, sig=sig, timeout=40)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


class Cluster:
    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.procs: list[Proc] = []
        self.storage = Storage(env["TIDEDESK_DATABASE_URL"].split(","), pool_size=2)

    def start(self, role: str, name: str, wait_ready: bool = True) -> Proc:
        proc = Proc(role, name, self.env, self.tmp_path)
        self.procs.append(proc)
        return proc.start(wait_ready)

    def add_agent(self, email: str, *, max_chats: int = 3, pools: tuple[str, ...] = ("general",)
                  ) -> str:
        agent = self.storage.agents.create_sync(
            email=email, name=email.split("@")[0], password_hash=hash_password("password1"),
            role="agent", pools=pools, max_chats=max_chats, totp_secret=None)
        return str(agent.id)

    def agent_online(self, agent_id: str) -> bool:
        """Whether a router has recorded the agent as ``online`` in this cluster's Redis; False
        while Redis does not answer."""
        r = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
        try:
            status = r.hget(f"{self.env['TIDEDESK_REDIS_PREFIX']}agent:{agent_id}", "status")
            return bool(status == b"online")
        except redis.RedisError:
            return False
        finally:
            r.close()

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill(signal.SIGKILL)
        self.storage.close()


@contextlib.contextmanager
def cluster(tmp_path: Path, shards: int = 2, overrides: dict[str, str] | None = None
            ) -> Iterator[Cluster]:
    """``overrides``: settings every process of this cluster gets on top (short timers, say)."""
    prefix = f"tidedesk-test-{uuid.uuid4().hex[:8]}:"
    routing_file = write_routing(tmp_path, GENERAL_ONLY)
    with vhost() as vh, databases(shards) as urls:
        env = settings_env(**{
            "TIDEDESK_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vh}",
            "TIDEDESK_REDIS_URL": "redis://127.0.0.1:6379/0",
            "TIDEDESK_REDIS_PREFIX": prefix,
            "TIDEDESK_DATABASE_URL": ",".join(urls),
            "TIDEDESK_JWT_SECRET": uuid.uuid4().hex,
            "TIDEDESK_AES_KEY": base64.b64encode(os.urandom(32)).decode(),
            "TIDEDESK_DATA_DIR": str(tmp_path / "data"),
            "TIDEDESK_ROUTING_FILE": str(routing_file),
            "TIDEDESK_LOG_FORMAT": "text",
            "TIDEDESK_WS_PING_INTERVAL_S": "0",
            **(overrides or {}),
        })
        c = Cluster(tmp_path, env)
        c.storage.migrate_all()
        try:
            yield c
        finally:
            c.stop()
            r = redis.Redis(host="127.0.0.1", port=6379)
            keys = list(r.scan_iter(match=prefix + "*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i:i + 500])
            r.close()
