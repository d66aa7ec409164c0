"""`tidedesk simulate` on the two shipped traces, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.simulate import SimulationError, main, parse_trace

EXAMPLES = Path(__file__).resolve().parents[2] / "controlplane" / "examples"
POLICY = EXAMPLES / "policies.yml"


@pytest.mark.parametrize("trace", ["diurnal_flash_sale", "noisy_steady"])
def test_simulate_example_traces(
    trace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    args = ["--policy", str(POLICY), "--trace", str(EXAMPLES / "traces" / f"{trace}.csv")]
    assert main([*args, "--json", str(out), "--plot", str(png)]) == 0
    figures = json.loads(out.read_text())
    for key in ("replica_hours", "static_peak_replica_hours", "slo_minutes", "actions"):
        assert key in figures
    assert figures["replica_hours"] < figures["static_peak_replica_hours"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "replica-hours" in capsys.readouterr().out
    if trace == "noisy_steady":
        # noise inside the dead band and single-sample spikes/dips never move the count
        assert figures["actions"] == 0
    else:
        # the flash sale is followed up and the evening is scaled back down
        assert figures["actions"] >= 10
        assert figures["slo_minutes"] < 30


def test_options_override_the_policy(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    trace = str(EXAMPLES / "traces" / "noisy_steady.csv")
    assert main(["--policy", str(POLICY), "--trace", trace, "--capacity", "60",
                 "--startup-delay", "1m", "--json", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["static_replicas"] == 15


def test_bad_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("time,value\n0,1\n")
    assert main(["--policy", str(POLICY), "--trace", str(trace)]) == 2
    assert "header must be 't,load'" in capsys.readouterr().err
    assert main(["--policy", str(POLICY), "--trace", str(trace), "--name", "nope"]) == 2
    assert main(["--help"]) == 0
    with pytest.raises(SimulationError, match="line 3: t must increase"):
        parse_trace("t,load\n5,1\n5,2\n")
    with pytest.raises(SimulationError, match="line 2: t and load must be numbers"):
        parse_trace("t,load\nx,1\n")


def test_threshold_check_sees_load_per_ready_replica(tmp_path: Path) -> None:
    policy = tmp_path / "p.yml"
    policy.write_text(
        "policies:\n  - name: cpu\n    service: s\n    driver: swarm\n    min: 1\n    max: 10\n"
        "    scale_up_wait: 1m\n    scale_down_cooldown: 2m\n    scale_down_stabilization: 2m\n"
        "    checks:\n      - {name: cpu, query: q, upper: 0.7, lower: 0.3, for: 30s}\n"
        "    simulation: {capacity_per_replica: 1.0, startup_delay: 20s}\n"
    )
    trace = tmp_path / "t.csv"
    rows = [f"{t},{2.0 if 600 <= t < 3000 else 0.5}" for t in range(0, 3600 * 2, 60)]
    trace.write_text("t,load\n" + "\n".join(rows) + "\n")
    out = tmp_path / "o.json"
    assert main(["--policy", str(policy), "--trace", str(trace), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    # 2.0 load at 0.7 per replica needs 3 replicas; it grows there and shrinks back afterwards
    assert figures["max_replicas"] >= 3 and figures["actions"] >= 4


BLACK_FRIDAY = EXAMPLES / "black_friday.yml"
BLACK_FRIDAY_TRACE = EXAMPLES / "traces" / "black_friday.csv"


def test_compare_on_the_black_friday_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The acceptance test of issue 9, on the shipped trace (7 days of history, then the day)."""
    out, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    assert main(["--policy", str(BLACK_FRIDAY), "--trace", str(BLACK_FRIDAY_TRACE),
                 "--compare", "step,proportional,scheduled,predictive",
                 "--json", str(out), "--plot", str(png)]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert table.startswith("| strategy | replica-hours")
    rows = {r["policy"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["step", "proportional", "scheduled", "predictive"]
    day_minutes = 24 * 60
    assert all(r["duration_hours"] == 24 for r in rows.values())  # history is not simulated
    step = rows["step"]["slo_minutes"]
    for name in ("proportional", "scheduled", "predictive"):
        assert rows[name]["slo_minutes"] < step, (name, rows[name], step)
    best = min(("proportional", "scheduled", "predictive"), key=lambda n: rows[n]["slo_minutes"])
    b = rows[best]
    assert b["slo_minutes"] <= 0.01 * day_minutes, b
    assert b["replica_hours"] <= 0.35 * b["static_peak_replica_hours"], b
    assert all(r["flaps"] <= 1 for r in rows.values()), rows
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_what_it_cannot_do(capsys: pytest.CaptureFixture[str]) -> None:
    trace = str(EXAMPLES / "traces" / "noisy_steady.csv")
    assert main(["--policy", str(POLICY), "--trace", trace, "--compare", "step,scheduled"]) == 2
    assert "no events for policy 'chatnode'" in capsys.readouterr().err
    assert main(["--policy", str(POLICY), "--trace", trace, "--compare", "step,magic"]) == 2
    assert "unknown strategy 'magic'" in capsys.readouterr().err
