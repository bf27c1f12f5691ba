"""Local stand-ins for the notification providers: an SMTP server and an SMS/push sink.

For ``sluice dev`` and the tests. Unlike the other embedded services these are not child
processes: both are small asyncio servers that run on the caller's event loop (as the
dev ingress does), so they start in milliseconds and stop with it.

- :class:`LocalMailServer` (aiosmtpd) accepts every message and writes it as one
  ``.eml`` file under its directory (a mail client opens it; ``cat`` shows it). A second
  copy of a message (a resend after a crash) is a second file, never an overwrite.
- :class:`LocalMessageSink` (aiohttp) answers ``POST /sms`` like a Twilio-style form API
  (``To``, ``Body``, ``From``; 201 ``{"sid": …}``) and ``POST /push`` like an FCM-style
  JSON API (``{"message": {"token", "notification": {"title", "body"}}}``; 200
  ``{"name": …}``), logs each message and appends it to a JSON-lines file.

Both can be told to fail the next requests (``fail_next``), so the retry paths can be
exercised against them; and both can be stopped and started again on the same port, to
play an outage. The mail server can also store a message and hold back its ``250``
(``hold_next``), to play a sender killed between the server's acceptance and its own
record of it.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import email
import email.policy
import itertools
import json
import logging
import os
import secrets
import weakref
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from devstack.ports import LOOPBACK, free_port

__all__ = ["LocalMailServer", "LocalMessageSink"]

_log = logging.getLogger(__name__)

_MAX_MESSAGE_BYTES: Final = 10 * 1024 * 1024


class _MailboxHandler:
    """aiosmtpd handler: answers DATA from the failure queue, else stores the message."""

    def __init__(self, owner: LocalMailServer) -> None:
        self._owner = owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self._owner._received(envelope)


class LocalMailServer:
    """An SMTP server on 127.0.0.1 that stores every accepted message as an ``.eml`` file.

    :param directory: where the ``.eml`` files go (created on start).
    :param port: ``None`` picks a free ephemeral port; a taken preferred port falls back
        to one. After the first start the port is kept, so a restart reuses it.

    No authentication, no TLS: ``SMTP_URL`` is plain ``smtp://127.0.0.1:<port>``. File
    names sort in arrival order: ``<UTC time>-<sequence>.eml``. Each file starts with
    ``Return-Path`` and ``Delivered-To`` lines holding the envelope, as a mailbox would.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self._preferred = port
        self._port: int | None = None
        self._server: asyncio.Server | None = None
        self._failures: collections.deque[str] = collections.deque()
        self._holds: collections.deque[asyncio.Event] = collections.deque()
        self._sequence = itertools.count(1)
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the mail server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The value for ``SMTP_URL``."""
        return f"smtp://{LOOPBACK}:{self.port}"

    def __repr__(self) -> str:
        return f"<LocalMailServer {self.directory} port={self._port}>"

    async def start(self) -> str:
        """Listen and return :attr:`url`. Idempotent."""
        if self._server is None:
            await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
            if self._port is None:
                self._port = free_port(self._preferred)
            handler = _MailboxHandler(self)
            loop = asyncio.get_running_loop()

            def session() -> SMTP:
                protocol = SMTP(
                    handler,
                    hostname="sluice-dev-smtp",
                    data_size_limit=_MAX_MESSAGE_BYTES,
                    enable_SMTPUTF8=True,
                    loop=loop,
                )
                self._sessions.add(protocol)
                return protocol

            self._server = await loop.create_server(session, LOOPBACK, self._port)
        return self.url

    async def stop(self) -> None:
        """Stop listening and drop open sessions. Idempotent; files are kept."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # Python 3.11's Server has no close_clients(): end the open sessions here,
            # so a stopped server is gone for its clients too (an outage, in tests).
            for protocol in list(self._sessions):
                if protocol.transport is not None:
                    protocol.transport.close()
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def fail_next(self, *replies: str) -> None:
        """Answer the next DATA commands with these SMTP replies instead of accepting,
        e.g. ``fail_next("450 4.3.0 try later")`` or ``fail_next("550 5.1.1 no such user")``.
        """
        self._failures.extend(replies)

    def hold_next(self) -> asyncio.Event:
        """Store the next accepted message, then hold its ``250`` reply until the returned
        event is set (on the server's loop). A client that dies meanwhile never hears the
        server accepted it; the message is in the mailbox all the same."""
        release = asyncio.Event()
        self._holds.append(release)
        return release

    def message_files(self) -> list[Path]:
        """Every stored ``.eml`` file, in arrival order."""
        return sorted(self.directory.glob("*.eml"))

    def messages(self) -> list[EmailMessage]:
        """Every stored message, parsed, in arrival order."""
        parsed = []
        for path in self.message_files():
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)  # policy.default makes EmailMessages
            parsed.append(message)
        return parsed

    async def _received(self, envelope: Envelope) -> str:
        if self._failures:
            return self._failures.popleft()
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        head = f"Return-Path: <{envelope.mail_from}>\r\n" + "".join(
            f"Delivered-To: {to}\r\n" for to in envelope.rcpt_tos
        )
        now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{now}-{next(self._sequence):06d}.eml"
        await asyncio.to_thread(_write_atomically, path, head.encode() + content)
        _log.info(
            "mail received",
            extra={
                "mail_from": envelope.mail_from,
                "rcpt_to": envelope.rcpt_tos,
                "file": str(path),
            },
        )
        if self._holds:
            await self._holds.popleft().wait()
        return "250 2.0.0 OK: stored"


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers (a test polling the directory) never see half a message."""
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class LocalMessageSink:
    """An HTTP server on 127.0.0.1 that takes SMS (``/sms``) and push (``/push``) messages.

    :param log_path: the JSON-lines file each message is appended to (one object a line:
        ``channel``, ``receivedAt``, ``to``/``token``, ``body``, ``from``, ``title``,
        ``idempotencyKey``).
    :param port: as for :class:`LocalMailServer`.

    A request without the fields a provider requires (``To`` and ``Body``; ``token`` and
    ``notification.body``) is answered 400, like the provider would.
    """

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.log_path = log_path
        self._preferred = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._failures: collections.deque[tuple[int, str | None]] = collections.deque()
        self._sequence = itertools.count(1)
        self.requests = 0
        """Every request answered (failures included) since construction."""

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the message sink has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def sms_url(self) -> str:
        """The value for ``SMS_WEBHOOK_URL``."""
        return f"{self.url}/sms"

    @property
    def push_url(self) -> str:
        """The value for ``PUSH_WEBHOOK_URL``."""
        return f"{self.url}/push"

    def __repr__(self) -> str:
        return f"<LocalMessageSink {self.log_path} port={self._port}>"

    async def start(self) -> str:
        """Listen and return :attr:`url`. Idempotent."""
        if self._runner is None:
            await asyncio.to_thread(self.log_path.parent.mkdir, parents=True, exist_ok=True)
            if self._port is None:
                self._port = free_port(self._preferred)
            app = web.Application()
            app.router.add_post("/sms", self._sms)
            app.router.add_post("/push", self._push)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, LOOPBACK, self._port).start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
        return self.url

    async def stop(self) -> None:
        """Stop listening. Idempotent; the log file is kept."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def fail_next(self, status: int, count: int = 1, *, retry_after: str | None = None) -> None:
        """Answer the next ``count`` requests (either path) with ``status`` (and a
        ``Retry-After`` header when given) instead of accepting them."""
        self._failures.extend([(status, retry_after)] * count)

    def received(self) -> list[dict[str, Any]]:
        """Every message accepted so far, oldest first."""
        try:
            lines = self.log_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def _failure(self) -> web.Response | None:
        self.requests += 1
        if not self._failures:
            return None
        status, retry_after = self._failures.popleft()
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return web.json_response(
            {"message": f"local sink told to fail with {status}"}, status=status, headers=headers
        )

    async def _sms(self, request: web.Request) -> web.Response:
        failure = self._failure()
        if failure is not None:
            return failure
        form = await request.post()
        to, body, sender = form.get("To"), form.get("Body"), form.get("From")
        if not isinstance(to, str) or not to or not isinstance(body, str) or not body:
            return web.json_response({"message": "To and Body are required"}, status=400)
        sid = "SM" + secrets.token_hex(16)
        await self._record(
            request,
            {"channel": "SMS", "id": sid, "to": to, "from": sender, "body": body},
        )
        return web.json_response({"sid": sid, "status": "queued"}, status=201)

    async def _push(self, request: web.Request) -> web.Response:
        failure = self._failure()
        if failure is not None:
            return failure
        try:
            document = await request.json()
            message = document["message"]
            token = message["token"]
            notification = message["notification"]
            title, body = notification.get("title"), notification["body"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response(
                {"error": {"message": "message.token and message.notification.body required"}},
                status=400,
            )
        name = f"projects/sluice-dev/messages/{next(self._sequence)}"
        await self._record(
            request,
            {"channel": "PUSH", "id": name, "token": token, "title": title, "body": body},
        )
        return web.json_response({"name": name})

    async def _record(self, request: web.Request, entry: dict[str, Any]) -> None:
        entry = {
            **entry,
            "receivedAt": dt.datetime.now(dt.UTC).isoformat(),
            "idempotencyKey": request.headers.get("Idempotency-Key"),
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        await asyncio.to_thread(_append, self.log_path, line)
        _log.info("%s received", entry["channel"].lower(), extra={"message": entry})


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)
