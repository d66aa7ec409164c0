"""The REST API of a running daemon (subprocess) with real Prometheus and the Nomad double."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cp_nomad_double import NomadDouble
from cp_servers import TOKEN, Daemon, Exporter, Prometheus, daemon

from controlplane.config import hash_token
from tests.support.processes import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]


def policies(case: str, **overrides: Any) -> str:
    fields = {
        "min": 1, "max": 8, "interval": "1s", "warmup": "0s", "scale_up_wait": "0s",
        "scale_down_cooldown": "1s", "scale_down_stabilization": "1s",
    }  # fmt: skip
    fields.update(overrides)
    lines = "\n".join(f"    {k}: {v}" for k, v in fields.items())
    return f"""
policies:
  - name: router
    service: router
    driver: nomad
    group: g
{lines}
    step: {{up_max_percent: 100, down_max: 10}}
    checks:
      - name: load
        query: sum(tidedesk_cptest_load{{case="{case}"}})
        target: 10
        for: 0s
"""


@pytest.fixture()
def setup(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    prometheus: Prometheus,
    exporter: Exporter,
    nomad_double: NomadDouble,
) -> Any:
    case = request.node.name.replace("[", "_").replace("]", "")
    nomad_double.add_job("router", {"g": 1})

    def start(**overrides: Any) -> Daemon:
        return Daemon(tmp_path, policies(case, **overrides), prometheus.url, nomad_double.address)

    def load(value: float) -> None:
        exporter.set(case, value)
        prometheus.wait_for(f'sum(tidedesk_cptest_load{{case="{case}"}})', value)
        time.sleep(1.1)  # range queries end on a whole second: let it pass the first sample

    started: list[Daemon] = []

    def start_tracked(**overrides: Any) -> Daemon:
        d = start(**overrides)
        started.append(d)
        return d

    yield start_tracked, load, nomad_double
    for d in started:
        d.stop()


def count(double: NomadDouble) -> int:
    return int(double.count("router", "g"))


def test_auth_and_errors(setup: Any) -> None:
    start, _load, _ = setup
    d = start()
    assert d.request("GET", "/healthz", token=None).status_code == 200
    metrics = d.request("GET", "/metrics", token=None)
    assert metrics.status_code == 200 and "tidedesk_controlplane_replicas_current" in metrics.text
    for token in (None, "wrong-token-wrong-token"):
        r = d.request("GET", "/v1/status", token=token)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = d.request("POST", "/v1/policies/nope/pause")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_policy"
    r = d.request("POST", "/v1/policies/router/pin", data="{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = d.request("POST", "/v1/policies/router/pin", json={"replicas": 99, "ttl_s": 10})
    assert r.status_code == 400 and "[1, 8]" in r.json()["error"]["message"]
    r = d.request("POST", "/v1/policies/router/pin", json={"replicas": 2})
    assert r.status_code == 400 and "ttl_s" in r.json()["error"]["message"]
    r = d.request("GET", "/v1/decisions?limit=0")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_limit"
    r = d.request("PUT", "/v1/status")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = d.request("GET", "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_scales_and_records_who_when_why(setup: Any) -> None:
    start, load, double = setup
    load(35)
    d = start()
    wait_until("scale-up to 4", lambda: count(double) == 4, 20)
    st = d.status("router")
    for key in ("service", "driver", "current", "desired", "min", "max", "paused", "pinned"):
        assert key in st
    assert st["last_decision"]["reason"] and st["last_decision"]["at"]
    decisions = d.decisions("router", limit=5)
    assert len(decisions) <= 5
    assert [x["at_unix"] for x in decisions] == sorted((x["at_unix"] for x in decisions),
                                                       reverse=True)  # fmt: skip
    ups = [a for a in d.audit("router") if a["action"] == "scale_up"]
    assert ups and ups[-1]["who"] == "autoscaler" and "load" in ups[-1]["why"] and ups[-1]["at"]
    assert double.scale_requests[-1]["Message"].startswith("up")
    text = d.request("GET", "/metrics", token=None).text
    assert 'tidedesk_controlplane_replicas_desired{policy="router"} 4.0' in text
    assert 'tidedesk_controlplane_decisions_total{direction="up",policy="router"}' in text


def test_pin_holds_then_expires(setup: Any) -> None:
    start, load, double = setup
    load(15)
    d = start()
    wait_until("autoscaled to 2", lambda: count(double) == 2, 20)
    body = {"replicas": 6, "ttl_s": 4, "by": "alice", "reason": "load test"}
    r = d.request("POST", "/v1/policies/router/pin", json=body)
    assert r.status_code == 200 and r.json()["policy"]["pin"]["by"] == "operator for alice"
    wait_until("pinned count", lambda: count(double) == 6, 10)
    assert d.status("router")["pinned"] is True
    time.sleep(1.5)
    assert count(double) == 6  # the checks want 2, the pin wins
    wait_until("back to the autoscaled count after expiry", lambda: count(double) == 2, 20)
    actions = [a["action"] for a in d.audit("router")]
    assert "pin" in actions and "pin_expired" in actions
    pin = next(a for a in d.audit("router") if a["action"] == "pin")
    assert (pin["who"], pin["why"]) == ("operator for alice", "load test")
    # DELETE ends a pin early
    d.request("POST", "/v1/policies/router/pin", json={"replicas": 5, "ttl_s": 600})
    wait_until("second pin", lambda: count(double) == 5, 10)
    assert d.request("DELETE", "/v1/policies/router/pin").status_code == 200
    wait_until("unpinned", lambda: count(double) == 2, 20)
    assert d.status("router")["pinned"] is False


def test_pause_holds_and_resume_acts(setup: Any) -> None:
    start, load, double = setup
    load(15)
    d = start()
    wait_until("autoscaled to 2", lambda: count(double) == 2, 20)
    # The actor is the token's name: a header naming someone else is not believed.
    r = d.request("POST", "/v1/policies/router/pause", json={"reason": "incident 42"},
                  headers={"X-Tidedesk-Actor": "bob"})  # fmt: skip
    assert r.json()["policy"]["paused"] is True
    load(60)
    time.sleep(3)
    assert count(double) == 2
    assert "paused by operator (incident 42)" in d.decisions("router", 1)[0]["reason"]
    d.request("POST", "/v1/policies/router/resume")
    wait_until("scale-up after resume", lambda: count(double) == 6, 20)
    actions = [(a["action"], a["who"]) for a in d.audit("router")]
    assert ("pause", "operator") in actions and any(a == "resume" for a, _ in actions)


def test_outside_change_is_restored(setup: Any) -> None:
    start, load, double = setup
    load(25)
    d = start()
    wait_until("autoscaled to 3", lambda: count(double) == 3, 20)
    double.outside_scale("router", "g", 7)
    wait_until("the autoscaled count restored", lambda: count(double) == 3, 20)
    drift = d.status("router")["last_drift"]
    assert drift["observed"] == 7 and drift["autoscaled"] == 3
    assert any(a["action"] == "drift" for a in d.audit("router"))


ALERTMANAGER_PAYLOAD = {
    "version": "4",
    "groupKey": '{}:{alertname="RouterBacklog"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "controlplane",
    "groupLabels": {"alertname": "RouterBacklog"},
    "commonLabels": {"alertname": "RouterBacklog", "service": "router", "severity": "page"},
    "commonAnnotations": {"summary": "router backlog above 500"},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "RouterBacklog", "service": "router", "severity": "page"},
            "annotations": {"summary": "router backlog above 500"},
            "startsAt": "2026-11-28T02:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
            "fingerprint": "c1b6bd0e5d2a7a3c",
        }
    ],
}


def test_alert_webhook(setup: Any) -> None:
    start, load, double = setup
    load(15)
    d = start(interval="1h")  # only the start-up evaluation and the alert's
    wait_until("start-up evaluation", lambda: count(double) == 2, 20)
    load(45)
    r = d.request("POST", "/v1/alerts", json=ALERTMANAGER_PAYLOAD)
    assert r.status_code == 200 and r.json() == {"received": 1, "evaluations": ["router"]}
    wait_until("the alert-triggered evaluation", lambda: count(double) == 4, 10)
    assert d.decisions("router", 1)[0]["trigger"] == "alert:RouterBacklog"
    assert d.status("router")["alerts"][0]["alertname"] == "RouterBacklog"
    bad = [
        ({**ALERTMANAGER_PAYLOAD, "version": "3"}, 'version must be "4"'),
        ({**ALERTMANAGER_PAYLOAD, "alerts": "x"}, "alerts must be a list"),
        ({**ALERTMANAGER_PAYLOAD, "alerts": [{"status": "on", "labels": {}}]},
         "alerts[0].status"),
        ({**ALERTMANAGER_PAYLOAD, "alerts": [{"status": "firing", "labels": {"a": 1}}]},
         "alerts[0].labels"),
        ([1, 2], "JSON object"),
    ]  # fmt: skip
    for body, says in bad:
        r = d.request("POST", "/v1/alerts", json=body)
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
    r = d.request("POST", "/v1/alerts", data="version: 4")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_errors_are_recorded_and_the_loop_goes_on(
    tmp_path: Path, nomad_double: NomadDouble
) -> None:
    nomad_double.add_job("router", {"g": 3})
    yaml = policies("dead") + policies("dead").split("policies:\n")[1].replace(
        "name: router\n    service: router", "name: ghost\n    service: ghost"
    )
    dead_prometheus = f"http://127.0.0.1:{free_port()}"
    with daemon(tmp_path, yaml, dead_prometheus, nomad_double.address) as d:
        wait_until("evaluations to go on", lambda: len(d.decisions("router")) >= 3, 20)
        st = d.status("router")
        assert st["last_error"]["stage"] == "metrics"
        assert "prometheus query failed" in st["last_error"]["message"]
        assert st["current"] == 3 and "no data" in st["last_decision"]["reason"]
        ghost = d.status("ghost")
        assert ghost["last_error"]["stage"] == "target_read"
        assert "not found" in ghost["last_error"]["message"]
        assert count(nomad_double) == 3
        text = d.request("GET", "/metrics", token=None).text
        errors = 'tidedesk_controlplane_evaluation_errors_total{policy="ghost",stage="target_read"}'
        assert errors in text
        assert d.proc.poll() is None


def test_state_file_keeps_pins_across_restarts(
    tmp_path: Path, nomad_double: NomadDouble, prometheus: Prometheus
) -> None:
    nomad_double.add_job("router", {"g": 1})
    state = tmp_path / "state.json"
    args = (tmp_path, policies("restart"), prometheus.url, nomad_double.address)
    event = {"name": "later", "start": "2030-01-02T10:00:00Z", "end": "2030-01-02T11:00:00Z",
             "min_replicas": {"router": 2}}  # fmt: skip
    with daemon(*args, extra_args=("--state-file", str(state))) as d:
        d.request("POST", "/v1/policies/router/pin", json={"replicas": 3, "ttl_s": 600})
        assert d.request("POST", "/v1/events", json=event).status_code == 201
        wait_until("pinned", lambda: count(nomad_double) == 3, 10)
    assert state.exists()
    with daemon(*args, extra_args=("--state-file", str(state))) as d:
        st = d.status("router")
        assert st["pinned"] and st["pin"]["replicas"] == 3
        assert [e["name"] for e in st["events"]] == ["later"]
        assert any(a["action"] == "pin" for a in d.audit("router"))


def test_scheduled_events_raise_the_floor_and_are_audited(setup: Any) -> None:
    start, load, double = setup
    load(15)
    d = start()
    wait_until("autoscaled to 2", lambda: count(double) == 2, 20)
    now = time.time()

    def at(offset: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + offset))

    bad = [
        ({"start": at(60), "end": at(120), "min_replicas": {"router": 5}}, "body.name: missing"),
        ({"name": "s", "start": "tomorrow", "end": at(120), "min_replicas": {"router": 5}},
         "body.start: expected a date-time"),
        ({"name": "s", "start": at(60), "end": at(30), "min_replicas": {"router": 5}},
         "body.end: must be after start"),
        ({"name": "s", "start": at(60), "end": at(120), "min_replicas": {"router": 50}},
         "body.min_replicas.router: must be within the policy's bounds [1, 8]"),
        ({"name": "s", "start": at(60), "end": at(120), "min_replicas": {"nope": 2}},
         "body.min_replicas.nope: no policy named 'nope'"),
        ({"name": "s", "start": at(-120), "end": at(-60), "min_replicas": {"router": 2}},
         "end must be in the future"),
        # year 10000 in UTC: once stored, status and the audit could never print it
        ({"name": "s", "start": at(60), "end": "9999-12-31T23:59:59-08:00",
          "min_replicas": {"router": 2}}, "body.end: '9999-12-31T23:59:59-08:00' is out of range"),
    ]  # fmt: skip
    for body, says in bad:
        r = d.request("POST", "/v1/events", json=body)
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
    # starts in 60 s with a 90 s lead: the floor holds at once
    sale = {"name": "sale", "start": at(60), "end": at(3600), "lead": "90s",
            "min_replicas": {"router": 5}, "by": "carol", "reason": "newsletter"}  # fmt: skip
    r = d.request("POST", "/v1/events", json=sale)
    assert r.status_code == 201 and r.json()["event"]["active"] is True
    wait_until("the event's floor", lambda: count(double) == 5, 10)
    st = d.status("router")
    assert st["events"][0]["name"] == "sale" and st["floors"]["schedule"]["replicas"] == 5
    assert "scheduled event sale" in st["last_decision"]["reason"]
    assert d.request("POST", "/v1/events", json=sale).status_code == 200  # replaced
    assert [e["name"] for e in d.request("GET", "/v1/events").json()["events"]] == ["sale"]
    r = d.request("DELETE", "/v1/events/sale", json={"reason": "cancelled"})
    assert r.status_code == 200
    wait_until("released after the event is gone", lambda: count(double) == 2, 20)
    assert d.request("DELETE", "/v1/events/sale").status_code == 404
    audit = [(a["action"], a["who"]) for a in d.audit("router")]
    for entry in [("event_add", "operator for carol"), ("event_update", "operator for carol"),
                  ("event_floor_raised",
                  "schedule"), ("event_floor_released", "schedule")]:  # fmt: skip
        assert entry in audit, audit
    assert any(a == "event_delete" for a, _ in audit)
    text = d.request("GET", "/metrics", token=None).text
    assert 'tidedesk_controlplane_floor_replicas{policy="router",source="schedule"}' in text


def test_events_from_the_policies_file_are_read_only(
    tmp_path: Path, nomad_double: NomadDouble, prometheus: Prometheus
) -> None:
    nomad_double.add_job("router", {"g": 1})
    yaml = policies("file-events") + (
        "events:\n  - name: launch\n    start: 2030-01-01T10:00:00Z\n"
        "    end: 2030-01-01T12:00:00Z\n    min_replicas: {router: 4}\n"
    )
    with daemon(tmp_path, yaml, prometheus.url, nomad_double.address) as d:
        events = d.request("GET", "/v1/events").json()["events"]
        assert events[0]["name"] == "launch" and events[0]["source"] == "file"
        assert events[0]["lead_s"] == 300 and events[0]["active"] is False
        r = d.request("DELETE", "/v1/events/launch")
        assert r.status_code == 409 and "policies file" in r.json()["error"]["message"]
        body = {"name": "launch", "start": "2030-01-02T10:00:00Z",
                "end": "2030-01-02T11:00:00Z", "min_replicas": {"router": 2}}  # fmt: skip
        assert d.request("POST", "/v1/events", json=body).status_code == 409
        assert d.status("router")["events"][0]["name"] == "launch"


def test_token_secret_formats(
    tmp_path: Path, nomad_double: NomadDouble, prometheus: Prometheus
) -> None:
    """The fixtures store TOKEN's sha256; an older deployment's plain token still works."""
    nomad_double.add_job("router", {"g": 1})
    args = (tmp_path, policies("token"), prometheus.url, nomad_double.address)
    with daemon(*args, token_secret=TOKEN) as d:
        assert d.request("GET", "/v1/status").status_code == 200
        assert d.request("GET", "/v1/status", token=hash_token(TOKEN)).status_code == 401
        wait_until("the warning", lambda: "stored in plain text" in d.log_path.read_text(), 10)
    with daemon(*args) as d:
        assert d.request("GET", "/v1/status").status_code == 200
        # the hash itself is not a token: stealing the secret does not open the API
        assert d.request("GET", "/v1/status", token=hash_token(TOKEN)).status_code == 401
        assert d.request("GET", "/v1/status", token=TOKEN + "x").status_code == 401
        assert "stored in plain text" not in d.log_path.read_text()
