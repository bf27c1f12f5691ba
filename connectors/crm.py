"""Partner CRM deliveries: one HTTP POST of a lead to the partner's ``delivery.url``.

Every request:

- carries the lead as JSON and ``Idempotency-Key: <leadId>``, the same for every copy and
  every attempt of one lead, so a CRM that honours it stores the lead once whatever the
  worker repeats (a retry, a redelivery after a crash, a forced re-send);
- is signed per ``delivery.auth``: ``bearer`` sends ``Authorization: Bearer <token>``;
  ``standard-webhooks`` sends ``webhook-id`` (the lead id: the Standard Webhooks message
  id stays the same across retries of one message, which is what lets the receiver
  deduplicate), ``webhook-timestamp`` (now) and ``webhook-signature`` made by the
  ``standardwebhooks`` library's ``Webhook(secret).sign``; ``none`` sends neither;
- is bounded by the partner's ``delivery.timeout_s`` (connect, send, wait and read), so a
  slow CRM costs at most that.

:meth:`CrmClient.deliver` never raises for what the CRM or the network did: it returns a
:class:`CrmResponse` (status, latency, error text, ``Retry-After``) so every attempt can
be recorded, whatever its outcome. What an outcome means is decided by the caller
(``streams.domain.leads.decide_attempt``); this connector never retries.

Tokens and secrets never reach a log line or a :class:`CrmResponse`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
from standardwebhooks import Webhook

from base.http_status import parse_retry_after
from base.partners import Delivery
from base.sinks import Sink, sink_call

__all__ = ["ERROR_BODY_CHARS", "CrmClient", "CrmResponse", "delivery_headers"]

ERROR_BODY_CHARS: Final = 200
"""How much of a failure answer's body is kept as the attempt's error."""


@dataclass(frozen=True, slots=True)
class CrmResponse:
    """What one delivery attempt gave.

    :param http_status: the CRM's status, ``None`` when no answer came.
    :param latency_ms: from sending to the answer (or the failure).
    :param error: why no answer came, or the start of a non-2xx answer's body.
    :param retry_after: seconds from a ``Retry-After`` header, when usable.
    """

    http_status: int | None
    latency_ms: int
    error: str | None = None
    retry_after: float | None = None


def delivery_headers(delivery: Delivery, lead_id: str, body: str, now: datetime) -> dict[str, str]:
    """The headers of one delivery of ``body`` (the exact text sent) at ``now``."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": lead_id}
    if delivery.auth == "bearer":
        headers["Authorization"] = f"Bearer {delivery.token}"
    elif delivery.auth == "standard-webhooks":
        assert delivery.secret is not None  # Delivery validates it
        headers["webhook-id"] = lead_id
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        headers["webhook-signature"] = Webhook(delivery.secret).sign(lead_id, now, body)
    return headers


class CrmClient:
    """Delivers leads to partner CRMs over one aiohttp session. Use from one event loop;
    ``close()`` (or ``async with``) when done. Calls may run concurrently.

    :param now: wall-clock time for the Standard Webhooks timestamp (injected in tests).
    """

    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No pooled keep-alive across partners is needed; a CRM that closes an idle
            # connection must not turn the next attempt into a failure.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
                raise_for_status=False,
            )
        return self._session

    @sink_call(Sink.CRM)
    async def deliver(
        self, delivery: Delivery, lead_id: str, lead: Mapping[str, Any]
    ) -> CrmResponse:
        """POST ``lead`` (JSON) to ``delivery.url``; never raises for the CRM's or the
        network's failures (they are the :class:`CrmResponse`).

        :raises ValueError: ``delivery`` has no URL (a disabled delivery: a caller bug).
        """
        if delivery.url is None:
            raise ValueError("delivery has no url")
        body = json.dumps(lead, separators=(",", ":"), ensure_ascii=False)
        headers = delivery_headers(
            delivery, lead_id, body, datetime.fromtimestamp(self._now(), UTC)
        )
        timeout = aiohttp.ClientTimeout(total=delivery.timeout_s)
        started = time.monotonic()
        try:
            async with self._http().post(
                delivery.url, data=body.encode(), headers=headers, timeout=timeout
            ) as response:
                status = response.status
                text = "" if 200 <= status < 300 else await _start_of(response)
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self._now())
        except TimeoutError:
            return CrmResponse(None, _ms_since(started), f"timed out after {delivery.timeout_s:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return CrmResponse(None, _ms_since(started), _describe(exc))
        return CrmResponse(status, _ms_since(started), text or None, retry_after)


async def _start_of(response: aiohttp.ClientResponse) -> str:
    """The start of a failure answer's body, one line (never the whole of a large one)."""
    try:
        chunk = await response.content.read(ERROR_BODY_CHARS * 4)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    text = chunk.decode("utf-8", "replace")
    return " ".join(text.split())[:ERROR_BODY_CHARS]


def _describe(exc: BaseException) -> str:
    """A client failure in one line, without the URL's query or credentials."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or type(exc.os_error).__name__}"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _ms_since(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))
