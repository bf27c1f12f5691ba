"""A local Stripe-compatible API server for ``sluice dev`` and the tests.

Stripe cannot run on this machine; localstripe (a dev dependency, an aiohttp
fake-but-stateful Stripe server) can. ``LocalStripeServer`` runs it, with the few
stand-ins Sluice needs (idempotent requests, Checkout Sessions, Stripe's refund checks;
see ``devstack/_localstripe_server.py``), as a child process. This module
never imports localstripe: it only starts it. Point ``STRIPE_API_BASE`` at ``.url``;
any ``sk_test_...`` key is accepted (``.api_key`` is one).

The helpers below (``payment_intents``, ``pay_payment_intent``, ...) talk to the running
server over HTTP, so tests can check what Sluice did to "Stripe".
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

from devstack.ports import LOOPBACK
from devstack.process import EmbeddedService, EmbeddedServiceError

__all__ = ["LOCAL_STRIPE_API_KEY", "LocalStripeApiError", "LocalStripeServer"]

#: The key ``sluice dev`` and the tests use; localstripe accepts any ``sk_test_...`` key.
LOCAL_STRIPE_API_KEY: Final = "sk_test_sluice_local"

_LAUNCHER: Final = "devstack._localstripe_server"
_HTTP_TIMEOUT: Final = 10.0
_PAGE: Final = 100


class LocalStripeApiError(EmbeddedServiceError):
    """A helper's request to the local Stripe server was answered with an error."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"localstripe {method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class LocalStripeServer(EmbeddedService):
    """localstripe on 127.0.0.1, its objects pickled under ``data_dir``.

    ``port=None`` picks a free ephemeral port; a taken preferred port falls back to one.
    Objects (intents, charges, refunds, sessions, saved idempotent results) survive
    ``stop()``/``start()`` and ``kill()``/``start()``; webhook endpoints registered with
    :meth:`register_webhook` are registered again after each start. Ready means an
    authenticated ``GET /v1/payment_intents`` answered 200.
    """

    name = "localstripe"
    start_timeout = 30.0
    stop_timeout = 10.0
    ready_interval = 0.05

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(data_dir, port)
        self._webhooks: dict[str, dict[str, Any]] = {}

    @property
    def url(self) -> str:
        """The value for ``STRIPE_API_BASE``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.url

    @property
    def api_key(self) -> str:
        """A secret key the server accepts (any ``sk_test_...`` key would do)."""
        return LOCAL_STRIPE_API_KEY

    @staticmethod
    def available() -> bool:
        """Whether localstripe (a dev dependency) is installed."""
        return importlib.util.find_spec("localstripe") is not None

    def start(self, timeout: float | None = None) -> None:
        """Start as ``EmbeddedService.start`` does, then re-register remembered webhooks."""
        was_running = self.is_running()
        super().start(timeout)
        if not was_running:
            for webhook_id, config in self._webhooks.items():
                self._request("POST", f"/_config/webhooks/{quote(webhook_id)}", json_body=config)

    def _prepare(self) -> None:
        if not self.available():
            raise EmbeddedServiceError(
                "localstripe is not installed: it is a dev dependency (`uv sync --extra dev`)"
            )

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-u",  # unbuffered, so the log file is current when start fails
            "-m",
            _LAUNCHER,
            "--port",
            str(self.port),
            "--host",
            LOOPBACK,
            "--data-dir",
            str(self.data_dir),
        ]

    def _is_ready(self) -> bool:
        status, _ = self._raw("GET", "/v1/payment_intents?limit=1", timeout=1.0)
        return status == 200

    # ---- helpers for tests and `sluice dev` -------------------------------------------

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``GET path`` with the API key; the decoded JSON object.

        Raises ``LocalStripeApiError`` for an error status.
        """
        query = f"?{urlencode(params)}" if params else ""
        return self._request("GET", path + query)

    def post(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``POST path`` with a JSON body (localstripe accepts JSON as well as forms)."""
        return self._request("POST", path, json_body=dict(params or {}))

    def payment_intents(self, *, order_id: str | None = None) -> list[dict[str, Any]]:
        """Every PaymentIntent on the server, oldest first; only ``metadata.orderId ==
        order_id`` ones when given. Walks all pages of ``GET /v1/payment_intents``."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"limit": str(_PAGE)}
            if after is not None:
                params["starting_after"] = after
            page = self.get("/v1/payment_intents", params)
            data: list[dict[str, Any]] = page["data"]
            found.extend(data)
            if not page.get("has_more") or not data:
                break
            after = data[-1]["id"]
        if order_id is None:
            return found
        return [pi for pi in found if (pi.get("metadata") or {}).get("orderId") == order_id]

    def count_payment_intents(self, order_id: str) -> int:
        """How many PaymentIntents carry ``metadata.orderId == order_id``."""
        return len(self.payment_intents(order_id=order_id))

    def pay_payment_intent(
        self, intent_id: str, payment_method: str = "pm_card_visa"
    ) -> dict[str, Any]:
        """Attach a test payment method to the intent and confirm it, as a customer's
        browser would; returns the intent (``status`` ``succeeded`` for ``pm_card_visa``).

        localstripe cannot confirm with ``payment_method`` in one call, hence two.
        """
        path = f"/v1/payment_intents/{quote(intent_id)}"
        self.post(path, {"payment_method": payment_method})
        return self.post(f"{path}/confirm")

    def complete_checkout_session(
        self, session_id: str, payment_method: str = "pm_card_visa"
    ) -> dict[str, Any]:
        """Pay an open Checkout Session as its hosted page would; returns the session,
        now ``complete``/``paid`` with its new ``payment_intent``."""
        return self.post(
            f"/_config/checkout/sessions/{quote(session_id)}/complete",
            {"payment_method": payment_method},
        )

    def register_webhook(
        self,
        url: str,
        secret: str,
        events: Sequence[str] | None = None,
        *,
        webhook_id: str = "sluice",
    ) -> None:
        """Have the server POST its events, signed with ``secret``, to ``url``.

        Remembered and registered again after a restart (localstripe keeps webhook
        endpoints in memory only). ``events=None`` sends every event type.
        """
        config: dict[str, Any] = {"url": url, "secret": secret}
        if events is not None:
            config["events"] = list(events)
        self._webhooks[webhook_id] = config
        if self.is_running():
            self._request("POST", f"/_config/webhooks/{quote(webhook_id)}", json_body=config)

    def _request(
        self, method: str, path: str, *, json_body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        status, text = self._raw(method, path, json_body=json_body)
        if status >= 400:
            raise LocalStripeApiError(method, path, status, text)
        if not text.strip():
            return {}
        decoded = json.loads(text)
        if not isinstance(decoded, dict):
            raise LocalStripeApiError(method, path, status, text)
        return decoded

    def _raw(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        timeout: float = _HTTP_TIMEOUT,
    ) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()
