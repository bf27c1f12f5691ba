"""Webhook bodies shaped like the real thing, for tests: ``tests.payloads.stripe`` and
``tests.payloads.razorpay``.

Builders return plain dicts (fresh deep copies, safe to mutate); ``*_body`` turns one
into compact, stable JSON bytes; ``signed_*_request`` returns ``(body, headers)`` signed
with the verifier's own ``sign()``, ready to POST or to pass to ``verify``.

Defaults are shared so that events built for the same order line up: the same order id
gives the same provider object ids (payment intent, charge, refund, ...), the same
amount and the same user, which is what the order⇄payment join expects.

``stripe_objects.json`` is a byte-for-byte copy of one sample of each Stripe object, from
the fixtures Stripe publishes beside its OpenAPI specification (``fixtures3.json``). It
is copied here, not read from outside the repository, so a fresh clone has everything
the tests need.
"""

from __future__ import annotations

import hashlib
import json
import string
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_AMOUNT",
    "DEFAULT_CREATED",
    "DEFAULT_ORDER_ID",
    "DEFAULT_USER_ID",
    "base62_token",
    "compact_json",
    "derived_id",
    "random_id",
]

DEFAULT_ORDER_ID = "ord_1001"
DEFAULT_USER_ID = "usr_42"
#: Minor units (cents, paise); the amount of Stripe's sample payment intent.
DEFAULT_AMOUNT = 1099
#: 2025-01-01T00:00:00Z: fixed, so a built event is reproducible apart from its id.
DEFAULT_CREATED = 1_735_689_600

_ALPHABET = string.digits + string.ascii_letters


def base62_token(seed: str, length: int) -> str:
    """``length`` (at most 43) base62 characters derived from ``seed``; deterministic."""
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, len(_ALPHABET))
        chars.append(_ALPHABET[index])
    return "".join(chars)


def derived_id(prefix: str, seed: str, *, length: int = 24) -> str:
    """``prefix`` + ``_`` + ``length`` base62 characters derived from ``seed``.

    Deterministic: the same prefix and seed always give the same id, and ids for
    different prefixes of one seed are unrelated-looking, like the provider's.
    """
    return f"{prefix}_{base62_token(f'{prefix}:{seed}', length)}"


def random_id(prefix: str, *, length: int = 24) -> str:
    """A fresh, unique id in the same format as ``derived_id``."""
    return derived_id(prefix, uuid.uuid4().hex, length=length)


def compact_json(document: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, keys in insertion order: the same dict gives the same bytes."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
