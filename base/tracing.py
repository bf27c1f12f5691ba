"""OpenTelemetry traces: one trace from the HTTP request, through Kafka, to the sinks.

The W3C ``traceparent`` header carries the trace: the ingress starts a server span from
the caller's header (or a new trace), every record it publishes carries that span's
``traceparent``, the worker continues it for each record it processes
(:func:`continue_trace`), and each call to a sink is a client span under it
(``base.sinks``). Records a worker writes carry the span that wrote them, when it is of
the same trace as the record that caused them (``schemas.headers``).

Export is off by default. :func:`configure_tracing` (called by ``sluice ingress`` and
``sluice worker``) reads the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``,
``console``, a comma-separated list, or ``none``; unset: none),
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and the other
``OTEL_EXPORTER_OTLP_*`` (OTLP over HTTP/protobuf), ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_BSP_*``. Unlike the
OpenTelemetry distro, an unset ``OTEL_TRACES_EXPORTER`` means no exporter (nothing is sent
anywhere unless asked for); the provider is installed all the same, so trace ids exist
for the logs. Without a provider (tests, tools) the API's no-op tracer still carries the
caller's trace context through, so ids never break.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from base.errors import ConfigError

__all__ = [
    "EXPORTERS",
    "configure_tracing",
    "continue_trace",
    "current_trace_ids",
    "outgoing_traceparent",
    "tracer",
]

EXPORTERS = ("otlp", "console", "none")
_PROPAGATOR = TraceContextTextMapPropagator()


def tracer() -> trace.Tracer:
    """Sluice's tracer (the global provider's, looked up on each use so a provider set
    later, by a test say, is the one used)."""
    return trace.get_tracer("sluice")


def configure_tracing(service: str, environ: Mapping[str, str] | None = None) -> TracerProvider:
    """Install the process's tracer provider, exporting to what ``OTEL_TRACES_EXPORTER``
    names (nothing when unset or ``none``). Called once, by an entry point, before
    serving. Installed even without an exporter, so every request and record has trace
    ids in the log lines (``base.logs``) and in the ``traceparent`` it passes on.

    :raises ConfigError: an exporter name this build does not know.
    """
    env = os.environ if environ is None else environ
    names = [
        name.strip().lower()
        for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    ]
    unknown = sorted(set(names) - set(EXPORTERS))
    if unknown:
        raise ConfigError(
            f"malformed setting OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not one of "
            f"{', '.join(EXPORTERS)}"
        )
    attributes = {SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or f"sluice-{service}"}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name != "none":
            provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        # One compact JSON object per span on stdout (the logs are on stderr).
        return ConsoleSpanExporter(out=sys.stdout, formatter=_span_line)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_* itself


def _span_line(span: ReadableSpan) -> str:
    line: str = span.to_json(indent=None)
    return line + "\n"


def _context_of(traceparent: str | None) -> otel_context.Context:
    if not traceparent:
        return otel_context.Context()
    return _PROPAGATOR.extract({"traceparent": traceparent}, context=otel_context.Context())


def _span_context_of(traceparent: str | None) -> SpanContext:
    return trace.get_current_span(_context_of(traceparent)).get_span_context()


@contextlib.contextmanager
def continue_trace(
    name: str,
    traceparent: str | None,
    *,
    kind: SpanKind = SpanKind.CONSUMER,
    attributes: Mapping[str, str | int] | None = None,
    links: Sequence[str | None] = (),
) -> Iterator[trace.Span]:
    """A current span named ``name``, child of ``traceparent`` (a new trace when None or
    malformed), linked to the ``links`` traceparents (the other records of a batch)."""
    span_links = [
        Link(linked)
        for linked in (_span_context_of(given) for given in links if given)
        if linked.is_valid
    ]
    with tracer().start_as_current_span(
        name,
        context=_context_of(traceparent),
        kind=kind,
        attributes=dict(attributes or {}),
        links=span_links,
    ) as span:
        yield span


def current_trace_ids() -> tuple[str, str] | None:
    """The current span's ``(trace id, span id)`` in hex, or None outside any trace."""
    found = trace.get_current_span().get_span_context()
    if not found.is_valid:
        return None
    return format(found.trace_id, "032x"), format(found.span_id, "016x")


def outgoing_traceparent(given: str | None) -> str | None:
    """The ``traceparent`` for a record caused by one carrying ``given``: the current
    span when it is of the same trace (its child, then, in trace viewers), else ``given``
    (a batch's other records keep their own trace)."""
    current = trace.get_current_span().get_span_context()
    if not current.is_valid:
        return given
    if given is not None:
        cause = _span_context_of(given)
        if not cause.is_valid or cause.trace_id != current.trace_id:
            return given
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(current)))
    return carrier.get("traceparent", given)
