"""Servers that tests start as processes: a free loopback port, waiting until one is ready,
and stopping one whatever state it is in."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.support.waiting import wait_until

# A server's /readyz is polled this often while it starts (start-up takes about a second).
READY_POLL_S = 0.1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base_url: str, proc: subprocess.Popen[Any], what: str, *,
               log: Callable[[], str] = lambda: "", timeout: float = 30) -> None:
    """Poll ``base_url``/readyz until it answers 200; fail with the tail of ``log()`` if
    ``proc`` exits first or the server is not ready within ``timeout`` seconds."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise _Exited(f"{what} exited with {proc.returncode} while starting:\n"
                          f"{log()[-3000:]}")
        # Refused while starting, or 503 (HTTPError is an OSError): not ready yet.
        with urllib.request.urlopen(base_url + "/readyz", timeout=1) as resp:
            return bool(resp.status == 200)

    try:
        wait_until(f"{what} to be ready", ready, timeout, every=READY_POLL_S, errors=(OSError,))
    except _Exited as exc:
        raise AssertionError(str(exc)) from None
    except AssertionError:
        raise AssertionError(f"{what} not ready in {timeout:.0f} s:\n{log()[-3000:]}") from None


class _Exited(Exception):
    """The process died while we waited for it (not retried by the poll)."""


def stop_process(proc: subprocess.Popen[Any], *, sig: int = signal.SIGTERM,
                 timeout: float = 10) -> None:
    """Send ``sig`` to a running ``proc`` and wait ``timeout`` seconds for it to exit; then
    SIGKILL it. A process that has exited already is left alone."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# Kept from this process's environment: they point at no server. TIDEDESK_EVENT_LOOP runs the
# same tests on uvloop and on asyncio's loop (tests/conftest.py applies it in-process too).
PASSED_THROUGH = frozenset({"TIDEDESK_EVENT_LOOP"})


def settings_env(**settings: str) -> dict[str, str]:
    """The environment for a ``tidedesk`` subprocess: this process's, without any TIDEDESK_
    key (a developer's shell must not point a test at real servers), plus ``settings``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TIDEDESK_") or k in PASSED_THROUGH}
    env.update(settings)
    return env
