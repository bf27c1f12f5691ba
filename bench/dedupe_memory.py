"""Benchmark the worker's memory against the number of dedupe ids it remembers.

    python -m bench.dedupe_memory [--dedupe-ids 1000000] [--first-sample 100000]
                                  [--dedupe-event payment_intent.created]
                                  [--json] [--fast-postgres] [--workdir DIR]

``--dedupe-ids`` raw Stripe webhook records, each with a provider event id of its own,
are produced straight to ``webhooks.stripe`` (built as the ingress builds them, in
chunks, so the bench never holds the whole input), by default of a type the pipeline
maps to nothing (``payment_intent.created``): the worker remembers each id and does
nothing else with it, so nothing but the dedupe table grows with the input.
(``--dedupe-event payment_intent.succeeded`` makes each a payment for an order the
worker never saw: the join's waiting table and the payments rows then grow too.) Then
the real ``sluice worker``
(faust, the RocksDB-backed dedupe table, every agent and projection) reads them from
the start of that input. The bench follows the worker's committed offsets on
``webhooks.stripe`` (at-least-once: committed means processed, so remembered) and reads
the worker's RSS (``VmRSS`` in ``/proc/<pid>/status``) when ``--first-sample`` ids and
each further tenth of the input are done.

The goal: the dedupe state lives in RocksDB, not in Python dicts, so the worker's
memory does not grow with the number of ids: RSS after all of them over RSS after the
first sample stays under ``FLAT_RSS_RATIO``. The bytes of RSS per further id are
reported as well. Part 3 of ``bench.pipeline`` runs the same measure.

Kafka and PostgreSQL are ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` when set (use a
throwaway cluster), else embedded servers in a temporary directory. Loopback only;
every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bench._goals import Goal, ratio_text, render_goals
from bench._pipeline_e2e import new_run_id
from bench._pipeline_infra import (
    Child,
    GroupProgress,
    delete_groups,
    delete_topics,
    end_offsets,
    kafka,
    machine_info,
    postgres,
    progress,
    topics_containing,
)
from bench._pipeline_input import (
    INPUT_TOPIC,
    KafkaRecord,
    prepare_payment_webhooks,
    raw_webhook_records,
)
from bench._pipeline_race import produce_records
from bench._report import no_nan, temp_workdir, unwind_on_sigterm
from bench._sluice import worker_process
from schemas.codec import make_codec

__all__ = [
    "DEDUPE_EVENT",
    "DEFAULT_IDS",
    "FIRST_SAMPLE",
    "FLAT_RSS_RATIO",
    "DedupeMemory",
    "RssSample",
    "add_arguments",
    "check_arguments",
    "checkpoints",
    "main",
    "render",
    "run_dedupe_memory",
    "run_from_args",
]

DEFAULT_IDS: Final = 1_000_000
FIRST_SAMPLE: Final = 100_000
#: RSS(all ids) / RSS(first sample) still called flat. Not 1.0: RocksDB's memtables
#: hold the newest writes until they are flushed, so some growth is the store's own
#: (bounded by its write buffers), not a Python dict of ids.
FLAT_RSS_RATIO: Final = 1.2
SECRET: Final = "whsec_bench_dedupe"
#: Unmapped by the normaliser: only the dedupe table remembers these.
DEDUPE_EVENT: Final = "payment_intent.created"
_CHUNK = 10_000  # records built and produced at a time
_POLL_S = 0.25
_START_TIMEOUT_S = 180.0  # worker start-up: imports, group join, topic declaration
_STALL_TIMEOUT_S = 120.0  # no committed progress for this long while running
_MIN_RATE = 100.0  # ids/s: the overall bound is start-up plus the input at this rate


@dataclass(frozen=True)
class RssSample:
    """:param mark: the checkpoint; :param ids: ids committed when it was read (a
    poll can pass a checkpoint by a few)."""

    mark: int
    ids: int
    rss_kib: int
    at_s: float


@dataclass
class DedupeMemory:
    ids: int
    first_sample: int
    event_type: str = DEDUPE_EVENT
    produce_s: float = math.nan
    samples: list[RssSample] = field(default_factory=list)
    peak_rss_kib: int | None = None
    error: str | None = None

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

    def goal(self) -> Goal:
        first, last, ratio = self.at(self.first_sample), self.at(self.ids), self.ratio
        measure = f"worker RSS after {self.ids:,} distinct dedupe ids"
        goal = f"flat: RSS({_count(self.ids)}) / RSS({_count(self.first_sample)}) <= "
        goal += f"{FLAT_RSS_RATIO:g}"
        if first is None or last is None or math.isnan(ratio):
            return Goal(measure, self.error or "-", goal, None)
        measured = (
            f"{_count(first.mark)}: {_mib(first.rss_kib)}, {_count(last.mark)}: "
            f"{_mib(last.rss_kib)}, x{ratio_text(ratio)} ({self.bytes_per_id:+,.0f} B/id)"
        )
        return Goal(measure, measured, goal, ratio <= FLAT_RSS_RATIO)

    def as_json(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = no_nan(
            {**asdict(self), "ratio": self.ratio, "bytes_per_id": self.bytes_per_id}
        )
        return cleaned


def _count(ids: int) -> str:
    """100k, 1M: the goals table's names for the id counts."""
    if ids >= 1_000_000 and ids % 100_000 == 0:
        return f"{ids / 1_000_000:g}M"
    if ids >= 1000 and ids % 1000 == 0:
        return f"{ids // 1000}k"
    return f"{ids:,}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def checkpoints(ids: int, first_sample: int) -> list[int]:
    """The first sample, each further tenth of the input, and the end."""
    tenths = (ids * k // 10 for k in range(1, 11))
    return sorted({first_sample, *(t for t in tenths if t > first_sample)})


def first_sample_for(ids: int, wanted: int) -> int:
    """``wanted``, or a tenth of a smaller input, so that a small run still compares
    two points."""
    return min(wanted, max(1, ids // 10))


# -- the run --------------------------------------------------------------------------------


def run_dedupe_memory(
    ids: int,
    first_sample: int,
    *,
    event_type: str = DEDUPE_EVENT,
    bootstrap: str,
    database_url: str,
    run_id: str,
    workdir: Path,
) -> DedupeMemory:
    """Produce the input, run the worker over it, sample its RSS. Never raises for a
    worker that fails or stalls (the result says why)."""
    result = DedupeMemory(ids, first_sample_for(ids, first_sample), event_type)
    start = end_offsets(bootstrap, [INPUT_TOPIC])
    progress(f"dedupe memory: producing {ids:,} distinct raw webhooks to {INPUT_TOPIC} ...")
    began = time.monotonic()
    produce_records(bootstrap, _distinct_records(ids, event_type))
    result.produce_s = time.monotonic() - began
    app_id = dedupe_app_id(run_id)
    watched = GroupProgress(bootstrap, app_id, start)
    try:
        with worker_process(
            bootstrap=bootstrap,
            database_url=database_url,
            app_id=app_id,
            workdir=workdir,
            start_at=start,
            name="dedupe-worker",
        ) as worker:
            try:
                _watch(worker, watched, result)
            except _Failed as exc:
                result.error = str(exc)
            result.peak_rss_kib = _status_kib(worker.pid, "VmHWM")
    finally:
        watched.close()
    return result


def dedupe_app_id(run_id: str) -> str:
    return f"bench-dedupe-{run_id}"


def _distinct_records(ids: int, event_type: str) -> Iterator[list[KafkaRecord]]:
    """``ids`` raw webhooks, each a provider event of its own, ``_CHUNK`` at a time."""
    codec = make_codec(None)
    received_at_ms = int(time.time() * 1000)
    for first in range(0, ids, _CHUNK):
        count = min(_CHUNK, ids - first)
        webhooks = prepare_payment_webhooks(count, SECRET, event_type=event_type)
        yield raw_webhook_records(
            webhooks, range(count), codec, received_at_ms=received_at_ms + first
        )


class _Failed(Exception):
    pass


def _watch(worker: Child, watched: GroupProgress, result: DedupeMemory) -> None:
    """Until every id is committed, reading the worker's RSS at each checkpoint."""
    marks = checkpoints(result.ids, result.first_sample)
    began = time.monotonic()
    deadline = began + _START_TIMEOUT_S + result.ids / _MIN_RATE
    last_change, last_done = began, 0
    while marks:
        done, now = watched.done(), time.monotonic()
        while marks and done >= marks[0]:
            rss = _status_kib(worker.pid, "VmRSS")
            if rss is None:
                raise _Failed(f"cannot read the worker's RSS:\n{worker.log_tail()}")
            result.samples.append(RssSample(marks.pop(0), done, rss, now - began))
            progress(f"dedupe memory: {done:,} ids processed, worker RSS {_mib(rss)}")
        if done != last_done:
            last_change, last_done = now, done
        if not worker.alive():
            raise _Failed(f"the worker exited after {done:,} ids:\n{worker.log_tail()}")
        if now - last_change > (_START_TIMEOUT_S if not done else _STALL_TIMEOUT_S):
            raise _Failed(f"no progress past {done:,} ids for {now - last_change:.0f} s")
        if now > deadline:
            raise _Failed(f"only {done:,} of {result.ids:,} ids after {now - began:.0f} s")
        time.sleep(_POLL_S)


def _status_kib(pid: int, name: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); ``None`` if the
    process is gone. Read directly: psutil is not a dependency."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key == name:
                    return int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None


# -- rendering --------------------------------------------------------------------------


_TABLE_HEAD: Final = (
    "(ids = input records the worker's group committed; RSS = VmRSS of the worker process "
    "when they were)",
    f"{'checkpoint':>10} {'ids done':>10} {'RSS':>9} {'at':>8}",
)


def render_part(result: DedupeMemory) -> list[str]:
    title = (
        f"dedupe memory: {result.ids:,} distinct raw {result.event_type} webhooks on "
        f"{INPUT_TOPIC} through `sluice worker` (RocksDB dedupe table); produced in "
        f"{result.produce_s:.1f} s"
    )
    lines = ["", title, *_TABLE_HEAD]
    for s in result.samples:
        lines.append(f"{s.mark:>10,} {s.ids:>10,} {_mib(s.rss_kib):>9} {s.at_s:>6.1f} s")
    if result.peak_rss_kib is not None:
        lines.append(f"peak RSS (VmHWM): {_mib(result.peak_rss_kib)}")
    if result.error:
        lines.append(f"FAILED: {result.error}")
    return lines


def render(result: DedupeMemory, machine: dict[str, str]) -> str:
    lines = [
        "Sluice dedupe memory bench",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']}, "
        f"{machine['os']}, Python {machine['python']}, rocksdict {machine['rocksdict']}",
        *render_part(result),
        *render_goals([result.goal()]),
    ]
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, *, skippable: bool) -> None:
    """``--dedupe-ids`` and ``--first-sample``, for this command and ``bench.pipeline``."""
    parser.add_argument(
        "--dedupe-ids",
        type=int,
        default=DEFAULT_IDS,
        help=f"distinct ids the worker remembers ({DEFAULT_IDS}"
        + ("; 0: skip this part)" if skippable else ")"),
    )
    parser.add_argument(
        "--first-sample",
        type=int,
        default=FIRST_SAMPLE,
        help=f"ids at the first RSS sample ({FIRST_SAMPLE}; a tenth of a smaller input)",
    )
    parser.add_argument(
        "--dedupe-event",
        default=DEDUPE_EVENT,
        help=f"Stripe payment_intent event type of the input ({DEDUPE_EVENT}: unmapped, so "
        "only the dedupe table grows; payment_intent.succeeded: payments too)",
    )


def run_from_args(
    args: argparse.Namespace, bootstrap: str, database_url: str, run_id: str, workdir: Path
) -> DedupeMemory:
    """``run_dedupe_memory`` with the options ``add_arguments`` added."""
    return run_dedupe_memory(
        args.dedupe_ids,
        args.first_sample,
        event_type=args.dedupe_event,
        bootstrap=bootstrap,
        database_url=database_url,
        run_id=run_id,
        workdir=workdir,
    )


def check_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *, skippable: bool
) -> None:
    """Exits through ``parser.error`` if the options ``add_arguments`` added are off."""
    if args.dedupe_ids < 2 and not (skippable and args.dedupe_ids == 0):
        parser.error(f"need --dedupe-ids {'0 (skip) or ' if skippable else ''}>= 2")
    if args.first_sample < 1:
        parser.error("need --first-sample >= 1")
    if not args.dedupe_event.startswith("payment_intent."):
        parser.error("--dedupe-event must be a payment_intent.* type")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dedupe_memory",
        description="The worker's RSS against the number of dedupe ids it remembers.",
    )
    add_arguments(parser, skippable=False)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--fast-postgres", action="store_true", help="embedded PostgreSQL without fsync"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep data and logs in this new directory"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args, skippable=False)
    unwind_on_sigterm()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or None
    database_url = os.environ.get("DATABASE_URL", "").strip() or None
    run_id = new_run_id()
    try:
        with (
            temp_workdir(args.workdir, "sluice-bench-dedupe-") as tmp,
            kafka(bootstrap, tmp) as broker,
            postgres(database_url, tmp, fast=args.fast_postgres) as database,
        ):
            try:
                result = run_from_args(args, broker.bootstrap, database.url, run_id, tmp)
            finally:
                if not broker.embedded:
                    clean_up(broker.bootstrap, run_id)
    except KeyboardInterrupt:
        progress("interrupted; child processes and embedded servers were stopped")
        return 130
    machine = machine_info()
    print(json.dumps(result.as_json(), indent=2) if args.json else render(result, machine))
    return 1 if result.error else 0


def clean_up(bootstrap: str, run_id: str) -> None:
    """Remove the run's worker group and its changelog topics from an external cluster."""
    delete_topics(bootstrap, topics_containing(bootstrap, dedupe_app_id(run_id)))
    delete_groups(bootstrap, [dedupe_app_id(run_id)])


if __name__ == "__main__":
    raise SystemExit(main())
