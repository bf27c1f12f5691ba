"""Who a notification goes to: ``to`` of the send route, checked against the channel.

``to`` is either a user id (resolved later through the user's stored contacts) or a
direct contact that fits the channel. Which one it is follows from its shape, so no
caller has to say:

- EMAIL: a value with an ``@`` is an email address. It must be a well-formed address
  (``email-validator``, syntax only: no DNS lookup, which would make a 400 depend on
  the network); it is passed on normalised (the domain lower-cased, IDNA).
- SMS: a value starting with ``+`` is an E.164 phone number: ``+`` then 8 to 15 digits,
  the first not ``0`` (no spaces, dashes or brackets: providers want E.164 exactly).
- PUSH: a push token (FCM's and APNs's are opaque strings, indistinguishable from a user
  id) is written ``push:<token>``: printable ASCII without spaces, at most
  :data:`MAX_PUSH_TOKEN` characters.
- Anything else is a user id: a non-blank printable string of at most
  :data:`MAX_USER_ID` characters (the rule for every id on the internal routes).

Each problem is an ``InvalidEvent`` with ``field="to"`` and a message naming it. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from email_validator import EmailNotValidError, validate_email

from base.errors import InvalidEvent
from schemas.notifications import Channel

__all__ = [
    "MAX_PUSH_TOKEN",
    "MAX_USER_ID",
    "PUSH_TOKEN_PREFIX",
    "Contact",
    "Recipient",
    "UserRecipient",
    "check_email",
    "check_phone",
    "check_push_token",
    "parse_recipient",
]

MAX_USER_ID: Final = 256
MAX_PUSH_TOKEN: Final = 4096
"""FCM registration tokens are about 160 characters and APNs device tokens 64; the bound
leaves room for longer ones while keeping a runaway value out of keys and rows."""
PUSH_TOKEN_PREFIX: Final = "push:"  # noqa: S105  # a prefix, not a secret

_E164: Final = re.compile(r"\+[1-9][0-9]{7,14}")
_PUSH_TOKEN: Final = re.compile(r"[!-~]+")  # printable ASCII, no space


@dataclass(frozen=True)
class UserRecipient:
    """Send to this user's contact for the channel (looked up when sending)."""

    user_id: str


@dataclass(frozen=True)
class Contact:
    """Send to this address, phone number or push token directly."""

    channel: Channel
    address: str


Recipient = UserRecipient | Contact


def parse_recipient(to: object, channel: Channel | str) -> Recipient:
    """Read ``to`` for ``channel`` as described in the module docstring.

    :raises InvalidEvent: ``field="to"``: not a string, a contact that does not fit the
        channel, or a malformed user id. ``field="channel"``: an unknown channel.
    """
    try:
        wanted = Channel(channel)
    except ValueError:
        raise InvalidEvent(
            f"unknown channel {channel!r}: one of {', '.join(Channel)}", field="channel"
        ) from None
    if not isinstance(to, str):
        raise InvalidEvent("to must be a string: a user id or a contact", field="to")
    if wanted is Channel.EMAIL and "@" in to:
        return Contact(wanted, check_email(to))
    if wanted is Channel.SMS and to.startswith("+"):
        return Contact(wanted, check_phone(to))
    if wanted is Channel.PUSH and to.startswith(PUSH_TOKEN_PREFIX):
        return Contact(wanted, check_push_token(to.removeprefix(PUSH_TOKEN_PREFIX)))
    return UserRecipient(_check_user_id(to, wanted))


def check_email(address: str, *, field: str = "to") -> str:
    """A well-formed email address, normalised. No DNS lookup.

    :param field: the name errors carry (``data.email`` for a contact event).
    :raises InvalidEvent: with ``email-validator``'s reason.
    """
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEvent(f"{field} is not a valid email address: {exc}", field=field) from None
    return checked.normalized


def check_phone(number: str, *, field: str = "to") -> str:
    """An E.164 phone number, as given.

    :raises InvalidEvent: not ``+`` and 8 to 15 digits, the first not 0 (named ``field``).
    """
    if not _E164.fullmatch(number):
        raise InvalidEvent(
            f"{field} is not an E.164 phone number: + then 8 to 15 digits, no spaces or "
            "dashes, e.g. +14155550100",
            field=field,
        )
    return number


def check_push_token(token: str, *, field: str = "to") -> str:
    """A push token, as given (without the ``push:`` prefix of ``to``).

    :raises InvalidEvent: empty, longer than :data:`MAX_PUSH_TOKEN`, or not printable
        ASCII without spaces (named ``field``).
    """
    if not token:
        where = f"after {PUSH_TOKEN_PREFIX!r} " if field == "to" else ""
        raise InvalidEvent(f"{field}: the push token {where}is empty", field=field)
    if len(token) > MAX_PUSH_TOKEN:
        raise InvalidEvent(
            f"{field}: the push token is longer than {MAX_PUSH_TOKEN} characters", field=field
        )
    if not _PUSH_TOKEN.fullmatch(token):
        raise InvalidEvent(
            f"{field}: a push token is printable ASCII without spaces or control characters",
            field=field,
        )
    return token


def _check_user_id(value: str, channel: Channel) -> str:
    hint = {
        Channel.EMAIL: "an email address",
        Channel.SMS: "an E.164 phone number (+ and digits)",
        Channel.PUSH: f"a push token written {PUSH_TOKEN_PREFIX}<token>",
    }[channel]
    if not value.strip():
        raise InvalidEvent(f"to is blank: give a user id or {hint}", field="to")
    if len(value) > MAX_USER_ID:
        raise InvalidEvent(
            f"to is longer than {MAX_USER_ID} characters for a user id (or give {hint})",
            field="to",
        )
    if not value.isprintable():
        raise InvalidEvent("to must be printable (no control characters such as NUL)", field="to")
    return value
