"""The worker's memory against the number of dedupe ids it remembers.

    python -m bench.dedupe_memory [--dedupe-ids 1000000] [--first-sample 100000]
        [--dedupe-event payment_intent.created] [--json]

Distinct raw Stripe webhooks (built as the ingress builds them) are produced straight to
``webhooks.stripe``; then the real ``sluice worker`` reads them. The bench follows the
worker group's committed offsets (committed means processed, so remembered) and reads the
worker's RSS when ``--first-sample`` ids and each further tenth of the input are done.
Goal: the ids live in RocksDB, not in Python dicts, so RSS after all of them over RSS
after the first sample stays under ``FLAT_RSS_RATIO``. Part 3 of ``bench.pipeline``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._inputs import (
    INPUT_TOPIC,
    KafkaRecord,
    prepare_payment_webhooks,
    produce_records,
    raw_webhook_records,
)
from bench._report import (
    BenchReport,
    Goal,
    goal,
    machine_info,
    machine_lines,
    progress,
    ratio_text,
    render_goals,
    run_bench,
    table,
)
from bench._services import (
    Committed,
    Patience,
    Stack,
    bench_parser,
    end_offsets,
    follow,
    stack,
    worker_process,
)
from schemas.codec import make_codec

DEFAULT_IDS = 1_000_000
FIRST_SAMPLE = 100_000
#: RSS(all ids) / RSS(first sample) still called flat. Not 1.0: RocksDB's memtables hold
#: the newest writes until flushed, so some growth is the store's own (bounded).
FLAT_RSS_RATIO = 1.2
SECRET = "whsec_bench_dedupe"
DEDUPE_EVENT = "payment_intent.created"  # unmapped: only the dedupe table remembers it
_CHUNK = 10_000  # records built and produced at a time
# Worker start-up (imports, group join, topic declaration), then no stall over 2 minutes
# and at least 100 ids/s overall.
_PATIENCE = Patience(start_s=180.0, stall_s=120.0, min_rate=100.0)


@dataclass(frozen=True)
class RssSample:
    """:param ids: ids committed when it was read (a poll can pass ``mark`` by a few)."""

    mark: int
    ids: int
    rss_kib: int
    at_s: float


@dataclass
class DedupeMemory(BenchReport):
    ids: int
    first_sample: int
    event_type: str = DEDUPE_EVENT
    produce_s: float = math.nan
    samples: list[RssSample] = field(default_factory=list)
    peak_rss_kib: int | None = None
    error: str | None = None
    machine: dict[str, str] = field(default_factory=dict)

    def at(self, mark: int) -> RssSample | None:
        return next((s for s in self.samples if s.mark == mark), None)

    @property
    def ratio(self) -> float:
        """RSS after every id over RSS after the first sample."""
        first, last = self.at(self.first_sample), self.at(self.ids)
        if first is None or last is None or first is last or not first.rss_kib:
            return math.nan
        return last.rss_kib / first.rss_kib

    @property
    def bytes_per_id(self) -> float:
        """RSS growth per id processed between the first sample and the last."""
        first, last = self.at(self.first_sample), self.at(self.ids)
        if first is None or last is None or last.ids <= first.ids:
            return math.nan
        return (last.rss_kib - first.rss_kib) * 1024 / (last.ids - first.ids)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def goal(self) -> Goal:
        first, last, ratio = self.at(self.first_sample), self.at(self.ids), self.ratio
        measured = self.error or "-"
        if first is not None and last is not None and not math.isnan(ratio):
            measured = (
                f"{_count(first.mark)}: {_mib(first.rss_kib)}, {_count(last.mark)}: "
                f"{_mib(last.rss_kib)}, x{ratio_text(ratio)} ({self.bytes_per_id:+,.0f} B/id)"
            )
        flat = f"flat: RSS({_count(self.ids)}) / RSS({_count(self.first_sample)}) <="
        measure = f"worker RSS after {self.ids:,} distinct dedupe ids"
        return goal(measure, measured, ratio, flat, FLAT_RSS_RATIO)

    def goals(self) -> list[Goal]:
        return [self.goal()]

    def summary(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "bytes_per_id": self.bytes_per_id}


def _count(ids: int) -> str:
    """100k, 1M: the goals table's names for the id counts."""
    if ids >= 1_000_000 and ids % 100_000 == 0:
        return f"{ids / 1_000_000:g}M"
    return f"{ids // 1000}k" if ids >= 1000 and ids % 1000 == 0 else f"{ids:,}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def checkpoints(ids: int, first_sample: int) -> list[int]:
    """The first sample, each further tenth of the input, and the end."""
    return sorted({first_sample, *(t for k in range(1, 11) if (t := ids * k // 10) > first_sample)})


def first_sample_for(ids: int, wanted: int) -> int:
    """``wanted``, or a tenth of a smaller input, so a small run still compares two points."""
    return min(wanted, max(1, ids // 10))


def dedupe_app_id(run_id: str) -> str:
    return f"bench-dedupe-{run_id}"


def run_dedupe_memory(args: argparse.Namespace, at: Stack) -> DedupeMemory:
    """Produce the input, run the worker over it, sample its RSS. Never raises for a
    worker that fails or stalls (the result says why)."""
    ids, event = args.dedupe_ids, args.dedupe_event
    result = DedupeMemory(ids, first_sample_for(ids, args.first_sample), event)
    start = end_offsets(at.bootstrap, [INPUT_TOPIC])
    progress(f"dedupe memory: producing {ids:,} distinct raw webhooks to {INPUT_TOPIC} ...")
    began = time.monotonic()
    produce_records(at.bootstrap, _distinct_records(ids, event))
    result.produce_s = time.monotonic() - began
    app_id = dedupe_app_id(at.run_id)
    committed = Committed(at.bootstrap, app_id)
    try:
        with worker_process(at, app_id, start_at=start) as worker:
            marks, began = checkpoints(result.ids, result.first_sample), time.monotonic()

            def sample(done: int) -> None:  # the RSS at each checkpoint passed
                while marks and done >= marks[0]:
                    if (rss := status_kib(worker.pid, "VmRSS")) is None:
                        raise RuntimeError("cannot read the worker's RSS")
                    result.samples.append(
                        RssSample(marks.pop(0), done, rss, time.monotonic() - began)
                    )
                    progress(f"dedupe memory: {done:,} ids processed, worker RSS {_mib(rss)}")

            try:
                follow(worker, lambda: committed.past(start), ids, _PATIENCE, sample, every_s=0.25)
            except RuntimeError as exc:
                result.error = f"{exc}\n{worker.log_tail()}"
            result.peak_rss_kib = status_kib(worker.pid, "VmHWM")
    finally:
        committed.close()
    return result


def _distinct_records(ids: int, event_type: str) -> Iterator[list[KafkaRecord]]:
    """``ids`` raw webhooks, each a provider event of its own, ``_CHUNK`` at a time."""
    codec, received_at_ms = make_codec(None), int(time.time() * 1000)
    for first in range(0, ids, _CHUNK):
        webhooks = prepare_payment_webhooks(min(_CHUNK, ids - first), SECRET, event_type=event_type)
        plan = range(len(webhooks))
        yield raw_webhook_records(webhooks, plan, codec, received_at_ms=received_at_ms + first)


def status_kib(pid: int, name: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); ``None`` if gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    return None


def render_part(result: DedupeMemory) -> list[str]:
    columns: list[tuple[str, int, Any]] = [
        ("checkpoint", 10, lambda s: f"{s.mark:,}"),
        ("ids done", 10, lambda s: f"{s.ids:,}"),
        ("RSS", 9, lambda s: _mib(s.rss_kib)),
        ("at", 8, lambda s: f"{s.at_s:.1f} s"),
    ]
    lines = [
        "",
        f"dedupe memory: {result.ids:,} distinct raw {result.event_type} webhooks on "
        f"{INPUT_TOPIC} through `sluice worker` (RocksDB dedupe table); produced in "
        f"{result.produce_s:.1f} s",
        "(ids = input records the worker's group committed; RSS = VmRSS of the worker "
        "process when they were)",
        *table(columns, result.samples),
    ]
    if result.peak_rss_kib is not None:
        lines.append(f"peak RSS (VmHWM): {_mib(result.peak_rss_kib)}")
    return lines + ([f"FAILED: {result.error}"] if result.error else [])


def render(result: DedupeMemory) -> str:
    lines = ["Sluice dedupe memory bench", *machine_lines(result.machine, {}), *render_part(result)]
    return "\n".join(lines + render_goals(result.goals()))


def add_dedupe_arguments(parser: argparse.ArgumentParser, *, skippable: bool) -> None:
    """``--dedupe-ids``, ``--first-sample``, ``--dedupe-event`` (also ``bench.pipeline``'s)."""
    skip = "; 0: skip this part" if skippable else ""
    add = parser.add_argument
    add("--dedupe-ids", type=int, default=DEFAULT_IDS, help=f"distinct ids ({DEFAULT_IDS}{skip})")
    add("--first-sample", type=int, default=FIRST_SAMPLE, help="ids at the first RSS sample")
    add("--dedupe-event", default=DEDUPE_EVENT, help="payment_intent event type of the input")


def check_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *, skippable: bool
) -> None:
    if args.dedupe_ids < 2 and not (skippable and args.dedupe_ids == 0):
        parser.error(f"need --dedupe-ids {'0 (skip) or ' if skippable else ''}>= 2")
    if args.first_sample < 1:
        parser.error("need --first-sample >= 1")
    if not args.dedupe_event.startswith("payment_intent."):
        parser.error("--dedupe-event must be a payment_intent.* type")


def _parser() -> argparse.ArgumentParser:
    description = "The worker's RSS against the number of dedupe ids it remembers."
    parser = bench_parser("python -m bench.dedupe_memory", description)
    add_dedupe_arguments(parser, skippable=False)
    return parser


def _measure(args: argparse.Namespace) -> DedupeMemory:
    with stack("dedupe") as at:
        result = run_dedupe_memory(args, at)
    result.machine = machine_info()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args, skippable=False)
    return run_bench(lambda: _measure(args), render, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
