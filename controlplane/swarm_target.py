"""Docker Swarm target: replicated services through the Docker Engine API (docker SDK).

The client follows the standard ``DOCKER_HOST`` / ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH``
environment. Swarm has no scale message, so the reason only goes to the audit log.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import docker
import docker.errors

from controlplane.decision import ReplicaState
from controlplane.policy import Policy
from controlplane.target import ScaleResult, TargetError, TargetMissing

log = logging.getLogger(__name__)

DOCKER_TIMEOUT_S = 10  # seconds for one Engine API call; a stuck daemon must not stall the loop


def parse_docker_time(raw: str) -> float:
    """Unix seconds from Docker's RFC 3339 timestamps (nanoseconds, ``Z``)."""
    text = raw.strip().replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tz}"
    return datetime.fromisoformat(text).timestamp()


class SwarmTarget:
    def __init__(self, client: Any | None = None) -> None:
        self._client = client

    def _docker(self) -> Any:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=DOCKER_TIMEOUT_S)
            except docker.errors.DockerException as exc:
                raise TargetError(f"cannot reach the Docker Engine: {exc}") from None
        return self._client

    def _service(self, name: str) -> Any:
        try:
            return self._docker().services.get(name)
        except docker.errors.NotFound:
            raise TargetMissing(f"swarm service {name!r} not found") from None
        except (docker.errors.DockerException, OSError) as exc:
            raise TargetError(f"reading swarm service {name!r}: {exc}") from None

    def read(self, policy: Policy) -> ReplicaState:
        svc = self._service(policy.service)
        mode = svc.attrs.get("Spec", {}).get("Mode", {})
        if "Replicated" not in mode:
            raise TargetError(
                f"swarm service {policy.service!r} is not replicated (mode {list(mode)}); "
                "only replicated services can be scaled"
            )
        desired = int(mode["Replicated"].get("Replicas", 1))
        try:
            tasks = svc.tasks(filters={"desired-state": "running"})
        except (docker.errors.DockerException, OSError) as exc:
            raise TargetError(f"listing tasks of {policy.service!r}: {exc}") from None
        started: list[float] = []
        for task in tasks:
            status = task.get("Status", {})
            if status.get("State") != "running":
                continue
            try:
                started.append(parse_docker_time(status["Timestamp"]))
            except (KeyError, ValueError):
                log.warning("task without a usable timestamp", extra={"task": task.get("ID")})
        return ReplicaState(desired=desired, started_at=tuple(sorted(started)))

    def scale(self, policy: Policy, replicas: int, message: str) -> ScaleResult:
        # An update carries the service version; someone else's update in between makes it fail
        # with "update out of sequence", so read again and retry once.
        last: Exception | None = None
        for _ in range(2):
            self._service(policy.service)  # a clear error if it does not exist
            try:
                self._set_replicas(policy.service, replicas)
                log.info(
                    "scaled swarm service",
                    extra={"service": policy.service, "replicas": replicas, "why": message},
                )
                return ScaleResult(applied=True)
            except (docker.errors.DockerException, OSError) as exc:
                last = exc
        raise TargetError(f"scaling swarm service {policy.service!r} to {replicas}: {last}")

    def _set_replicas(self, name: str, replicas: int) -> None:
        """Send the service's spec back exactly as stored, with only the replica count changed.

        The SDK's ``Service.scale`` rebuilds the task template with Docker's defaults filled in;
        Swarm sees a changed spec and restarts every running task (every chat node would drain
        on each scale-up). ``docker service scale`` does what this does."""
        api = self._docker().api
        info = api.inspect_service(name)
        spec = info["Spec"]
        api.update_service(
            name, info["Version"]["Index"],
            task_template=spec.get("TaskTemplate"), name=spec.get("Name"),
            labels=spec.get("Labels"), mode={"Replicated": {"Replicas": replicas}},
            update_config=spec.get("UpdateConfig"), rollback_config=spec.get("RollbackConfig"),
            networks=spec.get("Networks"), endpoint_spec=spec.get("EndpointSpec"),
        )
