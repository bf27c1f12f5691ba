"""``sluice dev``'s notification outlets, and the command it prints to send a notification.

Unless the developer set them, ``sluice dev`` points the worker's channels at local
servers (``devstack/mail.py``) that run on its own event loop and stop with it:

| setting | local server | where messages land |
|---|---|---|
| ``SMTP_URL`` | :class:`LocalMailServer` (aiosmtpd) | a ``.eml`` file each in ``DIR/mail/`` |
| ``SMS_WEBHOOK_URL`` | :class:`LocalMessageSink` ``/sms`` | a line each in ``DIR/messages.jsonl`` |
| ``PUSH_WEBHOOK_URL`` | :class:`LocalMessageSink` ``/push`` | the same file |

A setting the developer gave (in the environment, not an earlier ``dev.env``, which only
holds the last run's local ports) is kept, and its local server is not started.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from devstack.mail import LocalMailServer, LocalMessageSink

__all__ = [
    "MAIL_PORT",
    "NOTIFY_SETTINGS",
    "SINK_PORT",
    "NotifyOutlets",
    "notification_command",
    "running_notify_outlets",
]

MAIL_PORT: Final = 2525  # the local SMTP server's port when free (else any)
SINK_PORT: Final = 8092  # the SMS/push sink's port when free (else any)
NOTIFY_SETTINGS: Final = ("SMTP_URL", "SMS_WEBHOOK_URL", "PUSH_WEBHOOK_URL")
SEND_PATH: Final = "/internal/v1/notifications/send"


@dataclass(frozen=True, slots=True)
class NotifyOutlets:
    """The settings to give the worker, and where the local servers keep messages
    (``None`` for a channel the developer pointed elsewhere)."""

    settings: Mapping[str, str] = field(default_factory=dict)
    mail_dir: Path | None = None
    messages_file: Path | None = None

    def where(self) -> str:
        """One line for the banner: where sent messages can be read."""
        parts = []
        if self.mail_dir is not None:
            parts.append(f"each email lands as a .eml file in {self.mail_dir}/")
        if self.messages_file is not None:
            parts.append(f"SMS and push messages as JSON lines in {self.messages_file}")
        return "; ".join(parts) or "notifications go to your SMTP_URL / SMS / push settings"


@asynccontextmanager
async def running_notify_outlets(
    data_dir: Path,
    environ: Mapping[str, str] | None = None,
    *,
    mail_port: int | None = MAIL_PORT,
    sink_port: int | None = SINK_PORT,
) -> AsyncIterator[NotifyOutlets]:
    """Start the local servers the channels need (see the module docstring) until the
    block ends; a preferred port that is taken falls back to a free one."""
    environ = os.environ if environ is None else environ
    settings: dict[str, str] = {}
    mail_dir = messages_file = None
    async with AsyncExitStack() as stack:
        if not environ.get("SMTP_URL"):
            mail = LocalMailServer(data_dir / "mail", mail_port)
            await stack.enter_async_context(mail)
            settings["SMTP_URL"] = mail.url
            mail_dir = mail.directory
        wanted = [name for name in NOTIFY_SETTINGS[1:] if not environ.get(name)]
        if wanted:
            sink = LocalMessageSink(data_dir / "messages.jsonl", sink_port)
            await stack.enter_async_context(sink)
            urls = {"SMS_WEBHOOK_URL": sink.sms_url, "PUSH_WEBHOOK_URL": sink.push_url}
            settings |= {name: urls[name] for name in wanted}
            messages_file = sink.log_path
        yield NotifyOutlets(settings, mail_dir, messages_file)


def notification_command(internal_url: str, token: str) -> str:
    """A copy-pasteable ``curl`` that sends the demo ORDER_PAID email to a direct
    address (no user contact needed)."""
    body = json.dumps(
        {
            "to": "ana@example.com",
            "channel": "EMAIL",
            "template": "ORDER_PAID",
            "data": {
                "name": "Ana",
                "order_id": "ord_demo",
                "amount_minor": 2500,
                "currency": "USD",
            },
        },
        separators=(",", ":"),
    )
    return (
        f"curl -sS -X POST {internal_url}{SEND_PATH} -H 'X-Internal-Token: {token}'"
        f" -H 'Content-Type: application/json' -d '{body}'"
    )
