"""EMAIL notifications over SMTP (aiosmtplib): one connection per message.

``SMTP_URL`` says where and how:

- ``smtp://[user:password@]host[:port]`` (port 25): plain SMTP, upgraded with STARTTLS
  when the server offers it (aiosmtplib's default; certificates are verified);
- ``smtp+starttls://…`` (port 587): STARTTLS required;
- ``smtps://…`` (port 465): TLS from the first byte.

User and password are percent-decoded and used to log in when given. The query may set
the sender: ``?from=Shop%20<shop@example.com>`` (default ``Sluice
<notifications@localhost>``).

Each message is multipart/alternative (text, then HTML) with ``Message-ID:
<notification-id@sluice>``: derived from the notification id alone, so every retry of
one notification (and a resend after a crash between the server's acceptance and our
record of it) carries the same id and a mail client or a reader can tell the copies are
one message. SMTP has no idempotency key; this is the at-least-once it allows.

:meth:`SmtpSender.send` never retries by itself. It raises ``TransientError`` for a 4xx
reply, a refused or dropped connection and timeouts, and ``PermanentError`` for a 5xx
reply or an extension the server lacks (STARTTLS or AUTH demanded by the URL). The
password never appears in an error, a log line or a ``repr``.
"""

from __future__ import annotations

import email.utils
import logging
import re
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from types import TracebackType
from typing import Final, Self
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from base.errors import ConfigError, PermanentError, SluiceError, TransientError
from base.sinks import Sink, sink_call
from schemas.notify_templates import RenderedMessage

__all__ = [
    "DEFAULT_SENDER",
    "SmtpSender",
    "SmtpTarget",
    "build_email",
    "message_id_for",
    "parse_smtp_url",
    "translate_smtp_error",
]

_log = logging.getLogger(__name__)

DEFAULT_SENDER: Final = "Sluice <notifications@localhost>"
MESSAGE_ID_DOMAIN: Final = "sluice"
_PORTS: Final = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
# RFC 5322 dot-atom-text: what the left part of a Message-ID may hold unquoted.
_DOT_ATOM: Final = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
)
_REPLY_MAX_CHARS: Final = 300


@dataclass(frozen=True)
class SmtpTarget:
    """A parsed ``SMTP_URL``."""

    host: str
    port: int
    use_tls: bool
    start_tls: bool | None  # None: when offered
    sender: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_smtp_url(url: str) -> SmtpTarget:
    """Read ``SMTP_URL`` (see the module docstring).

    :raises ConfigError: another scheme, no host, a bad port or a malformed ``from``;
        the message never holds the password.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("SMTP_URL is not a valid URL (smtp://[user:pass@]host[:port])") from None
    scheme = parts.scheme.lower()
    if scheme not in _PORTS:
        raise ConfigError(
            f"SMTP_URL scheme {parts.scheme!r} is not one of {', '.join(_PORTS)} "
            "(smtp://[user:pass@]host[:port])"
        )
    if not parts.hostname:
        raise ConfigError("SMTP_URL has no host")
    query = parse_qs(parts.query)
    sender = query.get("from", [DEFAULT_SENDER])[-1]
    if "@" not in email.utils.parseaddr(sender)[1]:
        raise ConfigError(f"SMTP_URL from={sender!r} is not an address")
    return SmtpTarget(
        host=parts.hostname,
        port=port or _PORTS[scheme],
        use_tls=scheme == "smtps",
        start_tls=True if scheme == "smtp+starttls" else None,
        sender=sender,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def message_id_for(notification_id: str) -> str:
    """``<notification-id@sluice>``: the same for every send of one notification.

    :raises ValueError: the id cannot stand unquoted in a Message-ID (Sluice's ids,
        UUIDs, always can).
    """
    if not _DOT_ATOM.fullmatch(notification_id):
        raise ValueError(f"notification id {notification_id!r} cannot be used in a Message-ID")
    return f"<{notification_id}@{MESSAGE_ID_DOMAIN}>"


def build_email(
    *, notification_id: str, to: str, sender: str, message: RenderedMessage
) -> EmailMessage:
    """The MIME message: headers, the text part, then the HTML part (when rendered).

    :raises PermanentError: ``message`` has no subject (not an EMAIL rendering).
    """
    if message.subject is None:
        raise PermanentError("an email needs a subject: the message was not rendered for EMAIL")
    mail = EmailMessage()
    mail["Message-ID"] = message_id_for(notification_id)
    mail["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    mail["From"] = sender
    mail["To"] = Address(addr_spec=to)
    mail["Subject"] = message.subject
    # RFC 3834: an automatic message; auto-responders should not answer it.
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(message.text)
    if message.html is not None:
        mail.add_alternative(message.html, subtype="html")
    return mail


class SmtpSender:
    """Sends rendered EMAIL notifications to one SMTP server. Stateless between sends
    (one connection each), so safe to share on one event loop.

    :param smtp_url: ``SMTP_URL``.
    :param timeout_s: limit for each step (connect, each command, the message).
    :raises ConfigError: a malformed ``smtp_url``.
    """

    def __init__(self, smtp_url: str, *, timeout_s: float = 10.0) -> None:
        self.target = parse_smtp_url(smtp_url)
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"<SmtpSender {self.target.host}:{self.target.port}>"

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
        """Nothing is held open between sends; here for the connector shape."""

    @sink_call(Sink.SMTP)
    async def send(self, *, notification_id: str, to: str, message: RenderedMessage) -> str:
        """Send one message to ``to`` (an address); return its Message-ID.

        Not idempotent (SMTP cannot be): a retry after an unclear failure may deliver a
        second copy, with the same Message-ID.

        :raises TransientError: 4xx, connection refused or lost, timeout.
        :raises PermanentError: 5xx, a missing server extension, a message that is not an
            EMAIL rendering.
        """
        mail = build_email(
            notification_id=notification_id, to=to, sender=self.target.sender, message=message
        )
        target = self.target
        try:
            await aiosmtplib.send(
                mail,
                hostname=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                use_tls=target.use_tls,
                start_tls=target.start_tls,
                timeout=self._timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            error = translate_smtp_error(exc)
            _log.info(
                "smtp send failed: %s",
                error,
                extra={
                    "notification_id": notification_id,
                    "transient": isinstance(error, TransientError),
                },
            )
            raise error from None
        message_id = mail["Message-ID"]
        assert isinstance(message_id, str)
        return message_id


def translate_smtp_error(exc: BaseException) -> SluiceError:
    """Map an aiosmtplib (or socket) error to ``TransientError`` / ``PermanentError``.

    A reply code decides when there is one (4xx transient, 5xx permanent); refused,
    dropped or timed-out connections are transient; an extension the server lacks is
    permanent (the URL asks for what this server cannot do).
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException) and 400 <= exc.code < 600:
        message = f"smtp {exc.code}: {_short(exc.message)}"
        if exc.code >= 500:
            return PermanentError(message)
        return TransientError(message)
    if isinstance(exc, aiosmtplib.SMTPNotSupported) or type(exc) is aiosmtplib.SMTPException:
        # aiosmtplib raises the bare base class for what the server cannot do at all
        # ("STARTTLS extension not supported by server"): the URL asks for the impossible.
        return PermanentError(f"smtp: {_short(str(exc))}")
    return TransientError(f"smtp: {type(exc).__name__}: {_short(str(exc))}")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REPLY_MAX_CHARS else text[:_REPLY_MAX_CHARS] + "..."
