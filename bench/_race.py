"""Part 2 of ``bench.pipeline``: the normalise agent against a bare loop and Quix Streams.

One input, produced once: raw Stripe webhook records on ``webhooks.stripe`` as the
ingress encodes them, every ``duplicate_every``-th a retry of an earlier one. Each
contender runs in a child process of its own (``python -m bench._race KIND ...``), its
consumer group committed at the start of that input, and reads it all:

- ``bare``: the ceiling. confluent-kafka consume -> produce the bytes unchanged ->
  commit every second after a flush (at-least-once, like the others);
- ``sluice``: the worker's real ``normalise_webhooks`` agent alone: the faust app
  ``streams.app.create_worker`` builds, every other agent taken out before it starts;
- ``quix``: the same dedupe and normalisation in Quix Streams (RocksDB state keyed like
  the agent's table, the same ``decide``, ``normalise``, codec, output key and headers).
  Needs ``quixstreams``, which is not a project dependency.

A contender's rate is input events per second between its first output and its last
(start-up, group join and state recovery left out: the broker's record timestamps), its
CPU cost its process's CPU time over the same window.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._inputs import (
    INPUT_TOPIC,
    KafkaRecord,
    duplicate_plan,
    prepare_payment_webhooks,
    produce,
    produce_records,
    raw_webhook_records,
)
from bench._load import CpuMeter, CpuSample, between
from bench._report import progress
from bench._services import (
    Committed,
    Patience,
    Stack,
    child_env,
    commit_group,
    create_topic,
    end_offsets,
    follow,
    read_records,
    running,
)

#: Contender name -> what the report calls it, in the order they run.
CONTENDERS = {
    "bare": "bare confluent-kafka loop",
    "sluice": "Sluice normalise agent (faust)",
    "quix": "same dedupe in Quix Streams",
}
AGENT = "normalise_webhooks"
SLUICE_OUTPUT = "billing.payment.succeeded"
QUIX_INSTALL_HINT = (
    "Quix Streams is not installed (it is not a project dependency); for the comparison "
    "run `uv pip install quixstreams` in the project's environment, then run the bench again"
)
COMMIT_INTERVAL_S = 1.0  # the bare loop's; faust's broker_commit_interval in the worker
_SECRET = "whsec_bench_pipeline"
# Launch -> first output (faust joins, declares, recovers); then no stall over 30 s and
# at least 200 events/s overall.
_PATIENCE = Patience(start_s=120.0, stall_s=30.0, min_rate=200.0)

log = logging.getLogger(__name__)


def quix_available() -> bool:
    return importlib.util.find_spec("quixstreams") is not None


@dataclass(frozen=True, slots=True)
class SteadyRate:
    """Input events per second between a processor's first output and its last."""

    events_per_s: float
    window_s: float
    outputs: int
    first_at: float
    last_at: float


def steady_rate(output_times_s: Sequence[float], expected: int, inputs: int) -> SteadyRate:
    """The rate from the times the outputs were written: ``n`` outputs span ``n - 1``
    intervals, turned into input events with ``inputs / expected`` (a deduplicating
    processor writes fewer records than it reads).

    :raises ValueError: ``expected`` or ``inputs`` not positive, or too few outputs.
    """
    if expected <= 0 or inputs <= 0:
        raise ValueError("expected and inputs must be positive")
    count = len(output_times_s)
    if count < max(expected, 2):
        raise ValueError(f"{count} outputs, expected {expected}")
    first, last = min(output_times_s), max(output_times_s)
    window = last - first
    rate = inputs * (count - 1) / expected / window if window > 0 else math.nan
    return SteadyRate(rate, window, count, first, last)


@dataclass(frozen=True)
class RaceInput:
    events: int
    unique: int
    start: dict[tuple[str, int], int]  # where the input begins (commit these)
    records: list[KafkaRecord] = field(repr=False)


def prepare_race_input(bootstrap: str, events: int, duplicate_every: int) -> RaceInput:
    """Build and produce the input; blocks until Kafka acknowledged all of it."""
    from schemas.catalog import WEBHOOK_TOPICS
    from schemas.codec import make_codec

    plan = duplicate_plan(events, duplicate_every)
    unique = max(plan) + 1 if plan else 0
    webhooks = prepare_payment_webhooks(unique, _SECRET)
    now_ms = int(time.time() * 1000)
    records = raw_webhook_records(webhooks, plan, make_codec(None), received_at_ms=now_ms)
    start = end_offsets(bootstrap, WEBHOOK_TOPICS)
    produce_records(bootstrap, [records])
    return RaceInput(events, unique, start, records)


def domain_cost_us(race: RaceInput) -> float:
    """CPU per input event of the agent's own work without Kafka or faust (decode,
    dedupe decision on a dict, normalise, encode): the floor under any framework."""
    from base.settings import load_settings
    from schemas.codec import make_codec
    from streams.domain.dedupe import Remembered, decide, dedupe_key, remembered_entry
    from streams.domain.normalise import normalise, webhook_outcome

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
            decision = decide(
                seen, key, now_ms, window_ms, bool(raw.get("replay")), position=position
            )
            if not decision.process:
                continue
            result = normalise(raw)
            for event in (*result.events, webhook_outcome(raw, result, now_ms)):
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


def _outputs(counter: Committed, topic: str, before: int) -> int:
    return counter.ends(topic) - before


def run_contender(name: str, race: RaceInput, at: Stack) -> ContenderResult:
    """Run one contender over the whole input and measure it; never raises for one that
    fails (the result says why)."""
    from schemas.catalog import JOIN_PARTITIONS

    # Each unique webhook becomes one billing event and one webhook outcome. Sluice's
    # outcomes go to their own topic (its output here is the billing topic); Quix writes
    # both to its one output topic.
    expected = {"sluice": race.unique, "quix": 2 * race.unique}.get(name, race.events)
    result = ContenderResult(name, CONTENDERS[name], race.events, expected)
    if name == "quix" and not quix_available():
        progress(QUIX_INSTALL_HINT)
        result.skipped = QUIX_INSTALL_HINT
        return result
    group = f"bench-{name}-{at.run_id}"
    output = SLUICE_OUTPUT if name == "sluice" else f"bench.pipeline.{at.run_id}.{name}"
    if name != "sluice":
        # The broker stamps each record as it appends it. (Quix would otherwise copy the
        # input's timestamps; faust and librdkafka stamp records when they are sent.)
        config = {"message.timestamp.type": "LogAppendTime"}
        create_topic(at.bootstrap, output, JOIN_PARTITIONS, config)
    at.groups.append(group)
    commit_group(at.bootstrap, group, race.start)
    state = str(at.workdir / f"state-{name}")
    argv = [sys.executable, "-m", "bench._race", name, at.bootstrap, group, output, state]
    argv += [at.postgres.url]
    begin, counter = end_offsets(at.bootstrap, [output]), Committed(at.bootstrap)
    try:
        progress(f"race: {result.label} over {race.events:,} events ...")
        launched = time.time()
        with running(f"agent-{name}", argv, child_env({}), at.workdir) as child:
            meter = CpuMeter({"contender": child.pid, "kafka": at.kafka.pid})
            samples: list[CpuSample] = []
            outputs = functools.partial(_outputs, counter, output, sum(begin.values()))
            try:
                follow(
                    child,
                    outputs,
                    expected,
                    _PATIENCE,
                    lambda _: samples.append(meter.sample()),
                    0.05,
                )
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}:\n{child.log_tail()}") from None
        finish = end_offsets(at.bootstrap, [output])
        result.outputs = sum(finish.values()) - sum(begin.values())
        stamps = [m.timestamp()[1] / 1000 for m in read_records(at.bootstrap, begin, finish)]
        rate = result.rate = steady_rate(stamps, expected, race.events)
    except (RuntimeError, ValueError) as exc:
        result.error = f"cannot measure: {exc}" if isinstance(exc, ValueError) else str(exc)
        return result
    finally:
        counter.close()
    result.startup_s = rate.first_at - launched
    # CPU between the samples closest to the first and the last output.
    first = min(samples, key=lambda s: abs(s.at - rate.first_at))
    last = min(samples, key=lambda s: abs(s.at - rate.last_at))
    result.cpu_percent, result.cpu_wait_percent = between(first, last)
    window = last.at - first.at
    if "contender" in result.cpu_percent and rate.events_per_s * window > 0:
        used_s = result.cpu_percent["contender"] / 100 * window
        result.cpu_us_per_event = used_s / (rate.events_per_s * window) * 1e6
    per_event = f"{result.cpu_us_per_event:,.0f} us CPU per event"
    progress(f"{result.label}: {result.events_per_s:,.0f} events/s, {per_event}")
    return result


# -- the contenders, each in its own process ------------------------------------------------


def run_bare(bootstrap: str, group: str, output: str) -> None:
    from confluent_kafka import Consumer, Producer

    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda sig, _frame: stopping.append(sig))
    config = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    consumer = Consumer(config | {"auto.offset.reset": "earliest"})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    consumer.subscribe([INPUT_TOPIC])
    uncommitted, last_commit = False, time.monotonic()
    try:
        while True:
            for message in consumer.consume(num_messages=1000, timeout=0.1):
                if message.error() is None:  # partition EOF and the like; errors raise
                    produce(producer, output, message.key(), message.value(), message.headers())
                    uncommitted = True
            producer.poll(0)
            if uncommitted and (stopping or time.monotonic() - last_commit >= COMMIT_INTERVAL_S):
                producer.flush()
                consumer.commit(asynchronous=False)
                uncommitted, last_commit = False, time.monotonic()
            if stopping:
                break
    finally:
        producer.flush(10)
        consumer.close()


def run_sluice(bootstrap: str, group: str, state_dir: Path, database_url: str) -> None:
    import faust

    from base.logs import configure_logging
    from base.settings import WORKER_REQUIRED, load_settings
    from streams.app import create_worker

    settings = load_settings(
        # DATABASE_URL is required by the worker; the normalise agent never connects.
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DATABASE_URL": database_url,
            "SLUICE_STATE_DIR": str(state_dir),
        },
        require=WORKER_REQUIRED,
    )
    configure_logging(settings.log_level)
    app = create_worker(settings, app_id=group).topology.app
    for name in [name for name in app.agents if name != AGENT]:
        del app.agents[name]  # never started, so their topics are never subscribed
    faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()


def quix_dedupe_normalise(codec: Any, window_ms: int, message_context: Any) -> Any:
    """The per-message step of the Quix pipeline (``apply(..., stateful=True,
    metadata=True, expand=True)``): the normalise agent's ``handle`` for valid input."""
    from schemas.headers import TRACEPARENT, record_headers
    from streams.domain.dedupe import decide, dedupe_key, remembered_entry
    from streams.domain.dlq import REPLAY_HEADER
    from streams.domain.normalise import normalise, webhook_outcome
    from streams.records import header_value

    def step(value: bytes, _key: Any, _ts: int, headers: Any, state: Any) -> list[KafkaRecord]:
        pairs: list[tuple[str, bytes]] = list(headers or ())
        context = message_context()
        position = f"{context.topic}[{context.partition}]@{context.offset}"
        raw = codec.decode(value, topic=INPUT_TOPIC).record
        key = dedupe_key(raw["provider"], raw["providerEventId"])
        replay = bool(raw.get("replay")) or header_value(pairs, REPLAY_HEADER) == "1"
        remembered = state.get(key)
        seen = {} if remembered is None else {key: remembered}
        decision = decide(seen, key, int(time.time() * 1000), window_ms, replay, position=position)
        if not decision.process:
            # Logged like the agent does (the worker logs at INFO by default).
            log.info(
                "duplicate webhook skipped",
                extra={"position": position, "event_id": raw["eventId"], "key": key},
            )
            return []
        outputs: list[KafkaRecord] = []
        result = normalise(raw)
        traceparent = header_value(pairs, TRACEPARENT)
        # The same outputs as the agent: the domain events and the webhook's outcome.
        for event in (*result.events, webhook_outcome(raw, result, int(time.time() * 1000))):
            encoded = codec.encode(event.topic, event.record)
            headers = record_headers(event.topic, event.record, traceparent=traceparent)
            outputs.append(KafkaRecord(event.key.encode(), encoded, headers))
        if decision.remember_ms is not None:
            state.set(key, remembered_entry(decision.remember_ms, position))
        return outputs

    return step


def run_quix(bootstrap: str, group: str, output: str, state_dir: Path) -> None:
    # Imported by name: quixstreams is optional, and its types stay out of mypy's view.
    quix: Any = importlib.import_module("quixstreams")
    serializers: Any = importlib.import_module("quixstreams.models.serializers")

    from base.logs import configure_logging
    from base.settings import load_settings
    from schemas.codec import make_codec

    settings = load_settings({})
    configure_logging(settings.log_level)
    payload = type(
        "PayloadSerializer",
        (serializers.Serializer,),
        {"__call__": lambda self, value, ctx: value.value},
    )
    app = quix.Application(
        broker_address=bootstrap,
        consumer_group=group,
        loglevel="WARNING",
        auto_offset_reset="earliest",
        state_dir=str(state_dir),
    )
    source = app.topic(INPUT_TOPIC, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(output, key_serializer="bytes", value_serializer=payload())
    codec, window_ms = (
        make_codec(settings.schema_registry_url),
        int(settings.dedupe_window_s * 1000),
    )
    sdf = app.dataframe(source).apply(
        quix_dedupe_normalise(codec, window_ms, quix.message_context),
        stateful=True,
        metadata=True,
        expand=True,
    )
    sdf = sdf.set_headers(lambda value, _key, _ts, _headers: value.headers)
    sdf.to_topic(sink, key=lambda value: value.key)
    app.run()


if __name__ == "__main__":  # KIND BOOTSTRAP GROUP OUTPUT STATE_DIR DATABASE_URL
    kind, bootstrap, group, output, state_dir, database_url = sys.argv[1:7]
    if kind == "bare":
        run_bare(bootstrap, group, output)
    elif kind == "sluice":
        run_sluice(bootstrap, group, Path(state_dir), database_url)
    else:
        run_quix(bootstrap, group, output, Path(state_dir))
