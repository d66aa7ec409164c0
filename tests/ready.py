"""Test support: wait until a server process started by a test answers /readyz with 200."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import Any


def wait_ready(base_url: str, proc: subprocess.Popen[Any], what: str, *,
               log: Callable[[], str] = lambda: "", timeout: float = 30) -> None:
    """Poll ``base_url``/readyz; fail with the tail of ``log()`` if ``proc`` exits first or
    the server is not ready within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode} while starting:\n"
                                 f"{log()[-3000:]}")
        try:
            with urllib.request.urlopen(base_url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:  # refused while starting, or 503 (HTTPError is an OSError)
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready in {timeout:.0f} s:\n{log()[-3000:]}")
