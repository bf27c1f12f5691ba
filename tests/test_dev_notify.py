"""`sluice dev`'s notification outlets and banner lines, without the stack.

The local SMTP server and SMS/push sink are the real ones (``devstack/mail.py``); the
printed command is checked against the send route's own parser, so it cannot drift
into a 400.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest

from base.settings import load_settings
from ingress.notifications import parse_send
from schemas.notify_templates import default_catalog
from sluice.dev import _LeadHints, _NotifyHints, _print_banner
from sluice.dev_notify import NotifyOutlets, notification_command, running_notify_outlets


def _send_mail(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname is not None
    assert parsed.port is not None
    message = EmailMessage()
    message["From"] = "shop@example.com"
    message["To"] = "ana@example.com"
    message["Subject"] = "Order ord_demo is paid"
    message.set_content("we received your payment")
    with smtplib.SMTP(parsed.hostname, parsed.port, timeout=10) as client:
        client.send_message(message)


def _post_sms(url: str) -> int:
    form = urllib.parse.urlencode({"To": "+14155550100", "Body": "hello"}).encode()
    with urllib.request.urlopen(url, data=form, timeout=10) as response:  # noqa: S310 - loopback
        return int(response.status)


async def test_local_outlets_get_every_setting_and_stop_with_the_block(tmp_path: Path) -> None:
    async with running_notify_outlets(tmp_path, {}, mail_port=0, sink_port=0) as outlets:
        assert sorted(outlets.settings) == ["PUSH_WEBHOOK_URL", "SMS_WEBHOOK_URL", "SMTP_URL"]
        assert outlets.settings["SMTP_URL"].startswith("smtp://127.0.0.1:")
        assert outlets.settings["SMS_WEBHOOK_URL"].endswith("/sms")
        assert outlets.settings["PUSH_WEBHOOK_URL"].endswith("/push")
        assert (outlets.mail_dir, outlets.messages_file) == (
            tmp_path / "mail",
            tmp_path / "messages.jsonl",
        )
        # The worker's settings read them as they are.
        settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": "x", **outlets.settings})
        assert settings.smtp_url == outlets.settings["SMTP_URL"]

        await asyncio.to_thread(_send_mail, outlets.settings["SMTP_URL"])
        assert await asyncio.to_thread(_post_sms, outlets.settings["SMS_WEBHOOK_URL"]) == 201

        [eml] = list((tmp_path / "mail").glob("*.eml"))
        assert "Subject: Order ord_demo is paid" in eml.read_text()
        [line] = (tmp_path / "messages.jsonl").read_text().splitlines()
        assert json.loads(line) | {"to": "+14155550100", "body": "hello"} == json.loads(line)
        assert "each email lands as a .eml file in" in outlets.where()
        assert str(tmp_path / "messages.jsonl") in outlets.where()

    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(_send_mail, outlets.settings["SMTP_URL"])
    with pytest.raises(urllib.error.URLError, match="refused"):
        await asyncio.to_thread(_post_sms, outlets.settings["SMS_WEBHOOK_URL"])


async def test_the_developers_own_settings_are_kept(tmp_path: Path) -> None:
    mine = {"SMTP_URL": "smtp://mail.internal:25", "SMS_WEBHOOK_URL": "http://sms.internal/x"}
    async with running_notify_outlets(tmp_path, mine, mail_port=0, sink_port=0) as outlets:
        # Only push is local: no mail server, and the sink serves push alone.
        assert list(outlets.settings) == ["PUSH_WEBHOOK_URL"]
        assert outlets.mail_dir is None
        assert outlets.messages_file == tmp_path / "messages.jsonl"
    assert not (tmp_path / "mail").exists()

    everything = {**mine, "PUSH_WEBHOOK_URL": "http://push.internal/x"}
    async with running_notify_outlets(tmp_path, everything) as outlets:
        assert outlets == NotifyOutlets()
        assert "your SMTP_URL" in outlets.where()


def test_the_printed_command_sends_a_valid_request() -> None:
    command = notification_command("http://127.0.0.1:8081", "int_dev_abc")
    words = shlex.split(command)
    assert words[:4] == ["curl", "-sS", "-X", "POST"]
    assert words[4] == "http://127.0.0.1:8081/internal/v1/notifications/send"
    assert "X-Internal-Token: int_dev_abc" in words
    body = json.loads(words[words.index("-d") + 1])
    request = parse_send(body, default_catalog())
    assert (request.to, request.template) == ("ana@example.com", "ORDER_PAID")


@pytest.mark.parametrize("log_format", ["human", "json"])
def test_the_banner_says_how_to_send_and_where_messages_land(
    tmp_path: Path,
    log_format: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    outlets = NotifyOutlets({}, tmp_path / "mail", tmp_path / "messages.jsonl")
    command = notification_command("http://127.0.0.1:8081", "tok")
    with caplog.at_level("INFO", logger="sluice.dev"):
        _print_banner(
            tmp_path / "dev.env",
            {"INTERNAL_API_TOKEN": "tok"},
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8081",
            log_format,  # type: ignore[arg-type]
            _LeadHints(["curl lead"], tmp_path / "crm"),
            _NotifyHints(command, outlets),
        )
    if log_format == "json":
        [record] = caplog.records
        shown = vars(record)
        assert shown["send_lead"] == ["curl lead"]  # the existing lines stay
        assert shown["send_notification"] == command
        landed = shown["notifications_arrive"]
    else:
        printed = capsys.readouterr().out
        assert "INTERNAL_API_TOKEN=tok" in printed
        assert "curl lead" in printed
        assert command in printed
        landed = printed
    assert f"{tmp_path / 'mail'}/" in landed
    assert str(tmp_path / "messages.jsonl") in landed
    assert "GET http://127.0.0.1:8081/internal/v1/notifications/<id>" in landed
