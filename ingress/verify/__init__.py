"""Pure webhook verifiers, one module per provider (``stripe``, ``razorpay``, ``partner``).

Every verifier has the same contract::

    verify(raw_body: bytes, headers: Mapping[str, str], secrets: Sequence[str], now: float)
        -> VerifiedEvent

- It authenticates the raw bytes before parsing anything, accepts any of several
  secrets (rotation), compares in constant time, and takes the time as an argument
  (``now``, seconds since the epoch, from the injected clock), so it reads no clock,
  does no I/O and keeps no state. It is safe to call from any thread or event loop and
  never blocks.
- It raises a ``SignatureError`` subclass naming the failed check (HTTP 401), or
  ``InvalidPayload`` (HTTP 400) for an authentic body without a usable id or type.
- It raises ``TypeError``/``ValueError`` for a programming or configuration error on
  our side (``secrets`` empty, blank, or a bare string), never for anything a sender
  controls.

Header names are matched case-insensitively: pass aiohttp's ``request.headers`` or a
plain dict. Each module also has a ``sign()`` helper that builds a valid signature, for
tests.

This package holds the shared pieces; the verifiers are ``ingress.verify.stripe.verify``
and ``ingress.verify.razorpay.verify``. Partner leads (``ingress.verify.partner``) follow
the same rules but take the partner (its mode and secrets) instead of a secrets list,
and return nothing: the lead's identity is in the body, checked by the route.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ingress.verify.errors import InvalidPayload

__all__ = [
    "VerifiedEvent",
    "check_secrets",
    "normalise_headers",
    "optional_int",
    "parse_json_object",
    "required_str",
]


@dataclass(frozen=True, slots=True)
class VerifiedEvent:
    """What a verifier vouches for: an authentic event with this id and type.

    ``created`` is the provider's creation time of the event (Unix seconds), when the
    body carries one.

    ``content_id`` identifies the event by its signed body alone, for a provider whose
    event id is not covered by the signature (Razorpay): the same for every delivery of
    one event, whatever id header it comes with. ``None`` when the event id is signed
    (Stripe), which then identifies the content itself.
    """

    event_id: str
    event_type: str
    created: int | None
    content_id: str | None = None


def normalise_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names lower-cased. A repeated header keeps its first value, as aiohttp's
    ``headers.get`` does."""
    normalised: dict[str, str] = {}
    for name, value in headers.items():
        normalised.setdefault(name.lower(), value)
    return normalised


def check_secrets(secrets: Sequence[str]) -> None:
    """Refuse a secrets list that can only be a configuration bug.

    :raises TypeError: ``secrets`` is a bare string (it would be read as one secret per
        character).
    :raises ValueError: no secret at all, or a blank one.
    """
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not a single string")
    if not secrets:
        raise ValueError("no webhook secret configured")
    if any(not secret.strip() for secret in secrets):
        raise ValueError("a configured webhook secret is blank")


def parse_json_object(body: bytes | str) -> dict[str, Any]:
    """Parse an already authenticated body as a JSON object.

    :raises InvalidPayload: the body is not UTF-8, not JSON (including nesting too deep
        to parse), or not an object.
    """
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; so is an integer
        # literal over Python's digit limit.
        raise InvalidPayload("body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidPayload("body is not a JSON object")
    return parsed


MAX_ID_LENGTH = 256


def required_str(value: object, field: str) -> str:
    """``value`` if it is a non-empty, printable string of at most 256 characters.

    Event ids and types become Kafka keys and headers, log fields and PostgreSQL text
    (which refuses NUL): a control character or an 8 KB header id is refused here, not
    dead-lettered later.

    :raises InvalidPayload: naming ``field`` otherwise.
    """
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_ID_LENGTH
        or not value.isprintable()
    ):
        raise InvalidPayload(f"missing or invalid {field}", field=field)
    return value


def optional_int(value: object, field: str) -> int | None:
    """``value`` if it is an integer, ``None`` if it is absent (``None``).

    :raises InvalidPayload: naming ``field`` for any other type (booleans included).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPayload(f"invalid {field}", field=field)
    return value
