"""``bench.pipeline``'s pure parts: no broker, no database, no timing assertions."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

import bench._pipeline_race as race_module
from bench._pipeline_agents import quix_dedupe_normalise
from bench._pipeline_e2e import EndToEnd, PhaseResult
from bench._pipeline_infra import tree_cpu_seconds
from bench._pipeline_input import (
    EVENT_TYPE,
    INPUT_TOPIC,
    Distribution,
    SteadyRate,
    distribution,
    duplicate_plan,
    match_latencies,
    prepare_payment_webhooks,
    raw_webhook_records,
    stage_latencies,
    steady_rate,
)
from bench._pipeline_race import CONTENDERS, ContenderResult
from bench.pipeline import Report, _parser, render
from ingress.verify.stripe import verify
from schemas.codec import make_codec
from streams.domain.normalise import normalise

SECRET = "whsec_smoke"


def test_duplicate_plan_repeats_every_nth_position_from_earlier_events() -> None:
    plan = duplicate_plan(100, 10, seed=3)
    assert len(plan) == 100
    unique = max(plan) + 1
    assert unique == 90
    fresh = 0
    for position, index in enumerate(plan):
        if (position + 1) % 10 == 0:
            assert index < fresh  # a retry of something already sent
        else:
            assert index == fresh
            fresh += 1
    assert duplicate_plan(100, 10, seed=3) == plan
    assert duplicate_plan(5, 0) == [0, 1, 2, 3, 4]
    for bad in (1, -2):
        with pytest.raises(ValueError, match="every"):
            duplicate_plan(5, bad)


def test_prepared_webhooks_verify_and_each_pays_for_its_own_order() -> None:
    now = int(time.time())
    webhooks = prepare_payment_webhooks(5, SECRET, timestamp=now)
    assert len({w.payment_id for w in webhooks}) == 5
    assert len({w.event_id for w in webhooks}) == 5
    for webhook in webhooks:
        event = verify(webhook.body, webhook.headers, (SECRET,), now)
        assert (event.event_id, event.event_type) == (webhook.event_id, EVENT_TYPE)
        body = json.loads(webhook.body)
        assert body["data"]["object"]["id"] == webhook.payment_id


def test_raw_records_decode_like_the_ingress_wrote_them_and_normalise() -> None:
    codec = make_codec(None)
    webhooks = prepare_payment_webhooks(3, SECRET)
    plan = [0, 1, 0, 2]
    records = raw_webhook_records(webhooks, plan, codec, received_at_ms=1_700_000_000_000)
    decoded = [codec.decode(r.value, topic=INPUT_TOPIC).record for r in records]
    assert [r.key.decode() for r in records] == [webhooks[i].event_id for i in plan]
    assert [d["providerEventId"] for d in decoded] == [webhooks[i].event_id for i in plan]
    # The retry is the same webhook delivered again: same body, its own correlation id.
    assert decoded[2]["rawBody"] == decoded[0]["rawBody"]
    assert decoded[2]["eventId"] == decoded[0]["eventId"]
    assert decoded[2]["correlationId"] != decoded[0]["correlationId"]
    assert dict(records[0].headers)["event-id"] == decoded[0]["eventId"].encode()
    result = normalise(decoded[1])
    assert result.outcome == "mapped"
    (event,) = result.events
    assert event.topic == "billing.payment.succeeded"
    assert event.record["paymentId"] == webhooks[1].payment_id


def test_match_latencies_counts_missing_and_early_rows() -> None:
    acked = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    seen = {"a": 1.5, "b": 1.9, "c": 3.25, "x": 9.0}
    matched = match_latencies(acked, seen)
    assert matched.latencies_s == [0.0, 0.25, 0.5]
    assert matched.missing == 1
    assert matched.early == 1


def test_distribution_and_stages() -> None:
    dist = distribution([i / 1000 for i in range(100, 0, -1)])
    assert (dist.count, dist.p50_ms, dist.p99_ms, dist.max_ms) == pytest.approx(
        (100, 50.0, 99.0, 100.0)
    )
    empty = distribution([])
    assert empty.count == 0
    assert math.isnan(empty.p99_ms)
    stages = stage_latencies({"a": 1.0, "b": 1.0}, {"a": 1.2, "b": 0.999}, {"a": 1.5, "b": 1.1})
    first, second = stages.values()
    assert first.max_ms == pytest.approx(200.0)
    assert first.p50_ms == 0.0  # billed before the 200 by clock skew: counts as 0
    assert second.max_ms == pytest.approx(300.0)


def test_steady_rate_leaves_out_start_up_and_scales_outputs_to_inputs() -> None:
    times = [100.0 + i * 0.01 for i in range(101)]  # 101 outputs over 1 s
    rate = steady_rate(times, expected=101, inputs=202)
    assert rate.window_s == pytest.approx(1.0)
    assert rate.events_per_s == pytest.approx(200.0)
    with pytest.raises(ValueError, match="expected"):
        steady_rate(times[:50], expected=101, inputs=202)
    assert math.isnan(steady_rate([5.0, 5.0], expected=2, inputs=2).events_per_s)


class _State:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value


class _Context:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = INPUT_TOPIC, 0, offset


def test_quix_step_dedupes_and_writes_what_the_agent_writes() -> None:
    codec = make_codec(None)
    webhooks = prepare_payment_webhooks(1, SECRET)
    first, retry = raw_webhook_records(webhooks, [0, 0], codec, received_at_ms=0)
    offsets = iter(range(7, 100))
    step = quix_dedupe_normalise(codec, 60_000, lambda: _Context(next(offsets)))
    state = _State()
    (out,) = step(first.value, first.key, 0, first.headers, state)
    assert step(retry.value, retry.key, 0, retry.headers, state) == []
    ((key, (_first_seen_ms, position)),) = state.data.items()
    assert (key, position) == (f"stripe:{webhooks[0].event_id}", f"{INPUT_TOPIC}[0]@7")
    (expected,) = normalise(codec.decode(first.value, topic=INPUT_TOPIC).record).events
    assert out.key == expected.key.encode()
    assert codec.decode(out.value).record == expected.record
    assert dict(out.headers)["traceparent"] == dict(first.headers)["traceparent"]


def test_tree_cpu_of_this_process() -> None:
    used = tree_cpu_seconds(os.getpid())
    assert used is None or used >= 0


def test_parser_defaults_follow_the_issue() -> None:
    args = _parser().parse_args([])
    assert (args.rate, args.duration, args.events, args.duplicate_every) == (500.0, 20.0, 20000, 10)


def _phase(p99_ms: float) -> PhaseResult:
    dist = Distribution(100, p99_ms / 2, p99_ms, p99_ms)
    return PhaseResult(
        name="paced 500/s",
        sent=100,
        errors=0,
        ingress_rps=500.0,
        rows_per_s=495.0,
        drain_s=0.2,
        http=Distribution(100, 2.0, 5.0, 6.0),
        e2e=dist,
        missing=0,
        early=0,
        target_rps=500.0,
        cpu_percent={"worker": 50.0, "other": 30.0},
    )


def _contender(name: str, rate: float, cpu_us: float) -> ContenderResult:
    result = ContenderResult(name, CONTENDERS[name], 1000, 900)
    result.rate = SteadyRate(rate, 1.0, 900, 0.0, 1.0)
    result.cpu_us_per_event = cpu_us
    return result


def test_report_ratios_verdicts_and_json() -> None:
    report = Report(machine=_machine(), kafka="test kafka", postgres="test postgres")
    report.e2e = EndToEnd(worker_ready_s=2.0, phases=[_phase(400.0)])
    report.race = [
        _contender("bare", 10_000.0, 10.0),
        _contender("sluice", 2_500.0, 300.0),
        _contender("quix", 2_000.0, 330.0),
    ]
    report.race_events, report.race_unique = 1000, 900
    assert report.ratio("bare") == pytest.approx(0.25)
    assert report.ratio("quix") == pytest.approx(1.25)
    text = render(report)
    assert "Sluice / bare events/s = 0.25 (goal >= 0.2: met)" in text
    assert "Sluice / quix events/s = 1.25 (goal >= 1: met)" in text
    assert "p99 end to end at 500/s = 400 ms, 0 missing (goal <= 1 s: met)" in text
    assert "warning: paced 500/s shared the machine" in text
    json.dumps(report.as_json(), allow_nan=False)


def test_report_with_a_skipped_contender_and_a_slow_pipeline() -> None:
    report = Report(machine=_machine())
    report.e2e = EndToEnd(phases=[_phase(4000.0)])
    skipped = ContenderResult("quix", CONTENDERS["quix"], 10, 9, skipped="install it")
    report.race = [_contender("sluice", 100.0, 1000.0), skipped]
    text = render(report)
    assert "skipped: install it" in text
    assert "Sluice / quix events/s: not measured" in text
    assert "(goal <= 1 s: NOT met)" in text
    json.dumps(report.as_json(), allow_nan=False)


def _machine() -> dict[str, str]:
    keys = "cpus cpu_model memory os python librdkafka confluent-kafka faust-streaming"
    return dict.fromkeys([*keys.split(), "aiokafka", "quixstreams", "rocksdict"], "test")


def test_quix_comparison_is_skipped_with_an_install_hint_when_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(race_module, "quix_available", lambda: False)
    race = race_module.RaceInput(10, 9, {}, 0.0, [])
    result = race_module.run_contender(
        "quix",
        race,
        bootstrap="127.0.0.1:1",  # never contacted
        database_url="postgresql://unused",
        run_id="x",
        workdir=tmp_path,
        kafka_pid=None,
    )
    assert result.skipped == race_module.QUIX_INSTALL_HINT
    assert "uv pip install quixstreams" in result.skipped
