"""``bench.pipeline``'s pure parts: no broker, no database, no timing assertions."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

import bench._race as race_module
import bench.dedupe_memory as dedupe_module
from bench._inputs import (
    EVENT_TYPE,
    INPUT_TOPIC,
    duplicate_plan,
    prepare_payment_webhooks,
    raw_webhook_records,
)
from bench._race import CONTENDERS, ContenderResult, SteadyRate, quix_dedupe_normalise, steady_rate
from bench._report import Distribution, Phase, distribution, hop, match_latencies, no_nan
from bench._services import Service, Stack
from bench.dedupe_memory import DedupeMemory, RssSample, checkpoints, first_sample_for
from bench.dedupe_memory import main as dedupe_main
from bench.dedupe_memory import render as dedupe_render
from bench.pipeline import EndToEnd, Report, _parser, main, render
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
    acked, billed, seen = {"a": 1.0, "b": 1.0}, {"a": 1.2, "b": 0.999}, {"a": 1.5, "b": 1.1}
    first, second = hop(acked, billed), hop(billed, seen)
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
    # The agent writes the billing event and the webhook's outcome; so does the step.
    out, outcome = step(first.value, first.key, 0, first.headers, state)
    assert step(retry.value, retry.key, 0, retry.headers, state) == []
    ((key, (_first_seen_ms, position)),) = state.data.items()
    assert (key, position) == (f"stripe:{webhooks[0].event_id}", f"{INPUT_TOPIC}[0]@7")
    (expected,) = normalise(codec.decode(first.value, topic=INPUT_TOPIC).record).events
    assert out.key == expected.key.encode()
    assert codec.decode(out.value).record == expected.record
    assert dict(out.headers)["traceparent"] == dict(first.headers)["traceparent"]
    outcome_record = codec.decode(outcome.value).record
    assert (outcome_record["status"], outcome_record["providerEventId"]) == (
        "PROCESSED",
        webhooks[0].event_id,
    )


def test_parser_defaults_follow_the_issue() -> None:
    args = _parser().parse_args([])
    assert (args.rate, args.duration, args.events, args.duplicate_every) == (None, 60.0, 20000, 10)
    assert (args.workers, args.dedupe_ids, args.first_sample) == ((1,), 1_000_000, 100_000)
    assert _parser().parse_args(["--workers", "1,2", "--rate", "300"]).workers == (1, 2)
    for bad in ("0", "1,1", "two"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["--workers", bad])


def test_an_unmeasured_paced_rate_needs_the_burst(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--burst", "0"])
    assert "--burst 0 needs --rate" in capsys.readouterr().err


def _phase(p99_ms: float, *, name: str = "paced 500/s", missing: int = 0) -> Phase:
    return Phase(
        name=name,
        sent=500 * 60,
        errors=0,
        accepted_per_s=500.0,
        http={"webhook": Distribution(100, 2.0, 5.0, 6.0)},
        done_per_s=495.0,
        drain_s=0.2,
        latency={"row": Distribution(100, p99_ms / 2, p99_ms, p99_ms)},
        missing={"row": missing},
        target_rps=500.0,
        cpu_percent={"worker": 50.0, "other": 30.0},
        workers=1,
    )


def _burst(rows_per_s: float, workers: int) -> Phase:
    phase = _phase(3000.0, name=f"burst c=32 w{workers}")
    phase.target_rps, phase.concurrency, phase.workers = None, 32, workers
    phase.done_per_s, phase.cpu_percent = rows_per_s, {}
    return phase


def _alone(accepted_per_s: float) -> Phase:
    phase = _burst(math.nan, 0)
    phase.name, phase.accepted_per_s = "ingress alone c=32", accepted_per_s
    phase.latency, phase.missing = {}, {}
    return phase


def _end_to_end(p99_ms: float, missing: int = 0) -> EndToEnd:
    return EndToEnd(
        worker_ready_s=2.0,
        phases=[_alone(1000.0), _phase(p99_ms, missing=missing), _burst(850.0, 1)],
        ingress_alone_rps=1000.0,
    )


def _contender(name: str, rate: float, cpu_us: float) -> ContenderResult:
    result = ContenderResult(name, CONTENDERS[name], 1000, 900)
    result.rate = SteadyRate(rate, 1.0, 900, 0.0, 1.0)
    result.cpu_us_per_event = cpu_us
    return result


def _goal_line(text: str, measure: str) -> list[str]:
    """The cells of the goals table's row that starts with ``measure``."""
    (line,) = [line for line in text.splitlines() if line.startswith(measure)]
    return [cell.strip() for cell in line.split(" | ")]


def test_report_ratios_verdicts_and_json() -> None:
    report = Report(machine=_machine(), kafka="test kafka", postgres="test postgres")
    report.e2e = _end_to_end(400.0)
    report.race = [
        _contender("bare", 10_000.0, 10.0),
        _contender("sluice", 2_500.0, 300.0),
        _contender("quix", 2_000.0, 330.0),
    ]
    report.race_events, report.race_unique = 1000, 900
    report.domain_us_per_event = 200.0
    report.dedupe = _dedupe(rss_100k=200_000, rss_1m=210_000)
    assert report.ratio("bare") == pytest.approx(0.25)
    assert report.ratio("quix") == pytest.approx(1.25)
    assert report.domain_ratio("sluice") == pytest.approx(1.5)
    assert report.e2e.capacity_ratio(1) == pytest.approx(0.85)
    text = render(report)
    quix = "normalise agent events/s / Quix Streams, same records"
    assert _goal_line(text, quix) == [quix, "1.25", ">= 1", "met"]
    cpu = "normalise agent CPU per event / domain work alone"
    assert _goal_line(text, cpu) == [cpu, "1.50x (Quix: 1.65x)", "<= 2x", "met"]
    capacity = "end-to-end rows/s / ingress-alone accepted/s, burst, 1 worker"
    assert _goal_line(text, capacity) == [capacity, "0.85 (850 / 1,000)", ">= 0.8", "met"]
    paced = "end to end paced at 500/s (half the ingress-alone capacity) for 60 s, 200 -> row"
    assert _goal_line(text, paced) == [
        paced,
        "p50 200 ms, p99 400 ms, 0 lost",
        "p99 <= 1 s, 0 lost",
        "met",
    ]
    dedupe = "worker RSS after 1,000,000 distinct dedupe ids"
    cells = [
        dedupe,
        "100k: 195 MiB, 1M: 205 MiB, x1.05 (+11 B/id)",
        "flat: RSS(1M) / RSS(100k) <= 1.2",
        "met",
    ]
    assert _goal_line(text, dedupe) == cells
    assert "CPU per event / domain work alone: bare 0.05x, sluice 1.50x, quix 1.65x" in text
    assert "ingress alone c=32" in text
    assert "warning: paced 500/s shared the machine" in text
    document = no_nan(report.as_json())
    json.dumps(document, allow_nan=False)
    assert [goal["met"] for goal in document["goals"]] == [True] * 5
    assert document["summary"]["capacity_ratio"] == pytest.approx(0.85)


def test_report_with_a_skipped_contender_and_a_slow_pipeline() -> None:
    report = Report(machine=_machine(), rate_given=True)
    report.e2e = _end_to_end(4000.0, missing=3)
    report.e2e.phases[-1].done_per_s = 280.0
    report.e2e.phases.append(_burst(600.0, 2))
    skipped = ContenderResult("quix", CONTENDERS["quix"], 10, 9, skipped="install it")
    report.race = [_contender("sluice", 100.0, 1000.0), skipped]
    report.domain_us_per_event = 100.0
    report.dedupe = _dedupe(rss_100k=200_000, rss_1m=400_000)
    text = render(report)
    assert "skipped: install it" in text
    quix = "normalise agent events/s / Quix Streams, same records"
    assert _goal_line(text, quix)[1:] == [
        "skipped: Quix Streams not installed",
        ">= 1",
        "not measured",
    ]
    cpu = "normalise agent CPU per event / domain work alone"
    assert _goal_line(text, cpu)[1:] == ["10.00x", "<= 2x", "NOT met"]
    capacity = "end-to-end rows/s / ingress-alone accepted/s, burst"
    assert _goal_line(text, f"{capacity}, 1 worker")[1:] == [
        "0.28 (280 / 1,000)",
        ">= 0.8",
        "NOT met",
    ]
    two = _goal_line(text, f"{capacity}, 2 worker processes")
    assert two[1:] == ["0.60 (600 / 1,000)", ">= 0.8", "NOT met"]
    paced = _goal_line(text, "end to end paced at 500/s (--rate) for 60 s")
    assert paced[1:] == ["p50 2,000 ms, p99 4,000 ms, 3 lost", "p99 <= 1 s, 0 lost", "NOT met"]
    assert _goal_line(text, "worker RSS after")[-1] == "NOT met"
    assert "burst c=32 w2" in text
    assert report.failed is False
    json.dumps(no_nan(report.as_json()), allow_nan=False)


def test_an_empty_report_says_what_was_not_measured() -> None:
    text = render(Report(machine=_machine()))
    goals = text[text.index("goals:") :].splitlines()[3:]
    assert [line.rsplit("|", 1)[1].strip() for line in goals] == ["not measured"] * 4


# -- dedupe memory ------------------------------------------------------------------------


def _dedupe(*, rss_100k: int, rss_1m: int, ids: int = 1_000_000) -> DedupeMemory:
    result = DedupeMemory(ids, 100_000, produce_s=30.0)
    result.samples = [
        RssSample(100_000, 100_012, rss_100k, 90.0),
        RssSample(1_000_000, 1_000_000, rss_1m, 900.0),
    ]
    return result


def test_dedupe_checkpoints_start_at_the_first_sample_then_every_tenth() -> None:
    assert checkpoints(1_000_000, 100_000) == [k * 100_000 for k in range(1, 11)]
    assert checkpoints(1_000_000, 150_000) == [150_000, *(k * 100_000 for k in range(2, 11))]
    assert first_sample_for(1_000_000, 100_000) == 100_000
    assert first_sample_for(5_000, 100_000) == 500  # a small run still compares two points
    assert checkpoints(20, first_sample_for(20, 100_000)) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]


def test_dedupe_ratio_bytes_per_id_and_report() -> None:
    flat = _dedupe(rss_100k=200_000, rss_1m=210_000)
    assert flat.ratio == pytest.approx(1.05)
    assert flat.bytes_per_id == pytest.approx(10_000 * 1024 / (1_000_000 - 100_012))
    assert flat.goal().met is True
    grown = _dedupe(rss_100k=200_000, rss_1m=250_000)
    assert grown.goal().met is False
    failed = DedupeMemory(1_000_000, 100_000, error="the worker exited")
    assert failed.goal().met is None
    assert failed.goal().measured == "the worker exited"
    flat.machine = _machine()
    text = dedupe_render(flat)
    assert "   100,000    100,012   195 MiB   90.0 s" in text
    assert "flat: RSS(1M) / RSS(100k) <= 1.2 | met" in text
    json.dumps(no_nan(flat.as_json()), allow_nan=False)
    json.dumps(no_nan(failed.as_json()), allow_nan=False)


def test_dedupe_reads_rss_from_proc() -> None:
    rss = dedupe_module.status_kib(os.getpid(), "VmRSS")
    peak = dedupe_module.status_kib(os.getpid(), "VmHWM")
    assert rss is not None
    assert peak is not None
    assert 10 * 1024 < rss <= peak  # a Python process with these imports: over 10 MiB
    assert dedupe_module.status_kib(2**22 + 1, "VmRSS") is None  # no such process


def test_dedupe_parser_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    args = dedupe_module._parser().parse_args([])
    assert (args.dedupe_ids, args.first_sample) == (1_000_000, 100_000)
    assert args.dedupe_event == "payment_intent.created"  # unmapped: only the dedupe table
    with pytest.raises(SystemExit):
        dedupe_main(["--dedupe-ids", "1"])
    assert "need --dedupe-ids >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dedupe_main(["--dedupe-event", "charge.refunded"])
    assert "payment_intent.* type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dedupe-ids", "1"])
    assert "need --dedupe-ids 0 (skip) or >= 2" in capsys.readouterr().err


def test_an_unmapped_event_type_makes_no_billing_record() -> None:
    codec = make_codec(None)
    webhooks = prepare_payment_webhooks(1, SECRET, event_type="payment_intent.created")
    (record,) = raw_webhook_records(webhooks, [0], codec, received_at_ms=0)
    raw = codec.decode(record.value, topic=INPUT_TOPIC).record
    assert json.loads(raw["rawBody"])["type"] == "payment_intent.created"
    assert normalise(raw).outcome == "unmapped"


def _machine() -> dict[str, str]:
    keys = "cpus cpu_model memory os python librdkafka confluent-kafka faust-streaming"
    return dict.fromkeys([*keys.split(), "aiokafka", "quixstreams", "rocksdict"], "test")


def test_quix_comparison_is_skipped_with_an_install_hint_when_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(race_module, "quix_available", lambda: False)
    race = race_module.RaceInput(10, 9, {}, [])
    never_contacted = Stack(
        Service("127.0.0.1:1", "-"), Service("postgresql://unused", "-"), "x", tmp_path
    )
    result = race_module.run_contender("quix", race, never_contacted)
    assert result.skipped == race_module.QUIX_INSTALL_HINT
    assert "uv pip install quixstreams" in result.skipped
