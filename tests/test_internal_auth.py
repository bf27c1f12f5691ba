"""X-Internal-Token on every /internal/ route of the real ingress; health stays open."""

from __future__ import annotations

import hmac
import logging
import uuid
from typing import Any

import pytest

from base.logs import JsonFormatter
from ingress.auth import check_token
from ingress.outcomes import Unauthorized
from ingress.tokens import TokenRegistry, tokens_from
from tests.fixtures.ingress import (
    INTERNAL_OLD_TOKEN,
    INTERNAL_TOKEN,
    IngressUnderTest,
    ingress_settings,
    internal_headers,
    started_ingress,
)
from tests.fixtures.kafka import end_offsets

INTERNAL_ROUTES = [
    ("POST", "/internal/v1/events"),
    ("POST", "/internal/v1/payments/intents"),
    ("POST", "/internal/v1/payments/checkout-sessions"),
    ("POST", "/internal/v1/payments/refunds"),
    ("GET", "/internal/v1/payments/ord_1"),
    # Not a route: still 401 first, so a caller without the token learns nothing.
    ("GET", "/internal/v1/nothing-here"),
    ("GET", "/internal/v1/events"),
]


def _order_created() -> dict[str, Any]:
    return {
        "eventType": "order.created",
        "source": "auth-test",
        "data": {
            "orderId": f"ord_{uuid.uuid4().hex[:12]}",
            "userId": "user_1",
            "amount": 500,
            "currency": "usd",
            "items": [{"productId": "sku_1", "quantity": 1}],
        },
    }


async def _post_event(
    ingress: IngressUnderTest, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with ingress.http.post(
        f"{ingress.internal}/internal/v1/events", json=_order_created(), headers=headers
    ) as response:
        return response.status, await response.json()


# --- pure ------------------------------------------------------------------------------


def _registry(*tokens: str) -> TokenRegistry:
    registry, problems = tokens_from({}, internal=tokens)
    assert problems == []
    return registry


def test_registry_accepts_every_listed_token_only() -> None:
    tokens = _registry("new", "old")
    assert tokens.identify("new") is not None
    assert tokens.identify("old") is not None
    assert tokens.identify("ne") is None
    assert tokens.identify("new ") is None
    assert tokens.identify("") is None
    assert tokens.identify("\udcff") is None  # undecodable header bytes do not crash it


def test_every_listed_token_is_compared_even_after_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    tokens = _registry("first", "second", "third")

    identified = tokens.identify("first")
    assert identified is not None
    assert identified.name == "internal-1"
    # Three comparisons of equal-length digests, whichever token matched.
    assert calls == [32, 32, 32]


def test_check_token_reasons() -> None:
    with pytest.raises(Unauthorized, match="missing X-Internal-Token"):
        check_token(None, _registry("t"))
    with pytest.raises(Unauthorized, match="invalid X-Internal-Token"):
        check_token("x", _registry("t"))
    with pytest.raises(Unauthorized, match="no token is configured"):
        check_token("t", _registry())
    assert check_token("t", _registry("t")).name == "internal-1"


# --- the real ingress --------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("method", "path"), INTERNAL_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Internal-Token": "tok_wrong"}, {"X-Internal-Token": ""}],
    ids=["missing", "wrong", "empty"],
)
async def test_internal_routes_refuse_without_a_valid_token(
    ingress: IngressUnderTest, method: str, path: str, headers: dict[str, str]
) -> None:
    before = end_offsets(ingress.bootstrap, "orders")
    async with ingress.http.request(
        method, f"{ingress.internal}{path}", json=_order_created(), headers=headers
    ) as response:
        body = await response.json()
        assert response.status == 401
        assert body["error"] == "unauthorized"
        assert "X-Internal-Token" in body["detail"]
        assert response.headers["X-Correlation-Id"]
    assert end_offsets(ingress.bootstrap, "orders") == before


@pytest.mark.integration
@pytest.mark.parametrize("token", [INTERNAL_TOKEN, INTERNAL_OLD_TOKEN], ids=["current", "old"])
async def test_both_tokens_of_a_rotation_are_accepted(
    ingress: IngressUnderTest, token: str
) -> None:
    status, body = await _post_event(ingress, internal_headers(token))
    assert status == 202
    assert body["accepted"] is True


@pytest.mark.integration
async def test_header_name_is_case_insensitive(ingress: IngressUnderTest) -> None:
    status, _ = await _post_event(ingress, {"x-internal-token": INTERNAL_TOKEN})
    assert status == 202


@pytest.mark.integration
async def test_with_a_token_unknown_routes_are_404_and_wrong_methods_405(
    ingress: IngressUnderTest,
) -> None:
    async with ingress.http.get(
        f"{ingress.internal}/internal/v1/nothing-here", headers=internal_headers()
    ) as response:
        assert response.status == 404
    async with ingress.http.get(
        f"{ingress.internal}/internal/v1/events", headers=internal_headers()
    ) as response:
        assert response.status == 405
        assert (await response.json())["error"] == "method_not_allowed"


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_health_and_metrics_need_no_token(ingress: IngressUnderTest, path: str) -> None:
    async with ingress.http.get(f"{ingress.internal}{path}") as response:
        assert response.status == 200


@pytest.mark.integration
async def test_no_token_configured_refuses_everything_and_says_so_once(
    ingress: IngressUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = ingress_settings(ingress.bootstrap, {"INTERNAL_API_TOKEN": ""})
    async with started_ingress(settings) as bare:
        for token in (INTERNAL_TOKEN, "", "anything"):
            status, body = await _post_event(bare, {"X-Internal-Token": token} if token else {})
            assert status == 401
            assert "INTERNAL_API_TOKEN" in body["detail"]
        async with bare.http.get(f"{bare.internal}/healthz") as response:
            assert response.status == 200
    warnings = [r for r in caplog.records if "no internal API token" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.integration
async def test_tokens_never_reach_a_log_line(
    ingress: IngressUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await _post_event(ingress, {"X-Internal-Token": "tok_guess_1234"})
    await _post_event(ingress, internal_headers(INTERNAL_TOKEN))
    await _post_event(ingress, internal_headers(INTERNAL_OLD_TOKEN))

    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert "request refused" in logged  # the refusal itself is logged...
    for secret in ("tok_guess_1234", INTERNAL_TOKEN, INTERNAL_OLD_TOKEN):
        assert secret not in logged  # ...but never a token
