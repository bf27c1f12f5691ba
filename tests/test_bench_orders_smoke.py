"""``bench.orders``: its pure parts without services, then one tiny real run.

The run (marked ``integration``) points the bench at the session's broker and a fresh
database on the session's PostgreSQL through ``KAFKA_BOOTSTRAP_SERVERS`` /
``DATABASE_URL``, as an operator would point it at a throwaway cluster: real ``sluice
ingress`` and ``sluice worker`` processes, a few orders, no timing assertions.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections import Counter
from collections.abc import Callable

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from bench._inputs import (
    CREATED,
    INPUT_TOPIC,
    INTERNAL_TOKEN,
    WEBHOOK,
    created_headers,
    prepare_orders,
    raw_webhook_records,
)
from bench._load import Log
from bench._report import Distribution, Phase, no_nan
from bench.orders import SECRET, Report, _parser, latency_ratio, main, render, worker_app_id
from ingress.domain_events import DomainEventParser, parse_json
from ingress.verify.stripe import verify
from schemas.codec import make_codec
from streams.domain.normalise import normalise
from streams.domain.orders import step


def test_each_order_is_accepted_by_the_internal_api_and_paid_by_its_webhook() -> None:
    now = int(time.time())
    orders = prepare_orders(3, SECRET, timestamp=now)
    assert len({o.order_id for o in orders}) == 3
    codec, parser = make_codec(None), DomainEventParser()
    for order in orders:
        created = parser.parse(parse_json(order.created_body), correlation_id="c", now_ms=0)
        assert (created.topic, created.key) == ("orders", order.order_id)
        assert created.record["data"]["paymentProvider"] is None  # no Stripe call
        event = verify(order.webhook.body, order.webhook.headers, (SECRET,), now)
        assert event.event_type == "payment_intent.succeeded"

        # The join, fed what the ingress and the normaliser make of the two requests,
        # marks the order paid.
        opened = step(None, None, "orders", created.record, now_ms=1)
        assert opened.order is not None
        [raw] = raw_webhook_records([order.webhook], [0], codec, received_at_ms=now * 1000)
        [billing] = normalise(codec.decode(raw.value, topic=INPUT_TOPIC).record).events
        paid = step(opened.order, None, billing.topic, billing.record, now_ms=2)
        assert paid.order is not None
        assert paid.order.status == "PAID"
        assert [e.record["eventType"] for e in paid.emits] == ["order.paid"]
    assert created_headers()["X-Internal-Token"] == INTERNAL_TOKEN


def test_summary_pairs_each_order_with_its_rows() -> None:
    orders = prepare_orders(4, SECRET)
    a, b, c, d = (o.order_id for o in orders)
    log = Log(
        scheduled={a: 0.0, b: 1.0, c: 2.0, d: 3.0},
        created={a: 0.1, b: 1.1, c: 2.1},
        sent={a: 0.1, b: 1.1, c: 2.1},
        acked={a: 0.2, b: 1.2, c: 2.2},
        refused=Counter({WEBHOOK: 0, CREATED: 1}),
    )
    paid = {a: 0.5, b: 1.6}  # c never PAID; d was refused
    payments = {a: 0.4, b: 1.4, c: 2.3}
    phase = log.phase(
        "paced 1/s", [o.order_id for o in orders], {"order": paid, "payment": payments}
    )
    assert (phase.sent, phase.errors, phase.missing) == (4, 1, {"order": 1, "payment": 0})
    assert phase.refused == {WEBHOOK: 0, CREATED: 1}
    assert phase.latency["order"].count == 2
    assert phase.latency["order"].max_ms == pytest.approx(400.0)
    assert phase.latency["payment"].count == 3
    assert phase.done_per_s == pytest.approx(2 / 1.6)
    assert phase.drain_s == pytest.approx(1.6 - 2.2)
    assert latency_ratio(phase, "p50_ms") == pytest.approx(300.0 / 200.0)
    assert list(phase.http) == ["order.created", "webhook"]
    assert phase.http["order.created"].count == 3
    assert phase.http["webhook"].max_ms == pytest.approx(100.0)


def test_latency_ratio_is_nan_without_a_baseline() -> None:
    def ratio(order_ms: float, payment_ms: float) -> float:
        phase = _phase("paced 50/s", target=50.0)
        phase.latency["order"] = Distribution(1, order_ms, order_ms, order_ms)
        phase.latency["payment"] = Distribution(1, payment_ms, payment_ms, payment_ms)
        return latency_ratio(phase, "p50_ms")

    assert ratio(300.0, 150.0) == pytest.approx(2.0)
    assert math.isnan(ratio(300.0, 0.0))
    assert math.isnan(ratio(math.nan, 150.0))


def test_parser_defaults_finish_in_about_two_minutes() -> None:
    args = _parser().parse_args([])
    assert (args.rate, args.duration, args.burst, args.with_search) == (50.0, 60.0, 5000, False)


def _phase(name: str, *, not_paid: int = 0, target: float | None = None) -> Phase:
    return Phase(
        name=name,
        sent=100,
        errors=0,
        accepted_per_s=50.0,
        done_per_s=49.0,
        drain_s=0.2,
        http={
            "order.created": Distribution(100, 5.0, 9.0, 10.0),
            "webhook": Distribution(100, 4.0, 8.0, 9.0),
        },
        latency={
            "order": Distribution(100, 300.0, 600.0, 700.0),
            "payment": Distribution(100, 150.0, 400.0, 450.0),
        },
        missing={"order": not_paid, "payment": 0},
        target_rps=target,
        concurrency=None if target else 8,
        stages={"billing record -> order.paid record (join)": Distribution(100, 5.0, 9.0, 9.0)},
        cpu_percent={"worker": 60.0, "other": 1.0},
    )


def test_report_renders_and_is_valid_json() -> None:
    report = Report(machine=_machine(), kafka="test kafka", postgres="test postgres")
    report.worker_ready_s = 3.0
    report.phases = [_phase("paced 50/s", target=50.0), _phase("burst c=8")]
    text = render(report)
    assert "at 50 orders/s: order p50 300 ms / payment p50 150 ms = 2.00" in text
    assert "p99 600 ms / 400 ms = 1.50" in text
    assert "burst, 8 orders in flight: 49 orders PAID/s" in text
    assert "(join): p50 5.0 ms" in text
    assert not report.failed
    assert "FAILED" not in text
    document = no_nan(report.as_json())
    json.dumps(document, allow_nan=False)
    assert document["summary"]["p50_ratio"] == pytest.approx(2.0)
    assert document["phases"][0]["p99_ratio"] == pytest.approx(1.5)
    row = "orders at 50/s, webhook 200 -> order PAID in Postgres | p50 300 ms, p99 600 ms"
    assert f"{row} (x payments row: 2.00, 1.50) | p50 <= 60 ms, p99 <= 250 ms | NOT met" in text
    assert document["goals"][0]["met"] is False


def test_the_orders_goal_is_met_within_60_and_250_ms() -> None:
    report = Report(machine=_machine())
    paced = _phase("paced 50/s", target=50.0)
    paced.latency["order"] = Distribution(100, 55.0, 240.0, 300.0)
    report.phases = [paced]
    (goal,) = report.goals()
    assert (goal.measured.split(" (")[0], goal.met) == ("p50 55 ms, p99 240 ms", True)
    paced.latency["order"] = Distribution(100, 61.0, 240.0, 300.0)
    assert report.goals()[0].met is False
    (unmeasured,) = Report(machine=_machine()).goals()
    assert unmeasured.met is None
    assert "| not measured" in render(Report(machine=_machine()))


def test_an_order_never_paid_fails_the_run() -> None:
    report = Report(machine=_machine())
    report.phases = [_phase("paced 50/s", not_paid=1, target=50.0)]
    assert report.failed
    assert "FAILED" in render(report)
    json.dumps(no_nan(report.as_json()), allow_nan=False)


def _machine() -> dict[str, str]:
    return dict.fromkeys(["cpus", "cpu_model", "memory", "os", "python", "librdkafka"], "test")


@pytest.mark.integration
def test_a_tiny_run_pays_every_order_and_reports(
    catalog_topics: str,
    postgres_database_factory: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database_url = postgres_database_factory("bench_orders")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", catalog_topics)
    monkeypatch.setenv("DATABASE_URL", database_url)
    argv = ["--rate", "20", "--duration", "1", "--warmup", "0.5", "--burst", "20"]
    previous = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    try:
        status = main([*argv, "--burst-concurrency", "4", "--json"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    assert [p["name"] for p in report["phases"]] == ["paced 20/s", "burst c=4"]
    assert [p["sent"] for p in report["phases"]] == [20, 20]  # what was asked for
    for phase in report["phases"]:
        assert (phase["errors"], phase["missing"]) == (0, {"order": 0, "payment": 0})
        latency = phase["latency"]
        assert latency["order"]["count"] == latency["payment"]["count"] == phase["sent"]
        assert phase["done_per_s"] > 0
        assert phase["accepted_per_s"] > 0
    stages = report["phases"][0]["stages"]
    assert len(stages) == 4
    assert all(stage["count"] == 20 for stage in stages.values())  # every order, every hop
    for ratio in (report["summary"]["p50_ratio"], report["summary"]["p99_ratio"]):
        assert math.isfinite(ratio)
        assert ratio > 0
    # The goals row is there and measured (met or not: no timing assertions).
    [goal] = report["goals"]
    assert goal["measure"].startswith("orders at 20/s")
    assert goal["met"] in (True, False)
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM orders WHERE status = 'PAID'").fetchone()
    assert row == (1 + 10 + 20 + 20,)  # probe, warm-up, paced, burst
    # The worker's group and changelog topics are gone from the shared broker.
    topics = AdminClient({"bootstrap.servers": catalog_topics}).list_topics(timeout=10).topics
    assert [name for name in topics if worker_app_id("") in name] == []
