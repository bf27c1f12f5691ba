"""One trace from a webhook to its Postgres write (issue 14).

The ingress runs in-process (the session's) with an ``InMemorySpanExporter`` on the
process's tracer provider; the worker is a real `sluice worker` process whose spans go,
by the standard variable ``OTEL_TRACES_EXPORTER=console``, to its stdout as one JSON
object per line (its log lines are JSON objects too; spans are the ones with a
``context``), which the test reads from the worker's log file. Plus the no-exporter
default and the exporter names refused at start-up.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from base.errors import ConfigError
from base.tracing import configure_tracing, outgoing_traceparent
from tests.fixtures.ingress import STRIPE_SECRET
from tests.fixtures.kafka import header_map, read_topic
from tests.fixtures.worker import Pipeline
from tests.payloads.stripe import signed_stripe_request, stripe_event

pytestmark = pytest.mark.integration

PIPELINE_ENV = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture(scope="module")
def ingress_spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def worker_spans(pipeline: Pipeline) -> list[dict[str, Any]]:
    """The spans the worker exported so far (its log file holds its stdout and stderr)."""
    spans = []
    for line in pipeline.worker.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"context"' in line:
            with_context = json.loads(line)
            if "context" in with_context:
                spans.append(with_context)
    return spans


def hex_id(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


async def test_one_trace_from_a_webhook_to_its_postgres_write(
    pipeline: Pipeline, ingress_spans: InMemorySpanExporter
) -> None:
    ingress = pipeline.ingress
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:14]}")
    body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))
    headers["traceparent"] = f"00-{trace_id}-{caller_span}-01"
    async with ingress.http.post(
        f"{ingress.public}/v1/webhooks/stripe", data=body, headers=headers
    ) as response:
        assert response.status == 200

    # The ingress's span: a server span, child of the caller's.
    (server,) = [
        span
        for span in ingress_spans.get_finished_spans()
        if span.context is not None and format(span.context.trace_id, "032x") == trace_id
    ]
    assert server.name == "POST webhook.stripe"
    assert server.kind == trace.SpanKind.SERVER
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == caller_span
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    server_span = format(server.context.span_id, "016x")

    # The record carries the server span, so the worker continues from it.
    (record,) = read_topic(ingress.bootstrap, "webhooks.stripe", key=event["id"])
    assert header_map(record)["traceparent"] == f"00-{trace_id}-{server_span}-01"

    await pipeline.wait_for(
        "the webhook projected",
        lambda: (
            pipeline.scalar("SELECT status FROM webhook_events WHERE event_id = %s", event["id"])
            == "PROCESSED"
        ),
    )

    def of_trace() -> list[dict[str, Any]]:
        wanted = hex_id(int(trace_id, 16), 32)
        return [span for span in worker_spans(pipeline) if span["context"]["trace_id"] == wanted]

    def written() -> bool:
        return any(span["name"] == "postgres record_webhooks" for span in of_trace())

    await pipeline.wait_for("the worker's Postgres write span", written, timeout_s=60)
    spans = {span["context"]["span_id"]: span for span in of_trace()}
    (write,) = [span for span in spans.values() if span["name"] == "postgres record_webhooks"]
    assert write["kind"] == "SpanKind.CLIENT"
    assert write["attributes"]["sluice.sink"] == "postgres"
    # Up the chain: the Postgres write (project_webhooks), its processing of the webhook's
    # outcome, the normalise agent's processing of the raw webhook (which wrote the
    # outcome), and the ingress's server span (exported by the other process).
    chain, span = [], write
    while span["parent_id"] in spans:
        span = spans[span["parent_id"]]
        chain.append(span["name"])
    assert chain == ["webhooks.outcomes process", "webhooks.stripe process"]
    assert span["kind"] == "SpanKind.CONSUMER"
    assert span["parent_id"] == hex_id(int(server_span, 16), 16)


async def test_a_request_without_traceparent_starts_a_trace(
    pipeline: Pipeline, ingress_spans: InMemorySpanExporter
) -> None:
    ingress = pipeline.ingress
    event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:14]}")
    body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))
    ingress_spans.clear()
    async with ingress.http.post(
        f"{ingress.public}/v1/webhooks/stripe", data=body, headers=headers
    ) as response:
        assert response.status == 200
    (server,) = [s for s in ingress_spans.get_finished_spans() if s.name == "POST webhook.stripe"]
    assert server.parent is None
    assert server.context is not None
    ids = (format(server.context.trace_id, "032x"), format(server.context.span_id, "016x"))
    (record,) = read_topic(ingress.bootstrap, "webhooks.stripe", key=event["id"])
    # Sampled; the SDK may also set W3C's "random trace id" flag.
    assert header_map(record)["traceparent"][:-2] == f"00-{ids[0]}-{ids[1]}-"


def test_export_is_off_unless_the_standard_variable_names_an_exporter() -> None:
    # No exporter configured: spans are made (ids for the logs), none is exported.
    provider = configure_tracing("test", environ={})
    assert provider._active_span_processor._span_processors == ()
    none = configure_tracing("test", environ={"OTEL_TRACES_EXPORTER": "none"})
    assert none._active_span_processor._span_processors == ()
    both = configure_tracing(
        "test",
        environ={"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_SERVICE_NAME": "x"},
    )
    assert len(both._active_span_processor._span_processors) == 2
    assert both.resource.attributes["service.name"] == "x"
    for processor in both._active_span_processor._span_processors:
        processor.shutdown()
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER: zipkin"):
        configure_tracing("test", environ={"OTEL_TRACES_EXPORTER": "zipkin"})


def test_outgoing_traceparent_keeps_a_records_own_trace_in_a_batch() -> None:
    tracer = TracerProvider().get_tracer("test")
    mine, other = f"00-{'a' * 32}-{'b' * 16}-01", f"00-{'c' * 32}-{'d' * 16}-01"
    assert outgoing_traceparent(mine) == mine  # no current span: unchanged
    parent = trace.set_span_in_context(
        trace.NonRecordingSpan(
            trace.SpanContext(int("a" * 32, 16), int("b" * 16, 16), True, trace.TraceFlags(1))
        )
    )
    with tracer.start_as_current_span("process", context=parent) as span:
        current = format(span.get_span_context().span_id, "016x")
        assert outgoing_traceparent(mine) == f"00-{'a' * 32}-{current}-01"
        assert outgoing_traceparent(other) == other  # another record of the batch
        assert outgoing_traceparent(None) == f"00-{'a' * 32}-{current}-01"
