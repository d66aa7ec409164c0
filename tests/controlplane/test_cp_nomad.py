"""The Nomad target driven through python-nomad against an HTTP double of Nomad's API.

No Nomad agent can be installed on these machines; see cp_nomad_double.py for what the double
reproduces from Nomad's documented JSON.
"""

from __future__ import annotations

import time

import pytest
from cp_nomad_double import NomadDouble

from controlplane.nomad_target import NomadTarget
from controlplane.policy import Check, Policy
from controlplane.target import TargetError


def policy(service: str = "router", group: str | None = "g") -> Policy:
    return Policy(
        name="r", service=service, driver="nomad", min=1, max=10,
        checks=(Check("x", "up", target=1),), group=group,
    )  # fmt: skip


def test_read_and_scale(nomad_double: NomadDouble) -> None:
    nomad_double.add_job("router", {"g": 2, "other": 1})
    target = NomadTarget(nomad_double.address)
    state = target.read(policy())
    assert state.desired == 2 and len(state.started_at) == 2
    assert all(time.time() - t > 3000 for t in state.started_at)
    result = target.scale(policy(), 4, "conns above target")
    assert result.applied
    assert nomad_double.count("router", "g") == 4
    req = nomad_double.scale_requests[-1]
    assert req["Count"] == 4 and req["Message"] == "conns above target"
    assert req["Target"] == {"Group": "g"} and req["PolicyOverride"] is False
    state = target.read(policy())
    assert state.desired == 4 and len(state.started_at) == 4
    assert sum(1 for t in state.started_at if time.time() - t < 60) == 2  # the new ones


def test_active_deployment_is_a_no_op(nomad_double: NomadDouble) -> None:
    nomad_double.add_job("router", {"g": 2})
    nomad_double.active_deployment.add(("default", "router"))
    result = NomadTarget(nomad_double.address).scale(policy(), 5, "more")
    assert not result.applied and "active deployment" in result.note
    assert nomad_double.count("router", "g") == 2


def test_errors_name_the_problem(nomad_double: NomadDouble) -> None:
    nomad_double.add_job("router", {"a": 1, "b": 1})
    target = NomadTarget(nomad_double.address)
    with pytest.raises(TargetError, match="not found"):
        target.read(policy(service="nope"))
    with pytest.raises(TargetError, match="name one with 'group'"):
        target.read(policy(group=None))
    with pytest.raises(TargetError, match="no group 'zzz'"):
        target.scale(policy(group="zzz"), 2, "x")
    down = NomadTarget("http://127.0.0.1:9")
    with pytest.raises(TargetError, match="reading nomad job"):
        down.read(policy())


def test_acl_token_is_sent() -> None:
    double = NomadDouble(token="secret-id").start()
    try:
        double.add_job("router", {"g": 1})
        with pytest.raises(TargetError, match="403"):
            NomadTarget(double.address).read(policy())
        assert NomadTarget(double.address, token="secret-id").read(policy()).desired == 1
    finally:
        double.stop()
