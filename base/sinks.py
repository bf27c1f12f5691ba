"""Every call the worker makes to a sink is timed and traced by one decorator.

A connector method that talks to a sink (a Postgres transaction, an Elasticsearch bulk
request, a Stripe, CRM, SMS or push call, an SMTP send, a Redis command) is decorated
with :func:`sink_call`. Each call then is a client span (child of the record's span,
``base.tracing``) and one observation of ``sluice_worker_effect_seconds`` in the
registry the worker chose with :func:`observe_sinks` (none: only the span).
The worker's process has one worker, so the registry is the process's; an ingress in the
same process (the tests) never calls a sink.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from opentelemetry.trace import SpanKind, Status, StatusCode

from base.metrics import MetricName, Metrics
from base.tracing import tracer

__all__ = ["Sink", "observe_sinks", "sink_call"]

P = ParamSpec("P")
R = TypeVar("R")


class Sink(enum.StrEnum):
    """The ``sink`` label and the span name's first word."""

    POSTGRES = "postgres"
    ELASTICSEARCH = "elasticsearch"
    STRIPE = "stripe"
    CRM = "crm"
    SMTP = "smtp"
    SMS = "sms"
    PUSH = "push"
    REDIS = "redis"


_observer: list[Metrics] = []


def observe_sinks(metrics: Metrics | None) -> None:
    """Time every sink call of this process into ``metrics`` (None: stop timing)."""
    _observer[:] = [] if metrics is None else [metrics]


def sink_call(
    sink: Sink, operation: str | None = None
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Decorate an async connector method: a span ``<sink> <operation>`` around each
    call and its duration in the effect latency histogram (``outcome`` ok or failed).
    ``operation`` defaults to the method's name."""

    def decorate(
        call: Callable[P, Coroutine[Any, Any, R]],
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        name = operation or call.__name__

        @functools.wraps(call)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            outcome = "failed"
            with tracer().start_as_current_span(
                f"{sink} {name}",
                kind=SpanKind.CLIENT,
                attributes={"sluice.sink": str(sink), "sluice.operation": name},
            ) as span:
                try:
                    result = await call(*args, **kwargs)
                    outcome = "ok"
                    return result
                except Exception as exc:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
                finally:
                    for metrics in _observer:
                        metrics.observe(
                            MetricName.EFFECT_LATENCY,
                            time.perf_counter() - started,
                            sink=str(sink),
                            operation=name,
                            outcome=outcome,
                        )

        return timed

    return decorate
