"""The benchmark's pure parts: no broker, no server, no timing assertions."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import pytest

from bench._load import CpuMeter, cpu_seconds, tree_cpu_seconds
from bench._report import Distribution, Phase, no_nan, percentile
from bench._server import bench_settings
from bench.ingress import (
    EVENT_TYPES,
    SECRET,
    Report,
    parse_levels,
    prepare_stripe_requests,
    render,
    server_cost_us,
)
from ingress.verify.stripe import verify


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0.1) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0


@pytest.mark.parametrize("q", [0, -1, 100.5])
def test_percentile_rejects_bad_input(q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], q)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_prepared_requests_verify_and_are_unique() -> None:
    requests = prepare_stripe_requests(2 * len(EVENT_TYPES), SECRET)
    now = time.time()
    events = [verify(r.body, r.headers, (SECRET,), now) for r in requests]
    assert len({e.event_id for e in events}) == len(requests)
    assert [e.event_type for e in events] == [*EVENT_TYPES, *EVENT_TYPES]
    assert all(r.headers["Content-Type"].startswith("application/json") for r in requests)


def test_prepared_requests_carry_the_given_timestamp() -> None:
    (request,) = prepare_stripe_requests(1, SECRET, timestamp=1_700_000_000)
    assert request.headers["Stripe-Signature"].startswith("t=1700000000,v1=")
    verify(request.body, request.headers, (SECRET,), 1_700_000_000)


def test_parse_levels() -> None:
    assert parse_levels("1,4,16,64") == [1, 4, 16, 64]
    assert parse_levels(" 8 ") == [8]
    for bad in ("", "0", "1,-4", "one"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_levels(bad)


def test_bench_settings_stay_on_loopback() -> None:
    settings = bench_settings("127.0.0.1:9092", SECRET)
    assert settings.public_host == "127.0.0.1"
    assert settings.public_port == 0
    assert settings.stripe_webhook_secrets == (SECRET,)


def _burn(cpu_s: float) -> None:
    """Spend ``cpu_s`` of this process's CPU time (no sleeping: the meters count CPU)."""
    began = time.process_time()
    while time.process_time() - began < cpu_s:
        pass


def test_cpu_seconds_count_what_this_process_spends() -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None
    _burn(0.1)
    after = cpu_seconds(os.getpid())
    assert after is not None
    assert after - before >= 0.05  # clock ticks are 10 ms
    assert cpu_seconds(2**22 + 1) is None  # no such process


def test_tree_cpu_counts_the_children_a_process_reaped() -> None:
    before = tree_cpu_seconds(os.getpid())
    assert before is not None
    burn = "import time\nb = time.process_time()\nwhile time.process_time() - b < 0.2: pass"
    subprocess.run([sys.executable, "-c", burn], check=True, timeout=60)
    after = tree_cpu_seconds(os.getpid())
    assert after is not None
    assert after - before >= 0.15


def test_cpu_meter_reports_this_process_and_the_rest_of_the_machine() -> None:
    meter = CpuMeter({"me": os.getpid(), "gone": None})
    meter.start()
    _burn(0.2)
    usage = meter.stop()
    assert set(usage) == {"me", "irq", "steal", "other"}
    assert 10 < usage["me"] <= 105  # most of one core while burning
    assert all(value >= 0 for value in usage.values())
    assert set(meter.waited) == {"me"}


def _result(target: str, concurrency: int, rps: float, server_cpu: float) -> Phase:
    return Phase(
        name=target,
        sent=int(rps * 6),
        errors=0,
        accepted_per_s=rps,
        http={"request": Distribution(int(rps * 5), 1.0, 2.0, 3.0)},
        concurrency=concurrency,
        cpu_percent={"server": server_cpu, "loadgen": 50.0},
    )


def test_report_ratio_render_and_json() -> None:
    report = Report(machine=_machine(), duration_s=5.0, warmup_s=1.0, kafka="none")
    report.closed += [
        _result("ingress", 1, 100.0, 10.0),
        _result("baseline", 1, 400.0, 20.0),
        _result("ingress", 16, 1000.0, 50.0),
        _result("baseline", 16, 2000.0, 40.0),
    ]
    paced = _result("ingress", 0, 500.0, 25.0)
    paced.concurrency, paced.target_rps = None, 500.0
    report.paced.append(paced)

    assert report.ratio == pytest.approx(0.5)
    assert server_cost_us(report.closed[2]) == pytest.approx(500.0)
    text = render(report)
    assert "ratio 0.50 (goal >= 0.5: met)" in text
    assert "p99 at 500 req/s 2.0 ms (goal <= 50 ms: met)" in text
    assert "cost ratio 0.40" in text

    # Every goals row is in the table, measured and judged.
    goals = report.goals()
    assert [(g.measured, g.met) for g in goals] == [("0.50", True), ("2.0 ms", True)]
    cells = [[c.strip() for c in line.split(" | ")] for line in text.splitlines() if " | " in line]
    for g in goals:
        assert [g.measure, g.measured, g.goal, "met"] in cells

    document = no_nan(report.as_json())
    assert document["summary"]["ratio"] == pytest.approx(0.5)
    assert [g["met"] for g in document["goals"]] == [True, True]
    json.dumps(document, allow_nan=False)


def test_report_without_answers_is_still_valid_json() -> None:
    report = Report(machine=_machine(), duration_s=5.0, warmup_s=1.0, kafka="none")
    empty = _result("ingress", 1, 0.0, 1.0)
    empty.http["request"] = Distribution(0, math.nan, math.nan, math.nan)
    report.closed.append(empty)
    assert math.isnan(report.ratio)
    json.dumps(no_nan(report.as_json()), allow_nan=False)
    text = render(report)
    assert "summary: no results" in text
    assert [g.met for g in report.goals()] == [None, None]
    assert text.count("| not measured") == 2


def _machine() -> dict[str, str]:
    return dict.fromkeys(["cpus", "cpu_model", "memory", "os", "python", "librdkafka"], "test")
