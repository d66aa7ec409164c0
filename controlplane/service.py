"""The control plane as one object: state, controller and the APScheduler jobs.

REST handlers call this and nothing else. Each policy has an interval job; an override or a
firing alert adds a one-off job that runs the policy's evaluation now (the controller's lock per
policy keeps runs from overlapping).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from controlplane.alerts import parse_payload, policies_for
from controlplane.controller import Controller
from controlplane.metrics_source import MetricsSource
from controlplane.policy import PolicyError
from controlplane.policy_file import parse_event
from controlplane.state import ControlPlaneState, OverrideError
from controlplane.target import Target
from controlplane.telemetry import Telemetry
from controlplane.tls_probe import PROBE_INTERVAL_S, probe_all

log = logging.getLogger(__name__)

MISFIRE_GRACE_S = 30  # seconds a late scheduled run may still start (e.g. after a long GC)


class ControlPlane:
    def __init__(
        self,
        state: ControlPlaneState,
        metrics: MetricsSource,
        targets: Mapping[str, Target],
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.time,
        state_file: Path | None = None,
        tls_probes: tuple[str, ...] = (),
    ) -> None:
        self.state = state
        self.telemetry = telemetry or Telemetry()
        self._clock = clock
        self._state_file = state_file
        self._save_lock = threading.Lock()
        self.controller = Controller(
            state, metrics, targets, self.telemetry, clock=clock, on_change=self.save
        )
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._tls_probes = list(tls_probes)

    # --- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        if self._state_file is not None and self._state_file.exists():
            self.state.restore(json.loads(self._state_file.read_text()))

    def save(self) -> None:
        if self._state_file is None:
            return
        with self._save_lock:
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state.to_dict()))
            os.replace(tmp, self._state_file)

    def start(self) -> None:
        now = datetime.now(UTC)
        for policy in self.state.policies():
            self._scheduler.add_job(
                self.controller.evaluate,
                "interval",
                seconds=policy.interval_s,
                args=[policy.name, "schedule"],
                id=f"policy:{policy.name}",
                next_run_time=now,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=MISFIRE_GRACE_S,
            )
        if self._tls_probes:
            self._scheduler.add_job(
                probe_all, "interval", seconds=PROBE_INTERVAL_S,
                args=[self._tls_probes, self.telemetry], id="tls-probe", next_run_time=now,
                max_instances=1, coalesce=True, misfire_grace_time=MISFIRE_GRACE_S,
            )  # fmt: skip
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)

    def evaluate_soon(self, name: str, trigger: str) -> None:
        """Run the policy's evaluation now, in the scheduler's thread pool."""
        if not self._scheduler.running:
            return
        self._scheduler.add_job(
            self.controller.evaluate,
            args=[name, trigger],
            id=f"now:{name}:{trigger}",
            replace_existing=True,
            misfire_grace_time=MISFIRE_GRACE_S,
        )

    # --- what the REST API offers --------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        return self.state.status(self._clock())

    def pin(self, name: str, replicas: int, ttl_s: float, who: str, why: str) -> dict[str, Any]:
        self.state.pin(name, replicas, ttl_s, who, why, self._clock())
        self.save()
        self.evaluate_soon(name, "pin")
        return self.state.status_of(name, self._clock())

    def unpin(self, name: str, who: str, why: str) -> dict[str, Any]:
        if self.state.unpin(name, who, why, self._clock()):
            self.save()
            self.evaluate_soon(name, "unpin")
        return self.state.status_of(name, self._clock())

    def pause(self, name: str, who: str, why: str) -> dict[str, Any]:
        if self.state.pause(name, who, why, self._clock()):
            self.save()
        return self.state.status_of(name, self._clock())

    def resume(self, name: str, who: str, why: str) -> dict[str, Any]:
        if self.state.resume(name, who, why, self._clock()):
            self.save()
            self.evaluate_soon(name, "resume")
        return self.state.status_of(name, self._clock())

    def events(self) -> list[dict[str, Any]]:
        return self.state.events(self._clock())

    def add_event(self, raw: dict[str, Any], who: str, why: str) -> tuple[dict[str, Any], bool]:
        """Validate and add (or replace) a scheduled event; returns it and whether it replaced
        one. A bad field raises :class:`OverrideError` naming it."""
        fields = {k: v for k, v in raw.items() if k not in ("by", "reason")}
        try:
            event = parse_event(fields, "body", self.state.bounds(), source="api")
        except PolicyError as exc:
            raise OverrideError(str(exc)) from None
        event = dataclasses.replace(event, by=who, reason=why)
        now = self._clock()
        replaced = self.state.add_event(event, who, why, now)
        self.save()
        for policy, _ in event.replicas:
            self.evaluate_soon(policy, f"event:{event.name}")
        return event.to_dict(now), replaced

    def delete_event(self, name: str, who: str, why: str) -> dict[str, Any]:
        now = self._clock()
        event = self.state.delete_event(name, who, why, now)
        self.save()
        for policy, _ in event.replicas:
            self.evaluate_soon(policy, f"event_deleted:{name}")
        return event.to_dict(now)

    def decisions(self, policy: str | None, limit: int) -> list[dict[str, Any]]:
        return self.state.decisions(policy, limit)

    def audit(self, policy: str | None, limit: int) -> list[dict[str, Any]]:
        return self.state.audit(policy, limit)

    def receive_alerts(self, payload: object) -> dict[str, Any]:
        """Record the payload's alerts; evaluate at once every policy a firing alert names."""
        alerts = parse_payload(payload)
        now = self._clock()
        triggered: list[str] = []
        for alert in alerts:
            names = policies_for(alert, self.state.policies())
            self.telemetry.alerts.labels(alert["status"]).inc()
            self.state.record_alert(alert, names, now)
            if alert["status"] == "firing":
                for name in names:
                    if name not in triggered:
                        triggered.append(name)
                        self.evaluate_soon(name, f"alert:{alert['alertname']}")
        self.save()
        log.info("alerts received", extra={"count": len(alerts), "evaluations": triggered})
        return {"received": len(alerts), "evaluations": triggered}
