"""commands.stripe: which Stripe call a payment command asks for, and what its outcome
sends. Pure: no Stripe, Kafka or database here (``streams/agents/stripe_calls.py`` is the
IO around it).

A command on ``commands.stripe`` was checked against its order by the join, which filled
in the amount, currency, user and (for refunds) the PaymentIntent. Per command type:

==========================  ===========================  =================================
command (``eventType``)     ``payments.setup`` record    reply (when ``taskId``+``replyTo``)
==========================  ===========================  =================================
payments.intent.create      payment.intent.created       200 orderId, paymentIntentId,
                                                         clientSecret, status, amount,
                                                         currency
payments.checkout.create    payment.checkout.created     201 orderId, checkoutSessionId, url
payments.refund.create      payment.refund.created       201 orderId, refundId, amount, status
Stripe refused (permanent)  payment.setup_failed         502 error=stripe_refused, detail
==========================  ===========================  =================================

A command the caller got wrong in a way the join does not check (a checkout without its
URLs) is answered 400 without calling Stripe and without a ``payments.setup`` record, so
the order is not marked as failed for a bad request. A command that is inconsistent in
what the join fills in (no amount, no PaymentIntent to refund), names an unknown type or
an unknown reply topic is refused with ``InvalidEvent`` / ``PermanentError``: a bug
upstream, so the record goes to ``dlq`` for an operator.

Every output id is ``derived_event_id(command.eventId, output type)`` (the reply's via
``reply_record``), so a command processed twice — a redelivery, or a retry after a
transient failure of the batch — sends records with the same ids; Stripe's idempotency
keys (derived from the order or request id inside the connector) make the repeated call
return the same object.

Client secrets travel in the ``payments.setup`` record and the intent reply, which need
them, and nowhere else: :class:`Output` hides its record from ``repr``, and
:func:`log_fields` (what the agent logs) leaves secrets and URLs out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from base.errors import InvalidEvent, PermanentError
from schemas.headers import record_headers
from streams.domain.ids import derived_event_id
from streams.domain.replies import reply_record
from streams.domain.retry import clean_reason

__all__ = [
    "CHECKOUT_CREATE",
    "CHECKOUT_CREATED",
    "COMMAND_TYPES",
    "INTENT_CREATE",
    "INTENT_CREATED",
    "PROVIDER",
    "REFUND_CREATE",
    "REFUND_CREATED",
    "REPLY_TOPICS",
    "SETUP_FAILED",
    "SETUP_TOPIC",
    "SOURCE",
    "CheckoutCall",
    "CheckoutResult",
    "IntentCall",
    "IntentResult",
    "Output",
    "PaymentCommand",
    "RefundCall",
    "RefundResult",
    "Rejected",
    "StripeCall",
    "checkout_created",
    "intent_created",
    "log_fields",
    "plan",
    "redact",
    "refund_created",
    "rejected",
    "setup_failed",
]

SOURCE: Final = "streams.stripe_calls"
PROVIDER: Final = "stripe"
SETUP_TOPIC: Final = "payments.setup"
REPLY_TOPICS: Final = frozenset({"replies"})
"""Topics a command may name as ``replyTo`` (topics with the Reply schema)."""

INTENT_CREATE: Final = "payments.intent.create"
CHECKOUT_CREATE: Final = "payments.checkout.create"
REFUND_CREATE: Final = "payments.refund.create"
COMMAND_TYPES: Final = frozenset({INTENT_CREATE, CHECKOUT_CREATE, REFUND_CREATE})

INTENT_CREATED: Final = "payment.intent.created"
CHECKOUT_CREATED: Final = "payment.checkout.created"
REFUND_CREATED: Final = "payment.refund.created"
SETUP_FAILED: Final = "payment.setup_failed"

# PaymentIntent / SetupIntent client secrets: "<id>_secret_<random>".
_CLIENT_SECRET: Final = re.compile(r"\b((?:pi|seti)_[A-Za-z0-9]+)_secret_[A-Za-z0-9]+")


# -- the command -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentCommand:
    """A decoded ``sluice.payments.PaymentCommand`` from ``commands.stripe``.

    Empty optional strings are read as absent. ``task_id``/``reply_to`` are kept only
    when both are set (a reply needs both).
    """

    event_id: str
    event_type: str
    order_id: str
    correlation_id: str
    task_id: str | None = None
    reply_to: str | None = None
    user_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    payment_intent_id: str | None = None
    success_url: str | None = None
    cancel_url: str | None = None
    request_id: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PaymentCommand:
        """Read a decoded record.

        :raises InvalidEvent: a required field is missing or mistyped, or ``replyTo``
            is not one of :data:`REPLY_TOPICS`.
        """
        task_id, reply_to = _optional(record, "taskId"), _optional(record, "replyTo")
        if not task_id or not reply_to:
            task_id = reply_to = None
        elif reply_to not in REPLY_TOPICS:
            raise InvalidEvent(
                f"replyTo {reply_to!r} is not a reply topic ({', '.join(sorted(REPLY_TOPICS))})",
                field="replyTo",
            )
        amount = record.get("amountMinor")
        if amount is not None and type(amount) is not int:
            raise InvalidEvent("amountMinor must be an integer or null", field="amountMinor")
        return cls(
            event_id=_required(record, "eventId"),
            event_type=_required(record, "eventType"),
            order_id=_required(record, "orderId"),
            correlation_id=_optional(record, "correlationId") or _required(record, "eventId"),
            task_id=task_id,
            reply_to=reply_to,
            user_id=_optional(record, "userId"),
            amount_minor=amount,
            currency=_optional(record, "currency"),
            payment_intent_id=_optional(record, "paymentIntentId"),
            success_url=_optional(record, "successUrl"),
            cancel_url=_optional(record, "cancelUrl"),
            request_id=_optional(record, "requestId"),
        )

    @property
    def refund_request_id(self) -> str:
        """What a refund's idempotency key derives from: the caller's request id, else
        the task id, else the command's own id (stable across redeliveries)."""
        return self.request_id or self.task_id or self.event_id


def _required(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{name} must be a non-empty string", field=name)
    return value


def _optional(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string or null", field=name)
    return value or None


# -- the call to make --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntentCall:
    """``StripeApi.create_payment_intent`` with these arguments."""

    order_id: str
    user_id: str
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class CheckoutCall:
    """``StripeApi.create_checkout_session`` with these arguments."""

    order_id: str
    user_id: str
    amount_minor: int
    currency: str
    success_url: str
    cancel_url: str


@dataclass(frozen=True, slots=True)
class RefundCall:
    """``StripeApi.create_refund`` with these arguments (``amount_minor`` None: the rest)."""

    payment_intent_id: str
    order_id: str
    amount_minor: int | None
    request_id: str


StripeCall = IntentCall | CheckoutCall | RefundCall


@dataclass(frozen=True, slots=True)
class Rejected:
    """Answer the caller without calling Stripe (the request itself is unusable)."""

    status: int
    error: str
    detail: str


def plan(command: PaymentCommand) -> StripeCall | Rejected:
    """The Stripe call ``command`` asks for, or why it is answered without one.

    :raises PermanentError: unknown command type.
    :raises InvalidEvent: a field the join fills in is missing (amount, currency and user
        of an intent or checkout session, the PaymentIntent of a refund).
    """
    if command.event_type not in COMMAND_TYPES:
        raise PermanentError(f"unknown payment command {command.event_type!r}")
    if command.event_type == REFUND_CREATE:
        if not command.payment_intent_id:
            raise InvalidEvent(
                "a refund command needs paymentIntentId (filled in by the join)",
                field="paymentIntentId",
            )
        return RefundCall(
            payment_intent_id=command.payment_intent_id,
            order_id=command.order_id,
            amount_minor=command.amount_minor,
            request_id=command.refund_request_id,
        )
    amount, currency, user = command.amount_minor, command.currency, command.user_id
    if amount is None or not currency or not user:
        missing = "amountMinor" if amount is None else "currency" if not currency else "userId"
        raise InvalidEvent(
            f"{command.event_type} needs {missing} (filled in by the join)", field=missing
        )
    if command.event_type == INTENT_CREATE:
        return IntentCall(
            order_id=command.order_id, user_id=user, amount_minor=amount, currency=currency
        )
    if not command.success_url or not command.cancel_url:
        missing = "successUrl" if not command.success_url else "cancelUrl"
        return Rejected(400, "invalid", f"{missing} is required for a checkout session")
    return CheckoutCall(
        order_id=command.order_id,
        user_id=user,
        amount_minor=amount,
        currency=currency,
        success_url=command.success_url,
        cancel_url=command.cancel_url,
    )


# -- what Stripe answered (the connector's result types, structurally) -------------------


class IntentResult(Protocol):
    @property
    def intent_id(self) -> str: ...
    @property
    def client_secret(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def amount_minor(self) -> int | None: ...
    @property
    def currency(self) -> str | None: ...


class CheckoutResult(Protocol):
    @property
    def session_id(self) -> str: ...
    @property
    def url(self) -> str | None: ...
    @property
    def payment_intent_id(self) -> str | None: ...


class RefundResult(Protocol):
    @property
    def refund_id(self) -> str: ...
    @property
    def payment_intent_id(self) -> str | None: ...
    @property
    def amount_minor(self) -> int | None: ...
    @property
    def currency(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...


# -- the records to send -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    """One record to send: Avro ``record`` to ``topic`` under ``key``.

    ``record`` is left out of ``repr``: it may hold a client secret.
    """

    topic: str
    key: str
    record: dict[str, Any] = field(repr=False)

    @property
    def event_type(self) -> str:
        return str(self.record["eventType"])

    def headers(self, traceparent: str | None = None) -> list[tuple[str, bytes]]:
        """The record's headers (``schemas.headers.record_headers``)."""
        return record_headers(self.topic, self.record, traceparent=traceparent)


def intent_created(
    command: PaymentCommand, result: IntentResult, now_ms: int
) -> tuple[Output, ...]:
    """A PaymentIntent was created (or returned again for the same idempotency key)."""
    setup = _setup(
        command,
        INTENT_CREATED,
        now_ms,
        intentId=result.intent_id,
        clientSecret=result.client_secret,
        amountMinor=result.amount_minor,
        currency=result.currency,
        status=result.status,
    )
    body = {
        "orderId": command.order_id,
        "paymentIntentId": result.intent_id,
        "clientSecret": result.client_secret,
        "status": result.status,
        "amount": result.amount_minor,
        "currency": result.currency,
    }
    return (setup, *_reply(command, 200, body, now_ms))


def checkout_created(
    command: PaymentCommand, result: CheckoutResult, now_ms: int
) -> tuple[Output, ...]:
    """A Checkout Session was created."""
    setup = _setup(
        command,
        CHECKOUT_CREATED,
        now_ms,
        checkoutSessionId=result.session_id,
        checkoutUrl=result.url,
        intentId=result.payment_intent_id,
        amountMinor=command.amount_minor,
        currency=command.currency,
    )
    body = {"orderId": command.order_id, "checkoutSessionId": result.session_id, "url": result.url}
    return (setup, *_reply(command, 201, body, now_ms))


def refund_created(
    command: PaymentCommand, result: RefundResult, now_ms: int
) -> tuple[Output, ...]:
    """A refund was created (its outcome arrives later as a refund webhook)."""
    setup = _setup(
        command,
        REFUND_CREATED,
        now_ms,
        refundId=result.refund_id,
        intentId=result.payment_intent_id or command.payment_intent_id,
        amountMinor=result.amount_minor,
        currency=result.currency,
        status=result.status,
    )
    body = {
        "orderId": command.order_id,
        "refundId": result.refund_id,
        "amount": result.amount_minor,
        "status": result.status,
    }
    return (setup, *_reply(command, 201, body, now_ms))


def setup_failed(command: PaymentCommand, error: BaseException, now_ms: int) -> tuple[Output, ...]:
    """Stripe refused the call for good: ``payment.setup_failed`` and a 502 reply.

    ``errorCode`` is the error's ``code`` attribute when it has one (Stripe's error
    code), else its class name; ``errorMessage`` its message through :func:`redact`.
    """
    code = getattr(error, "code", None)
    error_code = code if isinstance(code, str) and code else type(error).__name__
    message = redact(str(error)) or type(error).__name__
    setup = _setup(
        command,
        SETUP_FAILED,
        now_ms,
        intentId=command.payment_intent_id if command.event_type == REFUND_CREATE else None,
        amountMinor=command.amount_minor,
        currency=command.currency,
        errorCode=error_code,
        errorMessage=message,
    )
    body = {"error": "stripe_refused", "detail": message}
    return (setup, *_reply(command, 502, body, now_ms))


def rejected(command: PaymentCommand, rejection: Rejected, now_ms: int) -> tuple[Output, ...]:
    """The reply to a command answered without a Stripe call (nothing when nobody waits)."""
    body = {"error": rejection.error, "detail": rejection.detail}
    return _reply(command, rejection.status, body, now_ms)


def redact(text: str) -> str:
    """``text`` fit for a record or log line: credentials and Stripe keys masked
    (``streams.domain.retry.clean_reason``), client secrets too, one line, bounded."""
    return clean_reason(_CLIENT_SECRET.sub(r"\1_secret_***", text))


def log_fields(command: PaymentCommand, outputs: tuple[Output, ...]) -> dict[str, Any]:
    """What the agent logs about a finished command: ids and outcome, never a client
    secret, URL or error text beyond the redacted ``errorMessage``."""
    fields: dict[str, Any] = {
        "order_id": command.order_id,
        "command": command.event_type,
        "command_event_id": command.event_id,
        "task_id": command.task_id,
    }
    for output in outputs:
        record = output.record
        if output.topic == SETUP_TOPIC:
            fields["outcome"] = record["eventType"]
            for name, key in (
                ("intentId", "intent_id"),
                ("checkoutSessionId", "checkout_session_id"),
                ("refundId", "refund_id"),
                ("status", "stripe_status"),
                ("errorCode", "error_code"),
                ("errorMessage", "error_message"),
            ):
                if record.get(name) is not None:
                    fields[key] = record[name]
        else:
            fields["reply_status"] = record["status"]
    return fields


def _setup(command: PaymentCommand, event_type: str, now_ms: int, **values: Any) -> Output:
    record: dict[str, Any] = {
        "eventId": derived_event_id(command.event_id, event_type),
        "eventType": event_type,
        "version": 1,
        "occurredAt": now_ms,
        "correlationId": command.correlation_id,
        "source": SOURCE,
        "orderId": command.order_id,
        "provider": PROVIDER,
        "command": command.event_type,
        "taskId": command.task_id,
        "intentId": None,
        "clientSecret": None,
        "checkoutSessionId": None,
        "checkoutUrl": None,
        "refundId": None,
        "amountMinor": None,
        "currency": None,
        "status": None,
        "errorCode": None,
        "errorMessage": None,
    }
    unknown = set(values) - set(record)
    if unknown:  # a bug in this module, not bad input
        raise TypeError(f"not PaymentSetupEvent fields: {sorted(unknown)}")
    record.update(values)
    return Output(SETUP_TOPIC, command.order_id, record)


def _reply(
    command: PaymentCommand, status: int, body: Mapping[str, Any], now_ms: int
) -> tuple[Output, ...]:
    if command.task_id is None or command.reply_to is None:
        return ()
    record = reply_record(
        task_id=command.task_id,
        status=status,
        body=body,
        cause_event_id=command.event_id,
        correlation_id=command.correlation_id,
        now_ms=now_ms,
        source=SOURCE,
    )
    return (Output(command.reply_to, command.task_id, record),)
