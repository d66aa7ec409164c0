"""The expiry of the certificates HAProxy serves (issue 19), for the TidedeskTLSCertExpiring
alert: every few minutes a TLS handshake with each ``--tls-probe HOST:PORT`` (verification off:
a self-signed or not-yet-trusted certificate still has a date), and the leaf certificate's
``notAfter`` as ``tidedesk_tls_cert_expiry_timestamp_seconds{target}``."""

from __future__ import annotations

import logging
import socket
import ssl

from cryptography import x509

from controlplane.telemetry import Telemetry

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
PROBE_INTERVAL_S = 300  # a certificate's days left do not change faster than this matters


def parse_target(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--tls-probe: expected HOST:PORT such as haproxy:8443, got {raw!r}")
    return host, int(port)


def not_after(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> float:
    """Unix time at which the certificate served on ``host:port`` expires."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout_s) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("the server sent no certificate")
    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


def probe_all(targets: list[str], telemetry: Telemetry) -> None:
    for target in targets:
        host, port = parse_target(target)
        try:
            expiry = not_after(host, port)
        except (OSError, ValueError) as exc:
            telemetry.tls_probe_ok.labels(target).set(0)
            log.warning("TLS probe failed", extra={"target": target, "error": str(exc)})
            continue
        telemetry.tls_probe_ok.labels(target).set(1)
        telemetry.tls_expiry.labels(target).set(expiry)
