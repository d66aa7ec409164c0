"""An S3-API server for tests: moto's server mode as a subprocess on a loopback port (no real
S3 server can be installed on the test machines; MinIO, Ceph RGW and AWS speak the same API)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

from tests.support.processes import free_port, stop_process
from tests.support.waiting import wait_until


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """Yields the endpoint ``127.0.0.1:<port>`` of a fresh moto S3 server; stops it after."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            assert proc.poll() is None, "moto_server exited while starting"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                return True

        wait_until("moto's S3 server to answer", up, 30, errors=(OSError,))
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


def s3_url(endpoint: str, bucket: str, prefix: str = "") -> str:
    return f"s3://testing:testing@{endpoint}/{bucket}/{prefix}?secure=false"
