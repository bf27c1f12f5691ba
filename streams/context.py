"""What every agent is given: codec, clock, connectors, the effect runner, the topology.

Connectors start lazily, on first use, inside the worker's event loop: Postgres always,
Elasticsearch when ``ELASTICSEARCH_URL`` is set, the Stripe API when ``STRIPE_API_KEY`` is,
the partner CRM client when the first lead is delivered. The partner registry, the
notification channel senders (``SMTP_URL``, ``SMS_WEBHOOK_URL``, ``PUSH_WEBHOOK_URL``)
and the Redis cache (``REDIS_URL``) are built, not connected, before
(``streams.app.create_worker``), so a malformed URL stops the worker at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from base.clock import Clock
from base.errors import PermanentError
from base.partners import PartnerRegistry
from base.settings import Settings
from connectors.crm import CrmClient
from connectors.elasticsearch import SearchProjection
from connectors.postgres import PostgresProjection
from connectors.postgres.contacts import ContactStore
from connectors.postgres.leads import LeadStore
from connectors.postgres.notifications import NotificationStore
from connectors.push_api import PushApi
from connectors.redis_cache import RedisCache
from connectors.runtime_config import ConfigFollower
from connectors.sms_api import SmsApi
from connectors.smtp_email import SmtpSender
from connectors.stripe_api import StripeApi
from schemas.codec import Codec
from schemas.notifications import Channel
from schemas.notify_templates import RenderedMessage
from streams.effects import EffectRunner, Outbox
from streams.observe import RetryHeads
from streams.topology import Topology

__all__ = ["ChannelSender", "WorkerContext", "channel_senders"]

log = logging.getLogger(__name__)


class ChannelSender(Protocol):
    """A notification channel's connector (``SmtpSender``, ``SmsApi``, ``PushApi``)."""

    async def send(self, *, notification_id: str, to: str, message: RenderedMessage) -> str | None:
        """Send once; the provider's message id. Raises Transient/PermanentError."""
        ...

    async def close(self) -> None: ...


def channel_senders(settings: Settings) -> dict[Channel, ChannelSender]:
    """A sender per channel whose URL is set; nothing connects yet.

    :raises ConfigError: a malformed ``SMTP_URL``, ``SMS_WEBHOOK_URL`` or ``PUSH_WEBHOOK_URL``.
    """
    senders: dict[Channel, ChannelSender] = {}
    if settings.smtp_url:
        senders[Channel.EMAIL] = SmtpSender(settings.smtp_url)
    if settings.sms_webhook_url:
        senders[Channel.SMS] = SmsApi(settings.sms_webhook_url)
    if settings.push_webhook_url:
        senders[Channel.PUSH] = PushApi(settings.push_webhook_url)
    return senders


@dataclass
class WorkerContext:
    settings: Settings
    codec: Codec
    clock: Clock
    topology: Topology
    outbox: Outbox
    runner: EffectRunner
    projection: PostgresProjection
    # Prefix of every Elasticsearch index name (``SLUICE_SEARCH_INDEX_PREFIX``), so
    # tests and side-by-side deployments share one cluster without sharing indices.
    search_index_prefix: str = ""
    # The partners the worker delivers leads for (SLUICE_PARTNERS_FILE, PARTNER_<ID>_*).
    partners: PartnerRegistry = field(default_factory=PartnerRegistry)
    # The notification channels configured (channel_senders); a missing one: held.
    senders: Mapping[Channel, ChannelSender] = field(default_factory=dict)
    # The cache invalidations drop keys from (REDIS_URL); None: no cache configured.
    cache: RedisCache | None = None
    # The runtime config (schemas/runtime_keys.py) as this process follows it; agents
    # read a key on every use, so a change applies without a restart.
    runtime: ConfigFollower | None = None
    # The record each retry agent waits on (the retry head overdue gauge).
    retry_heads: RetryHeads = field(default_factory=RetryHeads)
    _started: bool = field(default=False, init=False)
    _start_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _search: SearchProjection | None = field(default=None, init=False, repr=False)
    _search_off_logged: bool = field(default=False, init=False, repr=False)
    _stripe: StripeApi | None = field(default=None, init=False, repr=False)
    _crm: CrmClient | None = field(default=None, init=False, repr=False)

    def live(self, key: str, fallback: Any) -> Any:
        """The current value of runtime config key ``key`` (its default from the settings
        and partner registry while never set); ``fallback`` in a context without a
        follower or for a key it does not declare."""
        if self.runtime is None or key not in self.runtime.keys:
            return fallback
        return self.runtime.value(key)

    async def connectors(self) -> PostgresProjection:
        """The started projection; started on first use, from inside the worker's loop.

        Lazy because faust owns the event loop and offers no awaited start-up hook for
        our own clients; a failure here is a TransientError handled like any other.
        """
        if not self._started:
            async with self._start_lock:
                if not self._started:
                    await self.projection.start()
                    self._started = True
        return self.projection

    async def search(self) -> SearchProjection | None:
        """The started Elasticsearch projection, or None when ``ELASTICSEARCH_URL`` is
        unset (search is off: projections write Postgres only; logged once).

        Started on first use like :meth:`connectors`; a failure to start is a
        ``TransientError`` (nothing is kept, the next call tries again).
        """
        url = self.settings.elasticsearch_url
        if not url:
            if not self._search_off_logged:
                self._search_off_logged = True
                log.info("ELASTICSEARCH_URL is not set: search projections are off")
            return None
        if self._search is None:
            async with self._start_lock:
                if self._search is None:
                    search = SearchProjection(url, index_prefix=self.search_index_prefix)
                    try:
                        await search.start()
                    except BaseException:
                        await search.close()
                        raise
                    self._search = search
        return self._search

    async def stripe(self) -> StripeApi:
        """The Stripe API client (``STRIPE_API_KEY``, ``STRIPE_API_BASE``).

        :raises PermanentError: ``STRIPE_API_KEY`` is not set, so a command that needs
            Stripe goes to ``dlq`` with that reason instead of crashing the worker.
        """
        if self._stripe is None:
            key = self.settings.stripe_api_key
            if not key:
                raise PermanentError("STRIPE_API_KEY is not set")
            self._stripe = StripeApi(key, self.settings.stripe_api_base)
        return self._stripe

    async def leads(self) -> LeadStore:
        """The lead store, over the started projection's pool."""
        return LeadStore(await self.connectors())

    async def contacts(self) -> ContactStore:
        """The user contact store, over the started projection's pool."""
        return ContactStore(await self.connectors())

    async def notifications(self) -> NotificationStore:
        """The notification store, over the started projection's pool."""
        return NotificationStore(await self.connectors())

    def crm(self) -> CrmClient:
        """The partner CRM client (one HTTP session for every partner)."""
        if self._crm is None:
            self._crm = CrmClient(now=self.clock.time)
        return self._crm

    async def close(self) -> None:
        """Close every connector that was started. Idempotent."""
        if self.runtime is not None:
            await asyncio.to_thread(self.runtime.stop)
        search, self._search = self._search, None
        stripe, self._stripe = self._stripe, None
        crm, self._crm = self._crm, None
        if crm is not None:
            await crm.close()
        for sender in self.senders.values():
            await sender.close()
        cache, self.cache = self.cache, None
        if cache is not None:
            await cache.close()
        if search is not None:
            await search.close()
        if stripe is not None:
            await stripe.close()
        if self._started:
            self._started = False
            await self.projection.close()
