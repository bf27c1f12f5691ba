"""Unit tests for ``ingress.verify.partner``: every inbound mode, good, bad and missing;
one test per failure reason; no event loop, no services."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from multidict import CIMultiDict

from base.partners import Partner, PartnerRegistry
from ingress.verify import partner as verifier
from ingress.verify.errors import (
    ForeignToken,
    MalformedSignatureHeader,
    MissingSignature,
    MissingToken,
    NoExpectedScheme,
    SignatureError,
    SignatureMismatch,
    StaleTimestamp,
    UnknownToken,
)

NOW = 1_700_000_000.0
BODY = b'{"partnerId":"acme","externalLeadId":"L-1","payload":{"email":"a@example.com"}}'

HMAC_SECRET = "hmac-current"
HMAC_OLD_SECRET = "hmac-previous"
TOKEN = "tok-acme-current"
OLD_TOKEN = "tok-acme-previous"
OTHER_TOKEN = "tok-globex"
# whsec_ + base64 of 32 bytes each.
WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()
WHSEC_OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
MSG_ID = "msg_2b3c4d"

# --- The Standard Webhooks specification's published test vector ----------------------
# From standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py
# (test_sign_function, test_invalid_signature_raises_error, test_multi_sig_payload_is_valid)
# and libraries/javascript/src/webhook.test.ts ("sign function works", "invalid signature
# throws error", "partial signature throws error"); the same values in every library.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_PAYLOAD = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_BAD_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="  # last char changed
VECTOR_OTHER_SIGNATURE = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
VECTOR_NOT_BASE64 = "v1,dawfeoifkpqwoekfpqoekf"


def _sw_headers(
    signature: str | None, *, timestamp: str | None = str(int(NOW)), message_id: str | None = MSG_ID
) -> dict[str, str]:
    headers = {}
    if message_id is not None:
        headers["webhook-id"] = message_id
    if timestamp is not None:
        headers["webhook-timestamp"] = timestamp
    if signature is not None:
        headers["webhook-signature"] = signature
    return headers


def _sw_sign(secret: str = WHSEC, *, timestamp: int = int(NOW), body: bytes = BODY) -> str:
    return verifier.sign_standard_webhooks(body, secret, MSG_ID, timestamp)


def _sw(
    headers: dict[str, str],
    *,
    body: bytes = BODY,
    secrets: tuple[str, ...] = (WHSEC,),
    now: float = NOW,
) -> None:
    verifier.verify_standard_webhooks(body, headers, secrets, now)


# --- hmac ------------------------------------------------------------------------------


def test_hmac_signature_of_the_raw_body_is_accepted() -> None:
    signature = hmac.new(HMAC_SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert verifier.sign_hmac(BODY, HMAC_SECRET) == signature
    verifier.verify_hmac(BODY, {"X-Partner-Signature": signature}, (HMAC_SECRET,))
    # Upper-case hex and any header-name case are fine.
    verifier.verify_hmac(BODY, {"x-partner-signature": signature.upper()}, (HMAC_SECRET,))


def test_hmac_rotation_accepts_every_listed_secret() -> None:
    for secret in (HMAC_SECRET, HMAC_OLD_SECRET):
        headers = {"X-Partner-Signature": verifier.sign_hmac(BODY, secret)}
        verifier.verify_hmac(BODY, headers, (HMAC_SECRET, HMAC_OLD_SECRET))


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, MissingSignature),
        ({"X-Partner-Signature": "  "}, MissingSignature),
        ({"X-Partner-Signature": "not-hex"}, MalformedSignatureHeader),
        ({"X-Partner-Signature": "ab" * 31}, MalformedSignatureHeader),
        ({"X-Partner-Signature": "é" * 64}, MalformedSignatureHeader),
        ({"X-Partner-Signature": verifier.sign_hmac(BODY, "someone-else")}, SignatureMismatch),
        ({"X-Partner-Signature": verifier.sign_hmac(BODY + b" ", HMAC_SECRET)}, SignatureMismatch),
    ],
)
def test_hmac_refusals(headers: dict[str, str], error: type[SignatureError]) -> None:
    with pytest.raises(error):
        verifier.verify_hmac(BODY, headers, (HMAC_SECRET,))


# --- bearer ----------------------------------------------------------------------------


def test_bearer_token_of_the_partner_is_accepted_in_any_scheme_case() -> None:
    verifier.verify_bearer({"Authorization": f"Bearer {TOKEN}"}, (TOKEN,))
    verifier.verify_bearer(CIMultiDict({"authorization": f"bearer  {TOKEN} "}), (TOKEN,))
    assert verifier.bearer_header(TOKEN) == f"Bearer {TOKEN}"


def test_bearer_rotation_accepts_every_listed_token() -> None:
    for token in (TOKEN, OLD_TOKEN):
        verifier.verify_bearer({"Authorization": f"Bearer {token}"}, (TOKEN, OLD_TOKEN))


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer   ", f"Basic {TOKEN}", TOKEN]
)
def test_bearer_missing_is_refused(authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with pytest.raises(MissingToken):
        verifier.verify_bearer(headers, (TOKEN,), (OTHER_TOKEN,))


def test_token_of_another_partner_is_forbidden_without_naming_it() -> None:
    with pytest.raises(ForeignToken) as refused:
        verifier.verify_bearer({"Authorization": f"Bearer {OTHER_TOKEN}"}, (TOKEN,), (OTHER_TOKEN,))
    assert str(refused.value) == "token belongs to another partner"
    assert OTHER_TOKEN not in str(refused.value)
    # Not a SignatureError: the route answers 403, not 401.
    assert not isinstance(refused.value, SignatureError)


@pytest.mark.parametrize("token", ["tok-nobody", TOKEN + "x", "ünïcode", "\udcff"])
def test_token_of_nobody_is_unauthorised(token: str) -> None:
    with pytest.raises(UnknownToken):
        verifier.verify_bearer({"Authorization": f"Bearer {token}"}, (TOKEN,), (OTHER_TOKEN,))


# --- standard-webhooks -----------------------------------------------------------------


def test_standard_webhooks_signature_is_accepted() -> None:
    _sw(_sw_headers(_sw_sign()))
    # Header names in any case.
    _sw({k.upper(): v for k, v in _sw_headers(_sw_sign()).items()})


def test_standard_webhooks_rotation_accepts_every_listed_secret() -> None:
    for secret in (WHSEC, WHSEC_OLD):
        _sw(_sw_headers(_sw_sign(secret)), secrets=(WHSEC, WHSEC_OLD))
    with pytest.raises(SignatureMismatch):
        _sw(_sw_headers(_sw_sign(WHSEC_OLD)), secrets=(WHSEC,))  # once unlisted, refused


def test_several_signatures_in_one_header_any_match_passes() -> None:
    header = " ".join(
        [
            VECTOR_OTHER_SIGNATURE,
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v1a,c29tZSBhc3ltbWV0cmljIHNpZ25hdHVyZQ==",
            VECTOR_NOT_BASE64,
            _sw_sign(),
            VECTOR_OTHER_SIGNATURE,
        ]
    )
    _sw(_sw_headers(header))


def test_a_sender_signing_with_old_and_new_secret_passes_either_configuration() -> None:
    header = f"{_sw_sign(WHSEC_OLD)} {_sw_sign(WHSEC)}"
    _sw(_sw_headers(header), secrets=(WHSEC,))
    _sw(_sw_headers(header), secrets=(WHSEC_OLD,))


@pytest.mark.parametrize("offset", [-300, 300, -1, 0, 1])
def test_timestamp_within_five_minutes_either_way_passes(offset: int) -> None:
    timestamp = int(NOW) + offset
    _sw(_sw_headers(_sw_sign(timestamp=timestamp), timestamp=str(timestamp)))


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_stale_and_future_timestamps_are_refused(offset: int) -> None:
    timestamp = int(NOW) + offset
    # Correctly signed: only the time is wrong.
    with pytest.raises(StaleTimestamp):
        _sw(_sw_headers(_sw_sign(timestamp=timestamp), timestamp=str(timestamp)))


def test_the_injected_clock_decides_not_the_wall_clock() -> None:
    # NOW is in 2023: the library's own verify() (datetime.now()) would call this stale.
    _sw(_sw_headers(_sw_sign()), now=NOW + 299)
    with pytest.raises(StaleTimestamp):
        _sw(_sw_headers(_sw_sign()), now=NOW + 301)


@pytest.mark.parametrize(
    "headers",
    [
        _sw_headers(None),
        _sw_headers("v1,abc", timestamp=None),
        _sw_headers("v1,abc", message_id=None),
        _sw_headers("  "),
        {},
    ],
)
def test_missing_standard_webhooks_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(MissingSignature):
        _sw(headers)


@pytest.mark.parametrize(
    "headers",
    [
        _sw_headers("v1,abc", timestamp="hello"),
        _sw_headers("v1,abc", timestamp="1.7e9"),
        _sw_headers("v1,abc", timestamp="-1700000000"),
        _sw_headers("v1,abc", timestamp="01700000000"),
        _sw_headers("v1,abc", timestamp="9" * 40),
        _sw_headers("v1,abc", message_id="msg\x00x"),
        _sw_headers("v1,abc", message_id="msg_é"),
        _sw_headers("v1,abc", message_id="m" * 257),
        # Entries the library's verify() would crash on with ValueError (a 500).
        _sw_headers("v1"),
        _sw_headers("garbage"),
        _sw_headers(f"{VECTOR_OTHER_SIGNATURE} v1"),
        _sw_headers("v1,abc,def"),
        _sw_headers(",abc"),
        _sw_headers("v1,é"),
    ],
)
def test_malformed_standard_webhooks_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(MalformedSignatureHeader):
        _sw(headers)


def test_header_without_a_v1_signature_is_refused() -> None:
    with pytest.raises(NoExpectedScheme):
        _sw(_sw_headers("v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="))


@pytest.mark.parametrize(
    "signature", [VECTOR_OTHER_SIGNATURE, VECTOR_NOT_BASE64, "v1,", "v1,g0hM9SsE"]
)
def test_wrong_signature_is_a_mismatch(signature: str) -> None:
    with pytest.raises(SignatureMismatch):
        _sw(_sw_headers(signature))


def test_signature_over_another_id_or_body_is_a_mismatch() -> None:
    with pytest.raises(SignatureMismatch):
        _sw(_sw_headers(_sw_sign(), message_id="msg_other"))
    with pytest.raises(SignatureMismatch):
        _sw(_sw_headers(_sw_sign()), body=BODY + b" ")


def test_non_utf8_body_is_a_mismatch_not_a_crash() -> None:
    with pytest.raises(SignatureMismatch):
        _sw(_sw_headers(_sw_sign()), body=b"\xff\xfe{}")


# --- the specification's test vectors ---------------------------------------------------


def _vector(signature: str, *, secret: str = VECTOR_SECRET) -> None:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": signature,
    }
    verifier.verify_standard_webhooks(
        VECTOR_PAYLOAD, headers, (secret,), float(VECTOR_TIMESTAMP) + 10
    )


def test_spec_vector_signs_to_the_published_signature() -> None:
    signature = verifier.sign_standard_webhooks(
        VECTOR_PAYLOAD, VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP
    )
    assert signature == VECTOR_SIGNATURE


def test_spec_vector_verifies_with_and_without_the_whsec_prefix() -> None:
    _vector(VECTOR_SIGNATURE)
    _vector(VECTOR_SIGNATURE, secret=VECTOR_SECRET.removeprefix("whsec_"))


def test_spec_vector_multi_signature_header_verifies() -> None:
    _vector(
        " ".join(
            [
                VECTOR_OTHER_SIGNATURE,
                "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                VECTOR_SIGNATURE,
                VECTOR_OTHER_SIGNATURE,
            ]
        )
    )


@pytest.mark.parametrize(
    "signature",
    [VECTOR_BAD_SIGNATURE, VECTOR_NOT_BASE64, VECTOR_SIGNATURE[:8], "v1,"],
)
def test_spec_vector_invalid_and_partial_signatures_are_refused(signature: str) -> None:
    with pytest.raises(SignatureMismatch):
        _vector(signature)


# --- dispatch by the partner's mode ----------------------------------------------------


def _partner(partner_id: str, auth: str, *secrets: str) -> Partner:
    return Partner.model_validate({"id": partner_id, "auth": auth, "secrets": secrets})


REGISTRY = PartnerRegistry(
    [
        _partner("acme", "hmac", HMAC_SECRET),
        _partner("initech", "bearer", TOKEN, OLD_TOKEN),
        _partner("globex", "bearer", OTHER_TOKEN),
        _partner("hooli", "standard-webhooks", WHSEC),
    ]
)


def _dispatch(partner_id: str, headers: dict[str, str]) -> None:
    partner = REGISTRY.get(partner_id)
    assert partner is not None
    verifier.verify(BODY, headers, partner, REGISTRY, NOW)


def test_verify_uses_the_partners_own_mode() -> None:
    _dispatch("acme", {"X-Partner-Signature": verifier.sign_hmac(BODY, HMAC_SECRET)})
    _dispatch("initech", {"Authorization": f"Bearer {OLD_TOKEN}"})
    _dispatch("hooli", _sw_headers(_sw_sign()))
    # One mode's credentials do not pass another's check.
    with pytest.raises(MissingSignature):
        _dispatch("acme", {"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(MissingToken):
        _dispatch("initech", {"X-Partner-Signature": verifier.sign_hmac(BODY, HMAC_SECRET)})


def test_verify_tells_another_partners_token_from_nobodys() -> None:
    with pytest.raises(ForeignToken):
        _dispatch("initech", {"Authorization": f"Bearer {OTHER_TOKEN}"})
    with pytest.raises(ForeignToken):
        _dispatch("globex", {"Authorization": f"Bearer {TOKEN}"})
    # An hmac partner's secret is no bearer token of anyone's.
    with pytest.raises(UnknownToken):
        _dispatch("initech", {"Authorization": f"Bearer {HMAC_SECRET}"})
