"""Request middleware shared by both listeners: correlation ids, error mapping and the
request's log line.

Every refused request is one INFO line (path, status, error class, caller; a 429 is
DEBUG); every internal request the token check let through is one INFO line too, naming
the token that made it (``caller``, the token's name, never the token), so who did what
on the internal API can be read from the logs. Public webhooks served are not logged per
request (their volume is the senders', and the metrics count them).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry.trace import SpanKind

from base.logs import log_context
from base.metrics import MetricName, Metrics
from base.tracing import continue_trace
from ingress.outcomes import ClientAborted, error_response
from ingress.scopes import CALLER_KEY, caller_name

__all__ = ["CORRELATION_HEADER", "METRICS_KEY", "correlation_id", "outcome_middleware"]

METRICS_KEY = web.AppKey("metrics", Metrics)

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"
_CORRELATION_KEY = web.RequestKey("correlation_id", str)
# A caller's id is echoed only if it is short and plain, so it is safe in logs and headers.
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def correlation_id(request: web.Request) -> str:
    return request[_CORRELATION_KEY]


@web.middleware
async def outcome_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request a correlation id and turn every exception into a JSON answer."""
    given = request.headers.get(CORRELATION_HEADER, "")
    cid = given if _ACCEPTABLE_ID.fullmatch(given) else uuid.uuid4().hex
    request[_CORRELATION_KEY] = cid
    route = request.match_info.route.name or "unmatched"
    # The request's span: a child of the caller's traceparent (a new trace without one);
    # every record the handler publishes carries it (ingress.requests.traceparent_of).
    with (
        continue_trace(
            f"{request.method} {route}",
            request.headers.get("traceparent"),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route},
        ) as span,
        log_context(correlation_id=cid),
    ):
        response = await _answer(request, handler, cid, route)
        span.set_attribute("http.response.status_code", response.status)
    response.headers[CORRELATION_HEADER] = cid
    request.app[METRICS_KEY].inc(MetricName.HTTP_REQUESTS, route=route, status=str(response.status))
    return response


async def _answer(
    request: web.Request, handler: Handler, cid: str, route: str
) -> web.StreamResponse:
    """The handler's response, every exception turned into a JSON answer, logged."""
    started = time.monotonic()
    try:
        response = await handler(request)
    except web.HTTPSuccessful as ok:
        response = ok
    except ClientAborted as exc:
        # Counted (499, not a 5xx: anyone can hang up), logged at DEBUG; the response
        # is never read, aiohttp drops it with the connection.
        log.debug("client went away mid-request", extra={"path": request.path})
        response = error_response(exc)
    except Exception as exc:
        response = error_response(exc)
        if response.status >= 400:
            # A flood past a rate limit would be a flood of log lines: 429s at DEBUG
            # (the metrics count them by route).
            log.log(
                logging.DEBUG if response.status == 429 else logging.INFO,
                "request refused",
                extra={
                    "path": request.path,
                    "status": response.status,
                    "reason": type(exc).__name__,
                    "caller": caller_name(request),
                    "correlation_id": cid,
                },
            )
    if response.status < 400 and CALLER_KEY in request:
        log.info(
            "internal request",
            extra={
                "method": request.method,
                "path": request.path,
                "route": route,
                "status": response.status,
                "caller": caller_name(request),
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "correlation_id": cid,
            },
        )
    return response
