"""Which channels reach each user: ``user_contacts`` read for the lifecycle notifications.

Reads whether a user has an email address, a phone number and push tokens, and their
preferred channels, never the contact details themselves: choosing a channel needs no
more (``streams.domain.lifecycle_notifications.choose_channel``), and the details stay
with the agent that sends. One query per batch of users, over the projection's pool.

Driver errors come out as ``TransientError``/``PermanentError`` (``errors.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from base.sinks import Sink, sink_call
from connectors.postgres.client import PostgresProjection

__all__ = ["ChannelsRow", "UserChannelStore"]

_SELECT: Final = (
    "SELECT user_id, preferred_channels, "
    "email IS NOT NULL AND email <> '', phone IS NOT NULL AND phone <> '', "
    "cardinality(push_tokens) > 0 "
    "FROM user_contacts WHERE user_id = ANY(%s)"
)


@dataclass(frozen=True, slots=True)
class ChannelsRow:
    """A user's preferred channels and which contacts they have."""

    user_id: str
    preferred: tuple[str, ...]
    has_email: bool
    has_phone: bool
    has_push: bool


class UserChannelStore:
    """Reads ``user_contacts`` over ``projection``'s pool (started by its owner).

    :raises TransientError: the database is unavailable.
    """

    def __init__(self, projection: PostgresProjection) -> None:
        self._db = projection

    @sink_call(Sink.POSTGRES)
    async def channels(self, user_ids: Sequence[str]) -> dict[str, ChannelsRow]:
        """The rows of those of ``user_ids`` that have one (a user without a contact
        row is absent)."""
        if not user_ids:
            return {}
        async with self._db.connection() as conn:
            cursor = await conn.execute(_SELECT, (list(user_ids),))
            rows = await cursor.fetchall()
        return {
            str(user): ChannelsRow(
                user_id=str(user),
                preferred=tuple(str(c) for c in preferred or ()),
                has_email=bool(email),
                has_phone=bool(phone),
                has_push=bool(push),
            )
            for user, preferred, email, phone, push in rows
        }
