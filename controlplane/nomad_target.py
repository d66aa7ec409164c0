"""Nomad target: a job's task group through Nomad's HTTP API (python-nomad).

Reads ``GET /v1/job/:id`` (the group's ``Count``) and ``GET /v1/job/:id/allocations`` (running
allocations and when their tasks started); scales with ``POST /v1/job/:id/scale`` and a message.
python-nomad has no helper for the scale endpoint, so it goes through the client's generic
``request``. Nomad refuses to scale a job during an active deployment ("job scaling blocked due to
active deployment", HTTP 400); like the Nomad Autoscaler, that is a no-op, retried at the next
evaluation, not an error.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

import nomad
import nomad.api.exceptions as nomad_errors
import requests

from controlplane.decision import ReplicaState
from controlplane.policy import Policy
from controlplane.swarm_target import parse_docker_time
from controlplane.target import ScaleResult, TargetError, TargetMissing

log = logging.getLogger(__name__)

NOMAD_TIMEOUT_S = 5  # seconds for one Nomad API call
ACTIVE_DEPLOYMENT = "scaling blocked due to active deployment"


def _error_text(exc: Exception) -> str:
    resp = getattr(exc, "nomad_resp", None)
    if isinstance(resp, requests.Response):
        return f"HTTP {resp.status_code}: {resp.text.strip()}"
    return str(resp if resp is not None else exc)


class NomadTarget:
    def __init__(self, address: str, token: str | None = None) -> None:
        parsed = urlparse(address)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"expected http(s)://host:port, got {address!r}")
        self._client = nomad.Nomad(
            address=address.rstrip("/"), token=token or None, timeout=NOMAD_TIMEOUT_S
        )

    def _group(self, policy: Policy, job: dict[str, Any]) -> dict[str, Any]:
        groups = job.get("TaskGroups") or []
        if policy.group is None:
            if len(groups) != 1:
                names = [g.get("Name") for g in groups]
                raise TargetError(
                    f"nomad job {policy.service!r} has groups {names}; name one with 'group'"
                )
            return dict(groups[0])
        for g in groups:
            if g.get("Name") == policy.group:
                return dict(g)
        raise TargetMissing(f"nomad job {policy.service!r} has no group {policy.group!r}")

    def read(self, policy: Policy) -> ReplicaState:
        try:
            job = self._client.job.get_job(policy.service, namespace=policy.namespace)
            allocs = self._client.job.get_allocations(policy.service, namespace=policy.namespace)
        except nomad_errors.URLNotFoundNomadException:
            raise TargetMissing(f"nomad job {policy.service!r} not found") from None
        except (nomad_errors.BaseNomadException, requests.RequestException, ValueError) as exc:
            raise TargetError(f"reading nomad job {policy.service!r}: {_error_text(exc)}") from None
        group = self._group(policy, job)
        started: list[float] = []
        for alloc in allocs:
            if alloc.get("TaskGroup") != group.get("Name"):
                continue
            if alloc.get("ClientStatus") != "running":
                continue
            times = [
                parse_docker_time(s["StartedAt"])
                for s in (alloc.get("TaskStates") or {}).values()
                if s.get("StartedAt")
            ]
            if times:
                started.append(max(times))  # the replica serves once its last task started
            elif alloc.get("ModifyTime"):
                started.append(int(alloc["ModifyTime"]) / 1e9)
        return ReplicaState(desired=int(group.get("Count", 0)), started_at=tuple(sorted(started)))

    def scale(self, policy: Policy, replicas: int, message: str) -> ScaleResult:
        try:
            job = self._client.job.get_job(policy.service, namespace=policy.namespace)
            group = self._group(policy, job)
            params = {"namespace": policy.namespace} if policy.namespace else None
            self._client.job.request(
                policy.service,
                "scale",
                method="post",
                params=params,
                json={
                    "Count": replicas,
                    "Message": message,
                    "Target": {"Group": group["Name"]},
                    "Meta": {"source": "tidedesk-controlplane", "policy": policy.name},
                    "PolicyOverride": False,
                },
            )
        except nomad_errors.BaseNomadException as exc:
            text = _error_text(exc)
            if ACTIVE_DEPLOYMENT in text:
                log.info("nomad refused: active deployment", extra={"job": policy.service})
                return ScaleResult(
                    applied=False, note="Nomad: job scaling blocked due to active deployment"
                )
            raise TargetError(f"scaling nomad job {policy.service!r}: {text}") from None
        except (requests.RequestException, ValueError) as exc:
            raise TargetError(f"scaling nomad job {policy.service!r}: {exc}") from None
        return ScaleResult(applied=True)
