"""Every metric Sluice exposes, in one place, with its meaning; prometheus_client does the rest.

Each process keeps its metrics in its own ``CollectorRegistry`` (not the library's global
one), so several ingress or worker instances in one process (the tests) never collide.
The ingress serves them on its internal listener's ``/metrics``; the worker on its own
port (``SLUICE_WORKER_METRICS_PORT``, off by default). No label may carry a secret or an
unbounded value (routes are route names, topics and agents come from the catalog).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

__all__ = [
    "CONTENT_TYPE",
    "INGRESS_METRICS",
    "WORKER_METRICS",
    "MetricName",
    "MetricSpec",
    "Metrics",
    "MetricsServer",
]

# No ``*_created`` series next to every counter: they double the series for a timestamp
# nobody here reads (a process-wide switch of the library, set once for every registry).
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of :meth:`Metrics.render`'s output (Prometheus text format)."""


@dataclass(frozen=True)
class MetricSpec:
    """A counter's exposed name, its help text and its label names."""

    metric: str
    help: str
    labels: tuple[str, ...]


class MetricName(enum.Enum):
    """Every metric, a counter each (issue 14 adds latencies and gauges)."""

    # -- Ingress ------------------------------------------------------------------------
    # HTTP requests answered, by route name and status.
    HTTP_REQUESTS = MetricSpec(
        "sluice_http_requests_total", "HTTP requests answered.", ("route", "status")
    )
    # Records made durable in Kafka by the ingress, by topic.
    RECORDS_PUBLISHED = MetricSpec(
        "sluice_ingress_records_published_total", "Records made durable in Kafka.", ("topic",)
    )
    # Publishes that did not become durable in time (answered 503), by topic.
    PUBLISH_FAILURES = MetricSpec(
        "sluice_ingress_publish_failures_total",
        "Publishes not durable in time (answered 503).",
        ("topic",),
    )
    # Requests a rate limit applied to that passed unchecked because Redis was unreachable,
    # slow or unset (fail open: webhooks are never lost to a cache outage), by route.
    RATE_LIMIT_FAIL_OPEN = MetricSpec(
        "sluice_ingress_rate_limit_fail_open_total",
        "Requests let through unchecked: the rate-limit store did not answer in time.",
        ("route",),
    )

    # -- Worker -------------------------------------------------------------------------
    # Records whose side effect succeeded, by agent (the effect's name).
    EVENTS_PROCESSED = MetricSpec(
        "sluice_worker_events_processed_total", "Records whose effect succeeded.", ("agent",)
    )
    # Webhooks skipped because their provider event id was seen within the dedupe window.
    EVENTS_DEDUPLICATED = MetricSpec(
        "sluice_worker_events_deduplicated_total", "Duplicate records skipped.", ("agent",)
    )
    # Records sent to a retry.<delay> topic after a transient failure, by agent.
    EVENTS_RETRIED = MetricSpec(
        "sluice_worker_events_retried_total", "Records sent to a retry topic.", ("agent",)
    )
    # Records sent to dlq (permanent failure, invalid input or retries exhausted), by agent.
    EVENTS_DEAD_LETTERED = MetricSpec(
        "sluice_worker_events_dead_lettered_total", "Records sent to dlq.", ("agent",)
    )

    @property
    def metric(self) -> str:
        return self.value.metric


INGRESS_METRICS = (
    MetricName.HTTP_REQUESTS,
    MetricName.RECORDS_PUBLISHED,
    MetricName.PUBLISH_FAILURES,
    MetricName.RATE_LIMIT_FAIL_OPEN,
)
WORKER_METRICS = (
    MetricName.EVENTS_PROCESSED,
    MetricName.EVENTS_DEDUPLICATED,
    MetricName.EVENTS_RETRIED,
    MetricName.EVENTS_DEAD_LETTERED,
)


class Metrics:
    """One process's counters, in a registry of their own (thread-safe: prometheus_client).

    :param names: the metrics this process exposes (others are refused by :meth:`inc`).
    """

    def __init__(self, names: Iterable[MetricName]) -> None:
        self.registry = CollectorRegistry()
        self._counters = {
            name: Counter(
                name.value.metric, name.value.help, name.value.labels, registry=self.registry
            )
            for name in names
        }

    def inc(self, name: MetricName, amount: float = 1.0, **labels: str) -> None:
        self._counters[name].labels(**labels).inc(amount)

    def value(self, name: MetricName, **labels: str) -> float:
        """The counter's current value (0 for a label set never counted)."""
        found = self.registry.get_sample_value(name.metric, labels)
        return 0.0 if found is None else found

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` over HTTP from a daemon thread (prometheus_client's own server), for a
    process without a web server of its own: the worker. Serves while the event loop is
    busy, which is when someone wants to look."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._server: WSGIServer
        self._server, self._thread = start_http_server(port, host, registry=metrics.registry)

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the kernel's pick for port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
