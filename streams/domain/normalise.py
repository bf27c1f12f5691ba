"""Provider webhook → provider-neutral billing events (DESIGN §5): the pure core of the
normalise agent.

:func:`normalise` takes one decoded ``RawWebhook`` record and returns a
:class:`Normalised` decision: the ``billing.*`` records to emit (``mapped``), nothing
because the event type is not in the mapping table (``unmapped``: stored and
acknowledged, never an error), or nothing because the body is not what the provider
sends (``invalid``: the agent sends the raw record to ``dlq``). It never raises for
anything a provider or sender controls, does no I/O, reads no clock, and is
deterministic: the same raw record always gives equal results, ids included.

Work is split in two layers:

- ``stripe_mapping`` / ``razorpay_mapping`` know each provider's JSON: which event types
  map to which topic, where the object, its ids, amounts, statuses and metadata live.
  Each returns an :class:`Extracted` (provider values, still unchecked) or ``None``.
- this module applies the provider-neutral rules once for both: envelope and
  deterministic ids, amounts as Avro ``long`` minor units, currency lower-case, order
  and user ids from metadata/notes, attributes as strings, and the record key.

The decision also carries the webhook's ``webhook_events`` status
(:attr:`Normalised.status`); :func:`webhook_outcome` turns it into the
``webhooks.outcomes`` record the webhook projection reads, so nothing normalises a
webhook twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict, TypeGuard

import orjson

from base.errors import InvalidEvent
from schemas.catalog import BILLING_TOPICS, WEBHOOK_OUTCOMES_TOPIC, topic_spec
from streams.domain import razorpay_mapping, stripe_mapping
from streams.domain.ids import derived_event_id
from streams.domain.status import WebhookStatus

__all__ = [
    "BILLING_EVENT_VERSION",
    "NORMALISE_SOURCE",
    "WEBHOOK_OUTCOME_TYPE",
    "WEBHOOK_OUTCOME_VERSION",
    "DomainEvent",
    "Extracted",
    "Normalised",
    "Outcome",
    "normalise",
    "webhook_outcome",
]

BILLING_EVENT_VERSION: Final = 1
"""The ``sluice.billing.BillingEvent`` schema version these records are built for: the
``version`` field of every record. Bump it together with a new ``.avsc`` whose new
fields the mappers fill (a test checks it is the catalog's latest version)."""

NORMALISE_SOURCE: Final = "sluice.streams/normalise"
"""The ``source`` of every record this module builds (ingress writes
``sluice.ingress/<provider>``)."""

Outcome = Literal["mapped", "unmapped", "invalid"]

WEBHOOK_OUTCOME_TYPE: Final = "webhook.outcome"
"""The ``eventType`` of every ``webhooks.outcomes`` record."""
WEBHOOK_OUTCOME_VERSION: Final = 1
"""The ``sluice.webhooks.WebhookOutcome`` schema version :func:`webhook_outcome` builds."""

# What normalisation did with the webhook, as webhook_events.status.
_STATUS: Final[Mapping[Outcome, WebhookStatus]] = {
    "mapped": WebhookStatus.PROCESSED,
    "unmapped": WebhookStatus.IGNORED,
    "invalid": WebhookStatus.FAILED,
}

REFUNDED_TOPIC: Final = "billing.payment.refunded"
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
# Reasons quote provider values (an event type, an object kind) and end up in logs, the
# dlq record and webhook_events: a sender must not be able to make them large.
_MAX_REASON = 300
_ORDER_ID_KEYS = ("orderId", "order_id")
_USER_ID_KEYS = ("userId", "user_id")
# Which record field keys each billing topic, as the topic catalog declares it (orderId,
# or providerObjectId for invoices and subscriptions). Read once from the catalog so the
# key rule lives in one place.
_KEY_FIELD: Final[Mapping[str, str]] = {topic: topic_spec(topic).key for topic in BILLING_TOPICS}


class Extracted(TypedDict):
    """What a provider mapper read from one event, before the neutral rules.

    Values typed ``object`` are as found in the JSON (any type, or ``None``); this module
    checks and converts them. The mapper guarantees ``topic`` is a ``billing.*`` topic,
    ``providerObjectId`` a non-empty string, ``status`` a non-empty lower-case string, and
    ``paymentId``/``refundId`` non-empty strings or ``None``.
    """

    topic: str
    created: object
    """The provider's creation time of the event, Unix seconds."""
    providerObjectId: str
    status: str
    paymentId: str | None
    refundId: str | None
    amountMinor: object
    amountRefundedMinor: object
    currency: object
    notes: tuple[object, ...]
    """Where our ``orderId``/``userId`` may be (Stripe ``metadata``, Razorpay ``notes``),
    most specific first; for each id the first container that has it wins."""
    attributes: dict[str, object]
    """Extras to keep; ``None`` values are dropped, the rest become strings."""


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """One record to emit.

    :param topic: a ``billing.*`` topic, also the record's ``eventType``; or
        ``webhooks.outcomes`` (:func:`webhook_outcome`).
    :param key: the record key (UTF-8 string), per the topic catalog.
    :param record: a complete record of the topic's schema (every field present), ready
        for ``Codec.encode(topic, record)``. Treat it as read-only.
    """

    topic: str
    key: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Normalised:
    """The decision for one raw webhook.

    - ``mapped``: ``events`` holds at least one event; ``reason`` is ``None``.
    - ``unmapped``: no events; ``reason`` says why (event type or provider not in the
      table). The webhook stays stored and acknowledged.
    - ``invalid``: no events; ``reason`` says what is wrong with the body, naming the
      field where it can. The agent sends the raw record to ``dlq``.
    """

    outcome: Outcome
    events: tuple[DomainEvent, ...] = ()
    reason: str | None = None

    @property
    def status(self) -> WebhookStatus:
        """The webhook's ``webhook_events`` status: ``PROCESSED`` (mapped), ``IGNORED``
        (unmapped) or ``FAILED`` (invalid)."""
        return _STATUS[self.outcome]


_Mapper = Callable[[Mapping[str, Any]], "Extracted | None"]
_MAPPERS: Final[Mapping[str, _Mapper]] = {
    "stripe": stripe_mapping.map_event,
    "razorpay": razorpay_mapping.map_event,
}
# Where each provider names the event type in its body (for the unmapped reason).
_TYPE_FIELD: Final[Mapping[str, str]] = {"stripe": "type", "razorpay": "event"}


def normalise(raw: Mapping[str, Any]) -> Normalised:
    """Normalise one decoded ``RawWebhook`` record (``webhooks.stripe``/``.razorpay``).

    Mapped events get ``eventId = derived_event_id(raw eventId, topic)``, ``eventType =
    topic``, ``occurredAt`` = the provider's event creation time (falling back to the raw
    record's ``occurredAt``) and the raw record's ``correlationId``. The raw record's
    ``replay`` flag does not change the result: a replayed webhook yields the same
    records, ids included, which is what makes replays idempotent downstream.

    Pure and deterministic; never raises for any input mapping (a raw record missing its
    envelope fields is ``invalid`` too).
    """
    envelope = _envelope(raw)
    if isinstance(envelope, str):
        return Normalised("invalid", reason=_clip(envelope))
    provider = envelope.provider
    mapper = _MAPPERS.get(provider)
    if mapper is None:
        return Normalised("unmapped", reason=_clip(f"no mapping for provider {provider!r}"))
    try:
        body = orjson.loads(envelope.raw_body)
    except ValueError as exc:  # orjson.JSONDecodeError (also bad UTF-8, too deep nesting)
        return Normalised("invalid", reason=f"rawBody is not JSON: {type(exc).__name__}")
    if not isinstance(body, dict):
        return Normalised("invalid", reason=f"rawBody is JSON {type(body).__name__}, not an object")
    try:
        extracted = mapper(body)
    except InvalidEvent as exc:
        where = f" (field {exc.field})" if exc.field else ""
        return Normalised("invalid", reason=_clip(f"{provider} event: {exc}{where}"))
    if extracted is None:
        event_type = body.get(_TYPE_FIELD[provider])
        reason = f"{provider} event type {event_type!r} is not mapped"
        return Normalised("unmapped", reason=_clip(reason))
    event = _domain_event(envelope, extracted)
    return Normalised("mapped", events=(event,))


def webhook_outcome(raw: Mapping[str, Any], result: Normalised, now_ms: int) -> DomainEvent:
    """The ``webhooks.outcomes`` record of a processed webhook: the decoded ``RawWebhook``
    record ``raw`` as received, with the status and reason of ``result`` (what
    :func:`normalise` decided for it), normalised at ``now_ms`` (epoch ms).

    ``eventId`` is derived from the raw record's (a redelivery reproduces it); the key is
    the provider event id, like the raw record's.

    :raises KeyError: ``raw`` lacks a ``RawWebhook`` field (it was not codec-decoded).
    """
    record: dict[str, Any] = {
        "eventId": derived_event_id(raw["eventId"], WEBHOOK_OUTCOME_TYPE),
        "eventType": WEBHOOK_OUTCOME_TYPE,
        "version": WEBHOOK_OUTCOME_VERSION,
        "occurredAt": now_ms,
        "correlationId": raw["correlationId"],
        "source": NORMALISE_SOURCE,
        "provider": raw["provider"],
        "providerEventId": raw["providerEventId"],
        "providerEventType": raw["eventType"],
        "status": str(result.status),
        "reason": result.reason,
        "receivedAt": raw["receivedAt"],
        "signatureHeader": raw.get("signatureHeader"),
        "rawBody": raw["rawBody"],
        "contentType": raw["contentType"],
    }
    return DomainEvent(topic=WEBHOOK_OUTCOMES_TOPIC, key=str(raw["providerEventId"]), record=record)


@dataclass(frozen=True, slots=True)
class _Envelope:
    event_id: str
    provider: str
    provider_event_id: str
    occurred_at: int
    correlation_id: str
    raw_body: bytes


def _envelope(raw: Mapping[str, Any]) -> _Envelope | str:
    """The raw record's fields this module uses, or the reason they are unusable.

    A codec-decoded record always has them; checking anyway keeps :func:`normalise` total.
    """
    fields: dict[str, str] = {}
    for name in ("eventId", "provider", "providerEventId", "correlationId"):
        value = raw.get(name)
        if not isinstance(value, str) or not value:
            return f"raw record has no {name}"
        fields[name] = value
    occurred_at = raw.get("occurredAt")
    if not _is_long(occurred_at):
        return "raw record has no occurredAt"
    body = raw.get("rawBody")
    if not isinstance(body, bytes | bytearray | memoryview):
        return "raw record has no rawBody bytes"
    return _Envelope(
        event_id=fields["eventId"],
        provider=fields["provider"],
        provider_event_id=fields["providerEventId"],
        occurred_at=occurred_at,
        correlation_id=fields["correlationId"],
        raw_body=bytes(body),
    )


def _domain_event(envelope: _Envelope, extracted: Extracted) -> DomainEvent:
    topic = extracted["topic"]
    created = extracted["created"]
    # Provider time, not receipt time: Stripe retries for days and delivers out of order,
    # and "when did it happen" is what projections compare.
    occurred_at = (
        created * 1000 if _is_long(created) and _is_long(created * 1000) else envelope.occurred_at
    )
    notes = extracted["notes"]
    record: dict[str, Any] = {
        "eventId": derived_event_id(envelope.event_id, topic),
        "eventType": topic,
        "version": BILLING_EVENT_VERSION,
        "occurredAt": occurred_at,
        "correlationId": envelope.correlation_id,
        "source": NORMALISE_SOURCE,
        "provider": envelope.provider,
        "providerEventId": envelope.provider_event_id,
        "providerObjectId": extracted["providerObjectId"],
        "orderId": _note(notes, _ORDER_ID_KEYS),
        "userId": _note(notes, _USER_ID_KEYS),
        "amountMinor": _minor(extracted["amountMinor"]),
        "currency": _currency(extracted["currency"]),
        "status": extracted["status"],
        "amountRefundedMinor": _minor(extracted["amountRefundedMinor"]),
        "refundId": extracted["refundId"],
        "paymentId": extracted["paymentId"],
        "attributes": _attributes(extracted["attributes"]),
    }
    return DomainEvent(topic=topic, key=_key(topic, record), record=record)


def _key(topic: str, record: Mapping[str, Any]) -> str:
    """The catalog's key field for ``topic``; when that is an absent order id, a refund
    falls back to the payment it refunds (so it lands on the same partition as that
    payment's own events), anything else to its provider object id."""
    key = record[_KEY_FIELD[topic]]
    if isinstance(key, str):
        return key
    if topic == REFUNDED_TOPIC and record["paymentId"] is not None:
        return str(record["paymentId"])
    return str(record["providerObjectId"])


def _clip(reason: str) -> str:
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"


def _is_long(value: object) -> TypeGuard[int]:
    # bool is an int subclass; JSON true is never an amount or a time.
    return type(value) is int and _LONG_MIN <= value <= _LONG_MAX


def _minor(value: object) -> int | None:
    """An amount in minor units, or ``None`` when absent or not an Avro ``long``.

    Both providers already send minor units (cents, paise) as JSON integers; anything
    else (a float, a string) is not trusted as an amount.
    """
    return value if _is_long(value) else None


def _currency(value: object) -> str | None:
    # Lower-cased but otherwise passed through: validating against ISO 4217 would drop
    # events for currencies a provider adds before we update a list.
    if isinstance(value, str) and value.strip():
        return value.strip().lower()
    return None


def _note(containers: tuple[object, ...], names: tuple[str, ...]) -> str | None:
    """The first non-blank value of any of ``names`` in the first container that has one.

    Containers that are not objects are skipped: Razorpay sends empty ``notes`` as ``[]``.
    """
    for container in containers:
        if not isinstance(container, Mapping):
            continue
        for name in names:
            value = container.get(name)
            if isinstance(value, str) and value.strip():
                return value
            if type(value) is int:  # notes are free-form JSON; 1001 means "1001"
                return str(value)
    return None


def _attributes(values: Mapping[str, object]) -> dict[str, str]:
    """Scalars as strings (booleans as ``true``/``false``); ``None``, blanks and nested
    values dropped, so a whole object (or body) can never end up in an attribute."""
    attributes: dict[str, str] = {}
    for name, value in values.items():
        if isinstance(value, bool):
            attributes[name] = "true" if value else "false"
        elif isinstance(value, str):
            if value:
                attributes[name] = value
        elif type(value) is int:
            attributes[name] = str(value)
    return attributes
