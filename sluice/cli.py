"""The ``sluice`` command: one entry point for every process and operator task."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from base.errors import ConfigError, SluiceError
from base.logs import LogFormat, configure_logging, logging_configured
from base.settings import INGRESS_REQUIRED, WORKER_REQUIRED, Settings, load_settings
from base.tracing import configure_tracing

if TYPE_CHECKING:
    from ingress.webhook_replay import ReplayRequest

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        _last_words(exc)
        return 2
    except SluiceError as exc:
        _last_words(exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _last_words(exc: Exception) -> None:
    """Why the command stops: a log line once the command set up logging (a server's
    every line is one format), else ``sluice: ...`` on stderr."""
    if logging_configured():
        logging.getLogger("sluice").error(str(exc), extra={"error_class": type(exc).__name__})
    else:
        print(f"sluice: {exc}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="run the whole pipeline on the embedded stack")
    dev.add_argument("--data-dir", type=Path, default=Path(".data/dev"))
    dev.add_argument(
        "--with-search",
        action="store_true",
        help="also start Elasticsearch (ELASTICSEARCH_URL) unless that is set",
    )
    dev.add_argument(
        "--log-format",
        choices=("auto", "json", "human"),
        default="auto",
        help="every output line as JSON or human-readable; auto: human at a terminal",
    )
    dev.set_defaults(run=_dev)

    ingress = commands.add_parser("ingress", help="run the webhook and internal HTTP listeners")
    ingress.set_defaults(run=_ingress)

    topics = commands.add_parser("topics", help="apply or show the topic catalog")
    topic_commands = topics.add_subparsers(required=True, metavar="ACTION")
    topic_commands.add_parser("create", help="create missing catalog topics").set_defaults(
        run=_topics_create
    )
    topic_commands.add_parser(
        "list", help="topics on the cluster: name, partitions, built|planned|internal"
    ).set_defaults(run=_topics_list)

    worker = commands.add_parser("worker", help="run the stream-processing worker (faust)")
    worker.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes in the same consumer group, each with its own state "
        "directory SLUICE_STATE_DIR/w<i>; the same command on every machine (default 1)",
    )
    worker.set_defaults(run=_worker)

    migrate = commands.add_parser("migrate", help="apply Postgres migrations")
    migrate.set_defaults(run=_migrate)

    dlq = commands.add_parser("dlq", help="inspect and replay dead letters")
    dlq_commands = dlq.add_subparsers(required=True, metavar="ACTION")
    dlq_commands.add_parser("list", help="dead letters as JSON lines").set_defaults(run=_dlq_list)
    dlq_replay = dlq_commands.add_parser("replay", help="send dead letters back to their topic")
    dlq_replay.add_argument("--event-id", action="append", default=[], help="repeatable")
    dlq_replay.add_argument("--origin-topic", default=None)
    dlq_replay.add_argument("--all", action="store_true", help="replay every dead letter")
    dlq_replay.set_defaults(run=_dlq_replay)

    replay = commands.add_parser(
        "replay", help="re-publish stored raw webhooks (webhook_events) as replays"
    )
    replay.add_argument("--provider", required=True, help="stripe or razorpay")
    replay.add_argument("--since", default=None, help="ISO 8601 with offset: received at or after")
    replay.add_argument("--until", default=None, help="ISO 8601 with offset: received before")
    replay.add_argument(
        "--event-id", action="append", default=[], help="a provider event id (repeatable)"
    )
    replay.set_defaults(run=_replay)

    tail = commands.add_parser("tail", help="decode a topic's records to JSON lines")
    tail.add_argument("topic")
    tail.add_argument("--from-end", action="store_true", help="only records from now on")
    tail.add_argument("-n", "--max", type=int, default=None, help="stop after N records")
    tail.add_argument(
        "--idle-timeout", type=float, default=None, help="stop after S seconds without records"
    )
    tail.set_defaults(run=_tail)

    leads = commands.add_parser("leads", help="try the partner leads route by hand")
    lead_commands = leads.add_subparsers(required=True, metavar="ACTION")
    send = lead_commands.add_parser(
        "send", help="post a lead as a partner, signed with its registry entry"
    )
    send.add_argument("--partner", required=True, metavar="ID", help="a partner of the registry")
    send.add_argument(
        "--body",
        type=Path,
        default=None,
        metavar="FILE",
        help="the request body, sent as it is (default: a demo lead with a fresh id)",
    )
    send.add_argument(
        "--url",
        default=None,
        help="the partner leads route (default: loopback, INGRESS_PUBLIC_PORT)",
    )
    send.set_defaults(run=_leads_send)
    return parser


def _ingress(_args: argparse.Namespace) -> int:
    from ingress.server import run_ingress

    settings = load_settings(require=INGRESS_REQUIRED)
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing("ingress")
    # uvloop: libuv's event loop, cheaper per callback than asyncio's own (see
    # docs/decisions.md, Worker speed).
    uvloop.run(_until_signalled(lambda stop: run_ingress(settings, stop)))
    return 0


def _worker(args: argparse.Namespace) -> int:
    if args.processes < 1:
        raise ConfigError("worker --processes must be at least 1")
    # Validated here once, so a bad setting stops the supervisor with one line instead of
    # every child printing it.
    settings = load_settings(require=WORKER_REQUIRED)
    configure_logging(settings.log_level, settings.log_format)
    if args.processes > 1:
        from sluice.supervise import run_worker_processes

        return run_worker_processes(
            args.processes, settings.state_dir, metrics_port=settings.worker_metrics_port
        )

    from streams.app import run_worker

    configure_tracing("worker")
    run_worker(settings)
    return 0


def _migrate(_args: argparse.Namespace) -> int:
    from connectors.migrate import main_migrate

    settings = load_settings(require={"DATABASE_URL"})
    assert settings.database_url is not None
    main_migrate(settings.database_url)
    return 0


def _dlq_list(_args: argparse.Namespace) -> int:
    from schemas.codec import make_codec
    from sluice.dlq import list_lines, print_dead_letters

    settings = load_settings(require={"KAFKA_BOOTSTRAP_SERVERS"})
    codec = make_codec(settings.schema_registry_url)
    with contextlib.suppress(BrokenPipeError):
        print_dead_letters(list_lines(settings.kafka_bootstrap_servers, codec), sys.stdout)
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    from schemas.codec import make_codec
    from sluice.dlq import replay

    if not (args.event_id or args.origin_topic or args.all):
        raise ConfigError("dlq replay needs --event-id, --origin-topic or --all")
    settings = load_settings(require={"KAFKA_BOOTSTRAP_SERVERS"})
    replayed = replay(
        settings.kafka_bootstrap_servers,
        make_codec(settings.schema_registry_url),
        event_ids=args.event_id,
        origin_topic=args.origin_topic,
    )
    print(f"replayed {len(replayed)} dead letters")
    return 0


def _replay(args: argparse.Namespace) -> int:
    """``sluice replay``: the same selection and records as ``POST
    /v1/admin/webhooks/replay`` (``ingress.webhook_replay``), without its per-call bound:
    a range is walked in chunks."""
    from base.errors import InvalidEvent
    from ingress.admin_api import parse_replay_body

    body: dict[str, object] = {"provider": args.provider}
    if args.event_id:
        body["eventIds"] = args.event_id
    for name in ("since", "until"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    try:
        request = parse_replay_body(body)
    except InvalidEvent as exc:
        raise ConfigError(f"replay: {exc}") from None
    settings = load_settings(require={"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"})
    configure_logging(settings.log_level, settings.log_format)
    count = asyncio.run(_run_replay(settings, request))
    print(f"replayed {count} webhooks (replay id {request.replay_id})")
    return 0


async def _run_replay(settings: Settings, request: ReplayRequest) -> int:
    from connectors.webhook_log import WebhookLogStore
    from ingress.publisher import KafkaPublisher
    from ingress.webhook_replay import UnknownEvents, replay_webhooks
    from schemas.codec import make_codec

    assert settings.database_url is not None
    store = WebhookLogStore(settings.database_url)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        timeout_s=settings.publish_timeout_s,
        client_id="sluice-replay",
    )
    try:
        return await replay_webhooks(
            request,
            store=store,
            publisher=publisher,
            codec=make_codec(settings.schema_registry_url),
            max_events=None,
        )
    except UnknownEvents as exc:
        raise ConfigError(f"replay: {exc}") from None
    finally:
        await publisher.close()
        await store.close()


def _dev(args: argparse.Namespace) -> int:
    from sluice.dev import run_dev

    log_format: LogFormat = args.log_format
    if args.log_format == "auto":
        log_format = "human" if sys.stderr.isatty() else "json"
    configure_logging("INFO", log_format)
    asyncio.run(
        _until_signalled(
            lambda stop: run_dev(
                args.data_dir, stop, with_search=args.with_search, log_format=log_format
            )
        )
    )
    return 0


def _topics_create(_args: argparse.Namespace) -> int:
    from connectors.kafka_admin import create_topics
    from schemas.catalog import all_topics

    settings = load_settings(require={"KAFKA_BOOTSTRAP_SERVERS"})
    created = create_topics(settings.kafka_bootstrap_servers, all_topics())
    for name in created:
        print(f"created {name}")
    print(f"{len(created)} created, {len(all_topics()) - len(created)} already present")
    return 0


def _topics_list(_args: argparse.Namespace) -> int:
    from connectors.kafka_admin import list_topics
    from sluice.topics import topic_lines, topics_in_use

    settings = load_settings(require={"KAFKA_BOOTSTRAP_SERVERS"})
    for line in topic_lines(list_topics(settings.kafka_bootstrap_servers), topics_in_use()):
        print(line)
    return 0


def _tail(args: argparse.Namespace) -> int:
    from schemas.codec import make_codec
    from sluice.tail import tail

    settings = load_settings(require={"KAFKA_BOOTSTRAP_SERVERS"})
    with contextlib.suppress(BrokenPipeError):  # `sluice tail t | head` is normal use
        tail(
            settings.kafka_bootstrap_servers,
            args.topic,
            make_codec(settings.schema_registry_url),
            sys.stdout,
            from_beginning=not args.from_end,
            max_records=args.max,
            idle_timeout_s=args.idle_timeout,
        )
    return 0


def _leads_send(args: argparse.Namespace) -> int:
    import datetime as dt

    from base.partners import load_partners
    from sluice.lead_send import LEADS_PATH, demo_lead, expected_lead_id, send_lead

    settings = load_settings()
    partner = load_partners(settings.partners_file, settings.partners).get(args.partner)
    if partner is None:
        raise ConfigError(f"leads send: no partner {args.partner!r} in the registry")
    body = args.body.read_bytes() if args.body else demo_lead(partner.id)
    url = args.url or f"http://127.0.0.1:{settings.public_port}{LEADS_PATH}"
    status, answer = send_lead(url, partner, body, dt.datetime.now(dt.UTC))
    print(answer)
    lead = expected_lead_id(body)
    if lead is not None:
        print(f"lead id {lead}  (GET /internal/v1/leads/{lead})", file=sys.stderr)
    return 0 if 200 <= status < 300 else 1


async def _until_signalled(start: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``start(stop_event)`` until SIGINT/SIGTERM sets the event."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await start(stop)
