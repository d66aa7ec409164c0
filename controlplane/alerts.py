"""Alertmanager webhook payloads (version 4): validation and matching alerts to policies.

A firing alert whose ``service`` label names a policy's service triggers an evaluation of that
policy at once. The label matches the service exactly, or the part after a stack prefix
(``chatnode`` matches the Swarm service ``tidedesk_chatnode``). Anything malformed raises
:class:`PayloadError` whose message says what is wrong, for a 400 answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from controlplane.policy import Policy

SUPPORTED_VERSION = "4"
SERVICE_LABEL = "service"


class PayloadError(ValueError):
    pass


def _labels(raw: object, where: str) -> dict[str, str]:
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise PayloadError(f"{where} must be an object of string labels")
    return dict(raw)


def parse_payload(doc: object) -> list[dict[str, Any]]:
    """The alerts of a webhook body, each as {status, alertname, labels, summary, startsAt}."""
    if not isinstance(doc, Mapping):
        raise PayloadError("body must be a JSON object (Alertmanager webhook payload)")
    version = doc.get("version")
    if version != SUPPORTED_VERSION:
        raise PayloadError(f"version must be \"4\" (Alertmanager webhook), got {version!r}")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts must be a list")
    parsed = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, Mapping):
            raise PayloadError(f"alerts[{i}] must be an object")
        status = alert.get("status")
        if status not in ("firing", "resolved"):
            raise PayloadError(f"alerts[{i}].status must be firing or resolved, got {status!r}")
        labels = _labels(alert.get("labels"), f"alerts[{i}].labels")
        annotations = alert.get("annotations") or {}
        annotations = _labels(annotations, f"alerts[{i}].annotations")
        parsed.append(
            {
                "status": status,
                "alertname": labels.get("alertname", ""),
                "labels": labels,
                "summary": annotations.get("summary", ""),
                "startsAt": str(alert.get("startsAt", "")),
            }
        )
    return parsed


def label_matches(label: str, service: str) -> bool:
    return label == service or service.endswith("_" + label)


def policies_for(alert: Mapping[str, Any], policies: Iterable[Policy]) -> list[str]:
    label = alert["labels"].get(SERVICE_LABEL)
    if not label:
        return []
    return [p.name for p in policies if label_matches(label, p.service)]
