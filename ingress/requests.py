"""What every route does with a request before its own checks: read a JSON body within
the size limit and the body timeout, and take the caller's trace context."""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from base.tracing import outgoing_traceparent
from ingress.outcomes import BodyTooLarge, ClientAborted, ReadTimedOut, UnsupportedMediaType
from ingress.records import new_traceparent

__all__ = ["BODY_TIMEOUT_KEY", "read_json_body", "traceparent_of"]

#: Seconds a client has to send a whole body (``SLUICE_BODY_TIMEOUT``), per application.
BODY_TIMEOUT_KEY = web.AppKey("body_timeout_s", float)
_DEFAULT_BODY_TIMEOUT_S = 30.0

_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


async def read_json_body(request: web.Request, limit: int) -> bytes:
    """The raw body of a JSON request: 415 for another content type, 413 over ``limit``,
    408 when it takes longer than the application's ``BODY_TIMEOUT_KEY`` to arrive, and
    ``ClientAborted`` (counted 499) when the client leaves before sending it all."""
    # aiohttp strips parameters: Stripe's "application/json; charset=utf-8" is fine.
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    # Refuse early on a declared length; aiohttp's client_max_size still guards bodies
    # that lie about their length or use chunked encoding.
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    timeout_s = request.config_dict.get(BODY_TIMEOUT_KEY, _DEFAULT_BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body exceeds {limit} bytes") from None
    except TimeoutError:
        raise ReadTimedOut(f"the request body did not arrive within {timeout_s:g} s") from None
    except ConnectionError:
        # The client closed the connection mid-body (aiohttp fails the read with
        # ConnectionResetError): its abort, not our fault, and nobody is left to answer.
        raise ClientAborted("the client closed the connection before sending its body") from None


def traceparent_of(request: web.Request) -> str:
    """The ``traceparent`` of the records this request publishes: the request's span
    (``ingress.middleware``, a child of the caller's ``traceparent``); without a tracer
    provider, the caller's header when well-formed, else a fresh one."""
    current = outgoing_traceparent(None)
    if current is not None:
        return current
    given = request.headers.get("traceparent", "")
    return given if _TRACEPARENT.fullmatch(given) else new_traceparent()
