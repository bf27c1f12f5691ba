"""The three processors ``bench.pipeline`` races on the same input, one per process.

    python -m bench._pipeline_agents {bare,sluice,quix} --bootstrap HOST:PORT --group G
        [--output TOPIC] [--state-dir DIR] [--database-url URL] [--profile FILE]

Each reads ``webhooks.stripe`` from its group's committed offsets (the bench commits
them first, at the start of its input) and runs until SIGTERM:

- ``bare``: the ceiling. confluent-kafka consume → produce the bytes unchanged to
  ``--output`` → commit (every second, after a flush: at-least-once, like the others).
- ``sluice``: the worker's real ``normalise_webhooks`` agent and nothing else: the faust
  app ``streams.app.create_worker`` builds (production settings, RocksDB table), with
  every other agent taken out before it starts. Writes ``billing.payment.succeeded``.
- ``quix``: the same dedupe and normalisation written with Quix Streams: RocksDB state
  keyed like the agent's table (``provider:eventId``; Quix prefixes the message key,
  which is the provider event id), the same ``decide``, ``normalise`` and codec, the
  same output key and headers, to ``--output``. Invalid input is not dead-lettered
  (the bench sends none). Needs ``quixstreams``, which is not a project dependency.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench._pipeline_input import INPUT_TOPIC

__all__ = ["AGENT", "COMMIT_INTERVAL_S", "main"]

#: The one agent the ``sluice`` contender keeps.
AGENT = "normalise_webhooks"
#: How often the bare loop commits (faust's ``broker_commit_interval`` in the worker).
COMMIT_INTERVAL_S = 1.0
_BATCH = 1000

log = logging.getLogger(__name__)


# -- bare confluent-kafka loop -----------------------------------------------------------


class _Stop:
    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)
        signal.signal(signal.SIGINT, self._request)

    def _request(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True


def run_bare(bootstrap: str, group: str, output: str) -> None:
    from confluent_kafka import Consumer, Producer

    stop = _Stop()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "none",
        }
    )
    consumer.subscribe([INPUT_TOPIC])
    uncommitted = False
    last_commit = time.monotonic()
    try:
        while not stop.requested:
            for message in consumer.consume(num_messages=_BATCH, timeout=0.1):
                if message.error() is not None:
                    continue  # partition EOF and the like; real errors raise in consume
                while True:
                    try:
                        producer.produce(
                            output,
                            value=message.value(),
                            key=message.key(),
                            headers=message.headers(),
                        )
                        break
                    except BufferError:  # queue full: serve delivery reports, then retry
                        producer.poll(0.05)
                uncommitted = True
            producer.poll(0)
            if uncommitted and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                producer.flush()
                consumer.commit(asynchronous=False)
                uncommitted, last_commit = False, time.monotonic()
        if uncommitted:
            producer.flush()
            consumer.commit(asynchronous=False)
    finally:
        producer.flush(10)
        consumer.close()


# -- Sluice's normalise agent ------------------------------------------------------------


def run_sluice(bootstrap: str, group: str, state_dir: Path, database_url: str) -> None:
    import faust

    from base.logs import configure_logging
    from base.settings import WORKER_REQUIRED, load_settings
    from streams.app import create_worker

    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            # Required by the worker; the normalise agent never connects to it.
            "DATABASE_URL": database_url,
            "SLUICE_STATE_DIR": str(state_dir),
        },
        require=WORKER_REQUIRED,
    )
    configure_logging(settings.log_level)
    ctx = create_worker(settings, env={}, app_id=group)
    app = ctx.topology.app
    for name in [name for name in app.agents if name != AGENT]:
        del app.agents[name]  # never started, so their topics are never subscribed
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()


# -- Quix Streams --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Out:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def quix_dedupe_normalise(codec: Any, window_ms: int, message_context: Any) -> Any:
    """The per-message step of the Quix pipeline (``apply(..., stateful=True,
    metadata=True, expand=True)``): the normalise agent's ``handle`` for valid input."""
    from schemas.headers import record_headers
    from streams.domain.dedupe import decide, dedupe_key, remembered_entry
    from streams.domain.dlq import REPLAY_HEADER
    from streams.domain.normalise import normalise
    from streams.records import header_value

    def step(value: bytes, _key: Any, _ts: int, headers: Any, state: Any) -> list[_Out]:
        pairs: list[tuple[str, bytes]] = list(headers or ())
        context = message_context()
        position = f"{context.topic}[{context.partition}]@{context.offset}"
        raw = codec.decode(value, topic=INPUT_TOPIC).record
        key = dedupe_key(raw["provider"], raw["providerEventId"])
        replay = bool(raw.get("replay")) or header_value(pairs, REPLAY_HEADER) == "1"
        remembered = state.get(key)
        seen = {} if remembered is None else {key: remembered}
        now_ms = int(time.time() * 1000)
        decision = decide(seen, key, now_ms, window_ms, replay, position=position)
        if not decision.process:
            # Logged like the agent does (the worker logs at INFO by default).
            log.info(
                "duplicate webhook skipped",
                extra={"position": position, "event_id": raw["eventId"], "key": key},
            )
            return []
        outputs: list[_Out] = []
        for event in normalise(raw).events:
            traceparent = header_value(pairs, "traceparent")
            out_headers = record_headers(event.topic, event.record, traceparent=traceparent)
            outputs.append(
                _Out(event.key.encode(), codec.encode(event.topic, event.record), out_headers)
            )
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
    payload_serializer = type(
        "PayloadSerializer",
        (serializers.Serializer,),
        {"__call__": lambda self, value, ctx: value.value},
    )
    app = quix.Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=str(state_dir),
        loglevel="WARNING",
    )
    source = app.topic(INPUT_TOPIC, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(output, key_serializer="bytes", value_serializer=payload_serializer())
    step = quix_dedupe_normalise(
        make_codec(settings.schema_registry_url),
        int(settings.dedupe_window_s * 1000),
        quix.message_context,
    )
    sdf = app.dataframe(source)
    sdf = sdf.apply(step, stateful=True, metadata=True, expand=True)
    sdf = sdf.set_headers(lambda value, _key, _ts, _headers: value.headers)
    sdf.to_topic(sink, key=lambda value: value.key)
    app.run()


# -- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._pipeline_agents")
    parser.add_argument("kind", choices=("bare", "sluice", "quix"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True, help="consumer group (faust: the app id)")
    parser.add_argument("--output", default=None, help="output topic (bare, quix)")
    parser.add_argument("--state-dir", type=Path, default=None, help="state (sluice, quix)")
    parser.add_argument("--database-url", default=None, help="required by the worker (sluice)")
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile stats here")
    args = parser.parse_args(argv)
    if args.profile is None:
        _run(parser, args)
        return 0
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        _run(parser, args)
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.kind == "bare":
        if not args.output:
            parser.error("bare needs --output")
        run_bare(args.bootstrap, args.group, args.output)
    elif args.kind == "sluice":
        if args.state_dir is None or not args.database_url:
            parser.error("sluice needs --state-dir and --database-url")
        run_sluice(args.bootstrap, args.group, args.state_dir, args.database_url)
    else:
        if args.state_dir is None or not args.output:
            parser.error("quix needs --state-dir and --output")
        run_quix(args.bootstrap, args.group, args.output, args.state_dir)


if __name__ == "__main__":
    raise SystemExit(main())
