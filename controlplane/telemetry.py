"""The daemon's own ``/metrics`` (prometheus_client), one registry per daemon instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.current = Gauge(
            "tidedesk_controlplane_replicas_current",
            "Replicas the orchestrator runs for the policy's service (desired count it reports)",
            ["policy"],
            registry=self.registry,
        )
        self.desired = Gauge(
            "tidedesk_controlplane_replicas_desired",
            "Replicas the last decision wanted",
            ["policy"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "tidedesk_controlplane_decisions_total",
            "Decisions taken, by direction (hold included)",
            ["policy", "direction"],
            registry=self.registry,
        )
        self.actions = Counter(
            "tidedesk_controlplane_scale_actions_total",
            "Scaling calls made to the orchestrator",
            ["policy", "direction"],
            registry=self.registry,
        )
        self.errors = Counter(
            "tidedesk_controlplane_evaluation_errors_total",
            "Evaluation errors by stage (target_read, metrics, forecast, scale)",
            ["policy", "stage"],
            registry=self.registry,
        )
        self.target_missing = Gauge(
            "tidedesk_controlplane_target_missing",
            "1 while the policy's service is missing from the orchestrator (its last read)",
            ["policy"],
            registry=self.registry,
        )
        self.tls_expiry = Gauge(
            "tidedesk_tls_cert_expiry_timestamp_seconds",
            "Unix time the certificate served on the --tls-probe target expires (issue 19)",
            ["target"],
            registry=self.registry,
        )
        self.tls_probe_ok = Gauge(
            "tidedesk_tls_probe_success",
            "1 when the last TLS handshake with the --tls-probe target succeeded",
            ["target"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "tidedesk_controlplane_evaluation_duration_seconds",
            "Time one evaluation took, I/O included",
            ["policy"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.alerts = Counter(
            "tidedesk_controlplane_alerts_received_total",
            "Alertmanager alerts received, by status",
            ["status"],
            registry=self.registry,
        )
        self.paused = Gauge(
            "tidedesk_controlplane_policy_paused",
            "1 while the policy is paused",
            ["policy"],
            registry=self.registry,
        )
        self.pinned = Gauge(
            "tidedesk_controlplane_policy_pinned",
            "1 while the policy is pinned",
            ["policy"],
            registry=self.registry,
        )

        self.floor = Gauge(
            "tidedesk_controlplane_floor_replicas",
            "Floor under the decision by source (schedule, forecast); 0 when none",
            ["policy", "source"],
            registry=self.registry,
        )
        self.forecast_peak = Gauge(
            "tidedesk_controlplane_forecast_peak",
            "Highest load the forecast expects over its look-ahead, in the check's unit",
            ["policy"],
            registry=self.registry,
        )
        self.forecast_error = Gauge(
            "tidedesk_controlplane_forecast_error_ratio",
            "Forecast error over the last hour: sum |forecast - actual| / sum actual",
            ["policy"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
