"""The daemon against a real single-node Docker Swarm: up on a high metric, down after the
cool-down, and an outside `docker service scale` undone at the next evaluation."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from cp_servers import TINY_IMAGE, Exporter, Prometheus, daemon, swarm_replicas, swarm_running

from controlplane.policy import Check, Policy
from controlplane.swarm_target import SwarmTarget
from controlplane.target import TargetError
from tests.support.swarm import docker
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.prometheus, pytest.mark.slow]

COOLDOWN_S = 3


def policy_yaml(service: str) -> str:
    return f"""
policies:
  - name: chat
    service: {service}
    driver: swarm
    min: 1
    max: 4
    interval: 1s
    warmup: 1s
    scale_up_wait: 2s
    scale_down_cooldown: {COOLDOWN_S}s
    scale_down_stabilization: 2s
    step: {{up_max_percent: 100, down_max: 1}}
    checks:
      - name: load
        query: sum(tidedesk_cptest_load{{case="swarm"}})
        target: 10
        for: 1s
"""


def set_load(prometheus: Prometheus, exporter: Exporter, value: float) -> None:
    exporter.set("swarm", value)
    prometheus.wait_for('sum(tidedesk_cptest_load{case="swarm"})', value)


def test_swarm_target_reads_tasks(swarm_service: str) -> None:
    target = SwarmTarget()
    p = Policy(name="p", service=swarm_service, driver="swarm", min=1, max=3,
               checks=(Check("x", "up", target=1),))  # fmt: skip
    wait_until("the task to run", lambda: len(target.read(p).started_at) == 1, 60)
    state = target.read(p)
    assert state.desired == 1 and abs(time.time() - state.started_at[0]) < 120
    import docker as docker_sdk

    svc = docker_sdk.from_env().services.get(swarm_service)
    before = {t["ID"] for t in svc.tasks(filters={"desired-state": "running"})}
    template = svc.attrs["Spec"]["TaskTemplate"]
    assert target.scale(p, 2, "test").applied
    wait_until("two tasks", lambda: len(target.read(p).started_at) == 2, 60)
    # Scaling leaves the running task alone (no rolling restart of the service) and changes
    # nothing in the spec but the count.
    svc.reload()
    after = {t["ID"] for t in svc.tasks(filters={"desired-state": "running"})}
    assert before < after, (before, after)
    assert svc.attrs["Spec"]["TaskTemplate"] == template
    missing = Policy(name="m", service="cptest-missing", driver="swarm", min=1, max=3,
                     checks=(Check("x", "up", target=1),))  # fmt: skip
    with pytest.raises(TargetError, match="not found"):
        target.read(missing)


def test_daemon_scales_a_swarm_service(
    tmp_path: Path, swarm_service: str, prometheus: Prometheus, exporter: Exporter
) -> None:
    set_load(prometheus, exporter, 5)
    with daemon(tmp_path, policy_yaml(swarm_service), prometheus.url) as d:
        wait_until("a first decision", lambda: d.decisions("chat"), 20)
        assert swarm_replicas(swarm_service) == 1

        set_load(prometheus, exporter, 35)  # wants ceil(35 / 10) = 4: 1 -> 2 -> 4
        wait_until("scale-up to 4", lambda: swarm_replicas(swarm_service) == 4, 60)
        wait_until("4 running tasks", lambda: swarm_running(swarm_service) == 4, 60)
        ups = [a for a in d.audit("chat") if a["action"] == "scale_up"]
        assert [u["detail"]["desired"] for u in reversed(ups)] == [2, 4]

        # Someone scales by hand: the daemon notices and restores its own count.
        docker("service", "scale", "--detach", f"{swarm_service}=1")
        wait_until("the drift to be noticed",
                   lambda: (d.status("chat")["last_drift"] or {}).get("observed") == 1, 30)
        wait_until("the count restored", lambda: swarm_replicas(swarm_service) == 4, 30)
        assert any(a["action"] == "drift" for a in d.audit("chat"))

        set_load(prometheus, exporter, 5)  # wants 1: one step at a time, a cool-down apart
        wait_until("scale-down to 1", lambda: swarm_replicas(swarm_service) == 1, 90)
        downs = [a for a in reversed(d.audit("chat")) if a["action"] == "scale_down"]
        assert [x["detail"]["desired"] for x in downs][-3:] == [3, 2, 1]
        gaps = [b["at_unix"] - a["at_unix"] for a, b in itertools.pairwise(downs)]
        assert all(g >= COOLDOWN_S for g in gaps), gaps
        text = d.request("GET", "/metrics", token=None).text
        assert 'tidedesk_controlplane_scale_actions_total{direction="down",policy="chat"}' in text


def test_stack_placeholder_readiness_and_overrides_of_a_missing_target(
    tmp_path: Path, swarm_service: str, prometheus: Prometheus, exporter: Exporter
) -> None:
    """Issue 19: ``${STACK}`` follows the stack name; a policy whose service is missing makes
    /readyz 503 and its pin/pause 409 with the reason; deploying the service makes it ready."""
    stack, _, short = swarm_service.partition("-")  # cptest-<hex>: stack cptest, service <hex>
    set_load(prometheus, exporter, 5)
    missing = f"{short}x"
    yaml = policy_yaml("${STACK}_" + short) + policy_yaml("${STACK}_" + missing).replace(
        "policies:\n  - name: chat", "  - name: ghost")
    # The Swarm service is named cptest-<hex>; the stack separator here is "-".
    yaml = yaml.replace("${STACK}_", "${STACK}-")
    with daemon(tmp_path, yaml, prometheus.url, extra_args=("--stack", stack)) as d:
        assert d.status("chat")["service"] == swarm_service
        assert d.status("ghost")["service"] == f"{stack}-{missing}"
        wait_until("both targets read", lambda: all(
            d.status(n)["target"] is not None for n in ("chat", "ghost")), 30)
        assert d.status("chat")["target"]["ok"] is True
        ready = d.request("GET", "/readyz", token=None)
        assert ready.status_code == 503, ready.text
        reasons = ready.json()["reasons"]
        assert len(reasons) == 1 and "ghost" in reasons[0] and "not found" in reasons[0], reasons

        pin = d.request("POST", "/v1/policies/ghost/pin", json={"replicas": 2, "ttl_s": 60})
        assert pin.status_code == 409, pin.text
        err = pin.json()["error"]
        assert err["code"] == "target_missing" and f"{stack}-{missing}" in err["message"]
        pause = d.request("POST", "/v1/policies/ghost/pause", json={})
        assert pause.status_code == 409 and "not found" in pause.json()["error"]["message"]
        assert d.status("ghost")["paused"] is False and d.status("ghost")["pinned"] is False
        # The healthy policy is still overridable.
        ok = d.request("POST", "/v1/policies/chat/pin", json={"replicas": 2, "ttl_s": 60})
        assert ok.status_code == 200, ok.text
        metrics = d.request("GET", "/metrics", token=None).text
        assert 'tidedesk_controlplane_target_missing{policy="ghost"} 1.0' in metrics
        assert ('tidedesk_controlplane_evaluation_errors_total{policy="ghost",'
                'stage="target_read"}') in metrics

        # The missing service appears: ready at the next evaluation, overrides accepted.
        docker("service", "create", "--detach", "--name", f"{stack}-{missing}", "--replicas",
               "1", "--stop-grace-period", "1s", "--no-resolve-image", TINY_IMAGE, "sleep",
               "3600")
        try:
            wait_until("ready once the service exists", lambda: d.request(
                "GET", "/readyz", token=None).status_code == 200, 30)
            pause = d.request("POST", "/v1/policies/ghost/pause", json={})
            assert pause.status_code == 200 and pause.json()["policy"]["paused"] is True
        finally:
            docker("service", "rm", f"{stack}-{missing}", check=False)
