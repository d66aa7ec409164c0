"""The pure half of ``tidedesk loadgen``: the plan and its checks, the ramp schedule, source
addresses, percentile maths and the report. Nothing here touches a socket or a clock; the
I/O half is :mod:`tidedesk.loadgen`."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tidedesk.settings import SettingsError

# Ports one source address may hold at once: the kernel's ephemeral range minus headroom for
# the sockets still in TIME_WAIT from the HTTP requests and for everything else on the machine.
PORT_HEADROOM = 0.7
# Loopback addresses a run may spread over (127.0.0.1 .. 127.0.0.254 all reach a loopback server).
MAX_SOURCE_ADDRESSES = 254


@dataclasses.dataclass(frozen=True)
class AgentLogin:
    email: str
    password: str
    totp_secret: str | None = None


@dataclasses.dataclass(frozen=True)
class LoadPlan:
    """What one run does. ``rate`` is messages per second per visitor once assigned; 0 means
    closed loop: each visitor keeps ``window`` messages in flight (sends the next on an ack)."""

    url: str
    visitors: int
    agents: tuple[AgentLogin, ...]
    ramp_up_s: float = 5.0
    hold_s: float = 10.0
    ramp_down_s: float = 2.0
    rate: float = 0.5
    window: int = 1
    body_chars: int = 40
    assign_timeout_s: float = 10.0
    drain_s: float = 5.0
    connect_timeout_s: float = 10.0
    source_addresses: tuple[str, ...] = ()

    @property
    def ws_base(self) -> str:
        parts = urlsplit(self.url)
        return ("wss://" if parts.scheme == "https" else "ws://") + parts.netloc

    @property
    def total_s(self) -> float:
        """The run's hard bound: nothing is left running after this many seconds."""
        return (self.ramp_up_s + self.hold_s + self.ramp_down_s + self.drain_s
                + self.connect_timeout_s)


def check_plan(plan: LoadPlan) -> LoadPlan:
    """Raise :class:`SettingsError` naming the flag to change; return the plan unchanged."""
    parts = urlsplit(plan.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"--url: expected http://host:port or https://host:port of a chat "
                            f"node or HAProxy, got {plan.url!r}")
    if not 1 <= plan.visitors <= 100_000:
        raise SettingsError("--visitors: must be between 1 and 100000")
    if len(plan.agents) > 10_000:
        raise SettingsError("--agents: at most 10000")
    for name in ("ramp_up_s", "hold_s", "ramp_down_s", "drain_s"):
        value = getattr(plan, name)
        if not 0 <= value <= 3600:
            flag = "--" + name.removesuffix("_s").replace("_", "-")
            raise SettingsError(f"{flag}: seconds between 0 and 3600, got {value}")
    if not 0 <= plan.rate <= 1000:
        raise SettingsError("--rate: messages per second per visitor, between 0 (closed loop) "
                            "and 1000")
    if not 1 <= plan.window <= 1000:
        raise SettingsError("--window: messages in flight per visitor, between 1 and 1000")
    if not 1 <= plan.body_chars <= 100_000:
        raise SettingsError("--body-chars: between 1 and 100000")
    if not 0.1 <= plan.assign_timeout_s <= 600:
        raise SettingsError("--assign-timeout: seconds between 0.1 and 600")
    for addr in plan.source_addresses:
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise SettingsError(f"--source-addresses: {addr!r} is not an IP address") from None
    return plan


def parse_agents_file(text: str, count: int) -> tuple[AgentLogin, ...]:
    """``email,password[,totp_secret]`` per line (``#`` comments and blank lines skipped);
    the first ``count`` logins."""
    logins: list[AgentLogin] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
            raise SettingsError(f"--agents-file: line {number} should be "
                                f"email,password[,totp_secret]")
        logins.append(AgentLogin(fields[0], fields[1], fields[2] if len(fields) == 3
                                 and fields[2] else None))
    if len(logins) < count:
        raise SettingsError(f"--agents {count}: the agents file lists only {len(logins)} "
                            f"agents; add lines or lower --agents")
    return tuple(logins[:count])


def start_offsets(n: int, ramp_s: float) -> list[float]:
    """When each of ``n`` clients starts, spread evenly over ``ramp_s`` (the first at 0)."""
    if n <= 1 or ramp_s <= 0:
        return [0.0] * n
    return [ramp_s * i / n for i in range(n)]


def stop_offsets(n: int, plan_ramp_up_s: float, hold_s: float, ramp_down_s: float
                 ) -> list[float]:
    """When each client stops: the ramp-down leaves in reverse start order, so the last to
    arrive is the first to go, and every client holds at least ``hold_s``."""
    begin = plan_ramp_up_s + hold_s
    downs = start_offsets(n, ramp_down_s)
    return [begin + downs[n - 1 - i] for i in range(n)]


def sources_needed(connections: int, port_range: tuple[int, int], host: str) -> int:
    """How many source addresses ``connections`` sockets to one server need (1 = the kernel's
    choice is fine). Only loopback servers can be reached from 127.0.0.x; for others, more
    than one address is an error the caller reports."""
    per_address = max(1, int((port_range[1] - port_range[0] + 1) * PORT_HEADROOM))
    return max(1, math.ceil(connections / per_address))


def loopback_sources(count: int) -> tuple[str, ...]:
    if count > MAX_SOURCE_ADDRESSES:
        raise SettingsError(f"--visitors: {count} source addresses would be needed, more than "
                            f"127.0.0.x offers; lower --visitors or run several load clients")
    return tuple(f"127.0.0.{i}" for i in range(1, count + 1))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's
    default); ``nan`` for no values."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def latency_summary(values_s: Sequence[float]) -> dict[str, float | int]:
    """count and p50/p90/p99/max in milliseconds."""
    ordered = sorted(values_s)
    out: dict[str, float | int] = {"count": len(ordered)}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        out[f"{name}_ms"] = round(percentile(ordered, q) * 1000, 3)
    out["max_ms"] = round(ordered[-1] * 1000, 3) if ordered else math.nan
    return out


@dataclasses.dataclass
class Tally:
    """What the I/O half counts while it runs (mutable, one per run)."""

    connects_ok: int = 0
    connects_failed: int = 0
    first_connect: float | None = None
    last_connect: float | None = None
    agents_ready: int = 0
    assigned: int = 0
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    duplicates: int = 0
    send_first: float | None = None
    send_last: float | None = None
    deliver_first: float | None = None
    deliver_last: float | None = None
    connect_latency_s: list[float] = dataclasses.field(default_factory=list)
    ack_latency_s: list[float] = dataclasses.field(default_factory=list)
    delivery_latency_s: list[float] = dataclasses.field(default_factory=list)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def connected(self, now: float, took_s: float) -> None:
        self.connects_ok += 1
        self.connect_latency_s.append(took_s)
        self.first_connect = now if self.first_connect is None else self.first_connect
        self.last_connect = now

    def sent_one(self, now: float) -> None:
        self.sent += 1
        self.send_first = now if self.send_first is None else self.send_first
        self.send_last = now

    def delivered_one(self, now: float, latency_s: float) -> None:
        self.delivered += 1
        self.delivery_latency_s.append(latency_s)
        self.deliver_first = now if self.deliver_first is None else self.deliver_first
        self.deliver_last = now


def _rate(count: int, first: float | None, last: float | None) -> float:
    if count == 0 or first is None or last is None:
        return 0.0
    return round(count / max(last - first, 1e-3), 1) if count > 1 else 0.0


def build_report(plan: LoadPlan, tally: Tally, *, elapsed_s: float, cpu_s: float
                 ) -> dict[str, Any]:
    """The report as plain data (what ``--json`` writes)."""
    window = None
    if tally.send_first is not None and tally.send_last is not None:
        window = max(tally.send_last - tally.send_first, 1e-3)
    # Delivered/s over the deliveries' own span: when the server falls behind, deliveries go
    # on after the last send, and dividing by the sending window would overstate the rate.
    delivered_per_s = _rate(tally.delivered, tally.deliver_first, tally.deliver_last)
    return {
        "url": plan.url,
        "visitors": plan.visitors,
        "agents": len(plan.agents),
        "phases_s": {"ramp_up": plan.ramp_up_s, "hold": plan.hold_s,
                     "ramp_down": plan.ramp_down_s},
        "offered_rate_per_visitor": plan.rate if plan.rate else f"closed loop, window "
                                                                 f"{plan.window}",
        "source_addresses": list(plan.source_addresses) or ["(kernel's choice)"],
        "connects": {"ok": tally.connects_ok, "failed": tally.connects_failed,
                     "per_s": _rate(tally.connects_ok, tally.first_connect, tally.last_connect),
                     "latency": latency_summary(tally.connect_latency_s)},
        "agents_ready": tally.agents_ready,
        "assigned": tally.assigned,
        "messages": {"sent": tally.sent, "acked": tally.acked, "delivered": tally.delivered,
                     "duplicates": tally.duplicates,
                     "sent_per_s": round(tally.sent / window, 1) if window else 0.0,
                     "delivered_per_s": delivered_per_s},
        "ack_latency": latency_summary(tally.ack_latency_s),
        "latency": latency_summary(tally.delivery_latency_s),
        "errors": dict(sorted(tally.errors.items())),
        "elapsed_s": round(elapsed_s, 3),
        "client_cpu_s": round(cpu_s, 3),
        "client_cpu_share": round(cpu_s / elapsed_s, 3) if elapsed_s > 0 else 0.0,
    }


def _lat(summary: Mapping[str, Any]) -> str:
    if not summary["count"]:
        return "no samples"
    return (f"p50 {summary['p50_ms']:.1f}  p90 {summary['p90_ms']:.1f}  "
            f"p99 {summary['p99_ms']:.1f}  max {summary['max_ms']:.1f} ms "
            f"({summary['count']} samples)")


def format_report(report: Mapping[str, Any]) -> str:
    c, m = report["connects"], report["messages"]
    errors = ", ".join(f"{k} {v}" for k, v in report["errors"].items()) or "none"
    return "\n".join([
        f"tidedesk loadgen → {report['url']}: {report['visitors']} visitors, "
        f"{report['agents']} agents, {report['elapsed_s']:.1f} s",
        f"  connects      {c['ok']} ok, {c['failed']} failed, {c['per_s']:.1f}/s; "
        f"{_lat(c['latency'])}",
        f"  assigned      {report['assigned']} visitors, {report['agents_ready']} agents ready",
        f"  messages      {m['sent']} sent, {m['acked']} acked, {m['delivered']} delivered "
        f"({m['sent_per_s']:.1f} sent/s, {m['delivered_per_s']:.1f} delivered/s, "
        f"{m['duplicates']} duplicates)",
        f"  ack latency   {_lat(report['ack_latency'])}",
        f"  e2e latency   {_lat(report['latency'])}  (visitor send → agent receives)",
        f"  errors        {errors}",
        f"  client CPU    {report['client_cpu_s']:.2f} s ({report['client_cpu_share']:.0%} of "
        f"one core)",
    ])


def progress_line(*, elapsed_s: float, total_s: float, phase: str, connected: int,
                  visitors: int, sent: int, delivered: int, errors: int, width: int = 24) -> str:
    """One terminal line: a bar of the run's time, the phase and the running counts."""
    share = min(1.0, elapsed_s / total_s) if total_s > 0 else 1.0
    filled = int(share * width)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {elapsed_s:5.1f}/{total_s:.0f}s "
            f"{phase:<9} visitors {connected}/{visitors}  sent {sent}  delivered {delivered}"
            f"  errors {errors}")


def phase_at(plan: LoadPlan, t: float) -> str:
    if t < plan.ramp_up_s:
        return "ramp-up"
    if t < plan.ramp_up_s + plan.hold_s:
        return "hold"
    if t < plan.ramp_up_s + plan.hold_s + plan.ramp_down_s:
        return "ramp-down"
    return "drain"
