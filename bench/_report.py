"""What every bench reports with: latency distributions, the one ``Phase`` record, the
goals table, tables and number formats, the machine, and the ``main`` they share.

Goals are ratios of two things measured in one run (or latencies under a load sized by
the same run), never absolute numbers compared across days: the machines are noisy and
differ 2x from one day to the next.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

#: CPU (% of one core) used outside the bench's processes that makes a run suspect.
NOISE_PERCENT = 25.0
R = TypeVar("R", bound="BenchReport")
_CLIENTS = ("confluent-kafka", "faust-streaming", "aiokafka", "aiohttp", "quixstreams", "rocksdict")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of ascending values, nearest rank (an
    observed value: p99 of 1000 samples is the 990th smallest)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {q}")
    return sorted_values[max(math.ceil(q / 100 * len(sorted_values)), 1) - 1]


@dataclass(frozen=True, slots=True)
class Distribution:
    """Count and nearest-rank percentiles of some durations, in ms (NaN if none)."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def distribution(values_s: Sequence[float]) -> Distribution:
    v = sorted(values_s)
    if not v:
        return Distribution(0, math.nan, math.nan, math.nan)
    return Distribution(len(v), 1000 * percentile(v, 50), 1000 * percentile(v, 99), 1000 * v[-1])


@dataclass(frozen=True, slots=True)
class Matched:
    """:param missing: acknowledged, never seen; :param early: seen before the 200 (0 s)."""

    latencies_s: list[float]
    missing: int
    early: int


def match_latencies(acked_at: Mapping[str, float], seen_at: Mapping[str, float]) -> Matched:
    """Each acknowledged key's 200 time paired with when it was first seen (one clock).
    Keys seen but never acknowledged (the request failed, the record got through) are
    not counted."""
    latencies: list[float] = []
    missing = early = 0
    for key, acked in acked_at.items():
        if (seen := seen_at.get(key)) is None:
            missing += 1
        else:
            early += seen < acked
            latencies.append(max(0.0, seen - acked))
    return Matched(sorted(latencies), missing, early)


def hop(start: Mapping[str, float], end: Mapping[str, float]) -> Distribution:
    """Durations from ``start`` to ``end`` per key in both (one clock; Kafka timestamps
    are whole milliseconds, so a hop can come out slightly negative: 0)."""
    return distribution(match_latencies(start, end).latencies_s)


@dataclass
class Phase:
    """One measured phase of any bench.

    :param accepted_per_s: 2xx answers per second (first request sent to last answer).
    :param http: request -> answer, per request kind.
    :param done_per_s: what the pipeline made of them (rows, PAID orders) per second,
        first request sent to last one seen: the sustained end-to-end throughput.
    :param drain_s: from the last answer to the last one seen.
    :param latency: answer -> first seen, per kind of row; ``missing``: answered, never
        seen within the bounded wait, per kind.
    :param target_rps: paced (open loop) at this rate; ``concurrency``: closed loop.
    :param reused: requests sent twice because the pre-built pool ran out.
    :param cpu_wait_percent: per process, % of the time a thread of it was runnable but
        had no CPU.
    """

    name: str
    sent: int
    errors: int
    accepted_per_s: float
    http: dict[str, Distribution]
    target_rps: float | None = None
    concurrency: int | None = None
    done_per_s: float = math.nan
    drain_s: float = math.nan
    latency: dict[str, Distribution] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    early: int = 0
    stages: dict[str, Distribution] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    workers: int | None = None
    reused: int = 0
    cpu_percent: dict[str, float] = field(default_factory=dict)
    cpu_wait_percent: dict[str, float] = field(default_factory=dict)

    def ratio(self, kind: str, baseline: str, key: str = "p50_ms") -> float:
        """``latency[kind]`` over ``latency[baseline]`` at ``key``; NaN without both."""
        a = getattr(self.latency.get(kind), key, math.nan)
        return div(a, getattr(self.latency.get(baseline), key, math.nan))

    def details(self) -> list[str]:
        """The lines under a phase table: HTTP, refusals, stages, CPU."""
        http = "; ".join(f"{kind} {dist_line(d)}" for kind, d in self.http.items())
        rows = [("HTTP", http), ("refused", cpu_line(self.refused).replace("%", ""))]
        rows += [(stage, dist_line(d)) for stage, d in self.stages.items()]
        rows += [("CPU (% of one core)", cpu_line(self.cpu_percent))]
        rows += [("runnable but waiting for a CPU", cpu_line(self.cpu_wait_percent))]
        return [f"  {self.name}, {label}: {text}" for label, text in rows if text]


@dataclass(frozen=True)
class Goal:
    """One row of the goals table; ``met`` is ``None`` when the run did not measure it."""

    measure: str
    measured: str
    goal: str
    met: bool | None


def goal(
    measure: str, measured: str, value: float, rule: str, limit: float, unit: str = ""
) -> Goal:
    """A row whose goal is ``value`` ``rule`` (``>=``, ``<=``, or text ending in one)
    ``limit``; not measured when ``value`` is NaN."""
    met = value >= limit if rule.endswith(">=") else value <= limit
    return Goal(measure, measured, f"{rule} {limit:g}{unit}", None if math.isnan(value) else met)


class BenchReport:
    """What ``run_bench`` needs of a report: whether the run failed, its goals and summary;
    ``as_json`` is the dataclass's fields with them."""

    @property
    def failed(self) -> bool:
        raise NotImplementedError

    def goals(self) -> list[Goal]:
        return []

    def summary(self) -> dict[str, Any]:
        return {}

    def as_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses
        return fields | {"summary": self.summary(), "goals": [asdict(g) for g in self.goals()]}


def render_goals(goals: Sequence[Goal]) -> list[str]:
    """The table, its columns as wide as their widest cell."""
    header = ("measure", "measured", "goal", "verdict")
    verdicts = {None: "not measured", True: "met", False: "NOT met"}
    rows = [(g.measure, g.measured, g.goal, verdicts[g.met]) for g in goals]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return ["", "goals:", line(header), "-+-".join("-" * w for w in widths), *map(line, rows)]


def table(
    columns: Sequence[tuple[str, int, Callable[[Any], str]]], rows: Iterable[Any]
) -> list[str]:
    """Fixed-width columns, each ``(header, width, cell)``; a negative width aligns left."""

    def line(cells: Iterable[str]) -> str:
        pairs = zip(cells, columns, strict=True)
        return " ".join(c.ljust(-w) if w < 0 else c.rjust(w) for c, (_, w, _) in pairs).rstrip()

    return [line(h for h, _, _ in columns), *(line(f(row) for _, _, f in columns) for row in rows)]


def div(a: float, b: float) -> float:
    """``a / b``, or NaN when ``b`` is not positive (or NaN): a ratio that was not measured."""
    return a / b if b > 0 else math.nan


def ratio_text(value: float, suffix: str = "") -> str:
    return "-" if math.isnan(value) else f"{value:.2f}{suffix}"


def ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def num(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def cpu_line(percent: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}%" for name, value in percent.items())


def dist_line(d: Distribution) -> str:
    return f"p50 {ms(d.p50_ms)}, p99 {ms(d.p99_ms)}, max {ms(d.max_ms)}"


def noise_warning(runs: Iterable[tuple[str, Mapping[str, float]]]) -> list[str]:
    """The line warning that some of ``(name, cpu_percent)`` shared the machine."""
    if not (noisy := [name for name, cpu in runs if cpu.get("other", 0.0) >= NOISE_PERCENT]):
        return []
    return [
        f"warning: {', '.join(noisy)} shared the machine with other work (>= "
        f"{NOISE_PERCENT:g}% of a core outside the bench's processes); rerun on a quiet "
        "machine before quoting the numbers"
    ]


def no_nan(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: no_nan(item) for key, item in value.items()}
    return [no_nan(item) for item in value] if isinstance(value, list | tuple) else value


def machine_info() -> dict[str, str]:
    """What the numbers were measured on."""
    import confluent_kafka

    def version(distribution: str) -> str:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(distribution)
        return "not installed"

    def proc(path: str, key: str) -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if (parts := line.partition(":"))[0].strip() == key:
                    return parts[2].strip()
        return "unknown"

    memory = proc("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": proc("/proc/cpuinfo", "model name"),
        "memory": f"{int(memory) / 1024 / 1024:.1f} GiB" if memory.isdigit() else "unknown",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "librdkafka": confluent_kafka.libversion()[0],
        **{name: version(name) for name in _CLIENTS},
    }


def machine_lines(m: Mapping[str, str], services: Mapping[str, str]) -> list[str]:
    clients = ", ".join(f"{name} {m.get(name, '?')}" for name in ("librdkafka", *_CLIENTS))
    return [
        f"machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory')}, "
        f"{m.get('os')}, Python {m.get('python')}",
        f"clients: {clients}",
        *(f"{name}: {description}" for name, description in services.items()),
    ]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_bench(measure: Callable[[], R], render: Callable[[R], str], as_json: bool) -> int:
    """Measure, print the report (text or JSON); exit status 1 if the run failed, 130 if
    interrupted. SIGTERM unwinds like Ctrl-C, so every child process and embedded server
    is stopped by the ``finally`` blocks on the way out."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        report = measure()
    except KeyboardInterrupt:
        progress("interrupted; child processes and embedded servers were stopped")
        return 130
    print(json.dumps(no_nan(report.as_json()), indent=2) if as_json else render(report))
    return 1 if report.failed else 0
