"""Policy files and the daemon's start-up configuration: a bad value is refused by name."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import daemon
from controlplane.config import ConfigError, fill_in_stack, hash_token, token_digest
from controlplane.policy import (
    DEFAULT_INTERVAL_S,
    DEFAULT_SCALE_DOWN_COOLDOWN_S,
    DEFAULT_SCALE_UP_WAIT_S,
    DEFAULT_UP_MAX_PERCENT,
    DEFAULT_WARMUP_S,
    PolicyError,
)
from controlplane.policy_file import parse_duration, parse_policies

EXAMPLE = Path(__file__).resolve().parents[2] / "controlplane" / "examples" / "policies.yml"

GOOD = """
policies:
  - name: chat
    service: tidedesk_chatnode
    driver: swarm
    min: 1
    max: 5
    checks:
      - name: conns
        query: sum(x)
        target: 100
"""


def test_example_file_parses_with_documented_defaults() -> None:
    policies = parse_policies(EXAMPLE.read_text())
    assert [p.name for p in policies] == ["chatnode", "routernode"]
    router = policies[1]
    assert router.driver == "nomad" and router.group == "router"
    assert router.interval_s == DEFAULT_INTERVAL_S == 15
    assert router.warmup_s == DEFAULT_WARMUP_S == 30
    assert router.scale_up_wait_s == DEFAULT_SCALE_UP_WAIT_S == 300
    assert router.scale_down_cooldown_s == DEFAULT_SCALE_DOWN_COOLDOWN_S == 600
    assert router.up_max_percent == DEFAULT_UP_MAX_PERCENT == 20
    assert router.down_max_step == 1 and not router.dry_run


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(30, 30.0), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("7d", 604800.0)],
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw, "x") == seconds


BAD = [
    ("driver: swarm", "driver: kubernetes", "policies[0].driver"),
    ("min: 1", "min: 9", "policies[0].min"),
    ("max: 5", "max: five", "policies[0].max"),
    ("target: 100", "target: -1", "policies[0].checks[0].target"),
    ("target: 100", "upper: 1", "policies[0].checks[0].lower"),
    ("target: 100", "upper: 1\n        lower: 2", "policies[0].checks[0].lower"),
    ("query: sum(x)", "for: 1m", "policies[0].checks[0].query"),
    ("min: 1", "min: 1\n    interval: soon", "policies[0].interval"),
    ("min: 1", "min: 1\n    colour: blue", "policies[0].colour"),
    ("min: 1", "min: 1\n    step: {up_max_percent: 0}", "policies[0].step.up_max_percent"),
    ("min: 1", "min: 1\n    dry_run: maybe", "policies[0].dry_run"),
    ("name: chat", "name: 'bad name!'", "policies[0].name"),
    ("min: 1", "min: 1\n    strategy: fast", "policies[0].strategy"),
    ("target: 100", "target: 100\n        strategy: hpa", "policies[0].checks[0].strategy"),
    ("min: 1", "min: 1\n    up_policy: {percent: 0}", "policies[0].up_policy.percent"),
    ("min: 1", "min: 1\n    up_policy: {period: 0s}", "policies[0].up_policy.period"),
    ("min: 1", "min: 1\n    up_policy: {replicas: 0}", "policies[0].up_policy.replicas"),
    ("min: 1", "min: 1\n    predictive: {check: nope}", "policies[0].predictive.check"),
    ("min: 1", "min: 1\n    predictive: {lookback: 2h}", "policies[0].predictive.lookback"),
    ("min: 1", "min: 1\n    predictive: {margin: 2}", "policies[0].predictive.margin"),
    ("min: 1", "min: 1\n    simulation: {trace_start: 2026-11-20}",
     "policies[0].simulation.trace_start"),
]

EVENT = """
events:
  - name: sale
    start: 2026-11-27T20:00:00+08:00
    end: 2026-11-27T21:00:00+08:00
    lead: 10m
    min_replicas: {chat: 4}
"""
BAD_EVENTS = [
    ("name: sale", "name: 'a sale'", "events[0].name"),
    ("start: 2026-11-27T20:00:00+08:00", "start: '2026-11-27 20:00'", "events[0].start"),
    ("start: 2026-11-27T20:00:00+08:00", "start: 2026-11-27", "events[0].start"),
    ("end: 2026-11-27T21:00:00+08:00", "end: 2026-11-27T19:00:00+08:00", "events[0].end"),
    ("end: 2026-11-27T21:00:00+08:00", "end: 2026-12-27T21:00:00+08:00", "events[0].end"),
    ("lead: 10m", "lead: soon", "events[0].lead"),
    ("{chat: 4}", "{chat: 9}", "events[0].min_replicas.chat"),
    ("{chat: 4}", "{router: 2}", "events[0].min_replicas.router"),
    ("{chat: 4}", "{}", "events[0].min_replicas"),
    ("    lead: 10m\n", "", "events[0].lead"),  # not an error: the default lead
]


@pytest.mark.parametrize(("old", "new", "field"), BAD, ids=[b[2] + ":" + b[1] for b in BAD])
def test_bad_policy_names_the_field(old: str, new: str, field: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policies(GOOD.replace(old, new))
    assert err.value.field == field
    assert str(err.value).startswith(field + ": ")


@pytest.mark.parametrize(("old", "new", "field"), BAD_EVENTS[:-1],
                         ids=[b[2] + ":" + b[1] for b in BAD_EVENTS[:-1]])  # fmt: skip
def test_bad_event_names_the_field(old: str, new: str, field: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policies(GOOD + EVENT.replace(old, new))
    assert err.value.field == field


def test_events_and_strategies_parse() -> None:
    text = GOOD.replace("min: 1", "min: 1\n    strategy: proportional\n    predictive: {}")
    (p,) = parse_policies(text + EVENT.replace("    lead: 10m\n", ""))
    (event,) = p.events
    assert event.start == 1_795_780_800.0 and event.end - event.start == 3600
    assert event.lead_s == 300 and event.floor_for("chat") == 4
    assert p.strategy == "proportional" and p.up_policy.limit(3) == 4 and p.up_policy.limit(9) == 9
    assert p.predictive is not None and p.predictive.check == "conns"
    assert p.predict_lead_s == 30 + 30 + 15  # start-up + warm-up + one interval
    black_friday = EXAMPLE.with_name("black_friday.yml")
    (bf,) = parse_policies(black_friday.read_text())
    assert bf.events[0].name == "black-friday-flash-sale" and bf.simulation.history_s == 7 * 86400


def test_token_secret_is_a_hash_or_a_long_token() -> None:
    digest, plain = token_digest(hash_token("t" * 30), "X")
    assert not plain and digest == hashlib.sha256(b"t" * 30).digest()
    assert token_digest("t" * 30, "X") == (digest, True)
    assert token_digest(hash_token("t" * 30).upper().replace("SHA256", "sha256"), "X")[0] == digest
    for bad, says in [("sha256:" + "g" * 64, "64 hex digits"), ("short", "at least 16")]:
        with pytest.raises(ConfigError, match=f"^X: .*{says}"):
            token_digest(bad, "X")


def test_duplicate_names_and_empty_file() -> None:
    body = GOOD.split("policies:\n")[1]
    with pytest.raises(PolicyError, match=r"policies\[1\]\.name: duplicate"):
        parse_policies("policies:\n" + body + body)
    with pytest.raises(PolicyError, match="policies: expected a non-empty list"):
        parse_policies("")
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policies("policies: [")


def run_daemon(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip


def test_help_works() -> None:
    done = run_daemon(["--help"], {})
    assert done.returncode == 0
    assert "tidedesk controlplane" in done.stdout and "--policies" in done.stdout
    assert daemon.main(["--help"]) == 0


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "p.yml"
    bad.write_text(GOOD.replace("max: 5", "max: 0"))
    token = {"TIDEDESK_CONTROLPLANE_TOKEN": "x" * 20}
    cases = [
        (["--policies", str(bad)], token, "policies[0].max"),
        (["--policies", str(tmp_path / "missing.yml")], token, "--policies"),
        ([], token, "--policies"),
    ]
    good = tmp_path / "good.yml"
    good.write_text(GOOD)
    cases += [
        (["--policies", str(good)], {}, "TIDEDESK_CONTROLPLANE_TOKEN"),
        (["--policies", str(good)], {"TIDEDESK_CONTROLPLANE_TOKEN": "short"},
         "TIDEDESK_CONTROLPLANE_TOKEN"),
        (["--policies", str(good), "--token-file", str(tmp_path / "nope")], {}, "--token-file"),
        (["--policies", str(good)], {"TIDEDESK_CONTROLPLANE_TOKEN": "sha256:abc"},
         "TIDEDESK_CONTROLPLANE_TOKEN: after 'sha256:' give the 64 hex digits"),
        (["--policies", str(good), "--listen", "8090"], token, "--listen"),
        (["--policies", str(good), "--prometheus", "localhost:9090"], token, "--prometheus"),
        (["--policies", str(good), "--nomad-addr", "nomad"], token, "--nomad-addr"),
    ]  # fmt: skip
    for args, env, field in cases:
        done = run_daemon(args, env)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and field in lines[0], (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_token_file_is_read(tmp_path: Path) -> None:
    """A Docker secret file works as the token source (seen by a start-up reaching --listen)."""
    good = tmp_path / "good.yml"
    good.write_text(GOOD)
    secret = tmp_path / "token"
    secret.write_text(hash_token("s" * 24) + "\n")
    done = run_daemon(
        ["--policies", str(good), "--token-file", str(secret), "--listen", "bad"], {}
    )
    assert done.returncode == 2 and "--listen" in done.stderr


def test_the_swarm_stack_policies_parse_and_catch_up_proportionally() -> None:
    """swarm/policies.yml is what `docker stack deploy` runs (the e2e test uses its own)."""
    shipped = Path(__file__).resolve().parents[2] / "swarm" / "policies.yml"
    policies = {p.name: p for p in parse_policies(shipped.read_text())}
    assert set(policies) == {"chatnode", "routernode"}
    assert policies["chatnode"].strategy == "proportional", \
        "chat nodes must catch up with a surprise flash sale within a minute or two"
    # Any stack name: the control plane fills in ${STACK} (issue 19).
    assert all(p.service == f"${{STACK}}_{p.name}" for p in policies.values())
    filled = fill_in_stack(tuple(policies.values()), "shop-7", shipped)
    assert {p.service for p in filled} == {"shop-7_chatnode", "shop-7_routernode"}
    with pytest.raises(ConfigError, match="TIDEDESK_STACK"):
        fill_in_stack(tuple(policies.values()), "", shipped)
    with pytest.raises(ConfigError, match="not a stack name"):
        fill_in_stack(tuple(policies.values()), "a b", shipped)


def test_tls_probe_reads_the_served_certificates_expiry(tmp_path: Path) -> None:
    """--tls-probe (issue 19): a real TLS server on loopback, its certificate's notAfter."""
    import datetime
    import socket
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from controlplane.telemetry import Telemetry
    from controlplane.tls_probe import probe_all

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    expires = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(expires - datetime.timedelta(days=90)).not_valid_after(expires)
            .sign(key, hashes.SHA256()))
    pem = tmp_path / "tls.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    telemetry = Telemetry()
    closed = socket.create_server(("127.0.0.1", 0))
    dead = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    probe_all([f"127.0.0.1:{port}", dead], telemetry)
    t.join(5)
    server.close()
    text = telemetry.render().decode()
    series = f'tidedesk_tls_cert_expiry_timestamp_seconds{{target="127.0.0.1:{port}"}}'
    line = next(x for x in text.splitlines() if x.startswith(series))
    assert float(line.split()[-1]) == expires.timestamp(), line
    assert f'tidedesk_tls_probe_success{{target="{dead}"}} 0.0' in text
    assert f'tidedesk_tls_probe_success{{target="127.0.0.1:{port}"}} 1.0' in text


def test_tls_probe_and_stack_options_leave_the_listen_address_alone(tmp_path: Path) -> None:
    """--tls-probe HOST:PORT once clobbered the --listen host (the daemon bound haproxy:8090)."""
    from controlplane.config import build_parser, load_settings

    good = tmp_path / "p.yml"
    good.write_text(GOOD)
    secret = tmp_path / "token"
    secret.write_text(hash_token("s" * 24) + "\n")
    args = build_parser().parse_args([
        "--policies", str(good), "--token-file", str(secret), "--listen", "0.0.0.0:8090",
        "--tls-probe=haproxy:8443", "--stack", "shop"])
    settings = load_settings(args, {})
    assert (settings.host, settings.port) == ("0.0.0.0", 8090)
    assert settings.tls_probes == ("haproxy:8443",)
    bad = build_parser().parse_args(["--policies", str(good), "--token-file", str(secret),
                                     "--tls-probe", "haproxy"])
    with pytest.raises(ConfigError, match="--tls-probe"):
        load_settings(bad, {})
