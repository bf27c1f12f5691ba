"""Every metric Sluice exposes, in one place, with its meaning; prometheus_client does the rest.

Each process keeps its metrics in its own ``CollectorRegistry`` (not the library's global
one), so several ingress or worker instances in one process (the tests) never collide.
The ingress serves them on its internal listener's ``/metrics``; the worker on its own
port (``SLUICE_WORKER_METRICS_PORT``, off by default). No label may carry a secret or an
unbounded value (routes are route names, topics and agents come from the catalog).
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "INGRESS_METRICS",
    "LATENCY_BUCKETS",
    "WORKER_METRICS",
    "GaugeReader",
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


#: Seconds: from a 1 ms Redis call to a 10 s CRM or SMTP timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

GaugeReader = Callable[[], Iterable[tuple[tuple[str, ...], float]]]
"""Reads a gauge when scraped: ``(label values, value)`` pairs, label values in the
order of the metric's labels."""


@dataclass(frozen=True)
class MetricSpec:
    """A metric's exposed name, its help text, its label names and its kind: a counter,
    a latency histogram (seconds, :data:`LATENCY_BUCKETS`), or a gauge read when scraped
    (:meth:`Metrics.read_gauge`)."""

    metric: str
    help: str
    labels: tuple[str, ...]
    kind: Literal["counter", "histogram", "gauge"] = "counter"


class MetricName(enum.Enum):
    """Every metric: counters, latency histograms and gauges read at scrape time."""

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
    # Seconds from handing a record to the producer to Kafka's acknowledgement (or the
    # give-up), by topic and outcome (ok / failed).
    PUBLISH_LATENCY = MetricSpec(
        "sluice_ingress_publish_seconds",
        "Seconds until a publish was durable (or given up).",
        ("topic", "outcome"),
        "histogram",
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
    # Seconds of each call to a sink (base/sinks.py), by sink, operation (the connector
    # method) and outcome (ok / failed).
    EFFECT_LATENCY = MetricSpec(
        "sluice_worker_effect_seconds",
        "Seconds of each call to a sink (Postgres, Elasticsearch, Stripe, CRM, SMTP, ...).",
        ("sink", "operation", "outcome"),
        "histogram",
    )
    # Records of the worker's group not yet committed: the partition's high watermark
    # minus the group's committed offset (the whole partition while nothing is committed).
    CONSUMER_LAG = MetricSpec(
        "sluice_worker_consumer_lag",
        "Records not yet committed by the worker's group, by topic and partition.",
        ("topic", "partition"),
        "gauge",
    )
    # The record a retry agent holds (the head of its delay topic): seconds past its due
    # time, negative while it is still waiting. No sample while the agent holds none.
    RETRY_HEAD_OVERDUE = MetricSpec(
        "sluice_worker_retry_head_overdue_seconds",
        "Seconds the head of a delay topic is overdue (negative: due in).",
        ("topic",),
        "gauge",
    )

    @property
    def metric(self) -> str:
        return self.value.metric


INGRESS_METRICS = (
    MetricName.HTTP_REQUESTS,
    MetricName.RECORDS_PUBLISHED,
    MetricName.PUBLISH_FAILURES,
    MetricName.RATE_LIMIT_FAIL_OPEN,
    MetricName.PUBLISH_LATENCY,
)
WORKER_METRICS = (
    MetricName.EVENTS_PROCESSED,
    MetricName.EVENTS_DEDUPLICATED,
    MetricName.EVENTS_RETRIED,
    MetricName.EVENTS_DEAD_LETTERED,
    MetricName.EFFECT_LATENCY,
)


class Metrics:
    """One process's metrics, in a registry of their own (thread-safe: prometheus_client).

    :param names: the counters and histograms this process exposes (others are refused
        by :meth:`inc` and :meth:`observe`); gauges are added by :meth:`read_gauge`.
    """

    def __init__(self, names: Iterable[MetricName]) -> None:
        self.registry = CollectorRegistry()
        self._counters: dict[MetricName, Counter] = {}
        self._histograms: dict[MetricName, Histogram] = {}
        for name in names:
            spec = name.value
            if spec.kind == "counter":
                self._counters[name] = Counter(
                    spec.metric, spec.help, spec.labels, registry=self.registry
                )
            elif spec.kind == "histogram":
                self._histograms[name] = Histogram(
                    spec.metric,
                    spec.help,
                    spec.labels,
                    registry=self.registry,
                    buckets=LATENCY_BUCKETS,
                )
            else:
                raise ValueError(f"{spec.metric} is a gauge: add it with read_gauge")

    def inc(self, name: MetricName, amount: float = 1.0, **labels: str) -> None:
        self._counters[name].labels(**labels).inc(amount)

    def observe(self, name: MetricName, seconds: float, **labels: str) -> None:
        self._histograms[name].labels(**labels).observe(seconds)

    @contextlib.contextmanager
    def timed(self, name: MetricName, **labels: str) -> Iterator[None]:
        """Observe the block's duration in histogram ``name``, with ``outcome`` ok or
        failed (an exception escaped) added to ``labels``."""
        started = time.perf_counter()
        outcome = "failed"
        try:
            yield
            outcome = "ok"
        finally:
            self.observe(name, time.perf_counter() - started, outcome=outcome, **labels)

    def read_gauge(self, name: MetricName, read: GaugeReader) -> None:
        """Expose gauge ``name``, computed by ``read`` whenever ``/metrics`` is scraped
        (from the scraping thread: ``read`` must be thread-safe and bounded)."""
        if name.value.kind != "gauge":
            raise ValueError(f"{name.metric} is not a gauge")
        self.registry.register(_ReadGauge(name.value, read))

    def value(self, name: MetricName, **labels: str) -> float:
        """The counter's current value (0 for a label set never counted)."""
        found = self.registry.get_sample_value(name.metric, labels)
        return 0.0 if found is None else found

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _ReadGauge(Collector):
    """A gauge whose samples a function computes at scrape time."""

    def __init__(self, spec: MetricSpec, read: GaugeReader) -> None:
        self._spec = spec
        self._read = read

    def describe(self) -> Iterable[Metric]:
        # Described without reading: registering must not call Kafka.
        return [GaugeMetricFamily(self._spec.metric, self._spec.help, labels=self._spec.labels)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._spec.metric, self._spec.help, labels=self._spec.labels)
        for labels, value in self._read():
            family.add_metric(list(labels), value)
        return [family]


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
