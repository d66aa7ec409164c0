"""All of the control plane's runtime state, in one plain class.

Handlers and the controller hold policy names, never objects from here. Every override (pin,
unpin, pause, resume, pin expiry) and every scaling action lands in the audit list with who,
when and why. Expiry takes ``now`` as an argument. :meth:`ControlPlaneState.to_dict` /
:meth:`ControlPlaneState.restore` carry what must survive a restart (pins, pauses, actions, the
autoscaled counts, the audit list) through the daemon's optional state file.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from controlplane.decision import Action, Decision, History, Pause, Pin, ReplicaState
from controlplane.policy import Policy
from controlplane.schedule import ScheduledEvent, iso, upcoming

AUDIT_LIMIT = 2000  # entries kept in memory (and in the state file)
DECISIONS_LIMIT = 500  # decisions kept per policy
ACTIONS_LIMIT = 200  # scaling actions kept per policy (cool-downs only need the last ones)
ALERTS_LIMIT = 20  # recent alerts shown per policy
MAX_PIN_TTL_S = 7 * 24 * 3600  # a pin longer than a week is a config change, not an override
EVENTS_LIMIT = 200  # scheduled events kept (API-made ones; ended ones are dropped first)
ENDED_EVENT_KEEP_S = 7 * 24 * 3600  # an API event is forgotten a week after its end


class UnknownPolicy(KeyError):
    pass


class OverrideError(ValueError):
    """An override request that cannot be honoured; the message says what to change."""


class Conflict(OverrideError):
    """The request clashes with the configuration (e.g. an event defined in the policies file)."""


class TargetNotFound(Conflict):
    """An override of a policy whose service the orchestrator does not have (issue 19)."""


class UnknownEvent(KeyError):
    pass


@dataclass
class PolicyState:
    policy: Policy
    actions: deque[Action] = field(default_factory=lambda: deque(maxlen=ACTIONS_LIMIT))
    autoscaled: int | None = None
    pin: Pin | None = None
    pause: Pause | None = None
    current: ReplicaState | None = None
    last_decision: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    last_drift: dict[str, Any] | None = None
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=DECISIONS_LIMIT))
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ALERTS_LIMIT))
    floors: dict[str, Any] = field(default_factory=dict)  # last evaluation's floors, by source
    forecast: dict[str, Any] | None = None  # last forecast, its error and the replicas it wants
    active_events: frozenset[str] = frozenset()  # events whose floor held at the last evaluation
    # The last read of the target (issue 19): None before the first one, else found or not and
    # why. A missing target makes the daemon not ready and its overrides conflicts.
    target: dict[str, Any] | None = None


class ControlPlaneState:
    def __init__(self, policies: Iterable[Policy]) -> None:
        self._lock = threading.RLock()
        self._policies = {p.name: PolicyState(p) for p in policies}
        self._audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_LIMIT)
        self._events: dict[str, ScheduledEvent] = {
            e.name: e for s in self._policies.values() for e in s.policy.events
        }

    # --- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._policies)

    def policies(self) -> list[Policy]:
        return [s.policy for s in self._policies.values()]

    def _get(self, name: str) -> PolicyState:
        try:
            return self._policies[name]
        except KeyError:
            raise UnknownPolicy(name) from None

    def policy(self, name: str) -> Policy:
        return self._get(name).policy

    def history(self, name: str) -> History:
        with self._lock:
            s = self._get(name)
            return History(
                actions=tuple(s.actions), autoscaled=s.autoscaled, pin=s.pin, pause=s.pause
            )

    def status(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            return [self._status_of(s, now) for s in self._policies.values()]

    def status_of(self, name: str, now: float) -> dict[str, Any]:
        with self._lock:
            return self._status_of(self._get(name), now)

    def _status_of(self, s: PolicyState, now: float) -> dict[str, Any]:
        p = s.policy
        last = s.last_decision
        pin = s.pin if s.pin is not None and s.pin.until > now else None
        return {
            "name": p.name,
            "service": p.service,
            "driver": p.driver,
            "current": None if s.current is None else s.current.desired,
            "running": None if s.current is None else len(s.current.started_at),
            "desired": None if last is None else last["desired"],
            "autoscaled": s.autoscaled,
            "min": p.min,
            "max": p.max,
            "dry_run": p.dry_run,
            "paused": s.pause is not None,
            "pause": None
            if s.pause is None
            else {"by": s.pause.by, "at": iso(s.pause.at), "reason": s.pause.reason},
            "pinned": pin is not None,
            "pin": None
            if pin is None
            else {
                "replicas": pin.replicas,
                "until": iso(pin.until),
                "remaining_s": round(pin.until - now, 1),
                "by": pin.by,
                "reason": pin.reason,
            },
            "last_decision": None
            if last is None
            else {
                k: last[k]
                for k in ("at", "direction", "previous", "desired", "reason", "outcome", "trigger")
            },
            "last_error": s.last_error,
            "last_drift": s.last_drift,
            "alerts": list(reversed(s.alerts)),
            "checks": [] if last is None else last["checks"],
            "strategy": p.strategy,
            "events": [e.to_dict(now) for e in upcoming(list(self._events.values()), p.name, now)],
            "floors": dict(s.floors),
            "forecast": s.forecast,
            "target": s.target,
        }

    def not_ready(self) -> list[str]:
        """Why the daemon is not ready: one line per policy whose target was not read yet, or
        whose last read failed (missing, or the orchestrator unreachable). Empty when ready."""
        with self._lock:
            reasons = []
            for name, s in self._policies.items():
                if s.target is None:
                    reasons.append(f"policy {name!r}: target {s.policy.service!r} not read yet")
                elif not s.target["ok"]:
                    reasons.append(f"policy {name!r}: {s.target['error']}")
            return reasons

    def record_target(self, name: str, error: str | None, missing: bool, now: float) -> None:
        """The outcome of one read of the policy's target: ``error`` None when it was read."""
        with self._lock:
            self._get(name).target = {
                "ok": error is None, "missing": missing, "error": error, "at": iso(now),
            }  # fmt: skip

    def _refuse_if_missing(self, s: PolicyState) -> None:
        if s.target is not None and s.target["missing"]:
            raise TargetNotFound(
                f"policy {s.policy.name!r} cannot be overridden: {s.target['error']} (at "
                f"{s.target['at']}); deploy the service or fix the policy's service "
                "(${STACK}_<service> follows the stack name)"
            )

    def decisions(self, policy: str | None, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            if policy is not None:
                items = list(self._get(policy).decisions)
            else:
                items = [d for s in self._policies.values() for d in s.decisions]
            items.sort(key=lambda d: d["at_unix"], reverse=True)
            return items[:limit]

    def audit(self, policy: str | None, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            items = [a for a in reversed(self._audit) if policy is None or a["policy"] == policy]
            return items[:limit]

    # --- scheduled events ----------------------------------------------------------------------
    def events_for(self, name: str) -> tuple[ScheduledEvent, ...]:
        with self._lock:
            return tuple(e for e in self._events.values() if e.floor_for(name) is not None)

    def events(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            return [e.to_dict(now) for e in sorted(self._events.values(), key=lambda e: e.start)]

    def bounds(self) -> dict[str, tuple[int, int]]:
        return {n: (s.policy.min, s.policy.max) for n, s in self._policies.items()}

    def add_event(self, event: ScheduledEvent, who: str, why: str, now: float) -> bool:
        """Add or replace an API event; True when it replaced one of the same name."""
        with self._lock:
            old = self._events.get(event.name)
            if old is not None and old.source == "file":
                raise Conflict(
                    f"event {event.name!r} is defined in the policies file; edit it there "
                    "or choose another name"
                )
            if event.end <= now:
                raise OverrideError(f"end must be in the future (now is {iso(now)})")
            for name, e in list(self._events.items()):
                if e.source == "api" and e.end < now - ENDED_EVENT_KEEP_S:
                    del self._events[name]
            if old is None and len(self._events) >= EVENTS_LIMIT:
                raise OverrideError(f"at most {EVENTS_LIMIT} events; delete ended ones first")
            self._events[event.name] = event
            action = "event_update" if old is not None else "event_add"
            for policy, n in event.replicas:
                self._record_audit(
                    now, who, action, policy, why, event=event.name, min_replicas=n,
                    start=iso(event.start), end=iso(event.end), lead_s=event.lead_s,
                )  # fmt: skip
            return old is not None

    def delete_event(self, name: str, who: str, why: str, now: float) -> ScheduledEvent:
        with self._lock:
            event = self._events.get(name)
            if event is None:
                raise UnknownEvent(name)
            if event.source == "file":
                raise Conflict(f"event {name!r} is defined in the policies file; remove it there")
            del self._events[name]
            for policy, _ in event.replicas:
                self._record_audit(now, who, "event_delete", policy, why, event=name)
            return event

    def record_floors(
        self,
        name: str,
        floors: dict[str, Any],
        forecast: dict[str, Any] | None,
        active_events: frozenset[str],
        now: float,
    ) -> None:
        """What raised (or could raise) the floor at this evaluation; event floors that start or
        stop holding are audited."""
        with self._lock:
            s = self._get(name)
            s.floors, s.forecast = floors, forecast
            for event in sorted(active_events - s.active_events):
                self._record_audit(
                    now, "schedule", "event_floor_raised", name,
                    f"scheduled event {event} holds the floor", event=event,
                )  # fmt: skip
            for event in sorted(s.active_events - active_events):
                self._record_audit(
                    now, "schedule", "event_floor_released", name,
                    f"scheduled event {event} no longer holds the floor", event=event,
                )  # fmt: skip
            s.active_events = active_events

    # --- overrides -----------------------------------------------------------------------------
    def _record_audit(
        self, now: float, who: str, action: str, policy: str, why: str, **detail: Any
    ) -> None:
        self._audit.append(
            {
                "at": iso(now),
                "at_unix": now,
                "who": who,
                "action": action,
                "policy": policy,
                "why": why,
                "detail": detail,
            }
        )

    def pin(self, name: str, replicas: int, ttl_s: float, who: str, why: str, now: float) -> None:
        with self._lock:
            s = self._get(name)
            self._refuse_if_missing(s)
            p = s.policy
            if not p.min <= replicas <= p.max:
                raise OverrideError(
                    f"replicas must be within the policy's bounds [{p.min}, {p.max}], "
                    f"got {replicas}"
                )
            if not 0 < ttl_s <= MAX_PIN_TTL_S:
                raise OverrideError(f"ttl_s must be between 1 and {MAX_PIN_TTL_S}, got {ttl_s}")
            s.pin = Pin(replicas=replicas, until=now + ttl_s, by=who, reason=why)
            self._record_audit(now, who, "pin", name, why, replicas=replicas, ttl_s=ttl_s)

    def unpin(self, name: str, who: str, why: str, now: float) -> bool:
        with self._lock:
            s = self._get(name)
            had = s.pin is not None
            s.pin = None
            if had:
                self._record_audit(now, who, "unpin", name, why)
            return had

    def pause(self, name: str, who: str, why: str, now: float) -> bool:
        with self._lock:
            s = self._get(name)
            self._refuse_if_missing(s)
            if s.pause is not None:
                return False
            s.pause = Pause(by=who, at=now, reason=why)
            self._record_audit(now, who, "pause", name, why)
            return True

    def resume(self, name: str, who: str, why: str, now: float) -> bool:
        with self._lock:
            s = self._get(name)
            if s.pause is None:
                return False
            s.pause = None
            self._record_audit(now, who, "resume", name, why)
            return True

    def expire_pins(self, now: float) -> list[str]:
        expired = []
        with self._lock:
            for name, s in self._policies.items():
                if s.pin is not None and s.pin.until <= now:
                    pin, s.pin = s.pin, None
                    expired.append(name)
                    self._record_audit(
                        now, "controlplane", "pin_expired", name,
                        f"pin to {pin.replicas} by {pin.by} expired", replicas=pin.replicas,
                    )  # fmt: skip
        return expired

    # --- evaluations ---------------------------------------------------------------------------
    def record_error(self, name: str, stage: str, message: str, now: float) -> None:
        with self._lock:
            self._get(name).last_error = {"stage": stage, "message": message, "at": iso(now)}

    def record_evaluation(
        self,
        name: str,
        current: ReplicaState,
        decision: Decision,
        *,
        trigger: str,
        outcome: str,
        who: str,
        note: str,
        metric_errors: dict[str, str],
        now: float,
    ) -> dict[str, Any]:
        """Store one evaluation; ``outcome`` is hold, scaled, dry_run, declined or error."""
        with self._lock:
            s = self._get(name)
            s.current = current
            if decision.drift and s.autoscaled is not None:
                s.last_drift = {
                    "at": iso(now),
                    "observed": current.desired,
                    "autoscaled": s.autoscaled,
                    "restored_to": decision.desired,
                }
                self._record_audit(
                    now, "outside the control plane", "drift", name,
                    f"service ran {current.desired} instead of {s.autoscaled}",
                    observed=current.desired, autoscaled=s.autoscaled,
                )  # fmt: skip
            if s.pause is not None:
                s.autoscaled = current.desired  # hands off: adopt what people set meanwhile
            elif outcome == "scaled":
                s.autoscaled = decision.desired
                s.actions.append(
                    Action(at=now, previous=current.desired, desired=decision.desired, by=who)
                )
                self._record_audit(
                    now, who, f"scale_{decision.direction}", name, decision.reason,
                    previous=current.desired, desired=decision.desired, trigger=trigger,
                )  # fmt: skip
            elif outcome == "dry_run":
                s.autoscaled = None
                self._record_audit(
                    now, who, "dry_run", name, decision.reason,
                    previous=current.desired, desired=decision.desired, trigger=trigger,
                )  # fmt: skip
            elif outcome == "hold":
                s.autoscaled = None if s.policy.dry_run else decision.desired
            if outcome != "error" and not metric_errors:
                s.last_error = None
            if metric_errors:
                s.last_error = {
                    "stage": "metrics",
                    "message": "; ".join(f"{k}: {v}" for k, v in metric_errors.items()),
                    "at": iso(now),
                }
            entry = {
                "policy": name,
                "at": iso(now),
                "at_unix": now,
                "trigger": trigger,
                "current": current.desired,
                "running": len(current.started_at),
                "outcome": outcome,
                "note": note,
                "metric_errors": dict(metric_errors),
                **decision.to_dict(),
            }
            s.decisions.append(entry)
            s.last_decision = entry
            return entry

    def record_alert(self, alert: dict[str, Any], policies: list[str], now: float) -> None:
        with self._lock:
            item = {**alert, "received_at": iso(now), "policies": policies}
            for name in policies:
                self._get(name).alerts.append(item)
            self._record_audit(
                now, "alertmanager", f"alert_{alert['status']}", ",".join(policies) or "-",
                f"{alert['alertname']}: {alert.get('summary', '')}".rstrip(": "),
                labels=alert["labels"],
            )  # fmt: skip

    # --- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": 1,
                "policies": {
                    name: {
                        "autoscaled": s.autoscaled,
                        "actions": [
                            {"at": a.at, "previous": a.previous, "desired": a.desired, "by": a.by}
                            for a in s.actions
                        ],
                        "pin": None
                        if s.pin is None
                        else {
                            "replicas": s.pin.replicas,
                            "until": s.pin.until,
                            "by": s.pin.by,
                            "reason": s.pin.reason,
                        },
                        "pause": None
                        if s.pause is None
                        else {"by": s.pause.by, "at": s.pause.at, "reason": s.pause.reason},
                    }
                    for name, s in self._policies.items()
                },
                "audit": list(self._audit),
                "events": [e.to_state() for e in self._events.values() if e.source == "api"],
            }

    def restore(self, data: dict[str, Any]) -> None:
        """Load :meth:`to_dict` output; policies no longer configured are ignored."""
        with self._lock:
            for name, raw in (data.get("policies") or {}).items():
                s = self._policies.get(name)
                if s is None:
                    continue
                auto = raw.get("autoscaled")
                s.autoscaled = int(auto) if auto is not None else None
                s.actions.clear()
                for a in raw.get("actions") or []:
                    s.actions.append(
                        Action(float(a["at"]), int(a["previous"]), int(a["desired"]), str(a["by"]))
                    )
                pin = raw.get("pin")
                s.pin = (
                    None
                    if pin is None
                    else Pin(int(pin["replicas"]), float(pin["until"]), pin["by"], pin["reason"])
                )
                pause = raw.get("pause")
                s.pause = (
                    None
                    if pause is None
                    else Pause(pause["by"], float(pause["at"]), pause["reason"])
                )
            self._audit.clear()
            self._audit.extend(data.get("audit") or [])
            bounds = self.bounds()
            for raw_event in data.get("events") or []:
                event = ScheduledEvent.from_state(raw_event)
                known = tuple((p, n) for p, n in event.replicas if p in bounds)
                if known and event.name not in self._events:  # the file's events win
                    self._events[event.name] = dataclasses.replace(event, replicas=known)
