"""Token auth of the internal API: every ``/internal/`` route needs ``X-Internal-Token``.

``INTERNAL_API_TOKEN`` lists the accepted tokens, comma-separated, so a token is rotated
without downtime: list old and new, move the callers over, drop the old one.

Comparisons are constant-time and reveal nothing about which token (if any) came close:

- both sides are hashed with SHA-256 first, so ``hmac.compare_digest`` always compares
  32 bytes and the time taken does not depend on the tokens' lengths either;
- the presented token is compared with *every* listed token, without stopping at the
  first match, so the time does not say which list entry matched.

Only digests are kept in memory once the middleware is built. A token never reaches a
log line: refusals are logged by ``outcome_middleware`` with the path, status and error
class only, and the one warning here (no token configured) names the setting, not a value.

The check is a middleware on the internal application rather than a per-route wrapper,
so a route added later under ``/internal/`` is protected without anyone remembering to,
and an unauthenticated caller learns nothing about which routes or methods exist (401
comes before 404 and 405). ``/healthz``, ``/readyz`` and ``/metrics`` stay open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ingress.outcomes import Unauthorized

__all__ = [
    "INTERNAL_TOKEN_HEADER",
    "PROTECTED_PREFIX",
    "TokenSet",
    "check_token",
    "internal_token_middleware",
    "is_protected",
]

log = logging.getLogger(__name__)

INTERNAL_TOKEN_HEADER = "X-Internal-Token"  # noqa: S105 - a header name, not a secret
PROTECTED_PREFIX = "/internal/"


def _digest(token: str) -> bytes:
    # surrogatepass: a header aiohttp decoded with surrogates still hashes (and fails).
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenSet:
    """The accepted tokens, held as SHA-256 digests only."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._digests = tuple(_digest(token) for token in tokens if token)

    def __len__(self) -> int:
        return len(self._digests)

    def matches(self, presented: str) -> bool:
        """True if ``presented`` is one of the tokens; time independent of which one."""
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:
            # No short-circuit: every listed token is compared, match or not.
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def check_token(presented: str | None, tokens: TokenSet) -> None:
    """Raise ``Unauthorized`` unless ``presented`` is an accepted token.

    With no token configured every request is refused: an internal API left open by a
    missing setting would be worse than one that is closed until it is set.
    """
    if not tokens:
        raise Unauthorized("the internal API is disabled: no INTERNAL_API_TOKEN is configured")
    if not presented:
        raise Unauthorized(f"missing {INTERNAL_TOKEN_HEADER} header")
    if not tokens.matches(presented):
        raise Unauthorized(f"invalid {INTERNAL_TOKEN_HEADER}")


def is_protected(request: web.Request) -> bool:
    """Whether ``request`` needs the token: by its path, and by the route it matched.

    Both, so that a path spelled differently from its route (``//internal/...``, or a
    future normalising middleware) cannot slip past the prefix check.
    """
    if request.path.startswith(PROTECTED_PREFIX):
        return True
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical.startswith(PROTECTED_PREFIX)


def internal_token_middleware(tokens: Sequence[str]) -> Middleware:
    """The middleware guarding ``/internal/`` routes with ``tokens``.

    Put it inside ``outcome_middleware`` (later in the list), which turns the
    ``Unauthorized`` it raises into the JSON 401.
    """
    accepted = TokenSet(tokens)
    if not accepted:
        log.warning(
            "INTERNAL_API_TOKEN is not set: every /internal/ request is refused with 401",
            extra={"setting": "INTERNAL_API_TOKEN"},
        )

    @web.middleware
    async def require_internal_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_protected(request):
            check_token(request.headers.get(INTERNAL_TOKEN_HEADER), accepted)
        return await handler(request)

    return require_internal_token
