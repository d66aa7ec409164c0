"""Browser tests: Debian's Chromium, driven by Playwright (sync API), against a real embedded
Tidedesk server started per test module (``tidedesk dev`` in a subprocess, SQLite in tmp).

Playwright cannot download its own browsers here; the tests use /usr/bin/chromium, installed by
scripts/system-deps.sh. A missing Chromium fails the tests with that instruction, never skips.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import free_port, stop_process, wait_ready

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TIDEDESK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DEMO_EMAIL = "demo@tidedesk.local"
DEMO_PASSWORD = "tidedesk-demo"
DEMO_NAME = "Demo Agent"
# Starting the embedded server (SQLite migrations, demo seed) takes about a second.
SERVER_START_TIMEOUT_SECS = 30.0
# Default wait for something to appear in a page. Deliveries take milliseconds; the margin is for
# a loaded CI machine, and costs nothing when things work.
UI_TIMEOUT_MS = 10000


def _tidedesk_cmd() -> list[str]:
    script = ROOT / ".venv" / "bin" / "tidedesk"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tidedesk.cli"]


@dataclass
class Server:
    base_url: str
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start ``tidedesk dev`` and wait until /readyz answers 200."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*_tidedesk_cmd(), "dev"], env=self.env, cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_ready(self.base_url, self.proc, "tidedesk dev", log=self.log_tail,
                   timeout=SERVER_START_TIMEOUT_SECS)

    def stop(self) -> None:
        """SIGTERM (the server drains: clients are told to reconnect), then wait for the exit."""
        if self.proc is None:
            return
        stop_process(self.proc, timeout=30)
        self.proc = None

    def create_agent(self, *, email: str, password: str, name: str, pools: str = "general",
                     max_chats: int = 1, role: str = "agent", totp: bool = False) -> str | None:
        """Create an agent with the real CLI; returns the TOTP secret when ``totp``."""
        cmd = [*_tidedesk_cmd(), "admin", "create-agent", "--email", email, "--password",
               password, "--name", name, "--pools", pools, "--max-chats", str(max_chats),
               "--role", role]
        if totp:
            cmd.append("--totp")
        done = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)
        if done.returncode != 0:
            pytest.fail(f"tidedesk admin create-agent failed ({done.returncode}):\n"
                        f"{done.stdout}\n{done.stderr}")
        match = re.search(r"TOTP secret:\s*([A-Z2-7]+)", done.stdout)
        return match.group(1) if match else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real embedded server (chat node + router + SQLite) on a free loopback port.

    A test module may set ``SERVER_ENV = {"TIDEDESK_...": "..."}`` to change settings."""
    data_dir = tmp_path_factory.mktemp("tidedesk")
    port = free_port()
    env = dict(os.environ)
    env.update({
        "TIDEDESK_PORT": str(port), "TIDEDESK_HOST": "127.0.0.1",
        "TIDEDESK_DATA_DIR": str(data_dir), "TIDEDESK_LOG_FORMAT": "text",
        "TIDEDESK_DEMO_AGENT_EMAIL": DEMO_EMAIL, "TIDEDESK_DEMO_AGENT_PASSWORD": DEMO_PASSWORD,
    })
    for key in ("TIDEDESK_BROKER_URL", "TIDEDESK_REDIS_URL", "TIDEDESK_DATABASE_URL"):
        env.pop(key, None)  # embedded mode, whatever the developer's shell says
    env.update(getattr(request.module, "SERVER_ENV", {}))
    srv = Server(base_url=f"http://127.0.0.1:{port}", data_dir=data_dir, env=env,
                 log_path=data_dir / "server.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in the main
# thread while it is open, and the rest of the suite calls asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium is missing ({CHROMIUM} not found): the browser tests drive "
                    "Debian's chromium. Run scripts/system-deps.sh (as root) to install it.")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)

    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            pytest.fail(f"Chromium at {CHROMIUM} did not start ({exc}). "
                        "Run scripts/system-deps.sh to (re)install Debian's chromium.")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def new_context(browser: Any) -> Iterator[Any]:
    """Factory for isolated browser contexts (own storage, own network switch), closed after."""
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("viewport", {"width": 1180, "height": 760})
        kwargs.setdefault("locale", "en-US")
        ctx = browser.new_context(**kwargs)
        ctx.set_default_timeout(UI_TIMEOUT_MS)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        with contextlib.suppress(Exception):
            ctx.close()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
