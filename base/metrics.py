"""Every metric Sluice exposes, in one place, with its kind and meaning.

A deliberately small in-process registry rendered in the Prometheus text format on the
internal listener's ``/metrics``; no label may carry a secret or an unbounded value.
"""

from __future__ import annotations

import enum
import threading
from collections import defaultdict

__all__ = ["MetricName", "Metrics"]


class MetricName(enum.Enum):
    # counter: HTTP requests answered, by route name and status.
    HTTP_REQUESTS = ("sluice_http_requests_total", "counter")
    # counter: records made durable in Kafka by the ingress, by topic.
    RECORDS_PUBLISHED = ("sluice_ingress_records_published_total", "counter")
    # counter: publishes that did not become durable in time (answered 503), by topic.
    PUBLISH_FAILURES = ("sluice_ingress_publish_failures_total", "counter")

    @property
    def metric(self) -> str:
        return self.value[0]

    @property
    def kind(self) -> str:
        return self.value[1]


Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Thread-safe counters keyed by metric and label set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[MetricName, dict[Labels, float]] = defaultdict(dict)

    def inc(self, name: MetricName, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def value(self, name: MetricName, **labels: str) -> float:
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name in MetricName:
                lines.append(f"# TYPE {name.metric} {name.kind}")
                for labels, value in sorted(self._values[name].items()):
                    rendered = ",".join(f'{k}="{v}"' for k, v in labels)
                    lines.append(f"{name.metric}{{{rendered}}} {value:g}")
        return "\n".join(lines) + "\n"
