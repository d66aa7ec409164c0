"""``tidedesk loadgen``: a short real run against an embedded server (the report's counts must
match what the server stored), its bad-argument errors, and the pure plan/report maths."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pyotp
import pytest

from tests.support.clients import add_agent, embedded
from tests.support.processes import settings_env
from tidedesk import cli, loadplan
from tidedesk.loadplan import AgentLogin, LoadPlan


async def stored_load_messages(runtime: object) -> list[tuple[str, int]]:
    """(client id, seq) of every message the load run stored, on every shard (not the
    opening messages that open each visitor's conversation: they are not measured)."""
    storage = runtime.storage  # type: ignore[attr-defined]

    def work() -> list[tuple[str, int]]:
        rows: list[tuple[str, int]] = []
        for shard in storage.shards:
            msg = shard["Message"]
            with shard.db.connection_context():
                rows += [(m.client_id, m.seq) for m in
                         msg.select().where(msg.client_id.startswith("lg"))
                         if not m.client_id.endswith("-open")]
        return rows

    return await storage.run(work)  # type: ignore[no-any-return]


def test_cli_run_report_matches_what_the_server_stored(tmp_path: Path) -> None:
    secret = pyotp.random_base32()

    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            add_agent(rt, "load1@shop.test", max_chats=5)
            add_agent(rt, "load2@shop.test", max_chats=5, totp_secret=secret)
            agents = tmp_path / "agents.csv"
            agents.write_text("# email,password,totp\nload1@shop.test,password1\n"
                              f"load2@shop.test,password1,{secret}\n", encoding="utf-8")
            out = tmp_path / "report.json"
            env = settings_env()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tidedesk.cli", "loadgen",
                "--url", f"http://127.0.0.1:{rt.port}", "--visitors", "8", "--agents", "2",
                "--agents-file", str(agents), "--ramp-up", "1", "--hold", "2",
                "--ramp-down", "0.5", "--rate", "2", "--json", str(out),
                # what loadgen does by itself when ports would run out
                "--source-addresses", "127.0.0.2,127.0.0.3",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, stderr.decode()
            # No terminal here: no progress bar, only the report.
            assert "\r" not in stderr.decode()
            assert "e2e latency" in stdout.decode()
            report = json.loads(out.read_text())
            stored = await stored_load_messages(rt)

        m = report["messages"]
        assert report["connects"]["ok"] == 8 and report["connects"]["failed"] == 0
        assert report["agents_ready"] == 2 and report["assigned"] == 8
        assert report["errors"] == {}, report["errors"]
        # 8 visitors x 2/s x at least the 2 s hold; every one acked, stored once, delivered.
        assert m["sent"] >= 8 * 2 * 2
        assert m["sent"] == m["acked"] == m["delivered"] == len(stored)
        assert len({client_id for client_id, _ in stored}) == len(stored)
        assert m["duplicates"] == 0
        lat = report["latency"]
        assert lat["count"] == m["delivered"]
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"] < 5000
        assert report["client_cpu_s"] > 0
        assert report["source_addresses"] == ["127.0.0.2", "127.0.0.3"]

    asyncio.run(scenario())


@pytest.mark.parametrize(("args", "says"), [
    (["--visitors", "0"], "--visitors"),
    (["--rate", "-1"], "--rate"),
    (["--hold", "9999"], "--hold"),
    (["--url", "ws://x:1"], "--url"),
    (["--agents", "2"], "--agents-file"),
    (["--agents", "1", "--agents-file", "/nonexistent/agents.csv"], "cannot read"),
    (["--source-addresses", "127.0.0.1,nope"], "--source-addresses"),
    (["--window", "0", "--rate", "0"], "--window"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_arguments_name_the_flag(args: list[str], says: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["loadgen", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_agents_file_lines_are_checked(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agents.csv"
    path.write_text("a@b.test,pw\njust-an-email\n", encoding="utf-8")
    assert cli.main(["loadgen", "--agents", "2", "--agents-file", str(path)]) == 2
    assert "line 2" in capsys.readouterr().err
    path.write_text("a@b.test,pw\n", encoding="utf-8")
    assert cli.main(["loadgen", "--agents", "2", "--agents-file", str(path)]) == 2
    assert "lists only 1" in capsys.readouterr().err


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 50, math.nan),
    ([7.0], 99, 7.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
    ([float(i) for i in range(1, 101)], 90, 90.1),
    ([float(i) for i in range(1, 101)], 100, 100.0),
    ([0.0, 10.0], 99, 9.9),
])
def test_percentile_interpolates_between_ranks(values: list[float], q: float,
                                               expected: float) -> None:
    got = loadplan.percentile(values, q)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_ramp_schedule_spreads_starts_and_stops_last_in_first_out() -> None:
    assert loadplan.start_offsets(4, 2.0) == [0.0, 0.5, 1.0, 1.5]
    assert loadplan.start_offsets(3, 0) == [0.0, 0.0, 0.0]
    stops = loadplan.stop_offsets(4, 2.0, 10.0, 1.0)
    assert stops == [12.75, 12.5, 12.25, 12.0]
    # Every visitor holds at least the hold time.
    starts = loadplan.start_offsets(4, 2.0)
    assert all(stop - start >= 10.0 for start, stop in zip(starts, stops, strict=True))


def test_source_addresses_only_when_ports_would_run_out() -> None:
    ports = (32768, 60999)  # 28 232 ports, 70% usable per address
    assert loadplan.sources_needed(2 * 10_000, ports, "127.0.0.1") == 2
    assert loadplan.sources_needed(2 * 5_000, ports, "127.0.0.1") == 1
    assert loadplan.loopback_sources(3) == ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    with pytest.raises(loadplan.SettingsError, match="--visitors"):
        loadplan.loopback_sources(300)
    assert loadplan.is_loopback("127.0.0.1") and loadplan.is_loopback("localhost")
    assert not loadplan.is_loopback("10.0.0.5")


def test_report_counts_rates_and_text() -> None:
    plan = LoadPlan(url="http://127.0.0.1:1", visitors=2,
                    agents=(AgentLogin("a@b.test", "pw"),))
    tally = loadplan.Tally()
    tally.connected(10.0, 0.01)
    tally.connected(11.0, 0.03)
    for t in (20.0, 21.0, 22.0):
        tally.sent_one(t)
    tally.acked = 3
    tally.delivered_one(30.0, 0.010)  # the server fell behind: deliveries after the sends
    tally.delivered_one(34.0, 0.020)
    tally.error("rate_limited")
    report = loadplan.build_report(plan, tally, elapsed_s=4.0, cpu_s=1.0)
    assert report["connects"]["per_s"] == 2.0
    assert report["messages"]["sent_per_s"] == 1.5
    assert report["messages"]["delivered_per_s"] == 0.5  # over the deliveries' 4 s span
    assert report["latency"]["p50_ms"] == 15.0 and report["latency"]["max_ms"] == 20.0
    assert report["client_cpu_share"] == 0.25
    text = loadplan.format_report(report)
    assert "rate_limited 1" in text and "3 sent, 3 acked, 2 delivered" in text
    line = loadplan.progress_line(elapsed_s=5, total_s=10, phase="hold", connected=1,
                                  visitors=2, sent=3, delivered=2, errors=0, width=10)
    assert line.startswith("[#####.....]") and "visitors 1/2" in line
