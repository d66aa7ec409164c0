"""Prometheus metrics shared by chat nodes and routers (names start with ``tidedesk_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("tidedesk_connections", "Open WebSocket connections", ["role"])
MESSAGES_IN = Counter("tidedesk_messages_in_total", "Messages accepted from clients", ["role"])
MESSAGES_OUT = Counter("tidedesk_messages_out_total", "Message frames sent to clients")
MESSAGES_STORED = Counter("tidedesk_messages_stored_total", "Message rows committed by routers")
DELIVERY_LATENCY = Histogram(
    "tidedesk_delivery_latency_seconds", "Ingest to delivered-to-socket latency",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_LATENCY = Histogram(
    "tidedesk_http_request_duration_seconds", "HTTP request latency", ["handler", "method"],
)
HTTP_ERRORS = Counter("tidedesk_http_errors_total", "HTTP 4xx/5xx answers", ["status"])
RATE_LIMITED = Counter("tidedesk_rate_limited_total",
                       "Requests and connections refused by a rate limit", ["scope"])
WS_ERRORS = Counter("tidedesk_ws_errors_total", "Error frames sent", ["code"])
BATCH_SIZE = Histogram(
    "tidedesk_router_batch_size", "Rows per history batch",
    buckets=(1, 2, 5, 10, 20, 50, 100),
)
DB_WRITE_LATENCY = Histogram("tidedesk_db_write_seconds", "Batch insert + commit latency")
DB_WRITE_FAILURES = Counter(
    "tidedesk_db_write_failures_total", "History batches whose insert failed (rows redelivered)")
ROUTER_INFLIGHT = Gauge("tidedesk_router_inflight", "Inbound messages being processed")
ASSIGNMENTS = Counter("tidedesk_assignments_total", "Chats assigned to agents", ["pool"])
# issue 13: chats given back by agents who left, by where they went; chats closed as idle
GIVEN_BACK = Counter("tidedesk_chats_given_back_total",
                     "Chats an agent who left handed back", ["outcome"])
AGENTS_LAPSED = Counter("tidedesk_agents_lapsed_total",
                        "Agents counted offline because their chat node stopped heartbeating")
IDLE_CLOSED = Counter("tidedesk_idle_closed_total", "Chats closed because the visitor left")
WAITING = Gauge("tidedesk_waiting_visitors", "Visitors waiting for an agent", ["pool"])
PUBLISH_CONFIRM_LATENCY = Histogram(
    "tidedesk_publish_confirm_seconds",
    "Publish until the broker confirmed (RabbitMQ confirm; in-process: the router's ack)",
    ["queue"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
BROKER_BATCH_BODIES = Histogram(
    "tidedesk_broker_batch_bodies",
    "Envelopes per AMQP message published (1: sent alone; more: a broker batch, issue 17)",
    ["queue"], buckets=(1, 2, 4, 8, 16, 32, 64),
)
PUBLISH_FAILURES = Counter(
    "tidedesk_publish_failures_total", "Publishes the broker did not confirm", ["queue"])
ENVELOPES_REJECTED = Counter(
    "tidedesk_envelopes_rejected_total",
    "Broker envelopes dropped (acked) because they do not follow the schema", ["queue"])
ROUTER_EVENTS = Counter(
    "tidedesk_router_events_total", "Inbound events handled by routers", ["kind"])
DELIVERIES = Counter(
    "tidedesk_deliveries_published_total", "Frames published to chat nodes' delivery queues")
READY = Gauge("tidedesk_ready", "1 when this process takes traffic, 0 while starting/draining")

# A labelled series exists only once used; a fresh chat node must still report 0 connections,
# or sum(tidedesk_connections) and per-node views miss it until its first client. Bound once:
# ``labels()`` takes a lock and builds a key per call (twice a connect, issue 17 P1).
CONNECTIONS_BY_ROLE = {role: CONNECTIONS.labels(role=role) for role in ("visitor", "agent")}
# Born at 0 too, so increase() sees a process's first rejected envelope.
for _queue in ("inbound", "delivery"):
    ENVELOPES_REJECTED.labels(queue=_queue)
# issue 13: mail, both ways (tidedesk/mail/)
MAIL_SENT = Counter("tidedesk_mail_sent_total", "Mails handed to the SMTP server", ["kind"])
MAIL_FAILURES = Counter("tidedesk_mail_send_failures_total",
                        "Mail send attempts that failed (retried later, or given up: dead)",
                        ["kind", "outcome"])
MAIL_INCOMING = Counter("tidedesk_mail_incoming_total",
                        "Mails read from the IMAP mailbox, by what became of them "
                        "(accepted, no_match, bad_token, too_large, no_text, ...)", ["outcome"])
