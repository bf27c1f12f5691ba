"""orders.lifecycle, billing.invoice.updated → notifications.requested.

Which event asks for which template is ``SLUICE_NOTIFY_ON``, read and checked when the
worker starts (a bad entry stops it: ``ConfigError``); the rules and the records are
``streams.domain.lifecycle_notifications`` (pure). Per batch:

1. records that cannot map are skipped cheaply: an ``orders.lifecycle`` record whose
   ``event-type`` header is not mapped is not even decoded (most of them: every order
   change is one); an invoice record is decoded to read its provider event type;
2. one ``user_contacts`` read for the batch's users (``connectors.postgres.user_channels``)
   chooses each user's channel: the first preferred one they have a contact for, EMAIL
   when they have no contact row yet (the send agent fails it then, with the reason);
3. one ``NotificationRequest`` per mapped record, keyed by the user id, through the
   outbox: durable before the record's offset commits. Its id is derived from (cause
   event, template, channel), so a redelivered or replayed cause asks for the same
   notification again and the send agent sends it once;
4. once those records are delivered (the outbox flushed), each cause's event id goes
   into ``processed_events`` (consumer ``notify_lifecycle``), and a cause found there is
   not asked for again: a redelivered lifecycle record produces no second request. A
   crash between delivery and that record does (same id), which the send agent absorbs.

An invoice that names no user (no ``user_id`` in its or its subscription's metadata) is
skipped with a warning; so is, silently, a record that does not decode (the projection
reading the same topic dead-letters it). A mapped record without what its template
needs (an amount, a currency) is an ``InvalidEvent``: dead-lettered alone. Postgres
unavailable: the batch goes to the delay topics like any transient failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final, Protocol, runtime_checkable

from base.errors import InvalidEvent
from connectors.postgres.processed import ProcessedEvents
from connectors.postgres.user_channels import ChannelsRow, UserChannelStore
from schemas.headers import EVENT_TYPE, TRACEPARENT, record_headers
from schemas.notifications import Channel
from schemas.notify_templates import default_catalog
from streams.agents.batched import register_batched
from streams.context import WorkerContext
from streams.domain.lifecycle_notifications import (
    LIFECYCLE_TOPIC,
    NOTIFY_TOPIC,
    Cause,
    NotifyRules,
    UserChannels,
    cause_of,
    choose_channel,
    load_rules,
    notification_request,
    users_of,
)
from streams.records import Inbound, header_value

__all__ = ["AGENT", "LifecycleNotifier", "register"]

log = logging.getLogger(__name__)

AGENT: Final = "notify_lifecycle"


def register(ctx: WorkerContext) -> None:
    # Read before anything connects: a bad SLUICE_NOTIFY_ON stops the worker here.
    notifier = LifecycleNotifier(ctx, load_rules(ctx.settings.notify_on, default_catalog()))
    register_batched(ctx, AGENT, notifier.notify)


class LifecycleNotifier:
    """The effect: lifecycle records in, notification requests out."""

    def __init__(self, ctx: WorkerContext, rules: NotifyRules) -> None:
        self._ctx = ctx
        self._rules = rules
        self._order_types = rules.order_types()
        self._catalog = default_catalog()

    async def notify(self, records: Sequence[Inbound]) -> None:
        causes: list[tuple[Inbound, Cause]] = []
        for record in records:
            cause = self._cause(record)
            if cause is None:
                continue
            if cause.user_id is None:
                log.warning(
                    "lifecycle event names no user: no notification",
                    extra={
                        "position": record.position,
                        "subject": cause.subject,
                        "event_type": cause.event_type,
                    },
                )
                continue
            causes.append((record, cause))
        if not causes:
            return
        projection = await self._ctx.connectors()
        processed = ProcessedEvents(projection, AGENT)
        done = await processed.seen({cause.event_id for _, cause in causes})
        causes = [(record, cause) for record, cause in causes if cause.event_id not in done]
        if not causes:
            log.info("lifecycle events already notified: nothing new", extra={"events": len(done)})
            return
        rows = await UserChannelStore(projection).channels(users_of([c for _, c in causes]))
        for record, cause in causes:
            assert cause.user_id is not None
            row = rows.get(cause.user_id)
            channel = choose_channel(
                None if row is None else _channels(row), self._rules.channels[cause.template]
            )
            await self._request(record, cause, channel)
        # Recorded only once the requests are delivered: a crash before leaves the causes
        # unrecorded, and their redelivery asks again with the same notification ids.
        if isinstance(self._ctx.outbox, _Flushable):
            await self._ctx.outbox.flush()
        await processed.record({cause.event_id for _, cause in causes})

    def _cause(self, record: Inbound) -> Cause | None:
        if record.topic == LIFECYCLE_TOPIC:
            event_type = header_value(record.headers, EVENT_TYPE)
            if event_type is not None and event_type not in self._order_types:
                return None  # not mapped: not decoded
        elif not self._rules.maps_invoices():
            return None
        try:
            decoded = self._ctx.codec.decode(record.value, topic=record.topic).record
        except InvalidEvent:
            # The projection reading the same topic dead-letters it; a second dead
            # letter of the same record would only be noise.
            log.debug("undecodable lifecycle record skipped", extra={"position": record.position})
            return None
        return cause_of(record.topic, decoded, self._rules)

    async def _request(self, record: Inbound, cause: Cause, channel: Channel) -> None:
        request = notification_request(cause, channel, self._catalog)
        traceparent = header_value(record.headers, TRACEPARENT)
        headers = record_headers(NOTIFY_TOPIC, request, traceparent=traceparent)
        value = self._ctx.codec.encode(NOTIFY_TOPIC, request)
        await self._ctx.outbox.send(NOTIFY_TOPIC, str(request["to"]).encode(), value, headers)
        log.info(
            "notification requested",
            extra=_fields(record, cause, request),
        )


@runtime_checkable
class _Flushable(Protocol):
    async def flush(self) -> None:
        """Wait until every record handed over is delivered (``KafkaOutbox.flush``)."""
        ...


def _channels(row: ChannelsRow) -> UserChannels:
    return UserChannels(
        preferred=row.preferred,
        has_email=row.has_email,
        has_phone=row.has_phone,
        has_push=row.has_push,
    )


def _fields(record: Inbound, cause: Cause, request: dict[str, Any]) -> dict[str, Any]:
    return {
        "position": record.position,
        "subject": cause.subject,
        "event_type": cause.event_type,
        "notification_id": request["notificationId"],
        "template": request["template"],
        "channel": request["channel"],
    }
