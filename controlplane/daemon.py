"""``tidedesk controlplane``: load policies, schedule evaluations, serve the REST API.

Exit status: 0 after SIGTERM/SIGINT, 2 for bad configuration (one line on stderr naming the
field), 1 when the API address cannot be bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from controlplane.api import make_app
from controlplane.config import ConfigError, Settings, build_parser, load_settings
from controlplane.metrics_source import PrometheusSource
from controlplane.nomad_target import NomadTarget
from controlplane.service import ControlPlane
from controlplane.state import ControlPlaneState
from controlplane.swarm_target import SwarmTarget
from controlplane.target import Target

log = logging.getLogger(__name__)

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line with the ``extra`` fields, ready for ELK."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


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
    )


async def serve(cp: ControlPlane, settings: Settings) -> int:
    app = make_app(cp, settings.token)
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
    cp = build_control_plane(settings)
    try:
        cp.load()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"tidedesk controlplane: --state-file: cannot load it: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(cp, settings))
