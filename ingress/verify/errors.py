"""Why a webhook was refused: one class per failed check.

``SignatureError`` and its subclasses mean the request is not authentic (HTTP 401);
``ForeignToken`` means it carries a valid credential of someone else (HTTP 403);
``InvalidPayload`` means it is authentic but unusable (HTTP 400, naming the field). The
class decides the reaction; the message is only for people. Every message is short,
fixed per class and free of secrets, signatures and body content, so it is safe to put
in a response body or a log line.
"""

from __future__ import annotations

from typing import ClassVar

from base.errors import InvalidEvent, SluiceError

__all__ = [
    "ForeignToken",
    "InvalidPayload",
    "MalformedSignatureHeader",
    "MissingSignature",
    "MissingToken",
    "NoExpectedScheme",
    "SignatureError",
    "SignatureMismatch",
    "StaleTimestamp",
    "UnknownToken",
]


class SignatureError(SluiceError):
    """The request could not be authenticated (HTTP 401).

    Subclasses name the check that failed; ``reason`` is a stable machine-readable code
    for metrics and response bodies.
    """

    reason: ClassVar[str] = "invalid_signature"
    message: ClassVar[str] = "signature verification failed"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class MissingSignature(SignatureError):
    """The signature header is absent or empty."""

    reason = "missing_signature"
    message = "signature header is missing"


class MalformedSignatureHeader(SignatureError):
    """The signature header cannot be parsed (no timestamp, bad syntax, not ASCII/hex)."""

    reason = "malformed_signature_header"
    message = "signature header is malformed"


class NoExpectedScheme(SignatureError):
    """The header parses but carries no signature of the scheme we verify (Stripe ``v1``)."""

    reason = "no_expected_scheme"
    message = "signature header has no signature with the expected scheme"


class SignatureMismatch(SignatureError):
    """No signature in the header matches the body under any configured secret."""

    reason = "signature_mismatch"
    message = "no signature matches the body"


class StaleTimestamp(SignatureError):
    """The signed timestamp is further from now than the tolerance, in either direction."""

    reason = "stale_timestamp"
    message = "signature timestamp is outside the tolerance window"


class MissingToken(SignatureError):
    """No ``Authorization: Bearer <token>`` header (absent, empty, or another scheme)."""

    reason = "missing_token"
    message = "bearer token is missing"


class UnknownToken(SignatureError):
    """The bearer token is nobody's: no partner of the registry has it."""

    reason = "unknown_token"
    message = "bearer token is not valid"


class ForeignToken(SluiceError):
    """A valid bearer token of another partner than the one the body names (HTTP 403).

    Not a ``SignatureError``: the caller did authenticate, as someone else. The message
    never says whose token it is.
    """

    reason: ClassVar[str] = "foreign_token"
    message: ClassVar[str] = "token belongs to another partner"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class InvalidPayload(InvalidEvent):
    """A correctly signed body that is not a JSON object or lacks a required field (400).

    ``field`` names the offending field (``None`` when the body as a whole is unusable).
    """
