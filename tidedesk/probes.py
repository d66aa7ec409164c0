"""The probes every process serves: ``/healthz``, ``/readyz`` and ``/metrics``.

A router has no REST API of its own, only these, so they live in the core and load none of the
chat node's handlers. ``node`` is anything with ``readiness() -> (ready, reason)``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tidedesk import logs, metrics


class Probed(Protocol):
    def readiness(self) -> tuple[bool, str]: ...


def readiness_answer(node: Probed) -> tuple[dict[str, Any], int]:
    """The body and status of ``/readyz``: 200 when ready, else 503 with the reason."""
    ready, reason = node.readiness()
    return {"ready": ready, "reason": reason}, 200 if ready else 503


def metrics_page(node: Probed) -> tuple[bytes, str]:
    """The ``/metrics`` exposition and its content type. ``tidedesk_ready`` follows
    ``/readyz`` at every scrape (a router that lost RabbitMQ or MariaDB shows 0, not the 1 it
    set when it started)."""
    metrics.READY.set(1 if node.readiness()[0] else 0)
    return generate_latest(), CONTENT_TYPE_LATEST


class _ProbeHandler(tornado.web.RequestHandler):
    def initialize(self, node: Probed) -> None:
        self.node = node

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code = "not_found" if status_code == 404 else "bad_request" if status_code < 500 \
            else "internal"
        message = (f"no such path {self.request.path}; this process serves /healthz, /readyz "
                   "and /metrics" if status_code == 404 else self._reason)
        self.finish(json.dumps({"error": {"code": code, "message": message}}))


class HealthHandler(_ProbeHandler):
    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(_ProbeHandler):
    def get(self) -> None:
        self.write_json(*readiness_answer(self.node))


class MetricsHandler(_ProbeHandler):
    def get(self) -> None:
        page, content_type = metrics_page(self.node)
        self.set_header("Content-Type", content_type)
        self.finish(page)


class NotFoundHandler(_ProbeHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


def probe_app(node: Probed) -> tornado.web.Application:
    """A router's own small HTTP server: the three probes, JSON 404 for anything else."""
    deps = {"node": node}
    return tornado.web.Application([
        (r"/healthz", HealthHandler, deps),
        (r"/readyz", ReadyHandler, deps),
        (r"/metrics", MetricsHandler, deps),
    ], default_handler_class=NotFoundHandler, default_handler_args=deps,
        log_function=logs.log_access)
