"""``tidedesk controlplane``: load policies, schedule evaluations, serve the REST API.

Exit status: 0 after SIGTERM/SIGINT, 2 for bad configuration (one line on stderr naming the
field), 1 when the API address cannot be bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from controlplane.api import make_app
from controlplane.config import ConfigError, Settings, build_parser, load_settings
from controlplane.metrics_source import PrometheusSource
from controlplane.nomad_target import NomadTarget
from controlplane.service import ControlPlane
from controlplane.state import ControlPlaneState
from controlplane.swarm_target import SwarmTarget
from controlplane.target import Target
from tidedesk import logs

log = logging.getLogger(__name__)

def configure_logging(level: str) -> None:
    """JSON lines like every Tidedesk process; the scheduler's chatter stays at WARNING."""
    logs.configure(level, "json")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def build_control_plane(settings: Settings) -> ControlPlane:
    targets: dict[str, Target] = {
        "swarm": SwarmTarget(),
        "nomad": NomadTarget(settings.nomad_addr, settings.nomad_token),
    }
    return ControlPlane(
        ControlPlaneState(settings.policies),
        PrometheusSource(settings.prometheus_url),
        targets,
        state_file=settings.state_file,
        tls_probes=settings.tls_probes,
    )


async def serve(cp: ControlPlane, settings: Settings) -> int:
    app = make_app(cp, settings.tokens)
    try:
        server = app.listen(settings.port, address=settings.host)
    except OSError as exc:
        print(
            f"tidedesk controlplane: --listen: cannot bind {settings.host}:{settings.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cp.start()
    log.info(
        "control plane started",
        extra={
            "listen": f"{settings.host}:{settings.port}",
            "policies": [p.name for p in settings.policies],
            "prometheus": settings.prometheus_url,
        },
    )
    try:
        await stop.wait()
    finally:
        server.stop()
        await asyncio.to_thread(cp.stop)
        cp.save()
        log.info("control plane stopped")
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    try:
        settings = load_settings(args, os.environ)
    except ConfigError as exc:
        print(f"tidedesk controlplane: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if settings.token_is_plain:
        log.warning(
            "the API token is stored in plain text; store its hash instead "
            "(sha256:<64 hex digits>, see docs/controlplane.md)"
        )
    cp = build_control_plane(settings)
    try:
        cp.load()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"tidedesk controlplane: --state-file: cannot load it: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(cp, settings))
