"""Composition root of the ingress: builds both aiohttp applications from settings.

Nothing connects at import time; the publisher, codec and clock are passed in, so a test
can hand in a publisher against its own broker and a frozen clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ingress.middleware import METRICS_KEY, outcome_middleware
from ingress.publisher import Publisher
from ingress.verify import razorpay, stripe
from ingress.webhooks import WebhookSource, webhook_handler
from schemas.codec import Codec
from sluice.clock import Clock
from sluice.metrics import Metrics
from sluice.settings import Settings

__all__ = ["IngressApps", "create_apps", "webhook_sources"]

PUBLISHER_KEY = web.AppKey("publisher", Publisher)


@dataclass(frozen=True)
class IngressApps:
    public: web.Application
    internal: web.Application
    metrics: Metrics


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
    settings: Settings, *, publisher: Publisher, codec: Codec, clock: Clock
) -> IngressApps:
    metrics = Metrics()
    public = _application(settings, metrics)
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

    internal = _application(settings, metrics)
    internal[PUBLISHER_KEY] = publisher
    internal.router.add_get("/healthz", _healthz, name="healthz")
    internal.router.add_get("/readyz", _readyz, name="readyz")
    internal.router.add_get("/metrics", _metrics, name="metrics")
    return IngressApps(public=public, internal=internal, metrics=metrics)


def _application(settings: Settings, metrics: Metrics) -> web.Application:
    app = web.Application(
        middlewares=[outcome_middleware],
        # Headroom over the limit we enforce ourselves, so our 413 (with a JSON body)
        # wins for honest Content-Length and aiohttp's guard catches the rest.
        client_max_size=settings.max_body_bytes + 1,
    )
    app[METRICS_KEY] = metrics
    return app


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    kafka = await request.app[PUBLISHER_KEY].ready()
    return web.json_response({"ready": kafka, "kafka": kafka}, status=200 if kafka else 503)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[METRICS_KEY].render(), content_type="text/plain", charset="utf-8"
    )
