"""Unit tests for ``ingress.verify.stripe``: one test per failure reason, no event loop."""

from __future__ import annotations

import json
import re

import pytest
import stripe as stripe_library
from multidict import CIMultiDict

from base.errors import InvalidEvent, SluiceError
from ingress.verify import VerifiedEvent
from ingress.verify import stripe as verifier
from ingress.verify.errors import (
    InvalidPayload,
    MalformedSignatureHeader,
    MissingSignature,
    NoExpectedScheme,
    SignatureError,
    SignatureMismatch,
    StaleTimestamp,
)

SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"
NOW = 1_700_000_000
TOLERANCE = verifier.TOLERANCE_SECONDS
BODY = b'{"id":"evt_1Test","object":"event","type":"payment_intent.succeeded","created":1699999990}'
EXPECTED = VerifiedEvent(
    event_id="evt_1Test", event_type="payment_intent.succeeded", created=1699999990
)


def _v1(header: str) -> str:
    """The v1 signature inside a header made by ``sign``."""
    return header.split(",v1=")[1]


def _verify(
    header: str | None,
    *,
    body: bytes = BODY,
    secrets: tuple[str, ...] = (SECRET,),
    now: float = NOW,
) -> VerifiedEvent:
    headers = {} if header is None else {"Stripe-Signature": header}
    return verifier.verify(body, headers, secrets, now)


def _refused(
    error: type[SignatureError],
    header: str | None,
    *,
    body: bytes = BODY,
    secrets: tuple[str, ...] = (SECRET,),
    now: float = NOW,
) -> None:
    """Assert ``verify`` raises exactly ``error`` (not a sibling) with its fixed message."""
    with pytest.raises(error) as caught:
        _verify(header, body=body, secrets=secrets, now=now)
    assert type(caught.value) is error
    # The message is the class's fixed text, so it can carry no secret, header or body.
    assert str(caught.value) == error.message


# -- success -------------------------------------------------------------------------


def test_valid_signature_returns_event_id_type_and_created() -> None:
    assert _verify(verifier.sign(BODY, SECRET, NOW)) == EXPECTED


def test_sign_produces_a_header_the_library_itself_accepts() -> None:
    header = verifier.sign(BODY, SECRET, NOW)
    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64}", header)
    assert stripe_library.WebhookSignature.verify_header(BODY, header, SECRET, tolerance=None)


@pytest.mark.parametrize("name", ["Stripe-Signature", "stripe-signature", "STRIPE-SIGNATURE"])
def test_header_name_is_case_insensitive(name: str) -> None:
    headers = {name: verifier.sign(BODY, SECRET, NOW)}
    assert verifier.verify(BODY, headers, [SECRET], NOW) == EXPECTED


def test_accepts_aiohttp_style_case_insensitive_multidict() -> None:
    headers = CIMultiDict({"stripe-SIGNATURE": verifier.sign(BODY, SECRET, NOW)})
    assert verifier.verify(BODY, headers, [SECRET], NOW) == EXPECTED


def test_created_is_none_when_absent() -> None:
    body = b'{"id":"evt_1","type":"customer.created"}'
    event = _verify(verifier.sign(body, SECRET, NOW), body=body)
    assert event == VerifiedEvent(event_id="evt_1", event_type="customer.created", created=None)


def test_unknown_event_type_is_accepted() -> None:
    body = b'{"id":"evt_1","type":"some.future.event"}'
    assert _verify(verifier.sign(body, SECRET, NOW), body=body).event_type == "some.future.event"


# -- rotation --------------------------------------------------------------------------


@pytest.mark.parametrize("good_first", [True, False], ids=["good,bad", "bad,good"])
def test_bad_signature_next_to_good_one_passes(good_first: bool) -> None:
    good = _v1(verifier.sign(BODY, SECRET, NOW))
    bad = _v1(verifier.sign(BODY, "whsec_someone_else", NOW))
    pair = (good, bad) if good_first else (bad, good)
    assert _verify(f"t={NOW},v1={pair[0]},v1={pair[1]}") == EXPECTED


@pytest.mark.parametrize(
    "secrets", [(SECRET, OLD_SECRET), (OLD_SECRET, SECRET)], ids=["current,old", "old,current"]
)
def test_any_configured_secret_passes(secrets: tuple[str, str]) -> None:
    assert _verify(verifier.sign(BODY, SECRET, NOW), secrets=secrets) == EXPECTED


def test_second_secret_of_rotation_list_passes() -> None:
    header = verifier.sign(BODY, OLD_SECRET, NOW)
    assert _verify(header, secrets=(SECRET, OLD_SECRET)) == EXPECTED


def test_header_signed_with_both_secrets_during_rotation_passes_either_list() -> None:
    header = f"{verifier.sign(BODY, SECRET, NOW)},v1={_v1(verifier.sign(BODY, OLD_SECRET, NOW))}"
    assert _verify(header, secrets=(SECRET,)) == EXPECTED
    assert _verify(header, secrets=(OLD_SECRET,)) == EXPECTED


# -- one test per failure reason -------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_missing_signature(header: str | None) -> None:
    _refused(MissingSignature, header)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "v1=abc",  # no timestamp
        "t=abc,v1=abc",  # timestamp not a number
        "t=,v1=abc",  # empty timestamp
        "t=1700000000,v1",  # v1 item without "="
        "t",  # t item without "="
        "t=+1700000000,v1=abc",  # int() would take it; Stripe never sends it
        "t=1700000000 ,v1=abc",  # int() would take it too
        "t=\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660,v1=abc",  # Arabic digits
        "t=1700000000,v1=\u00e9",  # the library's compare_digest raises TypeError on this
        "t=" + "9" * 5000 + ",v1=abc",  # over Python's int() digit limit
    ],
)
def test_malformed_signature_header(header: str) -> None:
    _refused(MalformedSignatureHeader, header)


@pytest.mark.parametrize(
    "header",
    [
        f"t={NOW}",
        f"t={NOW},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39",
        f"t={NOW}, v1=abc",  # " v1" is not the scheme "v1"
        f"t={NOW},V1=abc",
    ],
)
def test_no_signature_with_expected_scheme(header: str) -> None:
    _refused(NoExpectedScheme, header)


def test_signature_mismatch_wrong_secret() -> None:
    _refused(SignatureMismatch, verifier.sign(BODY, "whsec_attacker", NOW))


def test_signature_mismatch_tampered_body() -> None:
    tampered = BODY.replace(b"payment_intent.succeeded", b"payment_intent.canceled")
    _refused(SignatureMismatch, verifier.sign(BODY, SECRET, NOW), body=tampered)


def test_signature_mismatch_timestamp_changed_after_signing() -> None:
    fresh = verifier.sign(BODY, SECRET, NOW - 10_000)
    _refused(SignatureMismatch, fresh.replace(f"t={NOW - 10_000}", f"t={NOW}"))


def test_signature_mismatch_garbage_signature() -> None:
    _refused(SignatureMismatch, f"t={NOW},v1=not-a-signature")


def test_signature_mismatch_body_not_utf8() -> None:
    # The library would raise UnicodeDecodeError here; Stripe never signs such a body.
    header = f"t={NOW},v1=" + "0" * 64
    _refused(SignatureMismatch, header, body=b'{"id":"\xff"}')


def test_stale_timestamp() -> None:
    _refused(StaleTimestamp, verifier.sign(BODY, SECRET, NOW - TOLERANCE - 1))


def test_future_timestamp() -> None:
    _refused(StaleTimestamp, verifier.sign(BODY, SECRET, NOW + TOLERANCE + 1))


@pytest.mark.parametrize("offset", [-TOLERANCE, TOLERANCE], ids=["oldest", "newest"])
def test_timestamp_exactly_at_tolerance_passes(offset: int) -> None:
    assert _verify(verifier.sign(BODY, SECRET, NOW + offset)) == EXPECTED


def test_timestamp_a_fraction_beyond_tolerance_is_stale() -> None:
    _refused(StaleTimestamp, verifier.sign(BODY, SECRET, NOW - TOLERANCE), now=NOW + 0.5)


def test_age_is_measured_against_injected_now_not_wall_clock() -> None:
    # Signed in 2001: fine when the injected clock says so, whatever the wall clock says.
    signed_at = 1_000_000_000
    header = verifier.sign(BODY, SECRET, signed_at)
    assert _verify(header, now=signed_at + 1) == EXPECTED
    _refused(StaleTimestamp, header, now=NOW)


# -- order of checks (Stripe's) -------------------------------------------------------


def test_mismatch_is_reported_before_staleness() -> None:
    _refused(SignatureMismatch, verifier.sign(BODY, "whsec_attacker", NOW - 10 * TOLERANCE))


def test_missing_scheme_is_reported_before_mismatch() -> None:
    _refused(NoExpectedScheme, f"t={NOW},v0={_v1(verifier.sign(BODY, 'whsec_x', NOW))}")


def test_signature_is_checked_before_the_body_is_parsed() -> None:
    _refused(SignatureMismatch, verifier.sign(b"{}", SECRET, NOW), body=b"not json")


# -- authentic but unusable bodies ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", None),
        (b'{"id":"evt_1","type":"x"', None),
        (b"[1, 2]", None),
        (b'"evt_1"', None),
        (b"[" * 100_000 + b"]" * 100_000, None),  # too deep for the parser
        (b'{"type":"charge.refunded"}', "id"),
        (b'{"id":"","type":"charge.refunded"}', "id"),
        (b'{"id":42,"type":"charge.refunded"}', "id"),
        (b'{"id":"evt_1"}', "type"),
        (b'{"id":"evt_1","type":null}', "type"),
        (b'{"id":"evt_1","type":"x","created":"1699999990"}', "created"),
        (b'{"id":"evt_1","type":"x","created":true}', "created"),
    ],
)
def test_invalid_payload_under_valid_signature(body: bytes, field: str | None) -> None:
    with pytest.raises(InvalidPayload) as caught:
        _verify(verifier.sign(body, SECRET, NOW), body=body)
    assert caught.value.field == field
    assert SECRET not in str(caught.value)


# -- contract ---------------------------------------------------------------------------


def test_error_taxonomy() -> None:
    assert issubclass(SignatureError, SluiceError)
    assert issubclass(InvalidPayload, InvalidEvent)
    reasons = {
        cls.reason
        for cls in (
            MissingSignature,
            MalformedSignatureHeader,
            NoExpectedScheme,
            SignatureMismatch,
            StaleTimestamp,
        )
    }
    assert len(reasons) == 5


def test_secrets_list_misconfiguration_is_a_programming_error() -> None:
    header = verifier.sign(BODY, SECRET, NOW)
    with pytest.raises(ValueError, match="no webhook secret"):
        _verify(header, secrets=())
    with pytest.raises(ValueError, match="blank"):
        _verify(header, secrets=(SECRET, " "))
    with pytest.raises(TypeError):
        verifier.verify(BODY, {"Stripe-Signature": header}, SECRET, NOW)


def test_body_is_not_modified_or_reencoded() -> None:
    # Whitespace and key order are part of what is signed: verification is on raw bytes.
    pretty = json.dumps(json.loads(BODY), indent=2).encode()
    _refused(SignatureMismatch, verifier.sign(BODY, SECRET, NOW), body=pretty)
    assert _verify(verifier.sign(pretty, SECRET, NOW), body=pretty) == EXPECTED
