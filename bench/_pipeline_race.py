"""Part 2 of ``bench.pipeline``: the normalise agent against a bare loop and Quix Streams.

One input, produced once: ``events`` raw Stripe webhook records on ``webhooks.stripe``,
every ``duplicate_every``-th a retry of an earlier one, encoded exactly as the ingress
encodes them. Each contender then runs in a child process of its own, with a consumer
group committed at the start of that input, and reads it all; the bench polls its output
topic's high watermarks every few milliseconds. A contender's rate is input events per
second between its first output and its last (start-up, group join and state recovery
left out), and its CPU cost is its process's CPU time over the same window.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Producer

from base.settings import load_settings
from bench._load import cpu_seconds
from bench._pipeline_infra import (
    Child,
    OutputCounter,
    child_env,
    commit_group,
    create_topic,
    end_offsets,
    machine_times,
    progress,
    read_records,
    run_queue_seconds,
    total,
)
from bench._pipeline_input import (
    INPUT_TOPIC,
    KafkaRecord,
    SteadyRate,
    duplicate_plan,
    prepare_payment_webhooks,
    raw_webhook_records,
    steady_rate,
)
from schemas.catalog import JOIN_PARTITIONS, WEBHOOK_TOPICS
from schemas.codec import make_codec
from streams.domain.dedupe import Remembered, decide, dedupe_key, remembered_entry
from streams.domain.normalise import normalise

__all__ = [
    "CONTENDERS",
    "QUIX_INSTALL_HINT",
    "ContenderResult",
    "RaceInput",
    "domain_cost_us",
    "prepare_race_input",
    "produce_records",
    "quix_available",
    "run_contender",
]

#: Contender name -> what the report calls it, in the order they run.
CONTENDERS: dict[str, str] = {
    "bare": "bare confluent-kafka loop",
    "sluice": "Sluice normalise agent (faust)",
    "quix": "same dedupe in Quix Streams",
}
SLUICE_OUTPUT = "billing.payment.succeeded"
QUIX_INSTALL_HINT = (
    "Quix Streams is not installed (it is not a project dependency); for the comparison "
    "run `uv pip install quixstreams` in the project's environment, then run the bench again"
)
_SAMPLE_EVERY_S = 0.05
_LOG_APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}
_START_TIMEOUT_S = 120.0  # launch -> first output (faust joins, declares, recovers)
_STALL_TIMEOUT_S = 30.0  # no new output for this long while running
_MIN_RATE = 200.0  # events/s: slower than this after start-up counts as a failure
_SECRET = "whsec_bench_pipeline"


def quix_available() -> bool:
    return importlib.util.find_spec("quixstreams") is not None


@dataclass(frozen=True)
class RaceInput:
    events: int
    unique: int
    start: dict[tuple[str, int], int]
    """Where the input begins on every webhook topic partition (commit these)."""
    build_s: float
    records: list[KafkaRecord] = field(repr=False)


def prepare_race_input(bootstrap: str, events: int, duplicate_every: int) -> RaceInput:
    """Build and produce the input; blocks until Kafka acknowledged all of it."""
    began = time.monotonic()
    plan = duplicate_plan(events, duplicate_every)
    unique = max(plan) + 1 if plan else 0
    webhooks = prepare_payment_webhooks(unique, _SECRET)
    records = raw_webhook_records(
        webhooks, plan, make_codec(None), received_at_ms=int(time.time() * 1000)
    )
    start = end_offsets(bootstrap, WEBHOOK_TOPICS)
    produce_records(bootstrap, [records])
    return RaceInput(events, unique, start, time.monotonic() - began, records)


def produce_records(bootstrap: str, batches: Iterable[Sequence[KafkaRecord]]) -> int:
    """Produce every record of ``batches`` to ``webhooks.stripe``, in order, with one
    idempotent producer; returns how many. Blocks until Kafka acknowledged all of them.

    ``batches`` may be a generator: a large input is then built while it is sent, never
    held in memory at once.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "none",
        }
    )
    count = 0
    for batch in batches:
        for record in batch:
            headers: list[tuple[str, str | bytes | None]] = list(record.headers)
            while True:
                try:
                    producer.produce(
                        INPUT_TOPIC, value=record.value, key=record.key, headers=headers
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        count += len(batch)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} input records were not acknowledged within 60 s")
    return count


def domain_cost_us(race: RaceInput) -> float:
    """CPU-bound cost of the agent's own work per input event, without Kafka or faust:
    decode, dedupe decision (a dict for the table), normalise, encode, in one loop over
    the race input. The floor under any framework running this code."""
    codec = make_codec(None)
    window_ms = int(load_settings({}).dedupe_window_s * 1000)

    def one_pass(records: list[KafkaRecord]) -> float:
        seen: dict[str, Remembered] = {}
        began = time.process_time()
        for offset, record in enumerate(records):
            position = f"{INPUT_TOPIC}[0]@{offset}"
            raw = codec.decode(record.value, topic=INPUT_TOPIC).record
            key = dedupe_key(raw["provider"], raw["providerEventId"])
            now_ms = int(time.time() * 1000)
            replay = bool(raw.get("replay"))
            decision = decide(seen, key, now_ms, window_ms, replay, position=position)
            if not decision.process:
                continue
            for event in normalise(raw).events:
                codec.encode(event.topic, event.record)
            if decision.remember_ms is not None:
                seen[key] = remembered_entry(decision.remember_ms, position)
        return (time.process_time() - began) / max(1, len(records)) * 1e6

    one_pass(race.records[:1000])  # warm the codec's caches
    return one_pass(race.records)


@dataclass
class ContenderResult:
    name: str
    label: str
    inputs: int
    expected_outputs: int
    outputs: int = 0
    rate: SteadyRate | None = None
    startup_s: float = math.nan
    cpu_us_per_event: float = math.nan
    cpu_percent: dict[str, float] = field(default_factory=dict)
    cpu_wait_percent: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.rate.events_per_s if self.rate is not None else math.nan


@dataclass(frozen=True)
class _Sample:
    at: float  # time.time()
    cpu: dict[str, float]
    machine: tuple[float, float, float] | None  # busy, irq, steal


def _cpu(pids: dict[str, int | None]) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, pid in pids.items():
        used = cpu_seconds(pid) if pid is not None else None
        if used is not None:
            found[name] = used
        waited = run_queue_seconds(pid) if pid is not None else None
        if waited is not None:
            found[f"{name} waited"] = waited
    return found


def run_contender(
    name: str,
    race: RaceInput,
    *,
    bootstrap: str,
    database_url: str,
    run_id: str,
    workdir: Path,
    kafka_pid: int | None,
    profile_dir: Path | None = None,
) -> ContenderResult:
    """Run one contender over the whole input and measure it; never raises for a
    contender that fails (the result says why)."""
    expected = race.unique if name in ("sluice", "quix") else race.events
    result = ContenderResult(name, CONTENDERS[name], race.events, expected)
    if name == "quix" and not quix_available():
        result.skipped = QUIX_INSTALL_HINT
        return result
    group = f"bench-{name}-{run_id}"
    output = SLUICE_OUTPUT if name == "sluice" else f"bench.pipeline.{run_id}.{name}"
    if name != "sluice":
        # The broker stamps each record as it appends it. (Quix would otherwise copy the
        # input's timestamps; faust and librdkafka stamp records when they are sent.)
        create_topic(bootstrap, output, JOIN_PARTITIONS, _LOG_APPEND_TIME)
    commit_group(bootstrap, group, race.start)
    argv = [sys.executable, "-m", "bench._pipeline_agents", name, "--bootstrap", bootstrap]
    argv += ["--group", group, "--output", output, "--database-url", database_url]
    argv += ["--state-dir", str(workdir / f"state-{name}")]
    if profile_dir is not None:
        argv += ["--profile", str(profile_dir / f"{name}.prof")]
    begin = end_offsets(bootstrap, [output])
    counter = OutputCounter(bootstrap, [output])
    try:
        baseline = counter.count()
        progress(f"race: {result.label} over {race.events:,} events ...")
        launched = time.time()
        child = Child(f"agent-{name}", argv, child_env({}), workdir)
        try:
            samples = _watch(child, counter, baseline, expected, kafka_pid)
        finally:
            child.stop()
        finish = end_offsets(bootstrap, [output])
        result.outputs = total(finish) - total(begin)
        stamps = [m.timestamp()[1] / 1000 for m in read_records(bootstrap, begin, finish)]
    except _Failed as exc:
        result.error = str(exc)
        return result
    finally:
        counter.close()
    try:
        result.rate = steady_rate(stamps, expected, race.events)
    except ValueError as exc:
        result.error = f"cannot measure: {exc}"
        return result
    result.startup_s = result.rate.first_at - launched
    _cpu_cost(result, result.rate, samples)
    progress(
        f"{result.label}: {result.events_per_s:,.0f} events/s, "
        f"{result.cpu_us_per_event:,.0f} us CPU per event"
    )
    return result


class _Failed(Exception):
    pass


def _watch(
    child: Child, counter: OutputCounter, baseline: int, expected: int, kafka_pid: int | None
) -> list[_Sample]:
    """Wait until ``expected`` outputs are there, sampling CPU use; bounded by time-outs."""
    pids: dict[str, int | None] = {"contender": child.pid, "kafka": kafka_pid}
    samples: list[_Sample] = []
    began = time.monotonic()
    deadline = began + _START_TIMEOUT_S + expected / _MIN_RATE
    last_progress_at, last_count = began, 0
    while True:
        now = time.monotonic()
        count = counter.count() - baseline
        samples.append(_Sample(time.time(), _cpu(pids), machine_times()))
        if count >= expected:
            return samples
        if count != last_count:
            last_progress_at, last_count = now, count
        if not child.alive():
            raise _Failed(f"exited after {count} of {expected} outputs:\n{child.log_tail()}")
        if count == 0 and now - began > _START_TIMEOUT_S:
            raise _Failed(f"no output within {_START_TIMEOUT_S:g} s:\n{child.log_tail()}")
        if now > deadline:
            raise _Failed(
                f"only {count} of {expected} outputs after {now - began:.0f} s:\n{child.log_tail()}"
            )
        if count and now - last_progress_at > _STALL_TIMEOUT_S:
            raise _Failed(
                f"stalled at {count} of {expected} outputs for {_STALL_TIMEOUT_S:g} s:\n"
                f"{child.log_tail()}"
            )
        time.sleep(_SAMPLE_EVERY_S)


def _cpu_cost(result: ContenderResult, rate: SteadyRate, samples: list[_Sample]) -> None:
    """CPU use between the samples closest to the first and the last output."""
    first = min(samples, key=lambda s: abs(s.at - rate.first_at))
    last = min(samples, key=lambda s: abs(s.at - rate.last_at))
    window = last.at - first.at
    if window <= 0:
        return
    used = {name: last.cpu[name] - first.cpu[name] for name in last.cpu.keys() & first.cpu.keys()}
    events = rate.events_per_s * window
    if "contender" in used and events > 0:
        result.cpu_us_per_event = used["contender"] / events * 1e6
    percent = {name: round(100 * value / window, 1) for name, value in used.items()}
    result.cpu_percent = {k: v for k, v in percent.items() if not k.endswith(" waited")}
    result.cpu_wait_percent = {
        k.removesuffix(" waited"): v for k, v in percent.items() if k.endswith(" waited")
    }
    if last.machine is not None and first.machine is not None:
        busy, irq, steal = (
            100 * (b - a) / window for a, b in zip(first.machine, last.machine, strict=True)
        )
        result.cpu_percent["irq"], result.cpu_percent["steal"] = round(irq, 1), round(steal, 1)
        result.cpu_percent["other"] = round(max(0.0, busy - sum(result.cpu_percent.values())), 1)
