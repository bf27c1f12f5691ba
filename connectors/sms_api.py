"""SMS notifications through a Twilio-style HTTP form API (``SMS_WEBHOOK_URL``).

``POST <url>`` with form fields ``To`` (E.164), ``Body`` and, when configured, ``From``;
a 2xx answer's JSON ``sid`` is the provider message id. Twilio's URL is
``https://<AccountSid>:<AuthToken>@api.twilio.com/2010-04-01/Accounts/<AccountSid>/Messages.json``:
the credentials in it become Basic auth. Errors as in ``connectors.notify_http``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from base.errors import PermanentError
from base.sinks import Sink, sink_call
from connectors.notify_http import NotifyHttpClient
from schemas.notify_templates import RenderedMessage

__all__ = ["SmsApi"]


class SmsApi:
    """Sends rendered SMS notifications. Use from one event loop; ``close()`` when done.

    :param url: ``SMS_WEBHOOK_URL``.
    :param sender: the ``From`` number or sender id, if the provider needs one.
    :param timeout_s: limit for one whole request.
    """

    def __init__(self, url: str, *, sender: str | None = None, timeout_s: float = 10.0) -> None:
        self._http = NotifyHttpClient(url, name="sms", timeout_s=timeout_s)
        self._sender = sender

    def __repr__(self) -> str:
        return f"<SmsApi {self._http.url}>"

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

    @sink_call(Sink.SMS)
    async def send(self, *, notification_id: str, to: str, message: RenderedMessage) -> str | None:
        """Send ``message.text`` to ``to``; return the provider's ``sid`` (``None`` if
        its 2xx answer had none). The notification id is the ``Idempotency-Key``.

        :raises TransientError: 408/425/429/5xx (``retry_after`` honoured), refused or
            lost connection, timeout.
        :raises PermanentError: any other status; an empty text.
        """
        if not message.text:
            raise PermanentError("sms: the rendered text is empty")
        form = {"To": to, "Body": message.text}
        if self._sender:
            form["From"] = self._sender
        answer = await self._http.post(idempotency_key=notification_id, form=form)
        sid = answer.get("sid") if answer is not None else None
        return sid if isinstance(sid, str) and sid else None
