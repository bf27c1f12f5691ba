"""Unit tests for ``ingress.verify.razorpay``: one test per failure reason, no event loop."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from multidict import CIMultiDict

from ingress.verify import VerifiedEvent
from ingress.verify import razorpay as verifier
from ingress.verify.errors import (
    InvalidPayload,
    MalformedSignatureHeader,
    MissingSignature,
    SignatureError,
    SignatureMismatch,
)

SECRET = "rzp_webhook_current"
OLD_SECRET = "rzp_webhook_previous"
EVENT_ID = "JmXrWz3kCqVx1b"
NOW = 1_700_000_000.0
BODY = (
    b'{"entity":"event","event":"payment.captured","contains":["payment"],"created_at":1699999990}'
)
# BODY carries no entity, so its content id is the digest of the signed bytes.
EXPECTED = VerifiedEvent(
    event_id=EVENT_ID,
    event_type="payment.captured",
    created=1699999990,
    content_id="sha256:" + hashlib.sha256(BODY).hexdigest(),
)


def _headers(signature: str | None, *, event_id: str | None = EVENT_ID) -> dict[str, str]:
    headers = {}
    if signature is not None:
        headers["X-Razorpay-Signature"] = signature
    if event_id is not None:
        headers["X-Razorpay-Event-Id"] = event_id
    return headers


def _verify(
    signature: str | None,
    *,
    body: bytes = BODY,
    secrets: tuple[str, ...] = (SECRET,),
    event_id: str | None = EVENT_ID,
) -> VerifiedEvent:
    return verifier.verify(body, _headers(signature, event_id=event_id), secrets, NOW)


def _refused(
    error: type[SignatureError],
    signature: str | None,
    *,
    body: bytes = BODY,
    secrets: tuple[str, ...] = (SECRET,),
) -> None:
    """Assert ``verify`` raises exactly ``error`` (not a sibling) with its fixed message."""
    with pytest.raises(error) as caught:
        _verify(signature, body=body, secrets=secrets)
    assert type(caught.value) is error
    # The message is the class's fixed text, so it can carry no secret, header or body.
    assert str(caught.value) == error.message


# -- success -------------------------------------------------------------------------


def test_valid_signature_returns_event_id_type_and_created() -> None:
    assert _verify(verifier.sign(BODY, SECRET)) == EXPECTED


def test_sign_is_hex_hmac_sha256_of_the_raw_body() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert verifier.sign(BODY, SECRET) == expected


def test_upper_case_hex_signature_passes() -> None:
    assert _verify(verifier.sign(BODY, SECRET).upper()) == EXPECTED


@pytest.mark.parametrize(
    ("signature_name", "event_id_name"),
    [
        ("X-Razorpay-Signature", "X-Razorpay-Event-Id"),
        ("x-razorpay-signature", "x-razorpay-event-id"),
        ("X-RAZORPAY-SIGNATURE", "X-RAZORPAY-EVENT-ID"),
    ],
)
def test_header_names_are_case_insensitive(signature_name: str, event_id_name: str) -> None:
    headers = {signature_name: verifier.sign(BODY, SECRET), event_id_name: EVENT_ID}
    assert verifier.verify(BODY, headers, [SECRET], NOW) == EXPECTED


def test_accepts_aiohttp_style_case_insensitive_multidict() -> None:
    headers = CIMultiDict(_headers(verifier.sign(BODY, SECRET)))
    assert verifier.verify(BODY, headers, [SECRET], NOW) == EXPECTED


def test_created_is_none_when_absent() -> None:
    body = b'{"event":"payment.failed"}'
    assert _verify(verifier.sign(body, SECRET), body=body).created is None


def test_no_timestamp_tolerance_old_deliveries_verify() -> None:
    # Razorpay signs no timestamp: replays are dedupe's job, not the verifier's.
    headers = _headers(verifier.sign(BODY, SECRET))
    assert verifier.verify(BODY, headers, [SECRET], NOW + 365 * 86_400) == EXPECTED


# -- rotation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secrets", [(SECRET, OLD_SECRET), (OLD_SECRET, SECRET)], ids=["current,old", "old,current"]
)
def test_any_configured_secret_passes(secrets: tuple[str, str]) -> None:
    assert _verify(verifier.sign(BODY, SECRET), secrets=secrets) == EXPECTED


def test_second_secret_of_rotation_list_passes() -> None:
    assert _verify(verifier.sign(BODY, OLD_SECRET), secrets=(SECRET, OLD_SECRET)) == EXPECTED


# -- one test per failure reason -------------------------------------------------------


@pytest.mark.parametrize("signature", [None, "", "  "], ids=["absent", "empty", "blank"])
def test_missing_signature(signature: str | None) -> None:
    _refused(MissingSignature, signature)


@pytest.mark.parametrize(
    "signature",
    [
        "not-hex",
        "ab" * 31,  # too short
        "ab" * 33,  # too long
        "zz" * 32,  # right length, not hex
        "sha256=" + "ab" * 32,  # a prefix Razorpay does not use
        "\u00e9" * 64,
    ],
)
def test_malformed_signature(signature: str) -> None:
    _refused(MalformedSignatureHeader, signature)


def test_signature_mismatch_wrong_secret() -> None:
    _refused(SignatureMismatch, verifier.sign(BODY, "someone_else"))


def test_signature_mismatch_tampered_body() -> None:
    tampered = BODY.replace(b"payment.captured", b"payment.failed")
    _refused(SignatureMismatch, verifier.sign(BODY, SECRET), body=tampered)


def test_signature_is_checked_before_the_body_is_parsed() -> None:
    _refused(SignatureMismatch, verifier.sign(b"{}", SECRET), body=b"not json")


def test_signature_mismatch_on_non_utf8_body() -> None:
    body = b'{"event":"\xff"}'
    _refused(SignatureMismatch, verifier.sign(body, "someone_else"), body=body)


# -- authentic but unusable requests ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", None),
        (b'{"event":"payment.captured"', None),
        (b'{"event":"\xff"}', None),  # authentic, but not UTF-8
        (b"[]", None),
        (b"[" * 100_000 + b"]" * 100_000, None),  # too deep for the parser
        (b'{"entity":"event"}', "event"),
        (b'{"event":""}', "event"),
        (b'{"event":7}', "event"),
        (b'{"event":"payment.\\u0000captured"}', "event"),
        (b'{"event":"payment.captured","created_at":"1699999990"}', "created_at"),
    ],
)
def test_invalid_payload_under_valid_signature(body: bytes, field: str | None) -> None:
    with pytest.raises(InvalidPayload) as caught:
        _verify(verifier.sign(body, SECRET), body=body)
    assert caught.value.field == field
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "event_id",
    [None, "", "e" * 257, "evt\x01", "evt\x7f"],
    ids=["absent", "empty", "long", "SOH", "DEL"],
)
def test_missing_event_id_header_is_invalid_payload(event_id: str | None) -> None:
    with pytest.raises(InvalidPayload) as caught:
        _verify(verifier.sign(BODY, SECRET), event_id=event_id)
    assert caught.value.field == "X-Razorpay-Event-Id"


def test_missing_event_id_is_reported_only_after_authentication() -> None:
    with pytest.raises(SignatureMismatch):
        _verify(verifier.sign(BODY, "someone_else"), event_id=None)


# -- contract ---------------------------------------------------------------------------


def test_secrets_list_misconfiguration_is_a_programming_error() -> None:
    signature = verifier.sign(BODY, SECRET)
    with pytest.raises(ValueError, match="no webhook secret"):
        _verify(signature, secrets=())
    with pytest.raises(ValueError, match="blank"):
        _verify(signature, secrets=("",))
    with pytest.raises(TypeError):
        verifier.verify(BODY, _headers(signature), SECRET, NOW)


# -- what the signed body identifies (the event id header is not signed) -------------------

ENTITY_BODY = (
    b'{"entity":"event","event":"refund.processed","contains":["refund","payment"],'
    b'"payload":{"refund":{"entity":{"id":"rfnd_1","amount":100}},'
    b'"payment":{"entity":{"id":"pay_1","amount":500}}},"created_at":1699999990}'
)


def test_content_id_names_the_event_its_entities_and_its_time() -> None:
    verified = _verify(verifier.sign(ENTITY_BODY, SECRET), body=ENTITY_BODY)
    assert verified.content_id == "refund.processed@1699999990:payment=pay_1,refund=rfnd_1"


def test_content_id_does_not_depend_on_the_event_id_header() -> None:
    signature = verifier.sign(ENTITY_BODY, SECRET)
    first = _verify(signature, body=ENTITY_BODY, event_id="evt_first")
    replayed = _verify(signature, body=ENTITY_BODY, event_id="evt_fresh")
    assert first.event_id != replayed.event_id
    assert first.content_id == replayed.content_id


def test_content_id_ignores_the_bodys_formatting_and_entity_details() -> None:
    """A retry Razorpay serialises differently, or with an entity's state moved on, is
    still the same event (same type, entities and creation time)."""
    respaced = ENTITY_BODY.replace(b'"amount":100', b'"amount": 100, "status": "processed"')
    assert (
        _verify(verifier.sign(respaced, SECRET), body=respaced).content_id
        == _verify(verifier.sign(ENTITY_BODY, SECRET), body=ENTITY_BODY).content_id
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"1699999990", b"1699999991"),
        (b"rfnd_1", b"rfnd_2"),
        (b"refund.processed", b"refund.failed"),
    ],
)
def test_another_event_has_another_content_id(old: bytes, new: bytes) -> None:
    other = ENTITY_BODY.replace(old, new)
    assert (
        _verify(verifier.sign(other, SECRET), body=other).content_id
        != _verify(verifier.sign(ENTITY_BODY, SECRET), body=ENTITY_BODY).content_id
    )
