"""Twelve-factor settings, read once from the environment and validated at start-up.

A missing or malformed required setting raises ``ConfigError`` whose message is one line
naming the setting; the CLI prints it and exits, so an operator never has to read a
traceback to learn which variable to set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from base.errors import ConfigError

__all__ = ["INGRESS_REQUIRED", "WORKER_REQUIRED", "Settings", "load_settings", "parse_duration"]

T = TypeVar("T")

# Settings without which the ingress cannot do its one job safely.
INGRESS_REQUIRED = frozenset(
    {"KAFKA_BOOTSTRAP_SERVERS", "STRIPE_WEBHOOK_SECRET", "RAZORPAY_WEBHOOK_SECRET"}
)

# The worker turns raw webhooks into Postgres state.
WORKER_REQUIRED = frozenset({"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"})

ONE_MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything a Sluice process needs to know about its surroundings.

    Secrets are tuples: a comma-separated value lists several, so a secret can be
    rotated without downtime (old and new accepted until the old one is removed).
    """

    kafka_bootstrap_servers: str = ""
    schema_registry_url: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    elasticsearch_url: str | None = None
    stripe_api_key: str | None = None
    # A Stripe-compatible server (localstripe in dev and tests); None: the stripe
    # library's default, Stripe itself.
    stripe_api_base: str | None = None
    stripe_webhook_secrets: tuple[str, ...] = ()
    razorpay_webhook_secrets: tuple[str, ...] = ()
    internal_api_tokens: tuple[str, ...] = ()
    admin_api_tokens: tuple[str, ...] = ()
    public_host: str = "0.0.0.0"  # noqa: S104 - the public listener is meant to face the internet
    public_port: int = 8080
    internal_host: str = "127.0.0.1"
    internal_port: int = 8081
    internal_tls_cert: Path | None = None
    internal_tls_key: Path | None = None
    internal_tls_client_ca: Path | None = None
    max_body_bytes: int = ONE_MIB
    publish_timeout_s: float = 5.0
    state_dir: Path = Path(".data/state")
    log_level: str = "INFO"
    log_format: str = "json"  # or "human": one readable line per record (base/logs.py)
    # Worker: at_least_once, the only guarantee accepted; exactly_once is refused (see
    # load_settings). Correctness never depends on it: sinks are idempotent.
    processing_guarantee: str = "at_least_once"
    dedupe_window_s: float = 30 * 24 * 3600.0
    dedupe_purge_every_s: float = 60.0
    # Entries one purge step reads (bounds the event-loop time and memory of a purge).
    dedupe_purge_slice: int = 2000
    replication_factor: int = 1
    worker_web_port: int | None = None
    worker_batch_size: int = 500
    # The longest a batch keeps taking records while its agent is behind (see
    # streams/agents/batched.py); at the head of its input a batch never waits.
    worker_batch_within_s: float = 0.2
    # How long the worker's consumer lets the broker hold a fetch open (see
    # streams/transport.py for why faust's 1.5 s made every hop slow on a busy machine).
    consumer_fetch_wait_s: float = 0.05
    # Scale-out (several worker processes in one consumer group). A standby copy of each
    # table partition lets a survivor take over a dead worker's partitions without
    # replaying their changelogs from the start. Off by default: with today's small tables
    # the measured takeover gain is within noise, and one test run with a standby saw a
    # two-worker group stop processing without an error, not yet explained
    # (docs/decisions.md, Scale-out).
    standby_replicas: int = 0
    # How fast the group notices a worker that died without leaving (SIGKILL, lost
    # machine): its partitions move after the session timeout. 6 s is the broker's
    # minimum by default (group.min.session.timeout.ms); heartbeats at a third of it or
    # less, as Kafka advises. faust refuses a session timeout above the request timeout.
    broker_session_timeout_s: float = 6.0
    broker_heartbeat_interval_s: float = 1.0
    broker_request_timeout_s: float = 90.0
    # Per-partner settings (PARTNER_<ID>_*) are kept raw here; the leads issue gives them shape.
    # Request/reply (ingress waits for the worker's answer this long, then 202 + taskId).
    reply_timeout_s: float = 5.0
    # Orders: how long a payment may wait for its order before it is reported orphaned,
    # and how often held payments are checked.
    orphan_hold_s: float = 3600.0
    orphan_check_every_s: float = 30.0
    # Retention of processed_events and webhook_events (connectors/postgres_retention.py):
    # rows older than this are purged every interval, in batches (one commit each).
    # Never below the dedupe window: the rows back it up.
    postgres_retention_s: float = 35 * 24 * 3600.0
    postgres_purge_every_s: float = 3600.0
    postgres_purge_batch: int = 1000
    partners: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def redacted(self) -> dict[str, str]:
        """The settings as strings with every secret replaced, safe for a log line."""
        shown: dict[str, str] = {}
        for name, value in vars(self).items():
            secret = name.endswith(("secrets", "tokens", "_key"))
            shown[name] = "***" if secret and value else str(value)
        return shown


def load_settings(
    env: Mapping[str, str] | None = None, *, require: Collection[str] = ()
) -> Settings:
    """Build ``Settings`` from ``env`` (default ``os.environ``).

    :param require: environment names that must be set and non-empty.
    :raises ConfigError: naming the first missing or malformed setting.
    """
    env = os.environ if env is None else env
    for name in sorted(require):
        if not env.get(name, "").strip():
            raise ConfigError(f"missing required setting {name}")

    def text(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def parsed(name: str, parse: Callable[[str], T], default: T) -> T:
        raw = text(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(f"malformed setting {name}: {raw!r}") from None

    def secrets(name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())

    def path(name: str) -> Path | None:
        raw = text(name)
        return Path(raw) if raw else None

    def port(name: str, default: int) -> int:
        value = parsed(name, int, default)
        if not 0 <= value <= 65535:
            raise ConfigError(f"malformed setting {name}: {value} is not a TCP port")
        return value

    settings = Settings(
        kafka_bootstrap_servers=text("KAFKA_BOOTSTRAP_SERVERS") or "",
        schema_registry_url=text("SCHEMA_REGISTRY_URL"),
        database_url=text("DATABASE_URL"),
        redis_url=text("REDIS_URL"),
        elasticsearch_url=text("ELASTICSEARCH_URL"),
        stripe_api_key=text("STRIPE_API_KEY"),
        stripe_api_base=text("STRIPE_API_BASE"),
        stripe_webhook_secrets=secrets("STRIPE_WEBHOOK_SECRET"),
        razorpay_webhook_secrets=secrets("RAZORPAY_WEBHOOK_SECRET"),
        internal_api_tokens=secrets("INTERNAL_API_TOKEN"),
        admin_api_tokens=secrets("ADMIN_API_TOKEN"),
        public_host=text("INGRESS_PUBLIC_HOST") or Settings.public_host,
        public_port=port("INGRESS_PUBLIC_PORT", Settings.public_port),
        internal_host=text("INGRESS_INTERNAL_HOST") or Settings.internal_host,
        internal_port=port("INGRESS_INTERNAL_PORT", Settings.internal_port),
        internal_tls_cert=path("INGRESS_INTERNAL_TLS_CERT"),
        internal_tls_key=path("INGRESS_INTERNAL_TLS_KEY"),
        internal_tls_client_ca=path("INGRESS_INTERNAL_TLS_CLIENT_CA"),
        max_body_bytes=parsed("SLUICE_MAX_BODY_BYTES", int, ONE_MIB),
        publish_timeout_s=parsed("SLUICE_PUBLISH_TIMEOUT_S", float, 5.0),
        state_dir=path("SLUICE_STATE_DIR") or Settings.state_dir,
        log_level=(text("SLUICE_LOG_LEVEL") or "INFO").upper(),
        log_format=(text("SLUICE_LOG_FORMAT") or "json").lower(),
        processing_guarantee=text("SLUICE_PROCESSING_GUARANTEE") or "at_least_once",
        dedupe_window_s=parsed("SLUICE_DEDUPE_WINDOW", parse_duration, 30 * 24 * 3600.0),
        dedupe_purge_every_s=parsed("SLUICE_DEDUPE_PURGE_EVERY", parse_duration, 60.0),
        dedupe_purge_slice=parsed("SLUICE_DEDUPE_PURGE_SLICE", int, 2000),
        replication_factor=parsed("SLUICE_REPLICATION_FACTOR", int, 1),
        worker_web_port=parsed("SLUICE_WORKER_WEB_PORT", int, None),
        worker_batch_size=parsed("SLUICE_WORKER_BATCH_SIZE", int, 500),
        worker_batch_within_s=parsed("SLUICE_WORKER_BATCH_WITHIN", parse_duration, 0.2),
        consumer_fetch_wait_s=parsed("SLUICE_CONSUMER_FETCH_WAIT", parse_duration, 0.05),
        standby_replicas=parsed("SLUICE_STANDBY_REPLICAS", int, Settings.standby_replicas),
        broker_session_timeout_s=parsed(
            "SLUICE_BROKER_SESSION_TIMEOUT", parse_duration, Settings.broker_session_timeout_s
        ),
        broker_heartbeat_interval_s=parsed(
            "SLUICE_BROKER_HEARTBEAT_INTERVAL",
            parse_duration,
            Settings.broker_heartbeat_interval_s,
        ),
        broker_request_timeout_s=parsed(
            "SLUICE_BROKER_REQUEST_TIMEOUT", parse_duration, Settings.broker_request_timeout_s
        ),
        reply_timeout_s=parsed("SLUICE_REPLY_TIMEOUT", parse_duration, 5.0),
        orphan_hold_s=parsed("SLUICE_ORPHAN_HOLD", parse_duration, 3600.0),
        orphan_check_every_s=parsed("SLUICE_ORPHAN_CHECK_EVERY", parse_duration, 30.0),
        postgres_retention_s=parsed(
            "SLUICE_POSTGRES_RETENTION", parse_duration, Settings.postgres_retention_s
        ),
        postgres_purge_every_s=parsed(
            "SLUICE_POSTGRES_PURGE_EVERY", parse_duration, Settings.postgres_purge_every_s
        ),
        postgres_purge_batch=parsed("SLUICE_POSTGRES_PURGE_BATCH", int, 1000),
        partners=_partners(env),
    )
    if settings.log_format not in ("json", "human"):
        raise ConfigError("malformed setting SLUICE_LOG_FORMAT: use json or human")
    if settings.max_body_bytes <= 0:
        raise ConfigError("malformed setting SLUICE_MAX_BODY_BYTES: must be positive")
    if settings.dedupe_purge_slice <= 0:
        raise ConfigError("malformed setting SLUICE_DEDUPE_PURGE_SLICE: must be positive")
    if settings.publish_timeout_s <= 0:
        raise ConfigError("malformed setting SLUICE_PUBLISH_TIMEOUT_S: must be positive")
    if settings.processing_guarantee == "exactly_once":
        # Refused rather than offered: faust-streaming 0.15's transactions commit only the
        # source partitions' transactions, so outputs to another topic are aborted later
        # while their inputs stay committed: records are lost (docs/decisions.md).
        raise ConfigError(
            "SLUICE_PROCESSING_GUARANTEE=exactly_once is refused: faust's transactions lose"
            " records here (docs/decisions.md); use at_least_once (sinks are idempotent)"
        )
    if settings.processing_guarantee != "at_least_once":
        raise ConfigError("malformed setting SLUICE_PROCESSING_GUARANTEE: use at_least_once")
    if settings.standby_replicas < 0:
        raise ConfigError("malformed setting SLUICE_STANDBY_REPLICAS: must be 0 or more")
    if not 0 < settings.broker_heartbeat_interval_s < settings.broker_session_timeout_s:
        raise ConfigError(
            "malformed setting SLUICE_BROKER_HEARTBEAT_INTERVAL: "
            "must be positive and below SLUICE_BROKER_SESSION_TIMEOUT"
        )
    if settings.broker_session_timeout_s > settings.broker_request_timeout_s:
        raise ConfigError(
            "malformed setting SLUICE_BROKER_SESSION_TIMEOUT: "
            "must not exceed SLUICE_BROKER_REQUEST_TIMEOUT"
        )
    if settings.postgres_retention_s < settings.dedupe_window_s:
        raise ConfigError(
            "malformed setting SLUICE_POSTGRES_RETENTION: must not be below SLUICE_DEDUPE_WINDOW"
        )
    if settings.postgres_purge_batch <= 0 or settings.postgres_purge_every_s <= 0:
        raise ConfigError("malformed setting SLUICE_POSTGRES_PURGE_BATCH/_EVERY: must be positive")
    if (settings.internal_tls_cert is None) != (settings.internal_tls_key is None):
        raise ConfigError(
            "malformed setting INGRESS_INTERNAL_TLS_CERT: needs INGRESS_INTERNAL_TLS_KEY too"
        )
    return settings


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"30d"`` or a bare number."""
    text = text.strip().lower()
    for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            number = float(text[: -len(unit)])
            break
    else:
        number, unit = float(text), "s"
    if number < 0:
        raise ValueError(text)
    return number * _DURATION_UNITS[unit]


def _partners(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Group ``PARTNER_<ID>_<FIELD>`` variables by partner id (lower-cased)."""
    partners: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith("PARTNER_"):
            continue
        for suffix in ("_SECRET", "_TOKEN", "_DELIVERY_URL"):
            if name.endswith(suffix) and len(name) > len("PARTNER_") + len(suffix):
                partner = name[len("PARTNER_") : -len(suffix)].lower()
                partners.setdefault(partner, {})[suffix[1:].lower()] = value
    return partners
