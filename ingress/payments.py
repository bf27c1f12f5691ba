"""The payments API: commands by request/reply, and status from the projection.

Routes (internal listener, token-protected by ``ingress.auth``):

- ``POST /internal/v1/payments/intents`` ``{orderId}``
- ``POST /internal/v1/payments/checkout-sessions`` ``{orderId, successUrl, cancelUrl}``
- ``POST /internal/v1/payments/refunds`` ``{orderId, amount?, reason?}``
- ``GET /internal/v1/payments/{orderId}``

A command names only the order. The join looks the order up and forwards valid commands
to the Stripe agent with the *order's* amount and currency, so a client amount is refused
here (400) for intents and sessions: it would be ignored at best, and a caller who sends
one believes it matters. A refund's ``amount`` is the exception (a partial refund; the
join checks it against what is left to refund).

Each command is a ``sluice.payments.PaymentCommand`` on ``commands.payments``, keyed by
order id, with ``eventId = taskId`` (a fresh uuid4), ``replyTo`` the reply topic and
``requestId`` the caller's ``Idempotency-Key`` (else the task id), from which the Stripe
idempotency key of a refund is derived. The handler registers the reply expectation,
publishes (durable, or 503), then waits up to ``SLUICE_REPLY_TIMEOUT``
(``ingress.commands.CommandSender``, shared with the other request/reply routes): a reply is
answered with its own status and body (200 intent, 201 session/refund, 404 unknown
order, 409 not payable, 502 Stripe refused, ...); no reply in time is 202
``{"accepted": true, "taskId"}`` — the command is durable and will still be carried out.

Order ids are checked the same way on every route (printable, at most 256 characters,
``ingress.domain_events.check_identifier``): 400 otherwise. The status route reads the
Postgres projection (``connectors.payment_status``): 404 for an unknown order, 503 when
this ingress has no ``DATABASE_URL`` or Postgres is down.

The request checks are plain functions at the top (no aiohttp, no IO); the handlers
below them are the glue.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from base.clock import Clock
from base.errors import InvalidEvent, TransientError
from connectors.payment_status import OrderPaymentStatus
from ingress.commands import CommandSender
from ingress.domain_events import (
    check_identifier,
    parse_json,
    positive_minor_units,
    reject_unknown_fields,
)
from ingress.middleware import correlation_id
from ingress.outcomes import NotFound, Unavailable
from ingress.requests import read_json_body, traceparent_of
from ingress.responses import iso_time, json_response
from schemas.catalog import PAYMENT_COMMAND_SUBJECT

__all__ = [
    "CHECKOUT_CREATE",
    "COMMAND_TOPIC",
    "IDEMPOTENCY_HEADER",
    "INTENT_CREATE",
    "PAYMENT_ROUTES",
    "REFUND_CREATE",
    "PaymentRequest",
    "PaymentRoute",
    "PaymentStatusSource",
    "command_record",
    "parse_checkout",
    "parse_intent",
    "parse_refund",
    "payment_command_handler",
    "payment_status_handler",
    "request_id_from",
    "status_body",
]

log = logging.getLogger(__name__)

COMMAND_TOPIC: Final = "commands.payments"
INTENT_CREATE: Final = "payments.intent.create"
CHECKOUT_CREATE: Final = "payments.checkout.create"
REFUND_CREATE: Final = "payments.refund.create"
SOURCE: Final = "ingress"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"

# Fields that would set what is charged: the order decides that, never the caller.
_CLIENT_AMOUNT_FIELDS = ("amount", "amountMinor", "currency")
_MAX_URL_LENGTH = 2048
_MAX_REASON_LENGTH = 500
# Stripe's idempotency keys are at most 255 characters; printable ASCII travels safely
# in Kafka headers and records alike.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


# -- requests (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """A checked payment request: which command, for which order, with what."""

    event_type: str
    order_id: str
    success_url: str | None = None
    cancel_url: str | None = None
    amount_minor: int | None = None
    reason: str | None = None


def parse_intent(body: Any) -> PaymentRequest:
    """``{orderId}``: create (or return) the order's PaymentIntent."""
    fields = _object(body, ("orderId",), refuse_amount=True)
    return PaymentRequest(INTENT_CREATE, check_identifier(fields.get("orderId"), "orderId"))


def parse_checkout(body: Any) -> PaymentRequest:
    """``{orderId, successUrl, cancelUrl}``: a Checkout Session for the order."""
    fields = _object(body, ("orderId", "successUrl", "cancelUrl"), refuse_amount=True)
    return PaymentRequest(
        CHECKOUT_CREATE,
        check_identifier(fields.get("orderId"), "orderId"),
        success_url=_url(fields.get("successUrl"), "successUrl"),
        cancel_url=_url(fields.get("cancelUrl"), "cancelUrl"),
    )


def parse_refund(body: Any) -> PaymentRequest:
    """``{orderId, amount?, reason?}``: refund ``amount`` minor units, or all that is left."""
    fields = _object(body, ("orderId", "amount", "reason"), refuse_amount=False)
    amount = fields.get("amount")
    reason = fields.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > _MAX_REASON_LENGTH):
        raise InvalidEvent(
            f"reason must be a string of at most {_MAX_REASON_LENGTH} characters", field="reason"
        )
    return PaymentRequest(
        REFUND_CREATE,
        check_identifier(fields.get("orderId"), "orderId"),
        amount_minor=None if amount is None else positive_minor_units(amount, "amount"),
        reason=reason or None,
    )


def request_id_from(header: str | None) -> str | None:
    """The caller's ``Idempotency-Key``, if it sent one (1-255 printable ASCII)."""
    if header is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(header):
        raise InvalidEvent(
            f"{IDEMPOTENCY_HEADER} must be 1-255 printable ASCII characters",
            field=IDEMPOTENCY_HEADER,
        )
    return header


def command_record(
    request: PaymentRequest,
    *,
    task_id: str,
    request_id: str | None,
    reply_to: str,
    correlation_id: str,
    now_ms: int,
    version: int,
) -> dict[str, Any]:
    """The ``PaymentCommand`` for ``request``. What the join fills in (user, the order's
    amount and currency, the PaymentIntent to refund) is left null."""
    return {
        "eventId": task_id,
        "eventType": request.event_type,
        "version": version,
        "occurredAt": now_ms,
        "correlationId": correlation_id,
        "source": SOURCE,
        "orderId": request.order_id,
        "taskId": task_id,
        "replyTo": reply_to,
        "userId": None,
        "amountMinor": request.amount_minor,
        "currency": None,
        "paymentIntentId": None,
        "successUrl": request.success_url,
        "cancelUrl": request.cancel_url,
        "reason": request.reason,
        "requestId": request_id or task_id,
    }


def status_body(status: OrderPaymentStatus) -> dict[str, Any]:
    """The JSON of ``GET /internal/v1/payments/{orderId}`` (amounts in minor units)."""
    return {
        "orderId": status.order_id,
        "status": status.status,
        "amount": status.amount_minor,
        "currency": status.currency,
        "refunded": status.refunded_minor,
        "paymentProvider": status.payment_provider,
        "paymentIntentId": status.payment_intent_id,
        # For the client to confirm the intent with (Stripe.js); only ever sent here.
        "clientSecret": status.client_secret,
        "updatedAt": iso_time(status.updated_at),
        "payments": [
            {
                "provider": payment.provider,
                "providerPaymentId": payment.provider_payment_id,
                "status": payment.status,
                "amount": payment.amount_minor,
                "currency": payment.currency,
                "refunded": payment.refunded_minor,
                "updatedAt": iso_time(payment.updated_at),
            }
            for payment in status.payments
        ],
    }


def _object(body: Any, allowed: tuple[str, ...], *, refuse_amount: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidEvent("the body must be a JSON object")
    if refuse_amount:
        for name in _CLIENT_AMOUNT_FIELDS:
            if name in body:
                raise InvalidEvent(
                    f"{name} is not accepted: the order's own amount and currency are charged",
                    field=name,
                )
    reject_unknown_fields(body, allowed)
    return body


def _url(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_URL_LENGTH:
        raise InvalidEvent(f"{name} must be an absolute http(s) URL", field=name)
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidEvent(f"{name} must be an absolute http(s) URL", field=name)
    return value


# -- handlers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentRoute:
    """``POST /internal/v1/payments/<path>``, checked by ``parse``."""

    path: str
    parse: Callable[[Any], PaymentRequest]


PAYMENT_ROUTES: Final = (
    PaymentRoute("intents", parse_intent),
    PaymentRoute("checkout-sessions", parse_checkout),
    PaymentRoute("refunds", parse_refund),
)


class PaymentStatusSource(Protocol):
    """Where payment status is read from (``connectors.payment_status.PaymentStatusStore``)."""

    async def order_status(self, order_id: str) -> OrderPaymentStatus | None: ...

    async def close(self) -> None: ...


def payment_command_handler(
    route: PaymentRoute,
    *,
    sender: CommandSender,
    clock: Clock,
    max_body_bytes: int,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    # The version the codec writes with (the subject's latest), read without the codec
    # so that a registry is not asked at build time.
    version = sender.codec.resolver.catalog.latest_version(PAYMENT_COMMAND_SUBJECT)

    async def handle(request: web.Request) -> web.Response:
        raw_body = await read_json_body(request, max_body_bytes)
        payment = route.parse(parse_json(raw_body))
        request_id = request_id_from(request.headers.get(IDEMPOTENCY_HEADER))
        record = command_record(
            payment,
            task_id=str(uuid.uuid4()),
            request_id=request_id,
            reply_to=sender.reply_topic,
            correlation_id=correlation_id(request),
            now_ms=int(clock.time() * 1000),
            version=version,
        )
        return await sender.send(
            COMMAND_TOPIC, payment.order_id, record, traceparent=traceparent_of(request)
        )

    return handle


def payment_status_handler(
    store: PaymentStatusSource | None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        # Checked before anything else: an id the commands would refuse (a NUL, say,
        # which PostgreSQL refuses too) is a 400, never a 500 or a 503.
        order_id = check_identifier(request.match_info["orderId"], "orderId")
        if store is None:
            raise Unavailable("payment status is unavailable: this ingress has no DATABASE_URL")
        try:
            status = await store.order_status(order_id)
        except TransientError as exc:
            log.warning("payment status unavailable", extra={"error": str(exc)})
            raise Unavailable(
                "payment status is unavailable: the database cannot be reached; retry later"
            ) from exc
        if status is None:
            raise NotFound(f"no order {order_id[:128]!r}")
        return json_response(status_body(status))

    return handle
