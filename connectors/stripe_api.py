"""The Stripe API calls the worker makes: PaymentIntents, Checkout Sessions, Refunds.

Async, over aiohttp, with the ``stripe`` library's ``StripeClient``. Every call:

- carries an idempotency key derived from Sluice's own ids (:func:`intent_idempotency_key`
  and friends), so a retried record asks Stripe for the same object again and gets the
  one it already made instead of a second one. Stripe keeps a key for at least 24 hours;
  a retry later than that creates a new object.
- never retries by itself (``max_network_retries=0``): Sluice's ``retry.<delay>`` topics
  do, after :func:`translate_error` has decided whether retrying can help.
- raises only :class:`~base.errors.TransientError` (connection failures, timeouts,
  429, 409, 5xx; ``retry_after`` from a ``Retry-After`` header) or
  :class:`~base.errors.PermanentError` (every other 4xx: invalid request, card
  declined, authentication, permission, idempotency key reused with other parameters).
  A ``Stripe-Should-Retry`` header, when Stripe sends one, overrides the status.

The API key and the PaymentIntent client secret are never logged or put in an error
message; :class:`IntentCreated` keeps the secret out of its ``repr``. The ``stripe``
library logs request and response bodies at DEBUG: this module drops the library's DEBUG
records, so a DEBUG log level cannot leak a client secret.

``api_base`` points the client at another server (``STRIPE_API_BASE``: the local
Stripe-compatible server in development and tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self, TypeVar

import aiohttp
import stripe

from base.errors import PermanentError, SluiceError, TransientError
from base.http_status import classify_http_status, parse_retry_after
from base.sinks import Sink, sink_call

__all__ = [
    "CheckoutCreated",
    "IntentCreated",
    "RefundCreated",
    "StripeApi",
    "StripeRefused",
    "checkout_idempotency_key",
    "intent_idempotency_key",
    "refund_idempotency_key",
    "translate_error",
]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MESSAGE_MAX_CHARS: Final = 300


class _DropLibraryDebug(logging.Filter):
    """The ``stripe`` logger writes request and response bodies at DEBUG; drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_library_logger = logging.getLogger("stripe")
if not any(isinstance(f, _DropLibraryDebug) for f in _library_logger.filters):
    _library_logger.addFilter(_DropLibraryDebug())


@dataclass(frozen=True)
class IntentCreated:
    intent_id: str
    client_secret: str = field(repr=False)
    status: str
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class CheckoutCreated:
    session_id: str
    url: str
    payment_intent_id: str | None


@dataclass(frozen=True)
class RefundCreated:
    refund_id: str
    payment_intent_id: str
    amount_minor: int
    currency: str
    status: str


def intent_idempotency_key(order_id: str) -> str:
    """One PaymentIntent per order: the same order always asks for the same intent."""
    return f"sluice-pi-{order_id}"


def checkout_idempotency_key(order_id: str) -> str:
    """One Checkout Session per order."""
    return f"sluice-cs-{order_id}"


def refund_idempotency_key(request_id: str) -> str:
    """One refund per refund request (an order may be refunded in several parts)."""
    return f"sluice-re-{request_id}"


class StripeApi:
    """Stripe API client for the worker. Use from one event loop; ``close()`` when done.

    :param api_key: a secret key (``STRIPE_API_KEY``); never logged.
    :param api_base: ``STRIPE_API_BASE``, e.g. ``http://127.0.0.1:8420``; ``None``: Stripe.
    :param timeout_s: limit for one whole request (connect, send, wait, read).
    """

    def __init__(
        self, api_key: str, api_base: str | None = None, *, timeout_s: float = 10.0
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty")
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout_s))
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            max_network_retries=0,
            http_client=self._http,
        )
        self._api_base = api_base

    def __repr__(self) -> str:
        return f"<StripeApi {self._api_base or 'default base'}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @sink_call(Sink.STRIPE)
    async def create_payment_intent(
        self, *, order_id: str, user_id: str, amount_minor: int, currency: str
    ) -> IntentCreated:
        """Create (or, for an order already asked for, fetch again) the order's intent.

        ``metadata`` carries ``orderId`` and ``userId``, which the webhooks bring back.
        The same order with another amount or currency is a ``PermanentError`` (Stripe
        refuses to reuse the idempotency key with other parameters).
        """
        intent = await self._call(
            "create payment intent",
            self._client.v1.payment_intents.create_async(
                {
                    "amount": amount_minor,
                    "currency": currency.lower(),
                    "metadata": {"orderId": order_id, "userId": user_id},
                },
                {"idempotency_key": intent_idempotency_key(order_id)},
            ),
        )
        if not intent.client_secret:
            raise PermanentError(f"stripe create payment intent: {intent.id} has no client_secret")
        return IntentCreated(
            intent_id=intent.id,
            client_secret=intent.client_secret,
            status=intent.status,
            amount_minor=intent.amount,
            currency=intent.currency,
        )

    @sink_call(Sink.STRIPE)
    async def create_checkout_session(
        self,
        *,
        order_id: str,
        user_id: str,
        amount_minor: int,
        currency: str,
        success_url: str,
        cancel_url: str,
    ) -> CheckoutCreated:
        """Create the order's hosted Checkout Session: one line item at the order amount.

        Both the session's ``metadata`` and ``payment_intent_data.metadata`` carry
        ``orderId`` and ``userId``, so ``checkout.session.*`` and ``payment_intent.*``
        webhooks both lead back to the order.
        """
        metadata = {"orderId": order_id, "userId": user_id}
        session = await self._call(
            "create checkout session",
            self._client.v1.checkout.sessions.create_async(
                {
                    "mode": "payment",
                    "line_items": [
                        {
                            "price_data": {
                                "currency": currency.lower(),
                                "unit_amount": amount_minor,
                                "product_data": {"name": f"Order {order_id}"},
                            },
                            "quantity": 1,
                        }
                    ],
                    "metadata": metadata,
                    "payment_intent_data": {"metadata": metadata},
                    "client_reference_id": order_id,
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                },
                {"idempotency_key": checkout_idempotency_key(order_id)},
            ),
        )
        if not session.url:
            # Stripe gives every new hosted session a url; refuse to hand on one without.
            raise PermanentError(
                f"stripe create checkout session: {session.id} is {session.status}, no url"
            )
        return CheckoutCreated(
            session_id=session.id,
            url=session.url,
            payment_intent_id=_id_of(session.payment_intent),
        )

    @sink_call(Sink.STRIPE)
    async def create_refund(
        self,
        *,
        payment_intent_id: str,
        order_id: str,
        amount_minor: int | None,
        request_id: str,
    ) -> RefundCreated:
        """Refund ``amount_minor`` of the intent (``None``: all that is left).

        ``metadata`` carries ``orderId`` and ``requestId``; the idempotency key comes from
        ``request_id``, so each refund request refunds once however often it is retried.
        """
        params: stripe.params.RefundCreateParams = {
            "payment_intent": payment_intent_id,
            "metadata": {"orderId": order_id, "requestId": request_id},
        }
        if amount_minor is not None:
            params["amount"] = amount_minor
        refund = await self._call(
            "create refund",
            self._client.v1.refunds.create_async(
                params, {"idempotency_key": refund_idempotency_key(request_id)}
            ),
        )
        return RefundCreated(
            refund_id=refund.id,
            payment_intent_id=_id_of(refund.payment_intent) or payment_intent_id,
            amount_minor=refund.amount,
            currency=refund.currency,
            status=refund.status or "pending",
        )

    async def close(self) -> None:
        """Close the HTTP session. Idempotent."""
        await self._http.close_async()  # type: ignore[no-untyped-call]  # untyped in stripe

    async def _call(self, operation: str, request: Awaitable[_T]) -> _T:
        try:
            return await request
        except stripe.StripeError as exc:
            error = translate_error(operation, exc)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # A timeout or broken connection while reading the body: the library only
            # wraps failures up to the response headers in APIConnectionError.
            error = TransientError(f"stripe {operation}: {type(exc).__name__} reading the response")
        _log.info(
            "stripe %s failed: %s",
            operation,
            error,
            extra={"operation": operation, "transient": isinstance(error, TransientError)},
        )
        raise error


class StripeRefused(PermanentError):
    """Stripe refused the call for good; ``code`` is Stripe's error code
    (``card_declined``, ``amount_too_large``, ...) when it gave one."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def translate_error(operation: str, exc: stripe.StripeError) -> SluiceError:
    """Map a ``stripe`` library error to ``TransientError`` or ``PermanentError``.

    The message names the operation and carries Stripe's message, code, HTTP status and
    request id: nothing secret (Stripe never echoes the key or client secrets in errors).
    """
    message = _describe(operation, exc)
    if isinstance(exc, stripe.APIConnectionError):
        return TransientError(message)
    headers = _lower_keys(exc.headers)
    retry_after = parse_retry_after(headers.get("retry-after"), time.time())
    should_retry = headers.get("stripe-should-retry")
    if should_retry == "true":
        return TransientError(message, retry_after=retry_after)
    if should_retry == "false":
        return StripeRefused(message, code=exc.code)
    if isinstance(exc, stripe.RateLimitError):
        return TransientError(message, retry_after=retry_after)
    if isinstance(
        exc,
        stripe.InvalidRequestError
        | stripe.CardError
        | stripe.AuthenticationError
        | stripe.PermissionError
        | stripe.IdempotencyError,
    ):
        return StripeRefused(message, code=exc.code)
    status = exc.http_status
    if status is None or status < 300:
        # No usable answer (e.g. a body that is not JSON): treat like a broken connection.
        return TransientError(message, retry_after=retry_after)
    if status == 409 or classify_http_status(status) == "transient":
        # 409: another request with the same idempotency key is still running.
        return TransientError(message, retry_after=retry_after)
    return StripeRefused(message, code=exc.code)


def _describe(operation: str, exc: stripe.StripeError) -> str:
    text = (exc.user_message or type(exc).__name__).strip()
    if len(text) > _MESSAGE_MAX_CHARS:
        text = text[:_MESSAGE_MAX_CHARS] + "..."
    parts = [f"stripe {operation}: {type(exc).__name__}: {text}"]
    if exc.http_status is not None:
        parts.append(f"http {exc.http_status}")
    if exc.code:
        parts.append(f"code {exc.code}")
    if exc.request_id:
        parts.append(f"request {exc.request_id}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def _id_of(value: str | stripe.PaymentIntent | None) -> str | None:
    """An expandable field's id, whether Stripe sent the id or the expanded object."""
    return value if value is None or isinstance(value, str) else value.id


def _lower_keys(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {key.lower(): value for key, value in (headers or {}).items()}
