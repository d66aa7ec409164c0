"""haproxy/haproxy.cfg and the static example pass `haproxy -c` and say what DESIGN.md asks."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO, require

pytestmark = pytest.mark.haproxy

MAIN = REPO / "haproxy" / "haproxy.cfg"
STATIC = REPO / "haproxy" / "static-weighted.cfg.example"


def haproxy_check(cfg: Path, tls_pem: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # -dW: any warning is an error, so a misplaced rule cannot slip through.
    return subprocess.run(
        [require("haproxy", "haproxy"), "-dW", "-c", "-f", str(cfg)],
        env={**os.environ, "TIDEDESK_TLS_CERT": str(tls_pem), **env},
        capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("cfg", [MAIN, STATIC], ids=["haproxy.cfg", "static-weighted"])
def test_haproxy_accepts_the_config(cfg: Path, tls_pem: Path) -> None:
    done = haproxy_check(cfg, tls_pem)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Configuration file is valid" in done.stdout + done.stderr


def test_environment_overrides_the_defaults(tls_pem: Path) -> None:
    done = haproxy_check(MAIN, tls_pem, CHATNODE_SLOWSTART="soon")
    assert done.returncode != 0, "CHATNODE_SLOWSTART from the environment was not used"
    assert "slowstart" in done.stdout + done.stderr
    done = haproxy_check(MAIN, tls_pem, CHATNODE_SLOTS="3", CHATNODE_SLOWSTART="5s",
                         HAPROXY_MAXCONN="2000")
    assert done.returncode == 0, done.stdout + done.stderr


def test_missing_certificate_is_an_error(tmp_path: Path) -> None:
    done = haproxy_check(MAIN, tmp_path / "absent.pem")
    assert done.returncode != 0
    assert "absent.pem" in done.stdout + done.stderr


def directives(cfg: Path) -> str:
    return "\n".join(line.split("#", 1)[0].rstrip() for line in cfg.read_text().splitlines())


def test_main_config_has_what_the_design_asks() -> None:
    text = directives(MAIN)
    expected = [
        r"presetenv HAPROXY_DNS\s+127\.0\.0\.11:53",  # Docker's embedded DNS
        r"presetenv CHATNODE_DNS_NAME\s+tasks\.chatnode",
        r"resolvers docker\n\s+nameserver docker",
        r"server-template chatnode .*CHATNODE_DNS_NAME",
        r"balance leastconn",
        r"timeout tunnel\s+1h",  # WebSockets
        r"http-check send meth GET uri /readyz",
        r"slowstart \"\$\{CHATNODE_SLOWSTART\}\"",
        r"presetenv CHATNODE_SLOWSTART\s+30s",  # the seed's 30-second warm-up
        r"stick-table .*http_req_rate\(10s\)",
        r"http-request deny deny_status 429",
        r"ssl crt \"\$\{TIDEDESK_TLS_CERT\}\" ssl-min-ver TLSv1\.3",
        r"presetenv TIDEDESK_TLS_CERT\s+/run/secrets/",  # the certificate is a Docker secret
        r"use-service prometheus-exporter",
        r"stats uri /stats",
        # The client address the chat nodes limit and audit by: HAProxy's, never the client's.
        r"http-request set-header X-Real-Ip %\[src\]",
        # Issue 18: no query string (the v1 ?token=) in the log, oversize bodies refused before
        # they are read, request headers in bounded time, no /metrics on the public side.
        r"log-format .*%HM %HPO %HV",
        r"http-request deny deny_status 413 .* if !upload \{ req\.hdr_val\(content-length\) gt",
        r"timeout http-request\s+10s",
        r"http-request deny deny_status 404 .* if \{ path /metrics \}",
    ]
    missing = [p for p in expected if not re.search(p, text)]
    assert not missing, f"haproxy.cfg lacks {missing}"


def test_static_example_has_weights_and_a_backup() -> None:
    text = directives(STATIC)
    assert re.search(r"server \w+ [\d.]+:\d+ weight \d+", text)
    assert re.search(r"server \w+ [\d.]+:\d+ backup", text)
    assert "balance leastconn" in text and "timeout tunnel" in text
