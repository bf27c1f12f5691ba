"""Run the two listeners (public webhooks, internal APIs) in one process."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from base.clock import Clock, SystemClock
from base.errors import ConfigError
from base.partners import load_partners
from base.settings import Settings
from ingress.app import IngressApps, create_apps
from ingress.listener import Listener, ListenerLimits, listen
from ingress.publisher import KafkaPublisher
from ingress.tokens import load_tokens
from schemas.codec import make_codec

__all__ = ["RunningIngress", "run_ingress", "running_ingress"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningIngress:
    apps: IngressApps
    public_url: str
    internal_url: str


@asynccontextmanager
async def running_ingress(
    settings: Settings, *, clock: Clock | None = None
) -> AsyncIterator[RunningIngress]:
    """Start both listeners; on exit stop taking requests, then flush the producer.

    A port of 0 picks a free port; the URLs in the yielded value carry the real ones.

    :raises ConfigError: the partner registry or the internal API tokens are invalid;
        raised before anything connects, so a bad partners or tokens file stops the
        ingress at start-up.
    """
    partners = load_partners(settings.partners_file, settings.partners)
    tokens = load_tokens(settings)
    # Names and scopes only: what an operator checks after a change, never a secret.
    log.info(
        "internal API tokens",
        extra={"tokens": {token.name: sorted(token.scopes) for token in tokens}},
    )
    tls = _internal_tls(settings)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers, timeout_s=settings.publish_timeout_s
    )
    codec = make_codec(settings.schema_registry_url)
    try:
        # Registry mode: register every schema now, in a thread, so that no request
        # waits on the registry (and the event loop never does). Catalog mode: no network.
        await asyncio.to_thread(codec.prepare)
    except BaseException:
        await publisher.close()
        raise
    apps = create_apps(
        settings,
        publisher=publisher,
        codec=codec,
        clock=clock or SystemClock(),
        partners=partners,
        tokens=tokens,
    )
    limits = ListenerLimits(
        header_timeout_s=settings.header_timeout_s, max_connections=settings.max_connections
    )
    listeners: list[Listener] = []
    try:
        public = await listen(apps.public, settings.public_host, settings.public_port, limits)
        listeners.append(public)
        internal = await listen(
            apps.internal, settings.internal_host, settings.internal_port, limits, tls
        )
        listeners.append(internal)
        scheme = "https" if tls else "http"
        running = RunningIngress(
            apps=apps,
            public_url=f"http://{_reachable(settings.public_host)}:{public.port}",
            internal_url=f"{scheme}://{_reachable(settings.internal_host)}:{internal.port}",
        )
        log.info(
            "ingress listening",
            extra={"public": running.public_url, "internal": running.internal_url},
        )
        yield running
    finally:
        for listener in reversed(listeners):
            await listener.close()
        await publisher.close()


async def run_ingress(settings: Settings, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set."""
    async with running_ingress(settings):
        await stop.wait()


def _internal_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the internal listener; with a client CA, clients must present a
    certificate signed by that CA (mTLS), else the handshake fails.

    Built by hand rather than by ``ssl.create_default_context`` so that what it trusts
    and allows is written here, not left to that function's defaults (which may change,
    and which write session keys to ``SSLKEYLOGFILE`` when that variable is set): only
    ``INGRESS_INTERNAL_TLS_CLIENT_CA`` is trusted, never the system's CAs
    (``tests/test_internal_mtls.py`` pins it), and TLS 1.2 is the oldest accepted.

    :raises ConfigError: a certificate, key or CA file is missing or unusable.
    """
    if settings.internal_tls_cert is None or settings.internal_tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.internal_tls_cert, settings.internal_tls_key)
        if settings.internal_tls_client_ca is not None:
            context.load_verify_locations(cafile=settings.internal_tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "INGRESS_INTERNAL_TLS_CERT / _KEY / _CLIENT_CA: cannot be loaded:"
            f" {exc.strerror or exc}"
        ) from None
    return context


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104
