"""Stripe webhooks: ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``.

The HMAC is computed and compared by the ``stripe`` library
(``stripe.WebhookSignature.verify_header``), as DESIGN §3 asks. Everything around it is
ours, for three reasons found by reading the library's ``_webhook.py``:

- **Time.** The library's age check reads ``time.time()`` itself, and it only looks at
  the past. We call it with ``tolerance=None``, which skips its age check entirely
  (``if tolerance and ...``; note that ``0`` skips it too), and then check the signed
  timestamp against the injected ``now`` ourselves, in both directions.
- **Classification.** The library signals every failure with one exception type and a
  prose message. We parse the header ourselves first, with the library's own rules
  made stricter, so the parse and scheme checks are decided before the library runs,
  and the only failure it can still report is a mismatch. No message matching.
- **Inputs the library does not guard.** A non-ASCII signature value makes its
  ``hmac.compare_digest`` raise ``TypeError``, and a body that is not UTF-8 makes it
  raise ``UnicodeDecodeError`` (it signs the decoded text). Neither is a
  ``SignatureVerificationError``; unguarded, both would be HTTP 500s. We reject a
  non-ASCII header as malformed, and a non-UTF-8 body as a mismatch (Stripe signs
  UTF-8 JSON only, so no Stripe signature can match it).

The checks run in Stripe's order, one exception each: no header (``MissingSignature``),
header unparsable (``MalformedSignatureHeader``), no ``v1`` signature
(``NoExpectedScheme``), no signature matches any secret (``SignatureMismatch``), signed
timestamp more than ``TOLERANCE_SECONDS`` away from ``now`` (``StaleTimestamp``; exactly
``TOLERANCE_SECONDS`` old still passes, as in the library). Only then is the body parsed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# Imported once: attribute access on the ``stripe`` package goes through its lazy
# module ``__getattr__`` (an import_module call, about a microsecond) every time.
from stripe import SignatureVerificationError, WebhookSignature

from ingress.verify import (
    VerifiedEvent,
    check_secrets,
    normalise_headers,
    optional_int,
    parse_json_object,
    required_str,
)
from ingress.verify.errors import (
    MalformedSignatureHeader,
    MissingSignature,
    NoExpectedScheme,
    SignatureMismatch,
    StaleTimestamp,
)

__all__ = ["EXPECTED_SCHEME", "SIGNATURE_HEADER", "TOLERANCE_SECONDS", "sign", "verify"]

SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300
EXPECTED_SCHEME: str = WebhookSignature.EXPECTED_SCHEME

# Stricter than the library's ``int()``, which also takes "+1", " 1", "1_0" and
# non-ASCII digits. Twenty digits is far beyond any real timestamp and keeps ``int()``
# under Python's digit limit.
_TIMESTAMP = re.compile(r"[0-9]{1,20}")


def verify(
    raw_body: bytes, headers: Mapping[str, str], secrets: Sequence[str], now: float
) -> VerifiedEvent:
    """Authenticate a Stripe webhook and return its event id, type and creation time.

    :param raw_body: the request body exactly as received.
    :param headers: request headers; the name ``Stripe-Signature`` is matched in any case.
    :param secrets: the endpoint's signing secrets (``whsec_...``); any one may match.
    :param now: the current time, seconds since the epoch.
    :raises SignatureError: a subclass naming the failed check (see the module docstring).
    :raises InvalidPayload: the authentic body is not a JSON object, or lacks a string
        ``id`` or ``type``, or has a non-integer ``created``.
    :raises TypeError, ValueError: ``secrets`` is unusable (see ``check_secrets``).
    """
    check_secrets(secrets)
    header = normalise_headers(headers).get(SIGNATURE_HEADER.lower(), "")
    if not header.strip():
        raise MissingSignature()
    timestamp, has_expected_scheme = _parse_header(header)
    if not has_expected_scheme:
        raise NoExpectedScheme()
    try:
        payload = raw_body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureMismatch() from None
    if not any(_library_accepts(payload, header, secret) for secret in secrets):
        raise SignatureMismatch()
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise StaleTimestamp()

    event = parse_json_object(payload)
    return VerifiedEvent(
        event_id=required_str(event.get("id"), "id"),
        event_type=required_str(event.get("type"), "type"),
        created=optional_int(event.get("created"), "created"),
    )


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """A valid ``Stripe-Signature`` header value (``t=...,v1=...``), made by the library.

    For tests. ``payload`` must be UTF-8, as every Stripe body is.
    """
    header: str = WebhookSignature.generate_signature_header(
        payload.decode("utf-8"), secret, timestamp=timestamp
    )
    return header


def _parse_header(header: str) -> tuple[int, bool]:
    """The header's first ``t`` and whether it has any ``v1`` signature.

    Mirrors ``WebhookSignature._get_timestamp_and_signatures`` (items split on ``,``,
    each on the first two ``=``; the first ``t`` counts; a ``t`` or ``v1`` item without
    ``=`` is an error), so whatever passes here also parses in the library.

    :raises MalformedSignatureHeader: the header does not parse.
    """
    if not header.isascii():
        raise MalformedSignatureHeader()
    items = [item.split("=", 2) for item in header.split(",")]
    try:
        timestamps = [item[1] for item in items if item[0] == "t"]
        signatures = [item[1] for item in items if item[0] == EXPECTED_SCHEME]
    except IndexError:
        raise MalformedSignatureHeader() from None
    if not timestamps or not _TIMESTAMP.fullmatch(timestamps[0]):
        raise MalformedSignatureHeader()
    return int(timestamps[0]), bool(signatures)


def _library_accepts(payload: str, header: str, secret: str) -> bool:
    """Whether any ``v1`` signature in ``header`` is the HMAC of ``payload`` under ``secret``.

    ``tolerance=None`` turns off the library's own (wall-clock) age check.
    """
    try:
        WebhookSignature.verify_header(payload, header, secret, tolerance=None)
    except SignatureVerificationError:
        # ``_parse_header`` and ``check_secrets`` have ruled out every other failure the
        # library reports (no header, no secret, unparsable, no v1), so this is a
        # mismatch.
        return False
    return True
