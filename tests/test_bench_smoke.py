"""The benchmark's pure parts: no broker, no server, no timing assertions."""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import pytest

from bench._load import (
    EVENT_TYPES,
    PhaseResult,
    cpu_seconds,
    percentile,
    prepare_stripe_requests,
)
from bench._server import bench_settings
from bench.ingress import SECRET, Report, parse_levels, render, server_cost_us
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


def test_cpu_seconds_of_this_process() -> None:
    used = cpu_seconds(os.getpid())
    assert used is None or used >= 0


def _result(target: str, concurrency: int, rps: float, server_cpu: float) -> PhaseResult:
    return PhaseResult(
        target=target,
        mode="closed",
        concurrency=concurrency,
        target_rps=None,
        duration_s=5.0,
        requests=int(rps * 5),
        errors=0,
        rps=rps,
        p50_ms=1.0,
        p99_ms=2.0,
        max_ms=3.0,
        cpu_percent={"server": server_cpu, "loadgen": 50.0},
    )


def test_report_ratio_render_and_json() -> None:
    report = Report(machine=_machine(), duration_s=5.0, warmup_s=1.0)
    report.closed += [
        _result("ingress", 1, 100.0, 10.0),
        _result("baseline", 1, 400.0, 20.0),
        _result("ingress", 16, 1000.0, 50.0),
        _result("baseline", 16, 2000.0, 40.0),
    ]
    paced = _result("ingress", 0, 500.0, 25.0)
    paced.mode, paced.concurrency, paced.target_rps = "paced", None, 500.0
    report.paced.append(paced)

    assert report.ratio == pytest.approx(0.5)
    assert server_cost_us(report.closed[2]) == pytest.approx(500.0)
    text = render(report)
    assert "ratio 0.50 (goal >= 0.5: met)" in text
    assert "p99 at 500 req/s 2.0 ms (goal <= 50 ms: met)" in text
    assert "cost ratio 0.40" in text

    document = report.as_json()
    assert document["summary"]["ratio"] == pytest.approx(0.5)
    json.dumps(document, allow_nan=False)


def test_report_without_answers_is_still_valid_json() -> None:
    report = Report(machine=_machine(), duration_s=5.0, warmup_s=1.0)
    empty = _result("ingress", 1, 0.0, 1.0)
    empty.p50_ms = empty.p99_ms = empty.max_ms = math.nan
    report.closed.append(empty)
    assert math.isnan(report.ratio)
    json.dumps(report.as_json(), allow_nan=False)
    assert "summary: no results" in render(report)


def _machine() -> dict[str, str]:
    return {
        "cpus": "2",
        "cpu_model": "test CPU",
        "memory": "1 GiB",
        "os": "Linux",
        "python": "3.11",
        "aiohttp": "3",
        "librdkafka": "2",
        "kafka": "none",
    }
