"""One function maps every outcome of a request to its HTTP status and JSON body.

Client faults are named precisely (which check, which field); our own faults never leak
their details. Nothing here is a 500 for bad input: a 500 means a bug in Sluice.
"""

from __future__ import annotations

import logging

from aiohttp import web

from base.errors import InvalidEvent, TransientError
from ingress.publisher import NotDurable
from ingress.responses import json_response
from ingress.verify.errors import ForeignToken, SignatureError

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "BodyTooLarge",
    "ClientAborted",
    "Forbidden",
    "MissingScope",
    "NotFound",
    "ReadTimedOut",
    "RequestRejected",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "error_response",
]

log = logging.getLogger(__name__)


class RequestRejected(Exception):
    """The request cannot be served, for a reason its message states plainly: size, type,
    credentials, a missing entity, or a dependency that is down. The message is shown
    to the caller, so it never carries a secret or an internal detail."""

    status = 400
    #: ``Retry-After`` seconds to send with the answer, when retrying makes sense.
    retry_after: str | None = None


class BodyTooLarge(RequestRejected):
    status = 413


class UnsupportedMediaType(RequestRejected):
    status = 415


class Unauthorized(RequestRejected):
    """Missing or invalid credentials (the internal API's token)."""

    status = 401


class Forbidden(RequestRejected):
    """Authenticated, or known, but not allowed (a disabled partner)."""

    status = 403


class MissingScope(Forbidden):
    """A valid token without the scope the route needs; the answer names the scope."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"this token lacks the scope {scope}")
        self.scope = scope


class NotFound(RequestRejected):
    status = 404


CLIENT_CLOSED_REQUEST = 499
"""The status counted (never sent: nobody is left to read it) for a request whose client
went away before it was read in full, as nginx does. A client abort is no server error:
it must not feed the 5xx alert."""


class ClientAborted(RequestRejected):
    """The client closed the connection before its request was read in full."""

    status = CLIENT_CLOSED_REQUEST


class ReadTimedOut(RequestRejected):
    """The client did not send its whole body within ``SLUICE_BODY_TIMEOUT``."""

    status = 408


class Unavailable(RequestRejected):
    """A dependency the route needs is missing or down; the caller may retry."""

    status = 503
    retry_after = "1"


def error_response(exc: BaseException) -> web.Response:
    """The response for an exception raised while handling a request."""
    if isinstance(exc, SignatureError):
        return _json(401, "unauthorized", str(exc))
    if isinstance(exc, ForeignToken):
        return _json(403, "forbidden", str(exc))
    if isinstance(exc, InvalidEvent):
        return _json(400, "invalid", str(exc), field=exc.field)
    if isinstance(exc, MissingScope):
        return _json(403, "forbidden", str(exc), scope=exc.scope)
    if isinstance(exc, RequestRejected):
        response = _json(exc.status, _CODES[exc.status], str(exc))
        if exc.retry_after is not None:
            response.headers["Retry-After"] = exc.retry_after
        if exc.status == 408:
            # Whatever of the body is still on its way is not waited for.
            response.force_close()
        return response
    if isinstance(exc, NotDurable):
        response = _json(503, "unavailable", "the event could not be stored; retry later")
        response.headers["Retry-After"] = "1"
        return response
    if isinstance(exc, TransientError):
        # A dependency failed in a way that may pass (e.g. the schema registry on the
        # first use of a topic). Its message may name hosts: log it, do not answer it.
        log.warning("dependency unavailable", extra={"error": str(exc)})
        response = _json(503, "unavailable", "a dependency is unavailable; retry later")
        response.headers["Retry-After"] = "1"
        return response
    if isinstance(exc, web.HTTPException):
        # aiohttp's own refusals: unknown route, wrong method, body over client_max_size.
        status = exc.status
        if status == 413:
            return _json(413, "too_large", "request body exceeds the limit")
        response = _json(status, _CODES.get(status, "error"), exc.reason)
        if allow := exc.headers.get("Allow"):
            response.headers["Allow"] = allow
        return response
    log.error("unhandled error", exc_info=exc)
    return _json(500, "internal", "internal error")


_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    428: "precondition_required",
    429: "rate_limited",
    CLIENT_CLOSED_REQUEST: "client_closed_request",
    503: "unavailable",
}


def _json(
    status: int, code: str, detail: str, *, field: str | None = None, scope: str | None = None
) -> web.Response:
    body: dict[str, str] = {"error": code, "detail": detail}
    if field:
        body["field"] = field
    if scope:
        body["scope"] = scope
    return json_response(body, status=status)
