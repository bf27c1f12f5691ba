"""Composition root of the worker: builds the faust app, topology and agents from settings.

Nothing connects at import time. ``sluice worker`` calls ``run_worker``; tests run that
command as a real process so they can SIGKILL it.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import faust
import mode
import mode.loop

from base.clock import Clock, SystemClock
from base.errors import ConfigError
from base.logs import WORKER_READY_EVENT
from base.metrics import MetricName, MetricsServer
from base.partners import load_partners
from base.settings import Settings
from base.sinks import observe_sinks
from connectors.kafka_admin import create_changelog_topics, create_topics
from connectors.kafka_lag import ConsumerLag
from connectors.kafka_outbox import KafkaOutbox
from connectors.postgres import PostgresProjection
from connectors.redis_cache import RedisCache
from connectors.runtime_config import ConfigFollower, config_topic_spec
from schemas.catalog import topic_spec
from schemas.codec import make_codec
from schemas.runtime_keys import RETRY_DELAYS_KEY, declared_keys
from streams import retention
from streams.agents import (
    deliver_leads,
    index_search,
    invalidate_cache,
    join_orders,
    normalise_webhooks,
    notify_lifecycle,
    project_billing,
    project_contacts,
    project_orders,
    project_webhooks,
    retry_delayed,
    send_notifications,
    stripe_calls,
)
from streams.context import WorkerContext, channel_senders
from streams.domain.retry import RetryPolicy
from streams.effects import EffectRunner
from streams.topology import build_topology
from streams.transport import SluiceApp

__all__ = ["AGENT_MODULES", "create_worker", "resolve_schemas", "retry_policy", "run_worker"]

log = logging.getLogger(__name__)

# Every agent module; each has ``register(ctx)``. Order is irrelevant to faust.
AGENT_MODULES = (
    normalise_webhooks,
    project_webhooks,
    project_billing,
    join_orders,
    stripe_calls,
    deliver_leads,
    project_contacts,
    send_notifications,
    notify_lifecycle,
    project_orders,
    index_search,
    invalidate_cache,
    retry_delayed,
    retention,  # not an agent: the leader's periodic purge of expired Postgres rows
)


def retry_policy(settings: Settings, runtime: ConfigFollower | None = None) -> RetryPolicy:
    """The retry schedule: ``retry.delays`` when the runtime config has it set (read at
    start-up only: the delay topics a worker reads are fixed when it starts), else the
    settings' (unset: the catalog's default)."""
    delays = settings.retry_delays
    if runtime is not None and runtime.entry(RETRY_DELAYS_KEY) is not None:
        delays = runtime.value(RETRY_DELAYS_KEY)
        log.info("retry schedule from the runtime config", extra={"delays": list(delays)})
    if delays is None:
        return RetryPolicy(max_attempts=settings.retry_max_attempts)
    try:
        return RetryPolicy(delays, settings.retry_max_attempts)
    except ConfigError as exc:
        if runtime is None:
            raise
        # A runtime value the worker cannot apply is logged, never fatal.
        log.warning("runtime retry schedule not applied", extra={"error": str(exc)})
        return retry_policy(settings)


def create_worker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    app_id: str | None = None,
    follow_config: bool = False,
) -> WorkerContext:
    """Build the faust app with every agent registered; nothing is started yet, except,
    with ``follow_config``, the runtime config follower (``SLUICE_CONFIG_TOPIC``): it
    reads the topic to its end first (bounded), so the worker starts from the latest
    values, its retry schedule included. Without it every key stays at its default.

    :param app_id: overrides ``settings.app_id`` (the benchmarks run one group per run).
    """
    if not settings.database_url:
        raise ConfigError("missing required setting DATABASE_URL")
    # Before anything else: a bad partner entry stops the worker with one line per problem.
    partners = load_partners(settings.partners_file, settings.partners)
    codec = make_codec(settings.schema_registry_url)
    runtime = ConfigFollower(
        settings.kafka_bootstrap_servers,
        codec,
        declared_keys(settings, partners),
        topic=settings.config_topic,
    )
    if follow_config:
        create_topics(
            settings.kafka_bootstrap_servers,
            [config_topic_spec(settings.config_topic)],
            replication_factor=settings.replication_factor,
        )
        runtime.start()
    policy = retry_policy(settings, runtime)
    senders = channel_senders(settings)
    if settings.cache_keys and not settings.redis_url:
        raise ConfigError(
            "malformed setting SLUICE_CACHE_KEYS: needs REDIS_URL (the cache it invalidates)"
        )
    cache = RedisCache(settings.redis_url) if settings.redis_url else None
    app = SluiceApp(
        app_id or settings.app_id,
        fetch_max_wait_s=settings.consumer_fetch_wait_s,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap_servers.split(",")],
        store="rocksdb://",
        datadir=str(settings.state_dir),
        processing_guarantee=settings.processing_guarantee,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_request_timeout=settings.broker_request_timeout_s,
        key_serializer="json",
        value_serializer="json",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # Changelog writes (the only records faust still produces) batch for up to 10 ms:
        # nobody waits on them, and the commit barrier flushes them anyway.
        producer_linger=0.01,
        web_enabled=False,
        autodiscover=False,
        # An exception that escapes an agent (a bug, a tripped dead-letter guard) stops
        # the worker. faust's default supervisor restarts the agent instead, and its
        # stream iterators ack the event in hand on the way out, so the failed record's
        # offset would commit although it was neither processed, retried nor
        # dead-lettered. Our agents ack only after their loop body returned
        # (streams/agents/acking.py); the process manager restarts the worker, which
        # consumes the record again.
        agent_supervisor=mode.CrashingSupervisor,
    )
    topology = build_topology(app, policy)
    clock = clock or SystemClock()
    outbox = KafkaOutbox(settings.kafka_bootstrap_servers)
    app.barriers.append(outbox.flush)
    ctx = WorkerContext(
        settings=settings,
        codec=codec,
        clock=clock,
        topology=topology,
        outbox=outbox,
        runner=EffectRunner(outbox=outbox, codec=codec, policy=policy, clock=clock),
        projection=PostgresProjection(settings.database_url),
        search_index_prefix=settings.search_index_prefix,
        partners=partners,
        senders=senders,
        cache=cache,
        runtime=runtime,
    )
    for module in AGENT_MODULES:
        module.register(ctx)

    # After the consumer stopped (no agent is mid-effect), before the final flush.
    async def close_connectors(sender: Any, *_: Any, **__: Any) -> None:
        await ctx.close()

    # mode's signal typing does not admit an async receiver, which it supports.
    app.on_before_shutdown.connect(cast(Any, close_connectors))

    return ctx


def ensure_worker_topics(ctx: WorkerContext) -> None:
    """Create the topics this worker reads and writes if missing (retry topics follow
    the configured schedule, which may differ from the catalog's default)."""
    names = {name for wire in ctx.topology.wires for name in (*wire.reads, *wire.writes)}
    create_topics(
        ctx.settings.kafka_bootstrap_servers,
        [topic_spec(name) for name in sorted(names)],
        replication_factor=ctx.settings.replication_factor,
    )
    # The table changelogs too, before faust starts: workers of a new app id starting
    # together (--processes N, several machines) otherwise race to declare them, and one
    # whose metadata still shows a changelog without partitions crashes its agent
    # (faust's PartitionsMismatch).
    create_changelog_topics(
        ctx.settings.kafka_bootstrap_servers,
        {
            table.changelog_topic.get_topic_name(): table.changelog_topic.partitions
            for table in ctx.topology.app.tables.values()
        },
        replication_factor=ctx.settings.replication_factor,
    )


def observe_worker(ctx: WorkerContext) -> ConsumerLag:
    """Add to the worker's metrics what is read when scraped (its group's consumer lag on
    the topics it reads, the retry heads' overdue) and time its sink calls; the lag
    reader is returned for closing."""
    metrics = ctx.runner.metrics
    observe_sinks(metrics)
    reads = {name for wire in ctx.topology.wires for name in wire.reads}
    lag = ConsumerLag(ctx.settings.kafka_bootstrap_servers, ctx.topology.app.conf.id, reads)
    metrics.read_gauge(MetricName.CONSUMER_LAG, lag.samples)
    metrics.read_gauge(
        MetricName.RETRY_HEAD_OVERDUE, lambda: ctx.retry_heads.overdue(ctx.clock.time())
    )
    return lag


def _serve_metrics(ctx: WorkerContext, settings: Settings) -> MetricsServer | None:
    """The worker's /metrics on ``SLUICE_WORKER_METRICS_PORT``, when set."""
    port = settings.worker_metrics_port
    if port is None:
        return None
    observe_worker(ctx)
    try:
        server = MetricsServer(ctx.runner.metrics, settings.worker_metrics_host, port)
    except OSError as exc:
        raise ConfigError(
            f"malformed setting SLUICE_WORKER_METRICS_PORT: cannot listen on "
            f"{settings.worker_metrics_host}:{port}: {exc.strerror or exc}"
        ) from None
    log.info("worker metrics served", extra={"port": server.port})
    return server


def resolve_schemas(ctx: WorkerContext) -> None:
    """Resolve every schema id now (registry mode: register them), before faust starts its
    event loop, so that no agent's first record waits on the registry. Catalog mode: no
    network.

    :raises TransientError: / :raises PermanentError: the registry is unreachable or
        refuses a schema: the worker does not start.
    """
    ctx.codec.prepare()


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT (faust's worker owns the event loop and the signals)."""
    # uvloop before anything asks for a loop: faust and mode create theirs lazily.
    mode.loop.use("uvloop")
    ctx = create_worker(settings, follow_config=True)
    ensure_worker_topics(ctx)
    resolve_schemas(ctx)
    # override_logging=False: faust keeps the process's own log handler (base/logs.py)
    # instead of installing its plain-text one.
    worker = _Worker(ctx.topology.app, quiet=True, override_logging=False)
    metrics_server = _serve_metrics(ctx, settings)
    try:
        worker.execute_from_commandline()
    finally:
        if metrics_server is not None:
            metrics_server.close()


class _Worker(faust.Worker):
    """faust's worker, saying when it consumes (``sluice dev`` waits for that line), without
    its terminal spinner: it writes cursor escapes to stdout, outside the log lines (faust
    drops it only when it configures logging itself, which ours replaces)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()  # partitions assigned, tables recovered
        log.info("worker ready", extra={"event": WORKER_READY_EVENT})
