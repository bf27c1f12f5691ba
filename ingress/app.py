"""Composition root of the ingress: builds both aiohttp applications from settings.

Nothing connects at import time; the publisher, codec and clock are passed in, so a test
can hand in a publisher against its own broker and a frozen clock. The internal app also
holds a reply waiter (request/reply routes), the partner registry and, when
``DATABASE_URL`` is set, the payment status, lead and notification readers; each is built from
settings unless passed in, and the internal app's lifecycle starts and stops them
(``on_startup``/``on_cleanup``), so whoever runs the app (``ingress.server``, a test
client) gets them running without extra steps.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from base.clock import Clock
from base.metrics import CONTENT_TYPE, INGRESS_METRICS, Metrics
from base.partners import PartnerRegistry, load_partners
from base.settings import Settings
from connectors.lead_status import LeadStatusStore
from connectors.notification_status import NotificationStatusStore
from connectors.operations_reader import OperationsReader
from connectors.payment_status import PaymentStatusStore
from connectors.runtime_config import ConfigFollower
from connectors.search_reader import SearchReader
from connectors.webhook_log import WebhookLogStore
from ingress.admin_api import webhook_logs_handler, webhook_replay_handler
from ingress.admin_dlq import dlq_list_handler, dlq_replay_handler, dlq_show_handler
from ingress.auth import internal_token_middleware
from ingress.cache_api import cache_invalidate_handler
from ingress.commands import CommandSender
from ingress.config_api import config_get_handler, config_set_handler
from ingress.dashboard import Dashboard, add_dashboard_routes
from ingress.events import events_handler
from ingress.lead_api import LeadSource, lead_deliver_handler, lead_status_handler
from ingress.leads import lead_handler
from ingress.middleware import METRICS_KEY, outcome_middleware
from ingress.notifications import NotificationSource, notification_status_handler, send_handler
from ingress.openapi import add_openapi_routes
from ingress.payments import (
    PAYMENT_ROUTES,
    PaymentStatusSource,
    payment_command_handler,
    payment_status_handler,
)
from ingress.publisher import Publisher
from ingress.ratelimit import rate_limiter
from ingress.replies import ReplyWaiter
from ingress.requests import BODY_TIMEOUT_KEY
from ingress.responses import json_response
from ingress.schema_registry import RegistryView, add_registry_routes
from ingress.search_index import index_handler
from ingress.search_query import search_query_handler
from ingress.tokens import TokenRegistry, load_tokens
from ingress.verify import razorpay, stripe
from ingress.webhooks import WebhookSource, webhook_handler
from schemas.codec import CatalogResolver, Codec
from schemas.runtime_keys import declared_keys

__all__ = ["IngressApps", "create_apps", "webhook_sources"]

PUBLISHER_KEY = web.AppKey("publisher", Publisher)


@dataclass(frozen=True)
class IngressApps:
    public: web.Application
    internal: web.Application
    metrics: Metrics
    replies: ReplyWaiter | None = None
    payment_status: PaymentStatusSource | None = None
    lead_status: LeadSource | None = None
    notification_status: NotificationSource | None = None
    search: SearchReader | None = None
    runtime: ConfigFollower | None = None


def webhook_sources(settings: Settings) -> list[WebhookSource]:
    return [
        WebhookSource(
            provider="stripe",
            topic="webhooks.stripe",
            signature_header="Stripe-Signature",
            verify=stripe.verify,
            secrets=settings.stripe_webhook_secrets,
            success={"received": True},
        ),
        WebhookSource(
            provider="razorpay",
            topic="webhooks.razorpay",
            signature_header="X-Razorpay-Signature",
            verify=razorpay.verify,
            secrets=settings.razorpay_webhook_secrets,
            success={"received": True},
        ),
    ]


def create_apps(
    settings: Settings,
    *,
    publisher: Publisher,
    codec: Codec,
    clock: Clock,
    replies: ReplyWaiter | None = None,
    payment_status: PaymentStatusSource | None = None,
    lead_status: LeadSource | None = None,
    notification_status: NotificationSource | None = None,
    partners: PartnerRegistry | None = None,
    tokens: TokenRegistry | None = None,
    search: SearchReader | None = None,
    runtime: ConfigFollower | None = None,
) -> IngressApps:
    """Both applications. ``replies``, the readers (``payment_status``, ``lead_status``,
    ``notification_status``), ``partners`` and the runtime config follower (``runtime``,
    on ``SLUICE_CONFIG_TOPIC``) default to ones built from ``settings`` (no readers
    without ``DATABASE_URL``: those routes answer 503), the search reader ``search`` one
    built when ``ELASTICSEARCH_URL`` is set (else the search query route answers 503);
    whichever are used, the internal app starts and stops them. ``tokens`` defaults to the
    ones the settings name (``ingress.tokens.load_tokens``).

    :raises ConfigError: the partners file or ``PARTNER_<ID>_…`` settings, or the
        internal API tokens, are invalid.
    """
    if partners is None:
        partners = load_partners(settings.partners_file, settings.partners)
    if runtime is None:
        runtime = ConfigFollower(
            settings.kafka_bootstrap_servers,
            codec,
            declared_keys(settings, partners),
            topic=settings.config_topic,
        )
    metrics = Metrics(INGRESS_METRICS)
    limiter = rate_limiter(settings, runtime, metrics=metrics, clock=clock)
    public = _application(settings, metrics, limiter.middleware)
    public.on_cleanup.append(limiter.close)
    for source in webhook_sources(settings):
        handler = webhook_handler(
            source,
            publisher=publisher,
            codec=codec,
            clock=clock,
            metrics=metrics,
            max_body_bytes=settings.max_body_bytes,
        )
        public.router.add_post(
            f"/v1/webhooks/{source.provider}", handler, name=f"webhook.{source.provider}"
        )
    public.router.add_post(
        "/v1/webhooks/partner/leads",
        lead_handler(
            registry=partners,
            runtime=runtime,
            publisher=publisher,
            codec=codec,
            clock=clock,
            metrics=metrics,
            max_body_bytes=settings.max_body_bytes,
            limit=limiter.check_partner,
        ),
        name="webhook.partner.leads",
    )

    # The token check sits inside outcome_middleware, which turns its 401/403 into JSON;
    # the rate limit inside the token check, which names the caller it counts.
    if tokens is None:
        tokens = load_tokens(settings)
    internal = _application(
        settings, metrics, internal_token_middleware(tokens), limiter.middleware
    )
    internal[PUBLISHER_KEY] = publisher
    internal.router.add_get("/healthz", _healthz, name="healthz")
    internal.router.add_get("/readyz", _readyz, name="readyz")
    internal.router.add_get("/metrics", _metrics, name="metrics")

    if replies is None:
        replies = ReplyWaiter(settings.kafka_bootstrap_servers, codec)
    if payment_status is None and settings.database_url:
        payment_status = PaymentStatusStore(settings.database_url)
    if lead_status is None and settings.database_url:
        lead_status = LeadStatusStore(settings.database_url)
    if notification_status is None and settings.database_url:
        notification_status = NotificationStatusStore(settings.database_url)
    if search is None and settings.elasticsearch_url:
        search = SearchReader(settings.elasticsearch_url, index_prefix=settings.search_index_prefix)
    _internal_api(
        internal,
        settings,
        publisher=publisher,
        codec=codec,
        clock=clock,
        metrics=metrics,
        replies=replies,
        payment_status=payment_status,
        lead_status=lead_status,
        notification_status=notification_status,
        partners=partners,
        search=search,
        runtime=runtime,
    )
    _admin_api(internal, settings, publisher=publisher, codec=codec, metrics=metrics)
    _dashboard(internal, settings, codec=codec, clock=clock)
    _describe_api(internal, public, codec)
    return IngressApps(
        public=public,
        internal=internal,
        metrics=metrics,
        replies=replies,
        payment_status=payment_status,
        lead_status=lead_status,
        notification_status=notification_status,
        search=search,
        runtime=runtime,
    )


def _internal_api(
    app: web.Application,
    settings: Settings,
    *,
    publisher: Publisher,
    codec: Codec,
    clock: Clock,
    metrics: Metrics,
    replies: ReplyWaiter,
    payment_status: PaymentStatusSource | None,
    lead_status: LeadSource | None,
    notification_status: NotificationSource | None,
    partners: PartnerRegistry,
    search: SearchReader | None,
    runtime: ConfigFollower,
) -> None:
    """The ``/internal/v1`` routes and the lifecycle of what they use."""
    sender = CommandSender(publisher, codec, metrics, replies, settings.reply_timeout_s)
    app.router.add_post(
        "/internal/v1/events",
        events_handler(
            publisher=publisher,
            codec=codec,
            clock=clock,
            metrics=metrics,
            max_body_bytes=settings.max_body_bytes,
        ),
        name="internal.events",
    )
    for route in PAYMENT_ROUTES:
        app.router.add_post(
            f"/internal/v1/payments/{route.path}",
            payment_command_handler(
                route, sender=sender, clock=clock, max_body_bytes=settings.max_body_bytes
            ),
            name=f"internal.payments.{route.path}",
        )
    app.router.add_get(
        "/internal/v1/payments/{orderId}",
        payment_status_handler(payment_status),
        name="internal.payments.status",
    )
    app.router.add_post(
        "/internal/v1/leads/deliver",
        lead_deliver_handler(
            sender=sender, partners=partners, clock=clock, max_body_bytes=settings.max_body_bytes
        ),
        name="internal.leads.deliver",
    )
    app.router.add_get(
        "/internal/v1/leads/{leadId}",
        lead_status_handler(lead_status),
        name="internal.leads.status",
    )
    app.router.add_post(
        "/internal/v1/cache/invalidate",
        cache_invalidate_handler(
            sender=sender, clock=clock, max_body_bytes=settings.max_body_bytes
        ),
        name="internal.cache.invalidate",
    )
    app.router.add_post(
        "/internal/v1/notifications/send",
        send_handler(
            publisher=publisher,
            codec=codec,
            clock=clock,
            metrics=metrics,
            max_body_bytes=settings.max_body_bytes,
        ),
        name="internal.notifications.send",
    )
    app.router.add_get(
        "/internal/v1/notifications/{id}",
        notification_status_handler(notification_status),
        name="internal.notifications.status",
    )
    app.router.add_post(
        "/internal/v1/search/index",
        index_handler(
            publisher=publisher,
            codec=codec,
            clock=clock,
            metrics=metrics,
            max_body_bytes=settings.max_body_bytes,
        ),
        name="internal.search.index",
    )
    app.router.add_get(
        "/internal/v1/search/{index}",
        search_query_handler(search),
        name="internal.search.query",
    )

    app.router.add_get(
        "/internal/v1/config", config_get_handler(runtime), name="internal.config.get"
    )
    app.router.add_post(
        "/internal/v1/config",
        config_set_handler(
            follower=runtime,
            publisher=publisher,
            codec=codec,
            clock=clock,
            metrics=metrics,
            max_body_bytes=settings.max_body_bytes,
        ),
        name="internal.config.set",
    )

    async def start(_app: web.Application) -> None:
        # Together: each waits (bounded) for Kafka; the config is read before serving.
        await asyncio.gather(replies.start(), asyncio.to_thread(runtime.start))
        if search is not None:
            await search.start()

    async def stop(_app: web.Application) -> None:
        await replies.stop()
        await asyncio.to_thread(runtime.stop)
        if search is not None:
            await search.close()
        for reader in (payment_status, lead_status, notification_status):
            if reader is not None:
                await reader.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def _admin_api(
    app: web.Application,
    settings: Settings,
    *,
    publisher: Publisher,
    codec: Codec,
    metrics: Metrics,
) -> None:
    """The ``/v1/admin`` routes (``admin`` scope; internal listener only): the webhook log
    and replay (``webhook_events``: 503 without ``DATABASE_URL``), and the dead letters."""
    store = WebhookLogStore(settings.database_url) if settings.database_url else None
    bootstrap = settings.kafka_bootstrap_servers
    app.router.add_get(
        "/v1/admin/webhooks/logs", webhook_logs_handler(store), name="admin.webhooks.logs"
    )
    app.router.add_post(
        "/v1/admin/webhooks/replay",
        webhook_replay_handler(
            store=store,
            publisher=publisher,
            codec=codec,
            metrics=metrics,
            max_body_bytes=settings.max_body_bytes,
            max_events=settings.replay_max_events,
        ),
        name="admin.webhooks.replay",
    )
    app.router.add_get("/v1/admin/dlq", dlq_list_handler(bootstrap, codec), name="admin.dlq.list")
    app.router.add_post(
        "/v1/admin/dlq/replay",
        dlq_replay_handler(
            bootstrap,
            codec,
            max_body_bytes=settings.max_body_bytes,
            max_events=settings.replay_max_events,
        ),
        name="admin.dlq.replay",
    )
    app.router.add_get(
        "/v1/admin/dlq/{id}", dlq_show_handler(bootstrap, codec), name="admin.dlq.show"
    )

    async def stop(_app: web.Application) -> None:
        if store is not None:
            await store.close()

    app.on_cleanup.append(stop)


def _dashboard(app: web.Application, settings: Settings, *, codec: Codec, clock: Clock) -> None:
    """The on-call dashboard (``/admin``): the worker group's lag, dead letters, Postgres.
    Its Postgres reader opens on first use, so nothing connects here."""
    reader = OperationsReader(settings.database_url) if settings.database_url else None
    dashboard = Dashboard(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group=settings.app_id,
        codec=codec,
        clock=clock,
        reader=reader,
    )
    add_dashboard_routes(app, dashboard, max_body_bytes=settings.max_body_bytes)


def _describe_api(internal: web.Application, public: web.Application, codec: Codec) -> None:
    """The open, read-only routes that describe the API: both OpenAPI documents and,
    when values carry the shipped catalog's schema ids (no ``SCHEMA_REGISTRY_URL``), the
    Confluent Schema Registry read API over that catalog. With a real registry its ids
    are the ones on the topics, so consumers ask it instead."""
    add_openapi_routes(internal, public)
    if isinstance(codec.resolver, CatalogResolver):
        add_registry_routes(internal, RegistryView.of(codec.resolver.catalog))


def _application(settings: Settings, metrics: Metrics, *middlewares: Middleware) -> web.Application:
    app = web.Application(
        middlewares=[outcome_middleware, *middlewares],
        # Headroom over the limit we enforce ourselves, so our 413 (with a JSON body)
        # wins for honest Content-Length and aiohttp's guard catches the rest.
        client_max_size=settings.max_body_bytes + 1,
    )
    app[METRICS_KEY] = metrics
    app[BODY_TIMEOUT_KEY] = settings.body_timeout_s
    return app


async def _healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    kafka = await request.app[PUBLISHER_KEY].ready()
    return json_response({"ready": kafka, "kafka": kafka}, status=200 if kafka else 503)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
