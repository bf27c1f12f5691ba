"""Token auth of the internal API: every ``/internal/`` route needs ``X-Internal-Token``
and the token must hold the route's scope.

The tokens are named and scoped (``ingress.tokens``: the tokens file,
``SLUICE_API_TOKENS``, and the older ``INTERNAL_API_TOKEN`` / ``ADMIN_API_TOKEN`` lists).
Several tokens may be listed, so a token is rotated without downtime: add the new one
(under a new name), move the callers over, drop the old one.

Each request under ``/internal/`` is answered, in this order:

1. **401** without a token, or with one that is not listed (before routing: a caller
   without a token learns nothing about which routes or methods exist, 401 comes before
   404 and 405);
2. 404 / 405 for a path or method that has no route (the caller is known by now);
3. **403** ``{"error":"forbidden","scope":…}`` when the token lacks the scope the route
   needs (``ingress.scopes.scope_of``, by route name; a token holding ``admin`` holds
   every scope);
4. **403** for *every* token on a route that has no line in ``ROUTE_SCOPES``: fail
   closed, so a route added without its scope is refused rather than open.

Comparisons are constant-time and reveal nothing about which token (if any) came close:

- both sides are hashed with SHA-256 first, so ``hmac.compare_digest`` always compares
  32 bytes and the time taken does not depend on the tokens' lengths either;
- the presented token is compared with *every* listed token, without stopping at the
  first match, so the time does not say which list entry matched.

Only digests are kept in memory. The authenticated token's *name* is left on the
request (``request[ingress.scopes.CALLER_KEY]``, read with ``caller_name``) for the
request's log line and for ``updatedBy``; a token never reaches a log line.

**The dashboard** (``/admin`` and ``/admin/...``) is opened by people in a browser, which
cannot set a header on a page load. For those paths only, the token may also come from the
``sluice_admin`` cookie (HttpOnly, SameSite=Strict, set by ``POST /admin/login``, whose
form field ``token`` is read as the token), checked against the same registry with the
same scopes. A request authenticated by the cookie that changes something (any method
but GET and HEAD) must also carry ``X-Sluice-CSRF`` equal to :func:`csrf_token` of the
token, which the dashboard page embeds: a cross-site form can neither read the page nor
set a header, so it cannot replay anything (SameSite=Strict already keeps the cookie off
cross-site requests; the header does not rely on the browser for it). A browser asking
for ``GET /admin`` without a valid token gets the login form (still 401).

The check is a middleware on the internal application rather than a per-route wrapper,
so a route added later under ``/internal/`` is protected without anyone remembering to.
``/healthz``, ``/readyz`` and ``/metrics`` stay open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ingress.dashboard_page import login_page
from ingress.outcomes import Forbidden, MissingScope, Unauthorized
from ingress.scopes import CALLER_KEY, scope_of
from ingress.tokens import ApiToken, TokenRegistry

__all__ = [
    "CSRF_HEADER",
    "DASHBOARD_COOKIE",
    "DASHBOARD_CSRF_KEY",
    "INTERNAL_TOKEN_HEADER",
    "LOGIN_FIELD",
    "LOGIN_PATH",
    "PROTECTED_PATHS",
    "PROTECTED_PREFIX",
    "PROTECTED_PREFIXES",
    "TOKEN_SETTINGS",
    "authorize",
    "check_token",
    "csrf_token",
    "internal_token_middleware",
    "is_protected",
]

log = logging.getLogger(__name__)

INTERNAL_TOKEN_HEADER = "X-Internal-Token"  # noqa: S105 - a header name, not a secret
PROTECTED_PREFIX = "/internal/"
PROTECTED_PREFIXES = (PROTECTED_PREFIX, "/v1/admin/", "/admin/")
"""Paths that need a token: the internal API, the admin API and the dashboard."""
PROTECTED_PATHS = frozenset({"/admin"})
DASHBOARD_PATH = "/admin"
DASHBOARD_PREFIX = "/admin/"
LOGIN_PATH = "/admin/login"
DASHBOARD_COOKIE = "sluice_admin"
"""The dashboard's cookie: the token itself (HttpOnly, SameSite=Strict, Path=/admin)."""
LOGIN_FIELD = "token"
CSRF_HEADER = "X-Sluice-CSRF"
DASHBOARD_CSRF_KEY = web.RequestKey("sluice.dashboard.csrf", str)
"""The CSRF value of the request's token, left on every dashboard request for the page."""
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_FORM = "application/x-www-form-urlencoded"
# Setting names, not secrets.
TOKEN_SETTINGS = "INTERNAL_API_TOKEN, ADMIN_API_TOKEN, SLUICE_API_TOKENS_FILE or SLUICE_API_TOKENS"  # noqa: S105
"""Where tokens are configured, as named in the refusals when there is none."""


def check_token(presented: str | None, tokens: TokenRegistry) -> ApiToken:
    """The token ``presented`` is; ``Unauthorized`` if it is missing or not listed.

    With no token configured every request is refused: an internal API left open by a
    missing setting would be worse than one that is closed until it is set.
    """
    if not tokens:
        raise Unauthorized(
            f"the internal API is disabled: no token is configured ({TOKEN_SETTINGS})"
        )
    if not presented:
        raise Unauthorized(f"missing {INTERNAL_TOKEN_HEADER} header")
    token = tokens.identify(presented)
    if token is None:
        raise Unauthorized(f"invalid {INTERNAL_TOKEN_HEADER}")
    return token


def authorize(token: ApiToken, route_name: str | None) -> None:
    """Raise ``Forbidden`` unless ``token`` may call the route named ``route_name``."""
    scope = scope_of(route_name)
    if scope is None:
        # A route missing from ROUTE_SCOPES is a bug of ours: refused to everyone
        # (admin included) and said loudly, so it is found before anyone relies on it.
        log.error(
            "internal route without a scope refused: add it to ingress/scopes.py",
            extra={"route": route_name or "unnamed"},
        )
        raise Forbidden("this route has no scope declared: refused to every token")
    if not token.allows(scope):
        raise MissingScope(scope)


def csrf_token(token: str) -> str:
    """The value ``X-Sluice-CSRF`` must hold beside the cookie ``token``: an HMAC of a
    fixed label under the token, so it reveals nothing of the token and needs no state."""
    return hmac.new(token.encode(), b"sluice-dashboard-csrf", hashlib.sha256).hexdigest()


def _is_dashboard(request: web.Request) -> bool:
    return request.path == DASHBOARD_PATH or request.path.startswith(DASHBOARD_PREFIX)


def _wants_html(request: web.Request) -> bool:
    # Browsers put text/html first on a page load or a form post; API clients do not.
    return "text/html" in request.headers.get("Accept", "")


async def _dashboard_token(request: web.Request) -> tuple[str | None, bool]:
    """The token a dashboard request presents and whether it came from the cookie: the
    header first, then the login form's field (``POST /admin/login``), then the cookie."""
    header = request.headers.get(INTERNAL_TOKEN_HEADER)
    if header:
        return header, False
    if request.method == "POST" and request.path == LOGIN_PATH and request.content_type == _FORM:
        field = (await request.post()).get(LOGIN_FIELD)
        return (field if isinstance(field, str) else None), False
    cookie = request.cookies.get(DASHBOARD_COOKIE)
    return (cookie or None), cookie is not None


def is_protected(request: web.Request) -> bool:
    """Whether ``request`` needs the token: by its path, and by the route it matched.

    Both, so that a path spelled differently from its route (``//internal/...``, or a
    future normalising middleware) cannot slip past the prefix check.
    """
    if request.path in PROTECTED_PATHS or request.path.startswith(PROTECTED_PREFIXES):
        return True
    resource = request.match_info.route.resource
    if resource is None:
        return False
    return resource.canonical in PROTECTED_PATHS or resource.canonical.startswith(
        PROTECTED_PREFIXES
    )


def internal_token_middleware(tokens: TokenRegistry) -> Middleware:
    """The middleware guarding ``/internal/`` routes with ``tokens``.

    Put it inside ``outcome_middleware`` (later in the list), which turns the
    ``Unauthorized`` and ``Forbidden`` it raises into JSON and logs the request with
    the caller's name.
    """
    if not tokens:
        log.warning(
            f"no internal API token is configured ({TOKEN_SETTINGS}):"
            " every /internal/ request is refused with 401",
            extra={"settings": TOKEN_SETTINGS},
        )

    @web.middleware
    async def require_internal_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_protected(request) and _is_dashboard(request):
            presented, by_cookie = await _dashboard_token(request)
            try:
                token = check_token(presented, tokens)
            except Unauthorized as refused:
                if _wants_html(request) and request.path in (DASHBOARD_PATH, LOGIN_PATH):
                    return login_page(str(refused) if presented else None)
                raise
            request[CALLER_KEY] = token.name
            assert presented is not None  # check_token refuses a missing token
            request[DASHBOARD_CSRF_KEY] = csrf_token(presented)
            if by_cookie and request.method not in _SAFE_METHODS:
                given = request.headers.get(CSRF_HEADER, "")
                if not hmac.compare_digest(given.encode(), csrf_token(presented).encode()):
                    raise Forbidden(f"a dashboard action needs the {CSRF_HEADER} header")
            if request.match_info.http_exception is None:
                authorize(token, request.match_info.route.name)
        elif is_protected(request):
            token = check_token(request.headers.get(INTERNAL_TOKEN_HEADER), tokens)
            request[CALLER_KEY] = token.name
            # No route (404) or no such method (405): aiohttp's handler raises it; only
            # a matched route has a scope to check.
            if request.match_info.http_exception is None:
                authorize(token, request.match_info.route.name)
        return await handler(request)

    return require_internal_token
