"""Partner leads through the real ingress into the real broker (``leads.received``).

The module runs an ingress of its own, with a partner registry of one partner per
inbound mode (plus a second bearer partner and a disabled one) and a frozen clock, so
the Standard Webhooks tolerance is measured against the ingress's injected time, not
the wall clock. Partner and lead ids are unique per run: the session topic is shared.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from base.clock import FrozenClock
from ingress.server import running_ingress
from ingress.verify.partner import bearer_header, sign_hmac, sign_standard_webhooks
from schemas.codec import make_codec
from schemas.leads import lead_id
from tests.fixtures.ingress import MAX_BODY, IngressUnderTest, ingress_settings
from tests.fixtures.kafka import end_offsets, header_map, key_of, read_topic, value_of

pytestmark = pytest.mark.integration

CODEC = make_codec(None)
TOPIC = "leads.received"
NOW = 1_700_000_000  # the ingress's frozen clock; far from the wall clock on purpose

RUN = uuid.uuid4().hex[:8]
HMAC_ID = f"hm-{RUN}"
BEARER_ID = f"br-{RUN}"
OTHER_BEARER_ID = f"br2-{RUN}"
SW_ID = f"sw_{RUN}"  # from PARTNER_SW_<RUN>_SECRET: the environment path
DISABLED_ID = f"off-{RUN}"

HMAC_SECRET = f"hmac-new-{RUN}"
HMAC_OLD_SECRET = f"hmac-old-{RUN}"
TOKEN = f"tok-br-{RUN}"
OTHER_TOKEN = f"tok-br2-{RUN}"
WHSEC = "whsec_" + base64.b64encode(f"sw-new-{RUN}-0123456789abcdef".encode()).decode()
WHSEC_OLD = "whsec_" + base64.b64encode(f"sw-old-{RUN}-0123456789abcdef".encode()).decode()

# The hmac partner nests its contact: its mapping says where each canonical field sits.
HMAC_MAPPING = {
    "name": "contact.fullName",
    "email": "contact.email",
    "phone": "contact.phone",
    "listingId": "property.ref",
    "message": "note",
}


def _partners_file(directory: Path) -> Path:
    path = directory / "partners.json"
    partners = {
        HMAC_ID: {
            "auth": "hmac",
            "secrets": [HMAC_SECRET, HMAC_OLD_SECRET],
            "mapping": HMAC_MAPPING,
        },
        BEARER_ID: {"auth": "bearer", "secrets": [TOKEN]},
        OTHER_BEARER_ID: {"auth": "bearer", "secrets": [OTHER_TOKEN]},
        DISABLED_ID: {"auth": "hmac", "secrets": [HMAC_SECRET], "enabled": False},
    }
    path.write_text(json.dumps({"partners": partners}), encoding="utf-8")
    return path


@pytest_asyncio.fixture(scope="module")
async def lead_ingress(
    catalog_topics: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[IngressUnderTest]:
    settings = ingress_settings(
        catalog_topics,
        {
            "SLUICE_PARTNERS_FILE": str(_partners_file(tmp_path_factory.mktemp("partners"))),
            f"PARTNER_SW_{RUN.upper()}_SECRET": f"{WHSEC},{WHSEC_OLD}",
        },
    )
    async with (
        running_ingress(settings, clock=FrozenClock(NOW)) as running,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        yield IngressUnderTest(running, http, settings.kafka_bootstrap_servers, settings)


# -- requests ----------------------------------------------------------------------------


def _external() -> str:
    return f"L-{uuid.uuid4().hex[:12]}"


def _body(partner_id: str, external_id: str | None, payload: Any, **more: Any) -> bytes:
    body: dict[str, Any] = {"partnerId": partner_id, "payload": payload, **more}
    if external_id is not None:
        body["externalLeadId"] = external_id
    return json.dumps(body).encode()


def _flat_payload() -> dict[str, Any]:
    return {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": 4915112345678,
        "listingId": "LST-9",
        "message": "Is it still available?",
    }


def _hmac_headers(body: bytes, secret: str = HMAC_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Partner-Signature": sign_hmac(body, secret)}


def _bearer_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": bearer_header(token)}


def _sw_headers(body: bytes, secret: str = WHSEC, timestamp: int = NOW) -> dict[str, str]:
    message_id = f"msg_{uuid.uuid4().hex[:12]}"
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard_webhooks(body, secret, message_id, timestamp),
    }


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


async def _post(ingress: IngressUnderTest, body: bytes, headers: dict[str, str]) -> Answer:
    async with ingress.http.post(
        f"{ingress.public}/v1/webhooks/partner/leads", data=body, headers=headers
    ) as response:
        return Answer(response.status, await response.json(content_type=None))


def _records(ingress: IngressUnderTest, lead: str) -> list[dict[str, Any]]:
    return [
        CODEC.decode(value_of(message)).record
        for message in read_topic(ingress.bootstrap, TOPIC, key=lead)
    ]


# -- accepted ----------------------------------------------------------------------------


async def test_hmac_lead_is_mapped_and_recorded(lead_ingress: IngressUnderTest) -> None:
    external = _external()
    payload = {
        "contact": {"fullName": "Ada Lovelace", "email": "ada@example.com", "phone": "+49 151"},
        "property": {"ref": 4711},
        "note": "Viewing on Friday?",
        "extra": {"utm": "portal", "ünïcode": "✓"},
    }
    body = _body(HMAC_ID, external, payload)

    answer = await _post(lead_ingress, body, _hmac_headers(body))

    expected_id = lead_id(HMAC_ID, external)
    assert (answer.status, answer.body) == (202, {"accepted": True, "id": expected_id})
    [message] = read_topic(lead_ingress.bootstrap, TOPIC, key=expected_id)
    assert key_of(message) == expected_id
    record = CODEC.decode(value_of(message)).record
    assert record["eventId"] == record["leadId"] == expected_id
    assert record["eventType"] == "lead.received"
    assert record["source"] == "ingress"
    assert (record["partnerId"], record["externalLeadId"]) == (HMAC_ID, external)
    assert {f: record[f] for f in ("name", "email", "phone", "listingId", "message")} == {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "+49 151",
        "listingId": "4711",  # a number, taken as text
        "message": "Viewing on Friday?",
    }
    # The partner's object kept whole, as compact JSON text in the order received.
    assert record["payload"] == json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    assert record["idempotencyKey"] is None
    assert record["receivedAt"] == record["occurredAt"] == NOW * 1000  # the injected clock
    headers = header_map(message)
    assert headers["event-type"] == "lead.received"
    assert headers["event-id"] == expected_id
    assert headers["correlation-id"] == record["correlationId"]


async def test_bearer_lead_is_recorded(lead_ingress: IngressUnderTest) -> None:
    external = _external()
    body = _body(BEARER_ID, external, _flat_payload())

    answer = await _post(lead_ingress, body, _bearer_headers())

    expected_id = lead_id(BEARER_ID, external)
    assert (answer.status, answer.body) == (202, {"accepted": True, "id": expected_id})
    [record] = _records(lead_ingress, expected_id)
    assert (record["email"], record["phone"]) == ("ada@example.com", "4915112345678")
    assert record["listingId"] == "LST-9"


async def test_standard_webhooks_lead_is_recorded(lead_ingress: IngressUnderTest) -> None:
    external = _external()
    body = _body(SW_ID, external, {"phone": "+1 555 0100"})  # a phone alone is enough

    answer = await _post(lead_ingress, body, _sw_headers(body))

    expected_id = lead_id(SW_ID, external)
    assert (answer.status, answer.body) == (202, {"accepted": True, "id": expected_id})
    [record] = _records(lead_ingress, expected_id)
    assert (record["email"], record["phone"], record["name"]) == (None, "+1 555 0100", None)


@pytest.mark.parametrize("mode", ["hmac", "standard-webhooks"])
async def test_previous_secret_of_a_rotation_is_accepted(
    lead_ingress: IngressUnderTest, mode: str
) -> None:
    external = _external()
    if mode == "hmac":
        body = _body(HMAC_ID, external, {"contact": {"email": "a@example.com"}})
        headers = _hmac_headers(body, HMAC_OLD_SECRET)
    else:
        body = _body(SW_ID, external, {"email": "a@example.com"})
        headers = _sw_headers(body, WHSEC_OLD)

    assert (await _post(lead_ingress, body, headers)).status == 202


async def test_same_lead_posted_three_times_gets_the_same_id(
    lead_ingress: IngressUnderTest,
) -> None:
    external = _external()
    body = _body(BEARER_ID, external, _flat_payload())

    answers = [await _post(lead_ingress, body, _bearer_headers()) for _ in range(3)]

    expected_id = lead_id(BEARER_ID, external)
    assert [(a.status, a.body) for a in answers] == [
        (202, {"accepted": True, "id": expected_id})
    ] * 3
    # The ingress is stateless: three copies, one event id, for the worker's dedupe.
    records = _records(lead_ingress, expected_id)
    assert len(records) == 3
    assert {r["eventId"] for r in records} == {expected_id}


async def test_idempotency_key_is_carried(lead_ingress: IngressUnderTest) -> None:
    external = _external()
    body = _body(BEARER_ID, external, _flat_payload())
    headers = {**_bearer_headers(), "Idempotency-Key": f"idem-{external}"}

    assert (await _post(lead_ingress, body, headers)).status == 202

    [record] = _records(lead_ingress, lead_id(BEARER_ID, external))
    assert record["idempotencyKey"] == f"idem-{external}"


# -- refused: a clear 4xx, a JSON error, nothing published ---------------------------------

Request = tuple[bytes, dict[str, str], str]
"""Body, headers, and the lead id that must not appear on ``leads.received``."""


def _hmac_lead(payload: Any = None, **more: Any) -> Callable[[], Request]:
    def build() -> Request:
        external = _external()
        body = _body(HMAC_ID, external, payload or {"contact": {"email": "a@example.com"}}, **more)
        return body, _hmac_headers(body), lead_id(HMAC_ID, external)

    return build


def _unknown_partner() -> Request:
    external, partner = _external(), f"nobody-{RUN}"
    body = _body(partner, external, _flat_payload())
    return body, _hmac_headers(body), lead_id(partner, external)


def _disabled_partner() -> Request:
    external = _external()
    body = _body(DISABLED_ID, external, _flat_payload())
    return body, _hmac_headers(body), lead_id(DISABLED_ID, external)


def _wrong_signature() -> Request:
    body, _, lead = _hmac_lead()()
    return body, _hmac_headers(body, "not-the-secret"), lead


def _missing_signature() -> Request:
    body, _, lead = _hmac_lead()()
    return body, {"Content-Type": "application/json"}, lead


def _signature_of_another_body() -> Request:
    body, _, lead = _hmac_lead()()
    return body, _hmac_headers(body + b" "), lead


def _bearer(token: str | None) -> Callable[[], Request]:
    def build() -> Request:
        external = _external()
        body = _body(BEARER_ID, external, _flat_payload())
        headers = _bearer_headers(token) if token else {"Content-Type": "application/json"}
        return body, headers, lead_id(BEARER_ID, external)

    return build


def _sw(offset: int = 0, signature: str | None = None) -> Callable[[], Request]:
    def build() -> Request:
        external = _external()
        body = _body(SW_ID, external, _flat_payload())
        headers = _sw_headers(body, timestamp=NOW + offset)
        if signature is not None:
            headers["webhook-signature"] = signature
        return body, headers, lead_id(SW_ID, external)

    return build


def _with_headers(build: Callable[[], Request], **headers: str) -> Callable[[], Request]:
    def changed() -> Request:
        body, original, lead = build()
        return body, {**original, **{k.replace("_", "-"): v for k, v in headers.items()}}, lead

    return changed


def _oversize() -> Request:
    external = _external()
    body = _body(HMAC_ID, external, {"contact": {"email": "a@example.com"}, "pad": "x" * MAX_BODY})
    return body, _hmac_headers(body), lead_id(HMAC_ID, external)


def _raw(body: bytes, content_type: str = "application/json") -> Callable[[], Request]:
    def build() -> Request:
        return (
            body,
            {"Content-Type": content_type, "X-Partner-Signature": sign_hmac(body, HMAC_SECRET)},
            "",
        )

    return build


BAD_INPUTS: dict[str, tuple[Callable[[], Request], int, str | None]] = {
    # name: (request, status, field or detail expected in the answer)
    "unknown partner": (_unknown_partner, 401, "unknown partner"),
    "disabled partner": (_disabled_partner, 403, "partner disabled"),
    "wrong signature": (_wrong_signature, 401, "no signature matches the body"),
    "missing signature": (_missing_signature, 401, "signature header is missing"),
    "signature of another body": (_signature_of_another_body, 401, None),
    "missing bearer token": (_bearer(None), 401, "bearer token is missing"),
    "bearer token of nobody": (_bearer(f"tok-nobody-{RUN}"), 401, "bearer token is not valid"),
    "another partner's token": (_bearer(OTHER_TOKEN), 403, "token belongs to another partner"),
    "stale timestamp": (_sw(-301), 401, "signature timestamp is outside the tolerance window"),
    "future timestamp": (_sw(+301), 401, "signature timestamp is outside the tolerance window"),
    "malformed webhook-signature": (_sw(signature="v1"), 401, "signature header is malformed"),
    "no v1 signature": (_sw(signature="v2,abc="), 401, None),
    "wrong standard-webhooks signature": (
        _sw(signature="v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
        401,
        "no signature matches the body",
    ),
    "missing externalLeadId": (
        _raw(_body(HMAC_ID, None, {"contact": {"email": "a@example.com"}})),
        400,
        "externalLeadId",
    ),
    "externalLeadId too long": (
        _raw(_body(HMAC_ID, "x" * 257, {"contact": {"email": "a@example.com"}})),
        400,
        "externalLeadId",
    ),
    "externalLeadId with a control character": (
        _raw(_body(HMAC_ID, "L-\x07", {"contact": {"email": "a@example.com"}})),
        400,
        "externalLeadId",
    ),
    "payload not an object": (_raw(_body(HMAC_ID, "L-list", ["a@example.com"])), 400, "payload"),
    "payload missing": (_raw(_body(HMAC_ID, "L-none", None)), 400, "payload"),
    "neither email nor phone": (_hmac_lead({"contact": {"fullName": "Ada"}}), 400, "payload"),
    "blank email and no phone": (_hmac_lead({"contact": {"email": "  "}}), 400, "payload"),
    "mapped field not a string": (
        _hmac_lead({"contact": {"email": {"work": "a@example.com"}}}),
        400,
        "payload.contact.email",
    ),
    "mapped field a boolean": (
        _hmac_lead({"contact": {"email": "a@example.com", "phone": True}}),
        400,
        "payload.contact.phone",
    ),
    "unknown top-level field": (_hmac_lead(sentAt="2024-05-01"), 400, "sentAt"),
    "bad Idempotency-Key": (
        _with_headers(_hmac_lead(), Idempotency_Key="a b"),
        400,
        "Idempotency-Key",
    ),
    "Idempotency-Key too long": (
        _with_headers(_hmac_lead(), Idempotency_Key="k" * 256),
        400,
        "Idempotency-Key",
    ),
    "oversize body": (_oversize, 413, None),
    "wrong content type": (_with_headers(_hmac_lead(), Content_Type="text/plain"), 415, None),
    "malformed JSON": (_raw(b'{"partnerId": "' + HMAC_ID.encode() + b'", '), 400, None),
    "body not an object": (_raw(b"[1, 2]"), 400, None),
    "missing partnerId": (_raw(b'{"externalLeadId": "L-1", "payload": {}}'), 400, "partnerId"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_is_refused_and_nothing_published(
    lead_ingress: IngressUnderTest, case: str
) -> None:
    build, status, expected = BAD_INPUTS[case]
    body, headers, lead = build()
    before = end_offsets(lead_ingress.bootstrap, TOPIC)

    answer = await _post(lead_ingress, body, headers)

    assert answer.status == status, answer.body
    assert isinstance(answer.body.get("error"), str)
    assert answer.body.get("detail")
    if expected is not None:
        assert expected in (answer.body.get("field"), answer.body["detail"]), answer.body
    # No secret or token ever comes back.
    for secret in (HMAC_SECRET, TOKEN, OTHER_TOKEN, WHSEC, OTHER_BEARER_ID):
        assert secret not in json.dumps(answer.body)
    assert end_offsets(lead_ingress.bootstrap, TOPIC) == before
    if lead:
        assert read_topic(lead_ingress.bootstrap, TOPIC, key=lead, timeout_s=5) == []


async def test_lead_requests_are_counted(lead_ingress: IngressUnderTest) -> None:
    body = _body(BEARER_ID, _external(), _flat_payload())
    assert (await _post(lead_ingress, body, _bearer_headers())).status == 202

    async with lead_ingress.http.get(f"{lead_ingress.internal}/metrics") as response:
        text = await response.text()
    assert 'sluice_ingress_records_published_total{topic="leads.received"}' in text
    assert 'route="webhook.partner.leads",status="202"' in text
    assert 'route="webhook.partner.leads",status="401"' in text


# -- start-up ----------------------------------------------------------------------------


def test_ingress_refuses_to_start_with_a_bad_partner_registry() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PARTNER_", "SLUICE_"))},
        # Nothing listens there: the registry must fail before anything connects.
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "STRIPE_WEBHOOK_SECRET": "whsec_x",
        "RAZORPAY_WEBHOOK_SECRET": "rzp_x",
        "PARTNER_ACME_AUTH": "carrier-pigeon",
        "PARTNER_ACME_SECRET": "acme-very-secret",
        "PARTNER_GLOBEX_SECRET": "whsec_dG9vLXNob3J0",
        "PARTNER_INITECH_TOKEN": "initech-token",
        "PARTNER_INITECH_DELIVERY_URL": "ftp://crm.invalid/leads",
    }
    result = subprocess.run(
        [sys.executable, "-m", "sluice", "ingress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    # One JSON log line (every line of a server is), its message one line per problem.
    (last,) = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert (last["level"], last["error_class"]) == ("error", "ConfigError")
    lines = last["msg"].splitlines()
    assert lines[0].startswith("partner acme: auth:")
    assert lines[1].startswith("partner globex: ")
    assert "24 bytes" in lines[1]
    assert lines[2].startswith("partner initech: delivery.url:")
    assert len(lines) == 3
    for secret in ("acme-very-secret", "dG9vLXNob3J0", "initech-token"):
        assert secret not in result.stderr
