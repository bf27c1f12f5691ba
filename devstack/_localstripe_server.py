"""The local Stripe-compatible API server: localstripe, plus what Sluice needs that it lacks.

Run by ``LocalStripeServer`` (``devstack/stripe.py``) as its own process::

    python -m devstack._localstripe_server --port 8420 --data-dir DIR

This is the only Sluice module that imports localstripe (a GPL dev dependency, an
aiohttp fake-but-stateful Stripe server). It runs only in that child process; nothing
in Sluice's own processes imports it.

Everything not listed below is plain localstripe: PaymentIntents, PaymentMethods
(``pm_card_visa`` and the other test ids), Charges, Refunds, Customers, Events, webhooks
registered with ``POST /_config/webhooks/{id}``, any ``sk_test_...`` key accepted.

**Stand-ins.** Stripe itself cannot run on this machine, so the following pieces of
Stripe's documented behaviour, missing from localstripe, are stood in for here:

1. **Idempotent requests** (``Idempotency-Key`` header on a POST). The first response's
   status and body are saved with the key, per API key, and replayed for any later
   request with the same key (with ``Idempotent-Replayed: true``) without running
   anything again. Reusing a key with other parameters, another method or path gets
   400 ``idempotency_error``; a request while another with the same key is still
   running gets 409 ``idempotency_key_in_use``. As on Stripe, nothing is saved when the
   request failed validation or was refused (400, 401, 403, 404, 409, 429), and keys
   are forgotten after 24 hours. Saved results live in localstripe's object store, so
   they survive a restart together with the objects they describe.
2. **Checkout Sessions**, ``mode=payment`` with ``line_items[n][price_data]`` only:
   ``POST /v1/checkout/sessions``, ``GET /v1/checkout/sessions/{id}`` and
   ``POST /v1/checkout/sessions/{id}/expire``. A session's ``url`` is a page on this
   server (``/checkout/{id}``) whose "Pay" button completes the session with the test
   card and redirects to ``success_url`` (``{CHECKOUT_SESSION_ID}`` filled in). Like
   Stripe's current API versions, an open session has no PaymentIntent; completing it
   creates and confirms one carrying ``payment_intent_data[metadata]``, marks the
   session ``complete``/``paid`` and sends ``checkout.session.completed``; expiring it
   sends ``checkout.session.expired``. Parameters this stand-in does not implement are
   refused with 400 rather than silently ignored.
3. **Refund checks** that Stripe makes and localstripe does not: a PaymentIntent without
   a successful charge cannot be refunded (localstripe answers 500), a refund may not
   exceed what is left unrefunded (``amount_too_large``, ``charge_already_refunded``),
   and a refund without ``amount`` refunds what is left, not the whole charge. Refunds
   send ``refund.created`` and ``charge.refunded`` events.

Test hooks, under localstripe's unauthenticated ``/_config/`` prefix like its own:
``POST /_config/checkout/sessions/{id}/complete`` (optional ``payment_method``, default
``pm_card_visa``) does what the hosted page's button does and returns the session.

localstripe keeps its objects in memory and pickles them to ``/tmp/localstripe.pickle``
after each change, shared by every instance on the machine. Here the pickle lives in
``--data-dir`` and is replaced atomically, so instances do not see each other's data
and a SIGKILL cannot leave a torn file behind.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import logging
import os
import pickle
import re
import secrets
import string
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.typedefs import Handler

from devstack.ports import LOOPBACK

__all__ = ["build_app", "main"]

_log = logging.getLogger("localstripe.sluice")

PICKLE_NAME: Final = "localstripe.pickle"
IDEMPOTENCY_TTL_S: Final = 24 * 3600.0
_IDEMPOTENCY_PREFIX: Final = "sluice.idempotency:"
_SESSION_PREFIX: Final = "checkout.session:"
_MAX_KEY_CHARS: Final = 255
_DEFAULT_PAYMENT_METHOD: Final = "pm_card_visa"
_SESSION_TTL_S: Final = 24 * 3600
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_CURRENCY = re.compile(r"[a-z]{3}")
_SESSION_PARAMS: Final = frozenset(
    {
        "cancel_url",
        "client_reference_id",
        "customer_email",
        "expand",
        "expires_at",
        "line_items",
        "metadata",
        "mode",
        "payment_intent_data",
        "payment_method_types",
        "success_url",
    }
)


class _StripeError(Exception):
    """An error answer in Stripe's shape: ``{"error": {type, message, code, param}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": error_type, "message": message}
        if code is not None:
            self.body["code"] = code
        if param is not None:
            self.body["param"] = param

    def response(self) -> web.Response:
        return _json({"error": self.body}, status=self.status)


def _json(payload: object, *, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status, dumps=lambda x: json.dumps(x, indent=2))


def _random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


# --------------------------------------------------------------------------------------
# Persistence


def _patch_persistence(store_class: Any, pickle_path: Path) -> None:
    """Point localstripe's pickle at ``pickle_path`` and make each write atomic."""
    tmp_path = pickle_path.with_name(pickle_path.name + ".tmp")

    def try_load_from_disk(self: dict[str, Any]) -> None:
        try:
            with pickle_path.open("rb") as fh:
                saved = pickle.load(fh)  # noqa: S301 - our own file, written below
        except FileNotFoundError:
            return
        self.clear()
        self.update(saved)

    def dump_to_disk(self: dict[str, Any]) -> None:
        with tmp_path.open("wb") as fh:
            pickle.dump(dict(self), fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp_path, pickle_path)

    store_class.try_load_from_disk = try_load_from_disk
    store_class.dump_to_disk = dump_to_disk


# --------------------------------------------------------------------------------------
# App


def build_app(data_dir: Path) -> web.Application:
    """localstripe's aiohttp app with the stand-ins above, its store under ``data_dir``.

    Loads the objects an earlier run left in ``data_dir``. Call once per process:
    localstripe's app and store are module globals.
    """
    from localstripe import resources as ls  # type: ignore[import-untyped]
    from localstripe import server as ls_server

    _patch_persistence(ls.Store, data_dir / PICKLE_NAME)
    store: dict[str, Any] = ls.store
    ls.store.try_load_from_disk()
    in_flight: set[str] = set()
    get_post_data: Callable[[web.Request], Any] = ls_server.get_post_data

    async def post_params(request: web.Request) -> dict[str, Any]:
        data = await get_post_data(request)
        return dict(data) if isinstance(data, Mapping) else {}

    # ---- 1. idempotent requests --------------------------------------------------------

    @web.middleware
    async def idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or key is None:
            return await handler(request)
        if not key or len(key) > _MAX_KEY_CHARS:
            raise _StripeError(
                400,
                f"Idempotency-Key must be 1 to {_MAX_KEY_CHARS} characters long.",
                param="Idempotency-Key",
            )
        api_key = ls_server.get_api_key(request) or ""
        slot = _IDEMPOTENCY_PREFIX + hashlib.sha256(f"{api_key}\n{key}".encode()).hexdigest()
        fingerprint = await _fingerprint(request)
        saved = store.get(slot)
        if saved is not None and time.time() - saved["created"] > IDEMPOTENCY_TTL_S:
            del store[slot]
            saved = None
        if saved is not None:
            if saved["fingerprint"] != fingerprint:
                raise _StripeError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    "meant to execute a different request.",
                    error_type="idempotency_error",
                )
            replay = web.Response(
                body=saved["body"], status=saved["status"], content_type=saved["content_type"]
            )
            replay.headers["Idempotency-Key"] = key
            replay.headers["Idempotent-Replayed"] = "true"
            return replay
        if slot in in_flight:
            raise _StripeError(
                409,
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                "going through). Please retry this request later.",
                code="idempotency_key_in_use",
            )
        in_flight.add(slot)
        try:
            try:
                response = await handler(request)
            except _StripeError as exc:
                response = exc.response()
            except ls.UserError as exc:
                response = exc.to_response()
            if _result_is_saved(response.status) and isinstance(response, web.Response):
                body = response.body
                if isinstance(body, bytes):
                    store[slot] = {
                        "fingerprint": fingerprint,
                        "status": response.status,
                        "body": body,
                        "content_type": response.content_type,
                        "created": time.time(),
                    }
            response.headers["Idempotency-Key"] = key
            return response
        finally:
            in_flight.discard(slot)

    # ---- 2. checkout sessions ----------------------------------------------------------

    def session_record(session_id: str) -> dict[str, Any]:
        record = store.get(_SESSION_PREFIX + session_id)
        if record is None:
            raise _StripeError(
                404,
                f"No such checkout.session: '{session_id}'",
                code="resource_missing",
                param="session",
            )
        return dict(record)

    def save_session(record: dict[str, Any]) -> None:
        store[_SESSION_PREFIX + record["session"]["id"]] = record

    def send_event(event_type: str, payload: dict[str, Any]) -> None:
        ls.schedule_webhook(ls.Event(event_type, _Exported(payload)))

    async def create_session(request: web.Request) -> web.Response:
        data = await post_params(request)
        record = _new_session(data, str(request.url.origin()))
        save_session(record)
        return _json(record["session"])

    async def retrieve_session(request: web.Request) -> web.Response:
        return _json(session_record(request.match_info["id"])["session"])

    async def expire_session(request: web.Request) -> web.Response:
        record = session_record(request.match_info["id"])
        session = record["session"]
        if session["status"] != "open":
            raise _StripeError(
                400, 'Only Checkout Sessions with a status in ["open"] can be expired.'
            )
        session.update(status="expired", url=None)
        save_session(record)
        send_event("checkout.session.expired", session)
        return _json(session)

    def complete_session(session_id: str, payment_method: str) -> dict[str, Any]:
        record = session_record(session_id)
        session = record["session"]
        if session["status"] != "open":
            raise _StripeError(
                400, f"This Checkout Session is {session['status']} and can no longer be paid."
            )
        intent = ls.PaymentIntent(
            amount=session["amount_total"],
            currency=session["currency"],
            metadata=dict(record["payment_intent_metadata"]),
            payment_method=payment_method,
        )
        intent._confirm(on_failure_now=None)
        if intent.status != "succeeded":
            raise _StripeError(
                402,
                "Your card was declined.",
                code="card_declined",
                error_type="card_error",
            )
        session.update(status="complete", payment_status="paid", payment_intent=intent.id, url=None)
        save_session(record)
        send_event("checkout.session.completed", session)
        return dict(session)

    async def complete_session_hook(request: web.Request) -> web.Response:
        data = await post_params(request)
        payment_method = data.get("payment_method", _DEFAULT_PAYMENT_METHOD)
        if not isinstance(payment_method, str):
            raise _StripeError(400, "payment_method must be a string", param="payment_method")
        return _json(complete_session(request.match_info["id"], payment_method))

    async def hosted_page(request: web.Request) -> web.Response:
        session = session_record(request.match_info["id"])["session"]
        return web.Response(text=_hosted_page_html(session), content_type="text/html")

    async def hosted_pay(request: web.Request) -> web.StreamResponse:
        session = complete_session(request.match_info["id"], _DEFAULT_PAYMENT_METHOD)
        target = session.get("success_url")
        if not target:
            return web.Response(text="Paid.\n")
        raise web.HTTPSeeOther(target.replace("{CHECKOUT_SESSION_ID}", session["id"]))

    # ---- 3. refund checks --------------------------------------------------------------

    @web.middleware
    async def refund_checks(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/v1/refunds":
            return await handler(request)
        data = await post_params(request)
        intent_id = data.get("payment_intent")
        if not isinstance(intent_id, str) or not intent_id.startswith("pi_"):
            return await handler(request)  # charge refunds and bad requests: localstripe's
        intent = store.get("payment_intent:" + intent_id)
        if intent is None:
            raise _StripeError(
                404,
                f"No such payment_intent: '{intent_id}'",
                code="resource_missing",
                param="payment_intent",
            )
        charge = intent.latest_charge
        if charge is None or charge.status != "succeeded" or not charge.captured:
            raise _StripeError(
                400,
                f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                param="payment_intent",
            )
        remaining = int(charge.amount) - int(charge.amount_refunded)
        if remaining <= 0:
            raise _StripeError(
                400,
                f"Charge {charge.id} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = ls.try_convert_to_int(data.get("amount", remaining))
        if type(amount) is int and amount > remaining:
            raise _StripeError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                f"({remaining}).",
                code="amount_too_large",
                param="amount",
            )
        data["amount"] = amount
        expand = data.pop("expand", None)
        refund = ls.Refund._api_create(**data)
        send_event("refund.created", refund._export())
        send_event("charge.refunded", charge._export())
        return _json(refund._export(expand=expand))

    # ---- wiring ------------------------------------------------------------------------

    @web.middleware
    async def stripe_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _StripeError as exc:
            return exc.response()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/checkout/"):
            return await handler(request)  # the hosted page, opened by a browser
        result: web.StreamResponse = await ls_server.auth_middleware(request, handler)
        return result

    app: web.Application = ls_server.app
    middlewares = app.middlewares
    middlewares[middlewares.index(ls_server.auth_middleware)] = auth
    # Outermost first: localstripe's error middleware, auth, ours, then its store saver.
    middlewares.insert(middlewares.index(auth) + 1, stripe_errors)
    middlewares.insert(middlewares.index(stripe_errors) + 1, idempotency)
    middlewares.insert(middlewares.index(idempotency) + 1, refund_checks)

    app.router.add_post("/v1/checkout/sessions", create_session)
    app.router.add_get("/v1/checkout/sessions/{id}", retrieve_session)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", expire_session)
    app.router.add_post("/_config/checkout/sessions/{id}/complete", complete_session_hook)
    app.router.add_get("/checkout/{id}", hosted_page)
    app.router.add_post("/checkout/{id}", hosted_pay)
    return app


class _Exported:
    """What localstripe's ``Event`` wants as its data: something with ``_export()``."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self._payload = payload

    def _export(self, expand: object = None) -> dict[str, Any]:
        return json.loads(json.dumps(self._payload))  # type: ignore[no-any-return]


def _result_is_saved(status: int) -> bool:
    """Whether Stripe saves a result under its idempotency key: once the endpoint ran."""
    return status < 400 or status == 402 or status >= 500


async def _fingerprint(request: web.Request) -> str:
    """What "the same request" means for an idempotency key: method, path, parameters."""
    body = await request.read()
    params: object
    if request.content_type == "application/json":
        try:
            params = json.loads(body)
        except ValueError:
            params = body.hex()
    else:
        params = sorted(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    query = sorted(request.query.items())
    canonical = json.dumps([request.method, request.path, query, params], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --------------------------------------------------------------------------------------
# Checkout session validation


def _new_session(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """Validate ``POST /v1/checkout/sessions`` parameters and build the stored record."""
    for name in data:
        if name not in _SESSION_PARAMS:
            raise _StripeError(
                400,
                f"Received unknown parameter: {name} (not implemented by this local server)",
                code="parameter_unknown",
                param=name,
            )
    mode = _required(data, "mode")
    if mode != "payment":
        raise _StripeError(
            400, "Only mode=payment is implemented by this local server.", param="mode"
        )
    items = data.get("line_items")
    if not isinstance(items, list) or not items:
        raise _StripeError(
            400,
            "You must provide at least one line item (line_items) in payment mode.",
            code="parameter_missing",
            param="line_items",
        )
    currencies: set[str] = set()
    total = 0
    line_items: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"line_items[{index}]"
        if not isinstance(item, dict):
            raise _StripeError(400, f"Invalid object: {where}", param=where)
        unknown = set(item) - {"price_data", "quantity"}
        if unknown:
            name = f"{where}[{sorted(unknown)[0]}]"
            raise _StripeError(
                400,
                f"Received unknown parameter: {name} (not implemented by this local server)",
                code="parameter_unknown",
                param=name,
            )
        price = item.get("price_data")
        if not isinstance(price, dict):
            raise _StripeError(
                400,
                f"Missing required param: {where}[price_data].",
                code="parameter_missing",
                param=f"{where}[price_data]",
            )
        currency = _required(price, "currency", f"{where}[price_data]").lower()
        if not _CURRENCY.fullmatch(currency):
            raise _StripeError(
                400,
                f"Invalid currency: {currency}.",
                code="parameter_invalid_string",
                param=f"{where}[price_data][currency]",
            )
        unit_amount = _integer(price, "unit_amount", f"{where}[price_data]", minimum=0)
        quantity = _integer(item, "quantity", where, minimum=1)
        product = price.get("product_data")
        product_name = product.get("name") if isinstance(product, dict) else None
        if not isinstance(product_name, str) or not product_name:
            raise _StripeError(
                400,
                f"Missing required param: {where}[price_data][product_data][name].",
                code="parameter_missing",
                param=f"{where}[price_data][product_data][name]",
            )
        currencies.add(currency)
        total += unit_amount * quantity
        line_items.append(
            {
                "description": product_name,
                "currency": currency,
                "quantity": quantity,
                "unit_amount": unit_amount,
                "amount_total": unit_amount * quantity,
            }
        )
    if len(currencies) > 1:
        raise _StripeError(400, "All line items must have the same currency.", param="line_items")
    intent_data = data.get("payment_intent_data") or {}
    if not isinstance(intent_data, dict) or set(intent_data) - {"metadata"}:
        raise _StripeError(
            400,
            "Only payment_intent_data[metadata] is implemented by this local server.",
            param="payment_intent_data",
        )
    now = int(time.time())
    expires_at = _integer(
        data, "expires_at", None, minimum=now + 1800, default=now + _SESSION_TTL_S
    )
    session_id = _random_id("cs_test_", 58)
    session = {
        "id": session_id,
        "object": "checkout.session",
        "amount_subtotal": total,
        "amount_total": total,
        "cancel_url": _optional_str(data, "cancel_url"),
        "client_reference_id": _optional_str(data, "client_reference_id"),
        "created": now,
        "currency": currencies.pop(),
        "customer": None,
        "customer_email": _optional_str(data, "customer_email"),
        "expires_at": expires_at,
        "livemode": False,
        "metadata": _metadata(data.get("metadata"), "metadata"),
        "mode": "payment",
        "payment_intent": None,
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "status": "open",
        "success_url": _optional_str(data, "success_url"),
        "url": f"{origin}/checkout/{session_id}",
    }
    return {
        "session": session,
        "line_items": line_items,
        "payment_intent_metadata": _metadata(
            intent_data.get("metadata"), "payment_intent_data[metadata]"
        ),
    }


def _required(data: Mapping[str, Any], name: str, parent: str | None = None) -> str:
    param = f"{parent}[{name}]" if parent else name
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise _StripeError(
            400, f"Missing required param: {param}.", code="parameter_missing", param=param
        )
    return value


def _optional_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _StripeError(400, f"Invalid string: {name}", param=name)
    return value


def _integer(
    data: Mapping[str, Any],
    name: str,
    parent: str | None,
    *,
    minimum: int,
    default: int | None = None,
) -> int:
    param = f"{parent}[{name}]" if parent else name
    value = data.get(name)
    if value is None and default is not None:
        return default
    if value is None:
        raise _StripeError(
            400, f"Missing required param: {param}.", code="parameter_missing", param=param
        )
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _StripeError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        ) from None
    if number < minimum:
        raise _StripeError(
            400,
            f"Invalid {param}: must be at least {minimum}",
            code="parameter_invalid_integer",
            param=param,
        )
    return number


def _metadata(value: object, param: str) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _StripeError(400, f"Invalid object: {param}", param=param)
    return dict(value)


def _hosted_page_html(session: Mapping[str, Any]) -> str:
    amount = f"{session['amount_total']} {str(session['currency']).upper()} (minor units)"
    state = html.escape(f"{session['status']} / {session['payment_status']}")
    sid = html.escape(str(session["id"]))
    pay = (
        f'<form method="post" action="/checkout/{sid}"><button>Pay with test card</button></form>'
        if session["status"] == "open"
        else ""
    )
    cancel = session.get("cancel_url")
    back = f'<p><a href="{html.escape(cancel)}">Cancel</a></p>' if cancel and pay else ""
    return (
        "<!doctype html><title>Local checkout</title>"
        f"<h1>Local checkout {sid}</h1><p>{html.escape(amount)}</p><p>{state}</p>{pay}{back}\n"
    )


# --------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack._localstripe_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument(
        "--data-dir", type=Path, default=Path.cwd(), help=f"where {PICKLE_NAME} is kept"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(args.data_dir.absolute())
    web.run_app(app, host=args.host, port=args.port, shutdown_timeout=5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
