"""The notification channel connectors against real local servers started here.

SMTP: the dev mail server (``devstack/mail.py``, aiosmtpd) told to answer 450 or 550,
and small aiosmtpd servers of the test's own for what it never does (refuse a recipient,
ask for a login). SMS and push: the dev message sink (aiohttp) told which status to
answer, and small aiohttp servers for a hang or to look at the request. Every socket is
real; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from base.errors import ConfigError, PermanentError, TransientError
from connectors.push_api import PushApi
from connectors.sms_api import SmsApi
from connectors.smtp_email import (
    DEFAULT_SENDER,
    SmtpSender,
    message_id_for,
    parse_smtp_url,
)
from devstack.mail import LocalMailServer, LocalMessageSink
from devstack.ports import LOOPBACK, free_port
from schemas.notifications import Channel
from schemas.notify_templates import RenderedMessage, default_catalog

EMAIL = RenderedMessage(
    subject="Order ord_1 is paid",
    text="Hello <b>Ada</b>,\n25.00 USD received.\n",
    html="<p>Hello &lt;b&gt;Ada&lt;/b&gt;,</p><p>25.00 USD received.</p>\n",
)
SMS = RenderedMessage(text="Payment of 25.00 USD received for order ord_1.")
PUSH = RenderedMessage(title="Order paid", text="We received 25.00 USD for order ord_1.")


def _nid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def mail(tmp_path: Path) -> AsyncIterator[LocalMailServer]:
    async with LocalMailServer(tmp_path / "mail") as server:
        yield server


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[LocalMessageSink]:
    async with LocalMessageSink(tmp_path / "messages.jsonl") as server:
        yield server


async def _serve_smtp(handler: object, **options: Any) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, loop=loop, **options), LOOPBACK, free_port(None)
    )
    return server, server.sockets[0].getsockname()[1]


async def _serve_http(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port(None)
    await web.TCPSite(runner, LOOPBACK, port).start()
    return runner, f"http://{LOOPBACK}:{port}"


# --- SMTP_URL and the message ---------------------------------------------------------


def test_parse_smtp_url() -> None:
    plain = parse_smtp_url("smtp://127.0.0.1:2525")
    assert (plain.host, plain.port, plain.use_tls, plain.start_tls) == (
        "127.0.0.1",
        2525,
        False,
        None,
    )
    assert (plain.username, plain.password, plain.sender) == (None, None, DEFAULT_SENDER)
    secure = parse_smtp_url(
        "smtps://mailer:p%40ss%3Aword@mail.example.com?from=Shop%20%3Cshop%40example.com%3E"
    )
    assert (secure.port, secure.use_tls, secure.start_tls) == (465, True, None)
    assert (secure.username, secure.password) == ("mailer", "p@ss:word")
    assert secure.sender == "Shop <shop@example.com>"
    assert "p@ss" not in repr(secure)
    starttls = parse_smtp_url("smtp+starttls://mail.example.com")
    assert (starttls.port, starttls.use_tls, starttls.start_tls) == (587, False, True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://mail.example.com", "scheme 'http' is not one of"),
        ("smtp://", "no host"),
        ("smtp://host:notaport", "not a valid URL"),
        ("smtp://u:secret@host?from=nobody", "from='nobody' is not an address"),
    ],
)
def test_a_bad_smtp_url_is_named_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_smtp_url(url)
    assert "secret" not in str(caught.value)


def test_message_id_is_derived_from_the_notification_id() -> None:
    assert message_id_for("5f0c") == "<5f0c@sluice>"
    with pytest.raises(ValueError, match="cannot be used"):
        message_id_for("a b")


async def test_an_email_is_multipart_text_and_html_with_a_stable_message_id(
    mail: LocalMailServer,
) -> None:
    nid = _nid()
    sender = SmtpSender(mail.url + "?from=Shop%20%3Cshop%40example.com%3E", timeout_s=5)
    assert await sender.send(notification_id=nid, to="ada@example.com", message=EMAIL) == (
        f"<{nid}@sluice>"
    )
    [received] = mail.messages()
    assert received["Message-ID"] == f"<{nid}@sluice>"
    assert received["To"] == "ada@example.com"
    assert received["From"] == "Shop <shop@example.com>"
    assert received["Subject"] == "Order ord_1 is paid"
    assert received["Delivered-To"] == "ada@example.com"
    assert received["Return-Path"] == "<shop@example.com>"
    assert received.get_content_type() == "multipart/alternative"
    text = received.get_body(("plain",))
    html = received.get_body(("html",))
    assert text is not None
    assert html is not None
    assert text.get_content().replace("\r\n", "\n") == EMAIL.text
    assert html.get_content().replace("\r\n", "\n") == EMAIL.html


async def test_a_rendered_template_goes_out_with_escaped_html(mail: LocalMailServer) -> None:
    template = default_catalog().get("ORDER_PAID", Channel.EMAIL)
    rendered = template.render(
        {"name": "<script>x</script>", "order_id": "o1", "amount_minor": 2500, "currency": "usd"}
    )
    await SmtpSender(mail.url).send(notification_id=_nid(), to="ada@example.com", message=rendered)
    [received] = mail.messages()
    html = received.get_body(("html",))
    assert html is not None
    assert "&lt;script&gt;x&lt;/script&gt;" in html.get_content()
    assert "25.00 USD" in html.get_content()


# --- SMTP failures --------------------------------------------------------------------


async def test_smtp_450_is_transient_and_the_retry_has_the_same_message_id(
    mail: LocalMailServer,
) -> None:
    nid = _nid()
    sender = SmtpSender(mail.url)
    mail.fail_next("450 4.3.0 mailbox busy, try later")
    with pytest.raises(TransientError, match=r"smtp 450: 4\.3\.0 mailbox busy") as caught:
        await sender.send(notification_id=nid, to="ada@example.com", message=EMAIL)
    assert caught.value.retry_after is None
    assert mail.messages() == []
    await sender.send(notification_id=nid, to="ada@example.com", message=EMAIL)
    [received] = mail.messages()
    assert received["Message-ID"] == f"<{nid}@sluice>"


async def test_smtp_550_is_permanent(mail: LocalMailServer) -> None:
    mail.fail_next("550 5.1.1 no such user")
    with pytest.raises(PermanentError, match=r"smtp 550: 5\.1\.1 no such user"):
        await SmtpSender(mail.url).send(notification_id=_nid(), to="ada@example.com", message=EMAIL)
    assert mail.messages() == []


class _RefusingRecipients:
    def __init__(self, reply: str) -> None:
        self.reply = reply

    async def handle_RCPT(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return self.reply


@pytest.mark.parametrize(
    ("reply", "kind"),
    [("550 5.1.1 unknown recipient", PermanentError), ("452 4.2.2 mailbox full", TransientError)],
)
async def test_a_refused_recipient_follows_its_code(reply: str, kind: type[Exception]) -> None:
    server, port = await _serve_smtp(_RefusingRecipients(reply))
    try:
        with pytest.raises(kind, match=reply.split()[0]):
            await SmtpSender(f"smtp://{LOOPBACK}:{port}", timeout_s=5).send(
                notification_id=_nid(), to="ada@example.com", message=EMAIL
            )
    finally:
        server.close()
        await server.wait_closed()


async def test_a_refused_connection_is_transient() -> None:
    port = free_port(None)  # nothing listens there
    with pytest.raises(TransientError, match="smtp: SMTPConnectError"):
        await SmtpSender(f"smtp://{LOOPBACK}:{port}", timeout_s=5).send(
            notification_id=_nid(), to="ada@example.com", message=EMAIL
        )


async def test_a_server_that_never_greets_is_transient() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, LOOPBACK, free_port(None))
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TransientError, match="Timeout"):
            await SmtpSender(f"smtp://{LOOPBACK}:{port}", timeout_s=0.3).send(
                notification_id=_nid(), to="ada@example.com", message=EMAIL
            )
    finally:
        server.close()
        await server.wait_closed()


class _Accounts:
    def __init__(self) -> None:
        self.logins: list[tuple[str, str]] = []
        self.messages: list[bytes] = []

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login = (data.login.decode(), data.password.decode())
        self.logins.append(login)
        return AuthResult(success=login == ("mailer", "p@ss"), handled=False)

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize(("password", "accepted"), [("p%40ss", True), ("wrong", False)])
async def test_the_url_credentials_log_in(password: str, accepted: bool) -> None:
    accounts = _Accounts()
    server, port = await _serve_smtp(
        accounts, authenticator=accounts, auth_require_tls=False, auth_required=True
    )
    sender = SmtpSender(f"smtp://mailer:{password}@{LOOPBACK}:{port}", timeout_s=5)
    try:
        if accepted:
            await sender.send(notification_id=_nid(), to="ada@example.com", message=EMAIL)
            assert len(accounts.messages) == 1
        else:
            with pytest.raises(PermanentError, match="smtp 535") as caught:
                await sender.send(notification_id=_nid(), to="ada@example.com", message=EMAIL)
            assert "wrong" not in str(caught.value)
        assert accounts.logins[-1][0] == "mailer"
    finally:
        server.close()
        await server.wait_closed()


async def test_starttls_demanded_from_a_server_without_it_is_permanent(
    mail: LocalMailServer,
) -> None:
    with pytest.raises(PermanentError, match="STARTTLS"):
        await SmtpSender(f"smtp+starttls://{LOOPBACK}:{mail.port}", timeout_s=5).send(
            notification_id=_nid(), to="ada@example.com", message=EMAIL
        )


async def test_a_message_not_rendered_for_email_is_permanent(mail: LocalMailServer) -> None:
    with pytest.raises(PermanentError, match="needs a subject"):
        await SmtpSender(mail.url).send(notification_id=_nid(), to="ada@example.com", message=SMS)


# --- SMS and push ---------------------------------------------------------------------


async def test_an_sms_is_posted_as_a_form(sink: LocalMessageSink) -> None:
    nid = _nid()
    async with SmsApi(sink.sms_url, sender="+15005550006", timeout_s=5) as api:
        sid = await api.send(notification_id=nid, to="+14155550100", message=SMS)
    [received] = sink.received()
    assert sid is not None
    assert sid.startswith("SM")
    assert received["id"] == sid
    assert (received["channel"], received["to"], received["from"]) == (
        "SMS",
        "+14155550100",
        "+15005550006",
    )
    assert received["body"] == SMS.text
    assert received["idempotencyKey"] == nid


async def test_a_push_is_posted_as_json(sink: LocalMessageSink) -> None:
    nid = _nid()
    async with PushApi(sink.push_url, timeout_s=5) as api:
        name = await api.send(notification_id=nid, to="fcm:token-1", message=PUSH)
    [received] = sink.received()
    assert name == received["id"]
    assert name is not None
    assert name.startswith("projects/sluice-dev/messages/")
    assert (received["token"], received["title"], received["body"]) == (
        "fcm:token-1",
        "Order paid",
        PUSH.text,
    )
    assert received["idempotencyKey"] == nid


@pytest.mark.parametrize("channel", ["sms", "push"])
@pytest.mark.parametrize(
    ("status", "retry_after", "kind", "expected_retry_after"),
    [
        (503, "7", TransientError, 7.0),
        (429, None, TransientError, None),
        (500, "soon", TransientError, None),
        (400, None, PermanentError, None),
        (404, None, PermanentError, None),
    ],
)
async def test_http_statuses_are_classified(
    sink: LocalMessageSink,
    channel: str,
    status: int,
    retry_after: str | None,
    kind: type[Exception],
    expected_retry_after: float | None,
) -> None:
    sink.fail_next(status, retry_after=retry_after)
    api: SmsApi | PushApi
    api = SmsApi(sink.sms_url, timeout_s=5) if channel == "sms" else PushApi(sink.push_url)
    async with api:
        message = SMS if channel == "sms" else PUSH
        to = "+14155550100" if channel == "sms" else "tok"
        with pytest.raises(kind, match=f"HTTP {status}: local sink told to fail") as caught:
            await api.send(notification_id=_nid(), to=to, message=message)
        if isinstance(caught.value, TransientError):
            assert caught.value.retry_after == expected_retry_after
        # The next request goes through: nothing of the failure sticks.
        await api.send(notification_id=_nid(), to=to, message=message)
    assert len(sink.received()) == 1


async def test_sms_api_down_then_back_delivers_once(tmp_path: Path) -> None:
    sink = LocalMessageSink(tmp_path / "sms.jsonl")
    await sink.start()
    url = sink.sms_url
    await sink.stop()
    async with SmsApi(url, timeout_s=5) as api:
        with pytest.raises(TransientError, match="ClientConnectorError"):
            await api.send(notification_id="n1", to="+14155550100", message=SMS)
        await sink.start()  # same port again
        try:
            await api.send(notification_id="n1", to="+14155550100", message=SMS)
        finally:
            await sink.stop()
    assert [r["idempotencyKey"] for r in sink.received()] == ["n1"]


async def test_a_hanging_provider_is_a_transient_timeout() -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    runner, url = await _serve_http(hang)
    try:
        async with PushApi(url + "/push", timeout_s=0.3) as api:
            with pytest.raises(TransientError, match="TimeoutError"):
                await api.send(notification_id=_nid(), to="tok", message=PUSH)
    finally:
        release.set()
        await runner.cleanup()


async def test_credentials_are_sent_and_never_shown() -> None:
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(status=202, text="accepted")  # 2xx without JSON: no id

    runner, url = await _serve_http(record)
    host = url.removeprefix("http://")
    try:
        async with SmsApi(f"http://AC1:s3cret@{host}/Messages.json") as sms:
            assert "s3cret" not in repr(sms)
            assert await sms.send(notification_id="n1", to="+14155550100", message=SMS) is None
        async with PushApi(f"{url}/messages:send", bearer_token="ya29.token") as push:
            assert await push.send(notification_id="n2", to="tok", message=PUSH) is None
    finally:
        await runner.cleanup()
    basic = base64.b64encode(b"AC1:s3cret").decode()
    assert seen[0].headers["Authorization"] == f"Basic {basic}"
    assert seen[0].path == "/Messages.json"
    assert seen[1].headers["Authorization"] == "Bearer ya29.token"
    assert seen[1].headers["Idempotency-Key"] == "n2"


async def test_a_refused_credentialed_url_does_not_leak_the_secret() -> None:
    port = free_port(None)
    async with SmsApi(f"http://AC1:s3cret@{LOOPBACK}:{port}/sms") as api:
        with pytest.raises(TransientError) as caught:
            await api.send(notification_id="n1", to="+14155550100", message=SMS)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["ftp://host/sms", "http:///sms", "http://host:port/sms"])
def test_a_bad_provider_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        SmsApi(url)


# --- the dev servers ------------------------------------------------------------------


async def test_the_mail_server_stops_and_starts_again_on_its_port(tmp_path: Path) -> None:
    server = LocalMailServer(tmp_path / "mail")
    url = await server.start()
    await server.stop()
    with pytest.raises(TransientError):
        await SmtpSender(url, timeout_s=5).send(
            notification_id=_nid(), to="ada@example.com", message=EMAIL
        )
    assert await server.start() == url
    try:
        await SmtpSender(url, timeout_s=5).send(
            notification_id=_nid(), to="ada@example.com", message=EMAIL
        )
        await SmtpSender(url, timeout_s=5).send(
            notification_id=_nid(), to="bob@example.com", message=EMAIL
        )
    finally:
        await server.stop()
    files = server.message_files()
    assert [f.suffix for f in files] == [".eml", ".eml"]
    assert [m["To"] for m in server.messages()] == ["ada@example.com", "bob@example.com"]


async def test_the_same_message_twice_is_two_files(mail: LocalMailServer) -> None:
    nid = _nid()
    sender = SmtpSender(mail.url)
    for _ in range(2):
        await sender.send(notification_id=nid, to="ada@example.com", message=EMAIL)
    assert [m["Message-ID"] for m in mail.messages()] == [f"<{nid}@sluice>"] * 2


async def test_the_sink_refuses_what_a_provider_would(sink: LocalMessageSink) -> None:
    runner_url = sink.url
    async with SmsApi(runner_url + "/sms") as api:
        with pytest.raises(PermanentError, match="HTTP 400: To and Body are required"):
            await api._http.post(idempotency_key="k", form={"To": "+14155550100"})
    async with PushApi(runner_url + "/push") as push:
        with pytest.raises(PermanentError, match=r"HTTP 400: message\.token"):
            await push._http.post(idempotency_key="k", json_body={"message": {}})
    assert sink.received() == []
    assert sink.requests == 2
