"""Logging set-up: JSON lines (ready for ELK) or plain text, with structured extra fields.

Every line carries the process's ``node_id`` and, when known, the ``request_id`` and
``conversation_id`` of the work it belongs to. Those two live in context variables: a handler
binds them once (:func:`bind` for an HTTP request or a WebSocket connection, whose tasks inherit
them; :func:`context` for one envelope or frame) and every log call below it gets them, without
passing them around. A field given explicitly in ``extra=`` wins.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import time
from typing import Any, TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tidedesk_request_id", default=None)
CONVERSATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tidedesk_conversation_id", default=None)
_VARS = {"request_id": REQUEST_ID, "conversation_id": CONVERSATION_ID}

# An incoming X-Request-ID is kept when it looks like an id (what proxies and tracing tools
# send); anything else (too long, spaces, control characters) is replaced by a fresh one, so a
# client cannot inject text into the logs.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


# Credentials that must never reach a log line: the v1 WebSocket ``?token=`` (and tickets,
# refresh tokens) in any URL or text, and anything shaped like a JWT (header.payload.signature).
_SECRET_PARAM = re.compile(
    r"((?:^|[?&;\s\"'])(?:token|ticket|access_token|refresh_token)=)[^&\s\"'#]*", re.I)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+")
REDACTED = "[redacted]"


def access_level(status: int, path: str) -> int:
    """The level of an access-log line: errors for 5xx, warnings for 4xx, except a 503 from
    ``/readyz``, which is a process saying it is not ready yet (starting, waiting for a
    backend, draining): news for the log, not an error."""
    if status >= 500 and not (status == 503 and path == "/readyz"):
        return logging.ERROR
    return logging.WARNING if status >= 400 else logging.INFO


def log_access(handler: Any) -> None:
    """Tornado's access log line (an application's ``log_function``), at
    :func:`access_level`, with the URL scrubbed of tokens: a v1 ``/ws/agent?token=`` refused
    with a 4xx must not leave the token in the log, whatever formatter the record later
    meets."""
    status = handler.get_status()
    request = handler.request
    logger, level = logging.getLogger("tornado.access"), access_level(status, request.path)
    if not logger.isEnabledFor(level):
        return  # (issue 17: scrubbing was 9% of a connect's time in P1, for a line nobody keeps)
    logger.log(level, "%d %s %s (%s) %.2fms", status, request.method,
               scrub(request.uri or ""), request.remote_ip, 1000.0 * request.request_time())


def scrub(text: str) -> str:
    """``text`` with every token value replaced by ``[redacted]``."""
    return _JWT.sub(REDACTED, _SECRET_PARAM.sub(r"\1" + REDACTED, text))


def request_id_from(header: str | None) -> str:
    """The request id to use: the incoming ``X-Request-ID`` if it is a sane id, else a new one."""
    if header and _REQUEST_ID_RE.match(header):
        return header
    return secrets.token_hex(16)  # as uuid4().hex, a third of its time: one per connect


def bind(**ids: str | None) -> None:
    """Set ``request_id`` / ``conversation_id`` for the current task and the tasks it starts."""
    for key, value in ids.items():
        _VARS[key].set(value)


class context:  # (lower case: it replaced a function, ``with logs.context(...)``)
    """Like :func:`bind`, undone on exit (for a loop that handles one item after another).

    A class, not ``contextlib.contextmanager``: a router enters it for every envelope, and the
    generator-based manager cost about 1% of the router's samples in P2 (issue 17)."""

    __slots__ = ("_ids", "_tokens")

    def __init__(self, **ids: str | None) -> None:
        self._ids = ids
        self._tokens: list[tuple[contextvars.ContextVar[str | None],
                                 contextvars.Token[str | None]]] = []

    def __enter__(self) -> None:
        self._tokens = [(_VARS[key], _VARS[key].set(value)) for key, value in self._ids.items()]

    def __exit__(self, *_exc: object) -> None:
        for var, token in reversed(self._tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``node_id`` and the bound ids to every record passing through a handler."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if self.node_id and not hasattr(record, "node_id"):
            record.node_id = self.node_id
        for key, var in _VARS.items():
            value = var.get()
            if value is not None and not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(out, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure(level: str = "INFO", fmt: str = "json", node_id: str | None = None,
              stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) as JSON lines or text, at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter(node_id))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Tornado logs every request at INFO; keep that at WARNING unless debugging.
    logging.getLogger("tornado.access").setLevel("WARNING" if level != "DEBUG" else "DEBUG")
    logging.getLogger("pika").setLevel("WARNING")
