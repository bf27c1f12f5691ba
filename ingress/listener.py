"""One TCP listener for an aiohttp application, with the limits aiohttp leaves out.

aiohttp's server has no read timeout and no connection limit: a client that opens a
connection and sends half a request head (or nothing) holds it, and its socket, for as
long as it likes (an outside probe kept 53 such connections for 75 s). This module runs
the application's server on an asyncio listener of its own, whose protocol adds:

- **a header timeout** (``SLUICE_HEADER_TIMEOUT``, 10 s): a new connection must deliver
  its first request head within it, and a kept-alive connection must finish a head
  within it of the head's first byte; otherwise the connection is closed;
- **a connection cap** (``SLUICE_MAX_CONNECTIONS`` per listener): a connection over it
  is answered ``503`` (JSON, ``Retry-After``) and closed at once, so the ones already
  open (and the other listener) keep being served;
- **quiet, JSON answers to malformed HTTP** (a request line or header over aiohttp's
  8190-byte limits, a repeated ``Content-Length``, bytes that are not HTTP): aiohttp
  logs these at ERROR with the parser's message, which quotes the offending input (a
  padded token reached the log that way), and answers ``text/plain``. Here they are an
  INFO line naming only the status and the error class, answered like every other
  error (``ingress.responses``).

The body timeout (``SLUICE_BODY_TIMEOUT``) is enforced where bodies are read
(``ingress.requests``), which can answer ``408`` in JSON. Idle kept-alive connections
are closed after :data:`KEEPALIVE_S`.

The protocol subclasses aiohttp's public ``web.RequestHandler`` and overrides public
methods, but reads one private counter (``_request_count``, heads parsed); an aiohttp
upgrade that changes it fails ``tests/test_ingress_http.py``, which drives every limit
over raw sockets, on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Final, cast

from aiohttp import web

from ingress.responses import json_bytes, json_response

__all__ = ["KEEPALIVE_S", "Listener", "ListenerLimits", "listen"]

log = logging.getLogger(__name__)

KEEPALIVE_S: Final = 75.0
"""How long an idle kept-alive connection stays open: longer than the 60 s idle timeout
of common load balancers, so they close first and never send onto a closing socket."""

# How long aiohttp keeps reading (and dropping) a body its handler did not read, so a
# client still sending sees the answer rather than a reset. Short: a client that stalls
# must not hold its connection much longer than its timeout.
_LINGER_S: Final = 2.0

_REFUSAL_BODY = json_bytes({"error": "unavailable", "detail": "too many connections; retry later"})
_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n" + _REFUSAL_BODY
)
# At most one warning per this many seconds about refused connections (a flood of
# them must not become a flood of log lines).
_REFUSAL_LOG_EVERY_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    header_timeout_s: float
    max_connections: int


class Listener:
    """A started listener: its bound port, and how to stop it."""

    def __init__(self, runner: web.AppRunner, server: asyncio.AbstractServer, port: int) -> None:
        self._runner = runner
        self._server = server
        self.port = port

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish (aiohttp's shutdown), close."""
        self._server.close()
        await self._runner.cleanup()
        await self._server.wait_closed()


class _Connections:
    """The connections one listener holds, against its cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._refused_since_log = 0
        self._next_log = 0.0

    def refused(self, loop: asyncio.AbstractEventLoop) -> None:
        self._refused_since_log += 1
        if loop.time() >= self._next_log:
            log.warning(
                "connections refused: the listener is at its cap",
                extra={"cap": self.limit, "refused": self._refused_since_log},
            )
            self._refused_since_log = 0
            self._next_log = loop.time() + _REFUSAL_LOG_EVERY_S


class _Refusal(asyncio.Protocol):
    """A connection over the cap: answered 503 and closed, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's is no subclass of asyncio's.
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(_REFUSAL)
        writer.close()


class _RequestHandler(web.RequestHandler):
    """aiohttp's protocol, plus the header timeout, the count and quiet malformed HTTP."""

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        connections: _Connections,
        header_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._connections = connections
        self._header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._counted = False
        # Request heads parsed, and responses finished, on this connection: while they
        # are equal no request is under way, so arriving bytes begin a new head.
        self._heads = 0
        self._answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connections.open += 1
        self._counted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._connections.open -= 1
            self._counted = False
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        awaiting_head = self._heads == self._answered
        before = self._request_count
        super().data_received(data)
        parsed = self._request_count - before  # heads parsed (or refused as malformed)
        if parsed:
            self._heads += parsed
            self._disarm_head_timer()
        elif data and awaiting_head:
            # Part of a head: armed only now, so a head that arrives whole (the usual
            # case) costs no timer.
            self._arm_head_timer()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not hand to the application: a
        malformed one (4xx), or an error outside the application's middleware (500)."""
        if status >= 500:
            # Not the client's doing: a bug, logged in full (it quotes no client input).
            log.error("request failed outside its handler", exc_info=exc)
            body = {"error": "internal", "detail": "internal error"}
        else:
            # The parser's message quotes the offending bytes: never logged, never sent.
            log.info(
                "malformed HTTP request refused",
                extra={"status": status, "reason": type(exc).__name__, "remote": request.remote},
            )
            body = {"error": "malformed", "detail": "malformed HTTP request"}
        if request.writer.output_size > 0:
            raise ConnectionError("the response has already begun")
        response = json_response(body, status=status)
        response.force_close()
        return response

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(self._header_timeout_s, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        log.info("connection closed: no request head in time", extra={"remote": _peer(self)})
        self.force_close()


def _peer(handler: web.RequestHandler) -> str | None:
    peer = handler.peername
    return str(peer[0]) if isinstance(peer, tuple) else peer


async def listen(
    app: web.Application,
    host: str,
    port: int,
    limits: ListenerLimits,
    tls: ssl.SSLContext | None = None,
) -> Listener:
    """Start ``app`` on ``host:port`` (0: a free port, see :attr:`Listener.port`)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    server = runner.server
    assert server is not None, "AppRunner.setup() builds the server"
    loop = asyncio.get_running_loop()
    connections = _Connections(limits.max_connections)

    def protocol() -> asyncio.Protocol:
        # Connections count from their connection_made, one loop turn after this call:
        # a burst accepted in one turn can pass the cap by at most that burst.
        if connections.open >= connections.limit:
            connections.refused(loop)
            return _Refusal()
        return _RequestHandler(
            server,
            loop=loop,
            connections=connections,
            header_timeout_s=limits.header_timeout_s,
            keepalive_timeout=KEEPALIVE_S,
            lingering_time=_LINGER_S,
            access_log=None,
        )

    try:
        listening = await loop.create_server(protocol, host, port, ssl=tls, reuse_address=True)
    except BaseException:
        await runner.cleanup()
        raise
    sockets = listening.sockets
    assert sockets, "the listener has no socket"
    bound: int = sockets[0].getsockname()[1]
    return Listener(runner, listening, bound)
