"""Twelve-factor settings: one pydantic-settings model, read once from the environment.

Every setting is one line of :class:`Settings`: its type (which validates it), its
default and the environment variable it is read from (the field's alias). To add one,
add a line; a duration is a :data:`Duration`, a port a :data:`Port`, a comma-separated
secret list :data:`Secrets`.

A missing or malformed setting raises ``ConfigError`` with one line per bad variable,
naming it; the CLI prints it and exits, so an operator never reads a traceback to learn
which variable to set.

Only :func:`load_settings` reads an environment (``os.environ``, or the mapping a test or
``sluice dev`` hands it). ``Settings(...)`` takes values only: code that builds one never
picks up the process's environment by surprise.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from base.cache_keys import parse_cache_keys
from base.durations import check_retry_schedule, parse_duration
from base.errors import ConfigError
from base.partners import env_partner_fields

__all__ = [
    "INGRESS_REQUIRED",
    "MAX_RATE",
    "WORKER_REQUIRED",
    "Duration",
    "Port",
    "Secrets",
    "Settings",
    "load_settings",
    "parse_duration",
]

# Settings without which the ingress cannot do its one job safely.
INGRESS_REQUIRED = frozenset(
    {"KAFKA_BOOTSTRAP_SERVERS", "STRIPE_WEBHOOK_SECRET", "RAZORPAY_WEBHOOK_SECRET"}
)

# The worker turns raw webhooks into Postgres state.
WORKER_REQUIRED = frozenset({"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"})

ONE_MIB = 1024 * 1024
DAY_S = 24 * 3600.0


class _Malformed(ValueError):
    """A check that spans settings failed; ``setting`` is the variable to fix."""

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(detail)
        self.setting = setting


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _retry_delays(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(parse_duration(part) for part in value.split(","))
    return value


def _non_negative(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number of seconds, 0 or more")
    return value


def _cache_keys(value: str) -> str:
    parse_cache_keys(value)  # raises ValueError naming what is wrong
    return value


def _positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be positive")
    return value


Duration = Annotated[float, BeforeValidator(_duration), AfterValidator(_non_negative)]
"""Seconds, written ``250ms``, ``30s``, ``5m``, ``2h``, ``30d`` or a bare number."""
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
Port = Annotated[int, Field(ge=0, le=65535)]
"""A TCP port."""
Secrets = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list), Field(repr=False)]
"""Comma-separated: several values let a secret rotate without downtime (old and new both
accepted until the old one is removed). Left out of ``repr``."""


def _feature_flags(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    flags: list[tuple[str, bool]] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        name, _, state = part.partition("=")
        name, state = name.strip(), (state.strip().lower() or "true")
        if not _FLAG_NAME.fullmatch(name) or state not in ("true", "false"):
            raise ValueError(f"{part!r} is not name or name=true|false (names: a-z, 0-9, _ -)")
        flags.append((name, state == "true"))
    return tuple(flags)


_FLAG_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_LIMIT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,255}")
_RATE = re.compile(r"[0-9]{1,7}")
MAX_RATE = 1_000_000
"""The highest rate limit, requests per second (settings and runtime configuration)."""


def _rate_limits(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    limits: dict[str, int] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        name, _, rate = (piece.strip() for piece in part.partition("="))
        if not _LIMIT_NAME.fullmatch(name) or not _RATE.fullmatch(rate) or int(rate) > MAX_RATE:
            raise ValueError(
                f"{part!r} is not name=rate (a limit's name, e.g. webhook.stripe, and"
                f" requests per second from 0 to {MAX_RATE})"
            )
        if name in limits:
            raise ValueError(f"{name} is given twice")
        limits[name] = int(rate)
    return tuple(limits.items())


FeatureFlags = Annotated[tuple[tuple[str, bool], ...], NoDecode, BeforeValidator(_feature_flags)]
"""Comma-separated ``name`` (on) or ``name=true|false``: ``new-checkout,beta=false``."""
RateLimits = Annotated[tuple[tuple[str, int], ...], NoDecode, BeforeValidator(_rate_limits)]
"""Comma-separated ``name=rate``: ``webhook.stripe=200,webhook.stripe.source=50``."""
RetryDelays = Annotated[
    tuple[float, ...],
    NoDecode,
    BeforeValidator(_retry_delays),
    AfterValidator(check_retry_schedule),
]
"""Comma-separated durations, shortest first: ``5s,30s,5m,30m``."""


class Settings(BaseSettings):
    """Everything a Sluice process needs to know about its surroundings, one line per
    setting: ``name: Type = Field(default, alias="ENVIRONMENT_VARIABLE")``."""

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
    )

    # -- Services ----------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field("", alias="KAFKA_BOOTSTRAP_SERVERS")
    schema_registry_url: str | None = Field(None, alias="SCHEMA_REGISTRY_URL")
    database_url: str | None = Field(None, alias="DATABASE_URL")
    redis_url: str | None = Field(None, alias="REDIS_URL")
    elasticsearch_url: str | None = Field(None, alias="ELASTICSEARCH_URL")
    stripe_api_key: str | None = Field(None, alias="STRIPE_API_KEY", repr=False)
    # A Stripe-compatible server (localstripe in dev and tests); None: the stripe
    # library's default, Stripe itself.
    stripe_api_base: str | None = Field(None, alias="STRIPE_API_BASE")
    # The notification channels (streams/agents/send_notifications.py); unset: that
    # channel's notifications are held (QUEUED) until it is configured.
    smtp_url: str | None = Field(None, alias="SMTP_URL")
    sms_webhook_url: str | None = Field(None, alias="SMS_WEBHOOK_URL")
    push_webhook_url: str | None = Field(None, alias="PUSH_WEBHOOK_URL")
    # Lifecycle event type → template code (streams/domain/lifecycle_notifications.py).
    notify_on: str = Field(
        "order.paid=ORDER_PAID,order.payment_failed=PAYMENT_FAILED,"
        "order.refunded=REFUND_ISSUED,invoice.payment_failed=INVOICE_PAYMENT_FAILED",
        alias="SLUICE_NOTIFY_ON",
    )

    # -- Secrets -----------------------------------------------------------------------
    stripe_webhook_secrets: Secrets = Field((), alias="STRIPE_WEBHOOK_SECRET")
    razorpay_webhook_secrets: Secrets = Field((), alias="RAZORPAY_WEBHOOK_SECRET")
    internal_api_tokens: Secrets = Field((), alias="INTERNAL_API_TOKEN")
    admin_api_tokens: Secrets = Field((), alias="ADMIN_API_TOKEN")
    # Named internal API tokens with scopes (ingress/tokens.py validates them): a JSON or
    # TOML file, and/or the same table as JSON in the environment.
    api_tokens_file: Path | None = Field(None, alias="SLUICE_API_TOKENS_FILE")
    api_tokens: str | None = Field(None, alias="SLUICE_API_TOKENS", repr=False)
    # PARTNER_<ID>_* variables grouped by partner id (lower-cased) by load_settings;
    # base.partners.load_partners validates them with the partners file.
    partners: Mapping[str, Mapping[str, str]] = Field(default_factory=dict, repr=False)
    partners_file: Path | None = Field(None, alias="SLUICE_PARTNERS_FILE")

    # -- Ingress -----------------------------------------------------------------------
    # The public listener is meant to face the internet.
    public_host: str = Field("0.0.0.0", alias="INGRESS_PUBLIC_HOST")  # noqa: S104
    public_port: Port = Field(8080, alias="INGRESS_PUBLIC_PORT")
    internal_host: str = Field("127.0.0.1", alias="INGRESS_INTERNAL_HOST")
    internal_port: Port = Field(8081, alias="INGRESS_INTERNAL_PORT")
    internal_tls_cert: Path | None = Field(None, alias="INGRESS_INTERNAL_TLS_CERT")
    internal_tls_key: Path | None = Field(None, alias="INGRESS_INTERNAL_TLS_KEY")
    internal_tls_client_ca: Path | None = Field(None, alias="INGRESS_INTERNAL_TLS_CLIENT_CA")
    max_body_bytes: PositiveInt = Field(ONE_MIB, alias="SLUICE_MAX_BODY_BYTES")
    # Ingress connection limits (ingress/listener.py): a request head must arrive within
    # header_timeout_s, its body within body_timeout_s; each listener holds at most
    # max_connections connections and answers 503 over that.
    header_timeout_s: PositiveDuration = Field(10.0, alias="SLUICE_HEADER_TIMEOUT")
    body_timeout_s: PositiveDuration = Field(30.0, alias="SLUICE_BODY_TIMEOUT")
    max_connections: PositiveInt = Field(1000, alias="SLUICE_MAX_CONNECTIONS")
    publish_timeout_s: PositiveDuration = Field(5.0, alias="SLUICE_PUBLISH_TIMEOUT_S")
    # Request/reply: the ingress waits this long for the worker's answer, then 202 + taskId.
    reply_timeout_s: Duration = Field(5.0, alias="SLUICE_REPLY_TIMEOUT")
    # Most raw webhooks one POST /v1/admin/webhooks/replay may re-publish (a larger range is 400).
    replay_max_events: PositiveInt = Field(1000, alias="SLUICE_REPLAY_MAX_EVENTS")
    # Rate limits (ingress/ratelimit.py), requests per second by limit name (a
    # ``ratelimit.<name>`` runtime key's default); unset or 0: no limit. Buckets hold
    # rate x burst tokens; Redis answers within the timeout or the request passes unchecked.
    rate_limits: RateLimits = Field((), alias="SLUICE_RATE_LIMITS")
    rate_limit_burst_s: PositiveDuration = Field(1.0, alias="SLUICE_RATE_LIMIT_BURST")
    rate_limit_timeout_s: PositiveDuration = Field(0.25, alias="SLUICE_RATE_LIMIT_TIMEOUT")

    # -- Both processes ----------------------------------------------------------------
    log_level: Annotated[str, BeforeValidator(_upper)] = Field("INFO", alias="SLUICE_LOG_LEVEL")
    # One JSON object per line, or one readable line per record (base/logs.py).
    log_format: Annotated[Literal["json", "human"], BeforeValidator(_lower)] = Field(
        "json", alias="SLUICE_LOG_FORMAT"
    )
    replication_factor: PositiveInt = Field(1, alias="SLUICE_REPLICATION_FACTOR")

    # -- Worker ------------------------------------------------------------------------
    # The faust app id: the consumer group and the prefix of table changelog topics.
    app_id: str = Field("sluice", alias="SLUICE_APP_ID")
    state_dir: Path = Field(Path(".data/state"), alias="SLUICE_STATE_DIR")
    # at_least_once is the only guarantee accepted; exactly_once is refused (see
    # _refuse_exactly_once). Correctness never depends on it: sinks are idempotent.
    processing_guarantee: str = Field("at_least_once", alias="SLUICE_PROCESSING_GUARANTEE")
    dedupe_window_s: Duration = Field(30 * DAY_S, alias="SLUICE_DEDUPE_WINDOW")
    dedupe_purge_every_s: Duration = Field(60.0, alias="SLUICE_DEDUPE_PURGE_EVERY")
    # Entries one purge step reads (bounds the event-loop time and memory of a purge).
    dedupe_purge_slice: PositiveInt = Field(2000, alias="SLUICE_DEDUPE_PURGE_SLICE")
    # Not used: the worker runs without faust's web server (metrics have their own port).
    worker_web_port: Port | None = Field(None, alias="SLUICE_WORKER_WEB_PORT")
    # The worker's Prometheus /metrics; unset: not served. `worker --processes N` gives
    # child i this port + i.
    worker_metrics_host: str = Field("127.0.0.1", alias="SLUICE_WORKER_METRICS_HOST")
    worker_metrics_port: Port | None = Field(None, alias="SLUICE_WORKER_METRICS_PORT")
    worker_batch_size: PositiveInt = Field(500, alias="SLUICE_WORKER_BATCH_SIZE")
    # The longest a batch keeps taking records while its agent is behind (see
    # streams/agents/batched.py); at the head of its input a batch never waits.
    worker_batch_within_s: Duration = Field(0.2, alias="SLUICE_WORKER_BATCH_WITHIN")
    # How long the worker's consumer lets the broker hold a fetch open (see
    # streams/transport.py for why faust's 1.5 s made every hop slow on a busy machine).
    consumer_fetch_wait_s: Duration = Field(0.05, alias="SLUICE_CONSUMER_FETCH_WAIT")
    # Scale-out (several worker processes in one consumer group). A standby copy of each
    # table partition lets a survivor take over a dead worker's partitions without
    # replaying their changelogs from the start. Off by default: with today's small tables
    # the measured takeover gain is within noise, and one test run with a standby saw a
    # two-worker group stop processing without an error, not yet explained
    # (docs/decisions.md, Scale-out).
    standby_replicas: NonNegativeInt = Field(0, alias="SLUICE_STANDBY_REPLICAS")
    # How fast the group notices a worker that died without leaving (SIGKILL, lost
    # machine): its partitions move after the session timeout. 6 s is the broker's
    # minimum by default (group.min.session.timeout.ms); heartbeats at a third of it or
    # less, as Kafka advises. faust refuses a session timeout above the request timeout.
    broker_session_timeout_s: Duration = Field(6.0, alias="SLUICE_BROKER_SESSION_TIMEOUT")
    broker_heartbeat_interval_s: Duration = Field(1.0, alias="SLUICE_BROKER_HEARTBEAT_INTERVAL")
    broker_request_timeout_s: Duration = Field(90.0, alias="SLUICE_BROKER_REQUEST_TIMEOUT")
    # Orders: how long a payment may wait for its order before it is reported orphaned,
    # and how often held payments are checked.
    orphan_hold_s: Duration = Field(3600.0, alias="SLUICE_ORPHAN_HOLD")
    orphan_check_every_s: Duration = Field(30.0, alias="SLUICE_ORPHAN_CHECK_EVERY")
    # The retry schedule (streams.domain.retry.RetryPolicy); None: the catalog's default
    # (schemas.catalog.RETRY_DELAYS) and one retry per delay.
    retry_delays: RetryDelays | None = Field(None, alias="SLUICE_RETRY_DELAYS")
    retry_max_attempts: NonNegativeInt | None = Field(None, alias="SLUICE_RETRY_MAX_ATTEMPTS")
    # Retention of processed_events and webhook_events (connectors/postgres/retention.py):
    # rows older than this are purged every interval, in batches (one commit each).
    # Never below the dedupe window: the rows back it up.
    postgres_retention_s: PositiveDuration = Field(35 * DAY_S, alias="SLUICE_POSTGRES_RETENTION")
    postgres_purge_every_s: PositiveDuration = Field(3600.0, alias="SLUICE_POSTGRES_PURGE_EVERY")
    postgres_purge_batch: PositiveInt = Field(1000, alias="SLUICE_POSTGRES_PURGE_BATCH")
    # Per-user notification cap: at most this many notifications to one recipient
    # (to_ref) within the window; past it, FAILED with the reason.
    notify_user_cap: PositiveInt = Field(10, alias="SLUICE_NOTIFY_USER_CAP")
    notify_user_window_s: PositiveDuration = Field(60.0, alias="SLUICE_NOTIFY_USER_WINDOW")
    # Cache keys each projection invalidates after it commits (base/cache_keys.py).
    cache_keys: Annotated[str, AfterValidator(_cache_keys)] = Field("", alias="SLUICE_CACHE_KEYS")
    # Runtime configuration (schemas/runtime_keys.py): the topic every process follows
    # (tests give each run its own) and the feature flags declared as feature.<name> keys.
    config_topic: str = Field("config.runtime", alias="SLUICE_CONFIG_TOPIC")
    feature_flags: FeatureFlags = Field((), alias="SLUICE_FEATURE_FLAGS")
    # Tests give each worker its own Elasticsearch indices on a shared node.
    search_index_prefix: str = Field("", alias="SLUICE_SEARCH_INDEX_PREFIX")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Values only; load_settings reads the environment (see the module docstring).
        return (init_settings,)

    @model_validator(mode="after")
    def _refuse_exactly_once(self) -> Settings:
        if self.processing_guarantee == "exactly_once":
            # Refused rather than offered: faust-streaming 0.15's transactions commit only
            # the source partitions' transactions, so outputs to another topic are aborted
            # later while their inputs stay committed: records are lost (docs/decisions.md).
            raise _Malformed(
                "SLUICE_PROCESSING_GUARANTEE",
                "exactly_once is refused: faust's transactions lose records here"
                " (docs/decisions.md); use at_least_once (sinks are idempotent)",
            )
        if self.processing_guarantee != "at_least_once":
            raise _Malformed("SLUICE_PROCESSING_GUARANTEE", "use at_least_once")
        return self

    @model_validator(mode="after")
    def _broker_timeouts_fit(self) -> Settings:
        if not 0 < self.broker_heartbeat_interval_s < self.broker_session_timeout_s:
            raise _Malformed(
                "SLUICE_BROKER_HEARTBEAT_INTERVAL",
                "must be positive and below SLUICE_BROKER_SESSION_TIMEOUT",
            )
        if self.broker_session_timeout_s > self.broker_request_timeout_s:
            raise _Malformed(
                "SLUICE_BROKER_SESSION_TIMEOUT", "must not exceed SLUICE_BROKER_REQUEST_TIMEOUT"
            )
        return self

    @model_validator(mode="after")
    def _retention_covers_dedupe(self) -> Settings:
        if self.postgres_retention_s < self.dedupe_window_s:
            raise _Malformed("SLUICE_POSTGRES_RETENTION", "must not be below SLUICE_DEDUPE_WINDOW")
        return self

    @model_validator(mode="after")
    def _tls_cert_has_key(self) -> Settings:
        if (self.internal_tls_cert is None) != (self.internal_tls_key is None):
            raise _Malformed("INGRESS_INTERNAL_TLS_CERT", "needs INGRESS_INTERNAL_TLS_KEY too")
        if self.internal_tls_client_ca is not None and self.internal_tls_cert is None:
            # Refused, not ignored: a client CA without TLS would serve plain HTTP to
            # anyone while the operator believes client certificates are required.
            raise _Malformed(
                "INGRESS_INTERNAL_TLS_CLIENT_CA",
                "needs INGRESS_INTERNAL_TLS_CERT and INGRESS_INTERNAL_TLS_KEY too",
            )
        return self

    def redacted(self) -> dict[str, str]:
        """The settings as strings with every secret replaced, safe for a log line."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            secret = name.endswith(("secrets", "tokens", "_key")) or name == "partners"
            shown[name] = "***" if secret and value else str(value)
        return shown


class _GivenEnvironment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of
    ``os.environ``, values stripped, blank ones treated as unset (as before the model)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value.strip() for name, value in self._given.items() if value.strip()}


def load_settings(
    env: Mapping[str, str] | None = None, *, require: Collection[str] = ()
) -> Settings:
    """Build ``Settings`` from ``env`` (default ``os.environ``).

    :param require: environment names that must be set and non-empty.
    :raises ConfigError: one line per missing or malformed setting, naming it.
    """
    env = os.environ if env is None else env
    problems = [
        f"missing required setting {name}"
        for name in sorted(require)
        if not env.get(name, "").strip()
    ]
    values = _GivenEnvironment(Settings, env)()
    settings: Settings | None = None
    try:
        settings = Settings(**values, partners=env_partner_fields(env))
    except ValidationError as exc:
        problems.extend(_describe(exc))
    if problems or settings is None:
        raise ConfigError("\n".join(problems))
    return settings


# Variables whose value never appears in an error message.
_SECRET_SUFFIXES = ("_SECRET", "_TOKEN", "_KEY")


def _describe(exc: ValidationError) -> Iterable[str]:
    """One line per bad variable: ``malformed setting NAME: 'value': why``."""
    for error in exc.errors(include_url=False):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _Malformed):
            yield f"malformed setting {cause.setting}: {cause}"
            continue
        name = ".".join(str(part) for part in error["loc"])
        why = str(cause) if isinstance(cause, ValueError) else error["msg"]
        shown = "" if name.endswith(_SECRET_SUFFIXES) else f"{error['input']!r}: "
        yield f"malformed setting {name}: {shown}{why}"
