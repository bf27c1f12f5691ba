"""The HTTP side shared by the SMS and push connectors: one POST, translated.

Each request carries ``Idempotency-Key: <notification id>`` (a provider or a sink that
honours it drops a retried copy), and its outcome becomes the project's taxonomy:

- 2xx: the JSON body (``None`` if it is not a JSON object; the message was accepted,
  so that is no reason to send it again);
- 429, 408, 425 and 5xx: ``TransientError``, ``retry_after`` from ``Retry-After``
  (``base.http_status``); a refused or dropped connection and a timeout likewise;
- any other status (4xx, and 3xx: redirects are not followed): ``PermanentError``.

Credentials in the URL (``https://user:secret@host/…``) are sent as HTTP Basic auth
(Twilio's account SID and token) and are never logged or put in an error: errors and
``repr`` show the URL without them.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from base.errors import ConfigError, PermanentError, TransientError
from base.http_status import classify_http_status, parse_retry_after

__all__ = ["NotifyHttpClient"]

_log = logging.getLogger(__name__)

_DETAIL_MAX_CHARS: Final = 300


class NotifyHttpClient:
    """POSTs to one provider URL. Use from one event loop; ``close()`` when done.

    :param url: the endpoint, credentials in it used as Basic auth.
    :param name: ``sms`` or ``push``, for errors and logs.
    :param timeout_s: limit for one whole request.
    :param bearer_token: sent as ``Authorization: Bearer …`` (instead of Basic auth).
    :raises ConfigError: not an http(s) URL.
    """

    def __init__(
        self, url: str, *, name: str, timeout_s: float = 10.0, bearer_token: str | None = None
    ) -> None:
        try:
            parts = urlsplit(url)
            host = parts.hostname
            port = parts.port
        except ValueError:
            raise ConfigError(f"{name} URL is malformed") from None
        if parts.scheme not in ("http", "https") or not host:
            raise ConfigError(f"{name} URL must be http(s)://host/...")
        netloc = f"[{host}]" if ":" in host else host
        if port is not None:
            netloc += f":{port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        """The endpoint without its credentials."""
        self._name = name
        self._headers: dict[str, str] = {}
        if bearer_token:
            self._headers["Authorization"] = f"Bearer {bearer_token}"
        elif parts.username is not None:
            login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<NotifyHttpClient {self._name} {self.url}>"

    async def close(self) -> None:
        """Close the HTTP session. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(
        self,
        *,
        idempotency_key: str,
        form: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any] | None:
        """POST a form or a JSON body; return the 2xx answer's JSON object.

        :raises TransientError: 408/425/429/5xx (``retry_after`` honoured), connection
            refused or lost, timeout.
        :raises PermanentError: any other non-2xx status.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {**self._headers, "Idempotency-Key": idempotency_key}
        try:
            async with self._session.post(
                self.url,
                data=dict(form) if form is not None else None,
                json=json_body,
                headers=headers,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                if 200 <= response.status < 300:
                    return _json_object(body)
                error = self._status_error(response.status, response.headers, body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            error = TransientError(f"{self._name} {self.url}: {reason}")
        _log.info(
            "%s send failed: %s",
            self._name,
            error,
            extra={
                "idempotency_key": idempotency_key,
                "transient": isinstance(error, TransientError),
            },
        )
        raise error

    def _status_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> TransientError | PermanentError:
        message = f"{self._name} {self.url}: HTTP {status}"
        detail = _detail(body)
        if detail:
            message += f": {detail}"
        if classify_http_status(status) == "transient":
            retry_after = parse_retry_after(headers.get("Retry-After"), time.time())
            return TransientError(message, retry_after=retry_after)
        return PermanentError(message)


def _json_object(body: bytes) -> Mapping[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _detail(body: bytes) -> str:
    """The provider's own error message: Twilio's ``message``, FCM's ``error.message``."""
    document = _json_object(body)
    if document is None:
        return ""
    text = document.get("message")
    error = document.get("error")
    if not isinstance(text, str) and isinstance(error, dict):
        text = error.get("message")
    if not isinstance(text, str):
        return ""
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_MAX_CHARS else text[:_DETAIL_MAX_CHARS] + "..."
