"""Razorpay webhooks: ``X-Razorpay-Signature`` = hex HMAC-SHA256 of the raw body.

The event id is not in the body: it comes from the ``X-Razorpay-Event-Id`` header, which
Razorpay repeats unchanged on every retry of the same event. The header is not covered
by the signature, so it is trusted only as far as dedupe needs it (a sender who forges
it already holds the secret).

There is no timestamp tolerance: Razorpay signs no timestamp, so a captured request can
be replayed and will verify. Replays are caught downstream by dedupe (window longer than
Razorpay's 24-hour retry window), not here. Because the event id header is unsigned, a
replay can come with a fresh one; so the verifier also names what the signed body is,
``content_id`` (:func:`content_id`): the event type, its creation time and the ids of
the entities it carries. The ingress keys the record by it and dedupe remembers it
besides the event id (docs/decisions.md, "Razorpay replays"). ``now`` is accepted only
so every verifier has the same shape.

Checks, one exception each, in order: no signature (``MissingSignature``), signature
not 64 hex digits (``MalformedSignatureHeader``), no secret produces it
(``SignatureMismatch``); then, on the authentic body, ``InvalidPayload`` for a body that
is not a JSON object, a missing event id header, a missing ``event`` or a non-integer
``created_at``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ingress.verify import (
    VerifiedEvent,
    check_secrets,
    normalise_headers,
    optional_int,
    parse_json_object,
    required_str,
)
from ingress.verify.errors import MalformedSignatureHeader, MissingSignature, SignatureMismatch

__all__ = ["EVENT_ID_HEADER", "SIGNATURE_HEADER", "content_id", "sign", "verify"]

SIGNATURE_HEADER = "X-Razorpay-Signature"
EVENT_ID_HEADER = "X-Razorpay-Event-Id"

_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def verify(
    raw_body: bytes, headers: Mapping[str, str], secrets: Sequence[str], now: float
) -> VerifiedEvent:
    """Authenticate a Razorpay webhook and return its event id, type and creation time.

    :param raw_body: the request body exactly as received.
    :param headers: request headers; names are matched in any case.
    :param secrets: the webhook secrets; any one may match.
    :param now: unused (Razorpay signs no timestamp); present for the common shape.
    :raises SignatureError: a subclass naming the failed check (see the module docstring).
    :raises InvalidPayload: the authentic request lacks a usable event id, ``event`` or
        ``created_at``, or its body is not a JSON object.
    :raises TypeError, ValueError: ``secrets`` is unusable (see ``check_secrets``).
    """
    check_secrets(secrets)
    normalised = normalise_headers(headers)
    signature = normalised.get(SIGNATURE_HEADER.lower(), "").strip()
    if not signature:
        raise MissingSignature()
    if not _HEX_SHA256.fullmatch(signature):
        raise MalformedSignatureHeader()
    received = bytes.fromhex(signature)
    if not any(hmac.compare_digest(_digest(raw_body, secret), received) for secret in secrets):
        raise SignatureMismatch()

    body = parse_json_object(raw_body)
    event_type = required_str(body.get("event"), "event")
    created = optional_int(body.get("created_at"), "created_at")
    return VerifiedEvent(
        event_id=required_str(normalised.get(EVENT_ID_HEADER.lower()), EVENT_ID_HEADER),
        event_type=event_type,
        created=created,
        content_id=content_id(body, event_type, created, raw_body),
    )


def content_id(
    body: Mapping[str, Any], event_type: str, created: int | None, raw_body: bytes
) -> str:
    """What an authentic Razorpay body is, independent of the unsigned event id header:
    ``<event>@<created_at>:<name>=<entity id>,...`` over the entities under
    ``payload.<name>.entity``, sorted by name (``refund.processed@1699999990:
    payment=pay_1,refund=rfnd_1``).

    Built from meaning rather than bytes, so a retry Razorpay serialises differently (or
    sends with an entity's state moved on) is still recognised; Razorpay's entity ids
    are unique, and one event has one creation time. A body without a creation time or
    entity ids falls back to the digest of its signed bytes (``sha256:<hex>``), which
    still catches a byte-for-byte replay.
    """
    ids: list[str] = []
    payload = body.get("payload")
    if isinstance(payload, dict):
        for name in sorted(payload):
            wrapper = payload[name]
            entity = wrapper.get("entity") if isinstance(wrapper, dict) else None
            entity_id = entity.get("id") if isinstance(entity, dict) else None
            if isinstance(entity_id, str) and entity_id:
                ids.append(f"{name}={entity_id}")
    if created is None or not ids:
        return "sha256:" + hashlib.sha256(raw_body).hexdigest()
    return f"{event_type}@{created}:{','.join(ids)}"


def sign(payload: bytes, secret: str) -> str:
    """A valid ``X-Razorpay-Signature`` value for ``payload`` (lower-case hex). For tests."""
    return _digest(payload, secret).hex()


def _digest(payload: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).digest()
