"""Which scope each internal route needs: one table, by route name.

Internal tokens carry scopes (DESIGN §3), one per route family and verb: ``events:write``
to post domain events, ``payments:read`` to read a payment's status, and so on. A valid
token without the route's scope is refused with 403 naming the scope; a route under
``/internal/`` missing from this table is refused to every token (fail closed), so a new
route cannot be left open by forgetting its line here.

Route names are the ``name=`` each route is registered with in ``ingress/app.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from aiohttp import web

__all__ = ["ADMIN_SCOPE", "CALLER_KEY", "ROUTE_SCOPES", "SCOPES", "caller_name", "scope_of"]

ADMIN_SCOPE: Final = "admin"
"""Everything, the admin routes included (``ADMIN_API_TOKEN`` tokens hold it)."""

ROUTE_SCOPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "internal.events": "events:write",
        "internal.payments.intents": "payments:write",
        "internal.payments.checkout-sessions": "payments:write",
        "internal.payments.refunds": "payments:write",
        "internal.payments.status": "payments:read",
        "internal.leads.deliver": "leads:write",
        "internal.leads.status": "leads:read",
        "internal.notifications.send": "notifications:write",
        "internal.notifications.status": "notifications:read",
        "internal.search.index": "search:write",
        "internal.search.query": "search:read",
        "internal.cache.invalidate": "cache:write",
        "internal.config.get": "config:read",
        "internal.config.set": "config:write",
        # The operations surface (issue 14): admin tokens only.
        "admin.webhooks.logs": ADMIN_SCOPE,
        "admin.webhooks.replay": ADMIN_SCOPE,
        "admin.dlq.list": ADMIN_SCOPE,
        "admin.dlq.show": ADMIN_SCOPE,
        "admin.dlq.replay": ADMIN_SCOPE,
        "admin.dashboard": ADMIN_SCOPE,
        "admin.dashboard.data": ADMIN_SCOPE,
        "admin.dashboard.login": ADMIN_SCOPE,
        "admin.dashboard.replay": ADMIN_SCOPE,
    }
)

SCOPES: Final = frozenset({*ROUTE_SCOPES.values(), ADMIN_SCOPE})
"""Every scope a token may be given."""

CALLER_KEY: Final = web.RequestKey("sluice.caller", str)
"""Where the auth middleware leaves the authenticated token's *name* on the request."""


def scope_of(route_name: str | None) -> str | None:
    """The scope route ``route_name`` needs; ``None`` when it has no line here."""
    return ROUTE_SCOPES.get(route_name) if route_name else None


def caller_name(request: web.Request) -> str:
    """The name of the token that authenticated ``request`` (never the token), for logs
    and ``updatedBy``; ``"anonymous"`` on an unauthenticated route."""
    name = request.get(CALLER_KEY)
    return name if isinstance(name, str) else "anonymous"
