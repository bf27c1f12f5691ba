"""Rate limits at the door (DESIGN §3, 429 with ``Retry-After``): token buckets in Redis
(``connectors/redis_ratelimit.py``), shared by every ingress process.

Each limit is a rate in requests per second, read from the runtime configuration on every
request (``schemas/runtime_keys.py``; a change applies without a restart), its default
from ``SLUICE_RATE_LIMITS``; 0 is no limit. A bucket holds rate x
``SLUICE_RATE_LIMIT_BURST`` tokens (at least one), so a caller idle for a while may send
that many at once. Which limits a request meets:

- **Public routes**: its source address, ``ratelimit.<route>.source`` (the TCP peer,
  ``request.remote``: behind a proxy that is the proxy, so leave it off there), checked
  by the middleware before the body is read, and
  - ``/v1/webhooks/stripe`` and ``/razorpay``: the provider as a whole,
    ``ratelimit.<route>``, checked with the source address in the same call;
  - ``/v1/webhooks/partner/leads``: the partner, ``ratelimit.partners.<id>`` (else
    ``ratelimit.webhook.partner.leads``), checked by the handler (:meth:`RateLimiter.
    check_partner`) once the body is parsed and its ``partnerId`` names a registered
    partner, before the credentials are verified. So a bad body is still its 4xx
    (413, 415, 400) and an unknown partner its 401, neither makes a bucket (the partner
    keyspace is the registry), and limiting needs no secret: a flood of forged leads is
    refused before each costs an HMAC. The price: forged requests naming a partner
    spend that partner's tokens; the per-source limit bounds what one address can do so.
- **Internal and admin routes**: the token, by name (``ingress.scopes.caller_name``),
  ``ratelimit.<route>``, checked after the token middleware (401 and 403 come first: an
  unknown caller has no bucket) and before the handler.

One call takes a token from all of a request's buckets or from none, so a request
refused by one limit costs nothing against the others. Past a limit: :class:`RateLimited`,
answered 429 ``{"error":"rate_limited","detail":…}`` with ``Retry-After`` in whole seconds
until every bucket has a token again (at least 1); nothing is read further, nothing is
published.

**Fail open.** When Redis is unreachable, errs or takes longer than
``SLUICE_RATE_LIMIT_TIMEOUT`` (and when a limit is set at runtime without ``REDIS_URL``)
the request passes unchecked: webhooks must not be lost to a cache outage (a 429 makes a
provider retry later, but an outage would refuse every webhook). Each such request is
counted (``sluice_ingress_rate_limit_fail_open_total{route}``) and one warning is logged
per :data:`WARN_EVERY_S`. After a failure Redis is left alone for :data:`BACKOFF_S`, so
an outage adds the timeout to one request per second, not to every request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from base.clock import Clock
from base.errors import ConfigError, SluiceError
from base.metrics import MetricName, Metrics
from base.settings import Settings
from connectors.redis_ratelimit import Bucket, TokenBuckets
from ingress.outcomes import RequestRejected
from ingress.scopes import caller_name
from schemas.runtime_keys import (
    PUBLIC_ROUTES,
    RATE_LIMITED_ROUTES,
    RuntimeValues,
    ratelimit_key,
    ratelimit_partner_key,
    ratelimit_source_key,
)

__all__ = [
    "BACKOFF_S",
    "BUCKET_PREFIX",
    "PARTNER_ROUTE",
    "WARN_EVERY_S",
    "RateLimited",
    "RateLimiter",
    "bucket_capacity",
    "rate_limiter",
    "retry_after_s",
]

log = logging.getLogger(__name__)

BUCKET_PREFIX: Final = "sluice:ratelimit:"
"""Every bucket's Redis key starts so: ``sluice:ratelimit:<route>:<kind>:<subject>``."""
PARTNER_ROUTE: Final = "webhook.partner.leads"
BACKOFF_S: Final = 1.0
"""After Redis failed, requests pass unchecked this long before it is asked again."""
WARN_EVERY_S: Final = 10.0
"""At most one fail-open warning per this many seconds."""

_LIMITED = frozenset(RATE_LIMITED_ROUTES)
_PUBLIC = frozenset(PUBLIC_ROUTES)

# (runtime key of the rate, bucket key)
_Limit = tuple[str, str]


class RateLimited(RequestRejected):
    """Past a rate limit: 429 with ``Retry-After`` (whole seconds)."""

    status = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = str(retry_after)


def bucket_capacity(rate: int, burst_s: float) -> float:
    """Tokens a bucket of ``rate`` per second holds: ``burst_s`` seconds' worth, at least
    one (a bucket that cannot hold a whole token would refuse everything)."""
    return max(1.0, rate * burst_s)


def retry_after_s(wait_ms: int) -> int:
    """``Retry-After`` for a wait of ``wait_ms``: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_ms / 1000))


class RateLimiter:
    """Checks a request's limits against the buckets (``None``: no ``REDIS_URL``, every
    limit set passes unchecked and is counted).

    :param runtime: the rates, read on every request.
    :param clock: the buckets' time (the ingress's clock; frozen in tests).
    :param burst_s: ``SLUICE_RATE_LIMIT_BURST``.
    """

    def __init__(
        self,
        buckets: TokenBuckets | None,
        runtime: RuntimeValues,
        *,
        metrics: Metrics,
        clock: Clock,
        burst_s: float,
    ) -> None:
        self._buckets = buckets
        self._runtime = runtime
        self._metrics = metrics
        self._clock = clock
        self._burst_s = burst_s
        self._resume_at = 0.0  # monotonic: when to ask Redis again after a failure
        self._next_warning = 0.0
        self._unchecked = 0  # requests passed unchecked since the last warning

    async def enforce(self, route: str, limits: Sequence[_Limit]) -> None:
        """Take a token for a request on ``route`` from each bucket whose rate is set.

        :raises RateLimited: a bucket is empty (none was taken from).
        """
        active = [(bucket, rate) for key, bucket in limits if (rate := self._rate(key)) > 0]
        if not active:
            return
        if self._buckets is None:
            self._fail_open(route, "REDIS_URL is not set")
            return
        if time.monotonic() < self._resume_at:
            self._fail_open(route, "redis failed less than a second ago")
            return
        buckets = [
            Bucket(BUCKET_PREFIX + bucket, rate, bucket_capacity(rate, self._burst_s))
            for bucket, rate in active
        ]
        try:
            decision = await self._buckets.take(buckets, int(self._clock.time() * 1000))
        except SluiceError as exc:
            self._resume_at = time.monotonic() + BACKOFF_S
            self._fail_open(route, str(exc))
            return
        if not decision.allowed:
            wait = retry_after_s(decision.wait_ms)
            raise RateLimited(f"too many requests on {route}: retry after {wait} s", wait)

    async def check_partner(self, request: web.Request, partner_id: str) -> None:
        """The partner's limit on the leads route (see the module docstring for where the
        handler calls it). ``partner_id`` is a registered partner's.

        :raises RateLimited: past it.
        """
        key = ratelimit_partner_key(partner_id)
        if self._rate(key) == 0:
            key = ratelimit_key(PARTNER_ROUTE)
        await self.enforce(PARTNER_ROUTE, [(key, f"{PARTNER_ROUTE}:partner:{partner_id}")])

    @property
    def middleware(self) -> Middleware:
        """The door's checks (source address and provider, or token), by route name.

        On the internal app it goes after the token middleware, which names the caller.
        """

        @web.middleware
        async def limit_rate(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = request.match_info.route.name
            # No route (404) or method (405): nothing to limit, aiohttp answers it.
            if route in _LIMITED and request.match_info.http_exception is None:
                await self.enforce(route, _door_limits(route, request))
            return await handler(request)

        return limit_rate

    async def close(self, _app: web.Application | None = None) -> None:
        """Close the Redis connections (an ``on_cleanup`` handler)."""
        if self._buckets is not None:
            await self._buckets.close()

    def _rate(self, key: str) -> int:
        try:
            return int(self._runtime.value(key))
        except KeyError:  # a partner the follower's declarations do not know: its route's
            return 0

    def _fail_open(self, route: str, reason: str) -> None:
        self._metrics.inc(MetricName.RATE_LIMIT_FAIL_OPEN, route=route)
        self._unchecked += 1
        now = time.monotonic()
        if now >= self._next_warning:
            log.warning(
                "rate limits not checked, requests pass unchecked (fail open)",
                extra={"reason": reason, "route": route, "unchecked": self._unchecked},
            )
            self._next_warning = now + WARN_EVERY_S
            self._unchecked = 0


def _door_limits(route: str, request: web.Request) -> list[_Limit]:
    if route not in _PUBLIC:
        return [(ratelimit_key(route), f"{route}:token:{caller_name(request)}")]
    limits = [(ratelimit_source_key(route), f"{route}:source:{request.remote or 'unknown'}")]
    if route != PARTNER_ROUTE:
        limits.append((ratelimit_key(route), f"{route}:provider"))
    return limits


def rate_limiter(
    settings: Settings, runtime: RuntimeValues, *, metrics: Metrics, clock: Clock
) -> RateLimiter:
    """The ingress's limiter: buckets in ``REDIS_URL`` (nothing connects here).

    :raises ConfigError: ``SLUICE_RATE_LIMITS`` sets a limit but ``REDIS_URL`` is unset,
        or ``REDIS_URL`` is malformed.
    """
    buckets = None
    if settings.redis_url:
        buckets = TokenBuckets(settings.redis_url, timeout_s=settings.rate_limit_timeout_s)
    elif any(rate > 0 for _, rate in settings.rate_limits):
        raise ConfigError("malformed setting SLUICE_RATE_LIMITS: the limits need REDIS_URL")
    return RateLimiter(
        buckets, runtime, metrics=metrics, clock=clock, burst_s=settings.rate_limit_burst_s
    )
