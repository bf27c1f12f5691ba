"""What every route does with a request before its own checks: read a JSON body within
the size limit, and take the caller's trace context."""

from __future__ import annotations

import re

from aiohttp import web

from ingress.outcomes import BodyTooLarge, UnsupportedMediaType
from ingress.records import new_traceparent

__all__ = ["read_json_body", "traceparent_of"]

_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


async def read_json_body(request: web.Request, limit: int) -> bytes:
    """The raw body of a JSON request: 415 for another content type, 413 over ``limit``."""
    # aiohttp strips parameters: Stripe's "application/json; charset=utf-8" is fine.
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    # Refuse early on a declared length; aiohttp's client_max_size still guards bodies
    # that lie about their length or use chunked encoding.
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body exceeds {limit} bytes") from None


def traceparent_of(request: web.Request) -> str:
    """The caller's W3C ``traceparent`` when well-formed, else a fresh one."""
    given = request.headers.get("traceparent", "")
    return given if _TRACEPARENT.fullmatch(given) else new_traceparent()
