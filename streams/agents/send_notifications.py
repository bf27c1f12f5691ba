"""notifications.requested → Postgres ``notifications`` → SMTP, the SMS API, the push API.

What each outcome means is ``streams.domain.notifications`` (pure); this module stores,
resolves, renders, sends and records. Per request (a ``notifications.requested`` record,
or one of its retries):

1. the notification is stored once (QUEUED; every later copy changes nothing) and its row
   read back: the row, not memory, says what happened before. SENT or FAILED: nothing is
   sent again; RETRYING and this copy is a duplicate fresh request: the retry chain owns
   it (``plan_send``);
2. the template is rendered (``schemas.notify_templates``) and the recipient resolved: a
   direct contact as is, a user id through ``user_contacts`` (email, phone, first push
   token). Bad data, an unknown user, a user without a contact for the channel, or the
   per-user cap exceeded (``SLUICE_NOTIFY_USER_CAP`` notifications to one ``to`` within
   ``SLUICE_NOTIFY_USER_WINDOW``, counted in ``notifications``): FAILED with the reason,
   then a ``PermanentError``: dead letter, no crash;
3. a channel whose URL is not set: ``Held`` (the record waits on the longest delay topic,
   no attempt counted, the row stays QUEUED with the reason in ``last_error``) until the
   channel is configured and the worker restarted; nothing is lost;
4. one send through the channel's connector (EMAIL: ``Message-ID`` from the notification
   id; SMS/PUSH: ``Idempotency-Key`` = the notification id); SENT with the provider's
   message id and ``sent_at``, or RETRYING/FAILED with the attempt and the error, then
   the decision's exception is raised so the ``EffectRunner`` retries it on the delay
   topics (``Retry-After`` honoured) or dead-letters it (permanent, or retries exhausted:
   with an alert).

Delivery is at-least-once with a stable id: a kill between the provider's acceptance and
the SENT record sends again on redelivery, under the same Message-ID / Idempotency-Key
(docs/decisions.md, "Notification sending").

Isolation as in ``deliver_leads``: records of one ``to`` (the record key) in order, other
recipients concurrently (at most ``MAX_CONCURRENT_SENDS``); nothing sleeps here.

Logs carry the notification id, channel, template, status and attempt; never the
recipient's address, the ``to`` value or the message's text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from base.errors import Held, InvalidEvent, PermanentError, TransientError
from connectors.postgres.notifications import NewNotification, NotificationRow
from schemas.notifications import Channel, NotificationStatus
from schemas.notify_templates import RenderedMessage, default_catalog
from schemas.recipients import Recipient, UserRecipient, parse_recipient
from schemas.runtime_keys import NOTIFY_USER_CAP
from streams.agents.batched import agent_batches
from streams.agents.by_key import run_by_key
from streams.context import WorkerContext
from streams.domain.notifications import (
    NotificationRequest,
    StoredContact,
    Undeliverable,
    cap_reason,
    decide_send,
    plan_send,
    redact,
    resolve_address,
)
from streams.domain.retry import RetryHeaders
from streams.records import Inbound, header_value

__all__ = ["AGENT", "EFFECT", "MAX_CONCURRENT_SENDS", "TOPIC", "NotificationSends", "register"]

log = logging.getLogger(__name__)

AGENT: Final = "send_notifications"
EFFECT: Final = "send_notifications"
TOPIC: Final = "notifications.requested"
MAX_CONCURRENT_SENDS: Final = 16
"""Sends one worker has in flight at most (each bounded by its connector's timeout)."""
URL_SETTING: Final = {
    Channel.EMAIL: "SMTP_URL",
    Channel.SMS: "SMS_WEBHOOK_URL",
    Channel.PUSH: "PUSH_WEBHOOK_URL",
}


def register(ctx: WorkerContext) -> None:
    sends = NotificationSends(ctx)
    ctx.runner.register(EFFECT, sends.run)

    async def send_notifications(stream: Any) -> None:
        async for events in agent_batches(ctx, stream):
            records = [Inbound.from_faust(event) for event in events]
            await run_by_key(ctx.runner, EFFECT, records, limit=MAX_CONCURRENT_SENDS)

    ctx.topology.app.agent(ctx.topology.reads(AGENT), name=AGENT)(send_notifications)


class NotificationSends:
    """The send effect over the worker's stores and channel senders."""

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx

    async def run(self, records: Sequence[Inbound]) -> None:
        """The effect of ``notifications.requested`` records (fresh or retried)."""
        for record in records:
            await self._send(record)

    async def _send(self, record: Inbound) -> None:
        retry = RetryHeaders.from_kafka(record.headers)
        decoded = self._ctx.codec.decode(record.value, topic=TOPIC).record
        request = NotificationRequest.from_record(decoded)
        store = await self._ctx.notifications()
        row = await store.store(_new_notification(request))
        plan = plan_send(row.status, retried=retry is not None)
        if not plan.send:
            log.info("notification not sent", extra={**_fields(record, row), "reason": plan.reason})
            return
        try:
            message, address = await self._prepare(request, row)
        except (InvalidEvent, PermanentError) as exc:
            reason = redact(str(exc), *_direct_contact(request))
            await self._fail(record, row, reason)
            # The request's own problem (no such user, no contact, over the cap, a bad
            # template or data): not a sign of a broken worker, so not counted by the
            # dead-letter guard (base.errors.PermanentError).
            raise PermanentError(reason, expected=True) from None
        sender = self._ctx.senders.get(request.channel)
        if sender is None:
            reason = f"{URL_SETTING[request.channel]} is not set: {request.channel} held"
            await store.record(row.id, status=row.status, attempted=False, error=reason)
            raise Held(reason)
        try:
            provider_id = await sender.send(
                notification_id=request.notification_id, to=address, message=message
            )
        except (TransientError, PermanentError) as exc:
            decision = decide_send(
                exc,
                retry_attempt=retry.attempt if retry is not None else 0,
                max_retries=self._ctx.runner.policy_of(EFFECT, record).max_attempts,
                address=address,
            )
            after = await store.record(
                row.id,
                status=decision.status,
                attempted=True,
                error=decision.error,
                recipient=address,
            )
            log.warning(
                "notification send failed",
                extra={**_fields(record, after or row), "outcome": decision.status},
            )
            raise decision.failure from None
        sent = await store.record(
            row.id,
            status=NotificationStatus.SENT,
            attempted=True,
            recipient=address,
            provider_message_id=provider_id,
            at=datetime.fromtimestamp(self._ctx.clock.time(), UTC),
        )
        log.info("notification sent", extra=_fields(record, sent or row))

    async def _prepare(
        self, request: NotificationRequest, row: NotificationRow
    ) -> tuple[RenderedMessage, str]:
        """The rendered message and the address to send it to.

        :raises InvalidEvent: an unknown template, data the template refuses, a ``to``
            that fits no recipient shape.
        :raises PermanentError: a template that fails to render; ``Undeliverable``: an
            unknown user, no contact for the channel, over the per-user cap.
        """
        message = default_catalog().get(request.template, request.channel).render(request.data)
        recipient = parse_recipient(request.to, request.channel)
        if row.attempts == 0:
            # Judged before the first send only: a retry was under the cap already.
            settings = self._ctx.settings
            store = await self._ctx.notifications()
            recent = await store.recent(row, settings.notify_user_window_s)
            # notifications.user_cap: the runtime config's, read per notification.
            cap = self._ctx.live(NOTIFY_USER_CAP, settings.notify_user_cap)
            over = cap_reason(recent, cap=cap, window_s=settings.notify_user_window_s)
            if over is not None:
                raise Undeliverable(over)
        return message, resolve_address(recipient, request.channel, await self._contact(recipient))

    async def _contact(self, recipient: Recipient) -> StoredContact | None:
        if not isinstance(recipient, UserRecipient):
            return None
        row = await (await self._ctx.contacts()).contact(recipient.user_id)
        if row is None:
            return None
        return StoredContact(email=row.email, phone=row.phone, push_tokens=row.push_tokens)

    async def _fail(self, record: Inbound, row: NotificationRow, reason: str) -> None:
        store = await self._ctx.notifications()
        after = await store.record(
            row.id, status=NotificationStatus.FAILED, attempted=False, error=reason
        )
        log.warning(
            "notification failed before sending",
            extra={**_fields(record, after or row), "reason": reason},
        )


def _direct_contact(request: NotificationRequest) -> tuple[str, ...]:
    """What of ``to`` is a contact detail, to keep out of errors (a user id is an id)."""
    try:
        recipient = parse_recipient(request.to, request.channel)
    except InvalidEvent:
        return (request.to,)  # not even a user id: keep it out, whatever it is
    if isinstance(recipient, UserRecipient):
        return ()
    return (request.to, recipient.address)


def _new_notification(request: NotificationRequest) -> NewNotification:
    try:
        recipient: Recipient | None = parse_recipient(request.to, request.channel)
    except InvalidEvent:
        recipient = None  # failed with its reason when prepared
    return NewNotification(
        id=request.notification_id,
        channel=request.channel,
        template=request.template,
        to_ref=request.to,
        user_id=recipient.user_id if isinstance(recipient, UserRecipient) else None,
        cause_event_id=request.cause_event_id,
    )


def _fields(record: Inbound, row: NotificationRow) -> dict[str, Any]:
    return {
        "position": record.position,
        "notification_id": row.id,
        "channel": row.channel,
        "template": row.template,
        "status": row.status,
        "attempts": row.attempts,
        "correlation_id": header_value(record.headers, "correlation-id"),
    }
