"""Partner leads: each partner proves who it is in the mode its registry entry names.

- ``hmac``: ``X-Partner-Signature`` = hex HMAC-SHA256 of the raw body.
- ``bearer``: ``Authorization: Bearer <token>``; the token must be one of the partner's.
- ``standard-webhooks``: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``
  (space-separated ``v1,<base64>`` entries, each an HMAC-SHA256 of
  ``{id}.{timestamp}.{body}`` under a ``whsec_`` secret), timestamp within
  ``TOLERANCE_SECONDS`` of ``now`` either way.

Every secret or token the partner lists is tried (rotation) and compared in constant time.
Unlike the Stripe and Razorpay verifiers, this one returns nothing: the lead's identity
(``partnerId``, ``externalLeadId``) is in the body, which the route checks once the raw
bytes are authentic (``ingress.leads``).

**Standard Webhooks and its library.** The signature is made by the ``standardwebhooks``
library (``Webhook.sign``), the specification's reference implementation, and compared
here; its ``Webhook.verify`` is not called, for three reasons found in its
``webhooks.py``:

- it reads ``datetime.now()`` itself, so a frozen test clock (and the injected clock in
  general) would not be honoured; we check the timestamp against ``now``;
- a signature entry without exactly one comma, or with a value that is not base64,
  raises ``ValueError``/``binascii.Error`` rather than its own error: unguarded, an HTTP
  500 for a malformed header; we parse the header ourselves, strictly;
- a non-UTF-8 body raises ``UnicodeDecodeError`` (it signs the decoded text); such a
  body cannot carry a valid signature from any conforming sender, so it is a mismatch.

The checks, one exception each:

- ``hmac``: no header (``MissingSignature``), not 64 hex digits
  (``MalformedSignatureHeader``), no secret makes it (``SignatureMismatch``).
- ``bearer``: no ``Bearer`` credentials (``MissingToken``); the token is not the
  partner's but another partner's (``ForeignToken``, HTTP 403, never saying whose); it
  is nobody's (``UnknownToken``).
- ``standard-webhooks``: any of the three headers absent (``MissingSignature``); an id
  that is not printable ASCII, a timestamp that is not whole seconds, a signature entry
  without a version (``MalformedSignatureHeader``); no ``v1`` entry
  (``NoExpectedScheme``); timestamp out of tolerance (``StaleTimestamp``); no entry
  matches under any secret (``SignatureMismatch``; an entry whose value is not base64
  simply matches nothing, so a junk entry beside a good one still passes).

Pure: no clock (``now`` is an argument), no IO, no state but a cache of the library's
decoded keys.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from standardwebhooks.webhooks import Webhook

from base.partners import Partner, PartnerRegistry
from ingress.verify import check_secrets, normalise_headers
from ingress.verify.errors import (
    ForeignToken,
    MalformedSignatureHeader,
    MissingSignature,
    MissingToken,
    NoExpectedScheme,
    SignatureMismatch,
    StaleTimestamp,
    UnknownToken,
)

__all__ = [
    "AUTHORIZATION_HEADER",
    "EXPECTED_SCHEME",
    "SIGNATURE_HEADER",
    "TOLERANCE_SECONDS",
    "WEBHOOK_ID_HEADER",
    "WEBHOOK_SIGNATURE_HEADER",
    "WEBHOOK_TIMESTAMP_HEADER",
    "bearer_header",
    "sign_hmac",
    "sign_standard_webhooks",
    "verify",
    "verify_bearer",
    "verify_hmac",
    "verify_standard_webhooks",
]

SIGNATURE_HEADER: Final = "X-Partner-Signature"
AUTHORIZATION_HEADER: Final = "Authorization"
WEBHOOK_ID_HEADER: Final = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER: Final = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER: Final = "webhook-signature"
TOLERANCE_SECONDS: Final = 300
"""Standard Webhooks' ±5 minutes; exactly 300 s away still passes, as in the library."""
EXPECTED_SCHEME: Final = "v1"

_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# Whole seconds without leading zeros: the library signs ``str(int(timestamp))``, so a
# "01614265330" would be signed as a different string than the one the sender sent.
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,11}")
_MAX_MESSAGE_ID = 256


def verify(
    raw_body: bytes,
    headers: Mapping[str, str],
    partner: Partner,
    registry: PartnerRegistry,
    now: float,
) -> None:
    """Authenticate a lead request as coming from ``partner``, by its inbound mode.

    :param raw_body: the request body exactly as received.
    :param headers: request headers; names are matched in any case.
    :param partner: the partner the body names.
    :param registry: every partner, to tell another partner's bearer token (403) from a
        token of nobody (401).
    :param now: the current time, seconds since the epoch (the injected clock).
    :raises SignatureError: a subclass naming the failed check (see the module docstring).
    :raises ForeignToken: a bearer token of another partner.
    """
    if partner.auth == "hmac":
        verify_hmac(raw_body, headers, partner.secrets)
    elif partner.auth == "bearer":
        verify_bearer(headers, partner.secrets, _tokens_of_others(registry, partner))
    else:
        verify_standard_webhooks(raw_body, headers, partner.secrets, now)


def verify_hmac(raw_body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> None:
    """``X-Partner-Signature`` is the hex HMAC-SHA256 of ``raw_body`` under a secret.

    :raises MissingSignature, MalformedSignatureHeader, SignatureMismatch: see above.
    :raises TypeError, ValueError: ``secrets`` is unusable (``check_secrets``).
    """
    check_secrets(secrets)
    signature = normalise_headers(headers).get(SIGNATURE_HEADER.lower(), "").strip()
    if not signature:
        raise MissingSignature()
    if not _HEX_SHA256.fullmatch(signature):
        raise MalformedSignatureHeader()
    received = bytes.fromhex(signature)
    if not any(hmac.compare_digest(_hmac(raw_body, secret), received) for secret in secrets):
        raise SignatureMismatch()


def verify_bearer(
    headers: Mapping[str, str], tokens: Sequence[str], others: Iterable[str] = ()
) -> None:
    """``Authorization: Bearer <token>`` with one of ``tokens``.

    :param others: the tokens of every other bearer partner: a match there is a 403.
    :raises MissingToken, ForeignToken, UnknownToken: see above.
    :raises TypeError, ValueError: ``tokens`` is unusable (``check_secrets``).
    """
    check_secrets(tokens)
    scheme, _, token = normalise_headers(headers).get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise MissingToken()
    # Bytes, so a non-ASCII token is compared rather than raising TypeError;
    # surrogateescape because aiohttp hands undecodable header bytes over that way.
    given = token.encode("utf-8", "surrogateescape")
    if _one_of(given, tokens):
        return
    if _one_of(given, others):
        raise ForeignToken()
    raise UnknownToken()


def verify_standard_webhooks(
    raw_body: bytes, headers: Mapping[str, str], secrets: Sequence[str], now: float
) -> None:
    """A Standard Webhooks signature of ``raw_body`` under one of the ``whsec_`` secrets,
    timestamped within ``TOLERANCE_SECONDS`` of ``now``.

    :raises SignatureError: a subclass naming the failed check (see the module docstring).
    :raises TypeError, ValueError: ``secrets`` is unusable (``check_secrets``).
    """
    check_secrets(secrets)
    normalised = normalise_headers(headers)
    message_id = normalised.get(WEBHOOK_ID_HEADER, "").strip()
    timestamp_text = normalised.get(WEBHOOK_TIMESTAMP_HEADER, "").strip()
    signature_header = normalised.get(WEBHOOK_SIGNATURE_HEADER, "").strip()
    if not (message_id and timestamp_text and signature_header):
        raise MissingSignature()
    if (
        len(message_id) > _MAX_MESSAGE_ID
        or not message_id.isascii()
        or not message_id.isprintable()
        or not _TIMESTAMP.fullmatch(timestamp_text)
    ):
        raise MalformedSignatureHeader()
    signatures = _v1_signatures(signature_header)
    if not signatures:
        raise NoExpectedScheme()
    timestamp = int(timestamp_text)
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise StaleTimestamp()
    try:
        body = raw_body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureMismatch() from None
    signed_at = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    for secret in secrets:
        expected = _signature_bytes(_webhook(secret).sign(message_id, signed_at, body))
        if any(hmac.compare_digest(expected, given) for given in signatures):
            return
    raise SignatureMismatch()


def sign_hmac(payload: bytes, secret: str) -> str:
    """A valid ``X-Partner-Signature`` value for ``payload``. For tests."""
    return _hmac(payload, secret).hex()


def bearer_header(token: str) -> str:
    """The ``Authorization`` value carrying ``token``. For tests."""
    return f"Bearer {token}"


def sign_standard_webhooks(payload: bytes, secret: str, message_id: str, timestamp: int) -> str:
    """A valid ``webhook-signature`` value (``v1,<base64>``), made by the library. For tests.

    ``payload`` must be UTF-8, as every JSON body is.
    """
    signed_at = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return _webhook(secret).sign(message_id, signed_at, payload.decode("utf-8"))


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a ``webhook-signature`` header.

    :raises MalformedSignatureHeader: not ASCII, or an entry is not ``<version>,<value>``.
    """
    if not header.isascii():
        raise MalformedSignatureHeader()
    signatures: list[bytes] = []
    for entry in header.split():
        version, comma, value = entry.partition(",")
        if not version or not comma or "," in value:
            raise MalformedSignatureHeader()
        if version != EXPECTED_SCHEME:
            continue  # another scheme (v1a: asymmetric), not ours to check
        try:
            signatures.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            # A junk v1 entry matches nothing; a good one beside it still counts.
            signatures.append(b"")
    return signatures


def _signature_bytes(signature: str) -> bytes:
    return base64.b64decode(signature.partition(",")[2])


@functools.lru_cache(maxsize=256)
def _webhook(secret: str) -> Webhook:
    # Decoding the secret once per secret, not per request.
    return Webhook(secret)


def _hmac(payload: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).digest()


def _one_of(given: bytes, tokens: Iterable[str]) -> bool:
    # Every token compared (no early exit), so timing does not tell how many matched.
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given, token.encode("utf-8", "surrogateescape"))
    return found


def _tokens_of_others(registry: PartnerRegistry, partner: Partner) -> Iterable[str]:
    return (
        token
        for other in registry
        if other.id != partner.id and other.auth == "bearer"
        for token in other.secrets
    )
