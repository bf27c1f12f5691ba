"""PUSH notifications through an FCM-style HTTP JSON API (``PUSH_WEBHOOK_URL``).

``POST <url>`` with ``{"message": {"token": …, "notification": {"title": …, "body": …}}}``
(FCM HTTP v1's ``projects/<id>/messages:send`` shape); a 2xx answer's JSON ``name`` is the
provider message id. FCM wants an OAuth access token as a bearer token
(``bearer_token``); minting one is left to whoever configures it. Errors as in
``connectors.notify_http``: FCM's 404 ``UNREGISTERED`` (a stale token) and 400
``INVALID_ARGUMENT`` are permanent, 429 ``QUOTA_EXCEEDED`` and 503 are transient.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from base.errors import PermanentError
from base.sinks import Sink, sink_call
from connectors.notify_http import NotifyHttpClient
from schemas.notify_templates import RenderedMessage

__all__ = ["PushApi"]


class PushApi:
    """Sends rendered PUSH notifications. Use from one event loop; ``close()`` when done.

    :param url: ``PUSH_WEBHOOK_URL``.
    :param bearer_token: sent as ``Authorization: Bearer …`` when given.
    :param timeout_s: limit for one whole request.
    """

    def __init__(
        self, url: str, *, bearer_token: str | None = None, timeout_s: float = 10.0
    ) -> None:
        self._http = NotifyHttpClient(
            url, name="push", timeout_s=timeout_s, bearer_token=bearer_token
        )

    def __repr__(self) -> str:
        return f"<PushApi {self._http.url}>"

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
        await self._http.close()

    @sink_call(Sink.PUSH)
    async def send(self, *, notification_id: str, to: str, message: RenderedMessage) -> str | None:
        """Send ``message.title``/``message.text`` to the push token ``to``; return the
        provider's ``name`` (``None`` if its 2xx answer had none). The notification id is
        the ``Idempotency-Key``.

        :raises TransientError: 408/425/429/5xx (``retry_after`` honoured), refused or
            lost connection, timeout.
        :raises PermanentError: any other status; an empty text.
        """
        if not message.text:
            raise PermanentError("push: the rendered text is empty")
        notification: dict[str, Any] = {"body": message.text}
        if message.title:
            notification["title"] = message.title
        answer = await self._http.post(
            idempotency_key=notification_id,
            json_body={"message": {"token": to, "notification": notification}},
        )
        name = answer.get("name") if answer is not None else None
        return name if isinstance(name, str) and name else None
