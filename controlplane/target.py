"""The thing that gets scaled: one interface, a Swarm and a Nomad implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controlplane.decision import ReplicaState
from controlplane.policy import Policy


class TargetError(Exception):
    """The orchestrator could not be read or refused a change; the message says which and why."""


class TargetMissing(TargetError):
    """The orchestrator answered and has no such service (job, group): the policy names
    something that does not exist, e.g. the stack was deployed under another name."""


@dataclass(frozen=True)
class ScaleResult:
    applied: bool  # False: the orchestrator declined without error (e.g. an active deployment)
    note: str = ""


class Target(Protocol):
    def read(self, policy: Policy) -> ReplicaState:
        """The service's desired count and the start times of its running replicas."""
        ...

    def scale(self, policy: Policy, replicas: int, message: str) -> ScaleResult:
        """Ask the orchestrator for ``replicas``; raise :class:`TargetError` on failure."""
        ...
