"""users.contacts → Postgres ``user_contacts``: how to reach each user, for notifications
sent to a user id.

Each ``user.contact_updated`` event carries the user's whole contact; the store applies it
only when it is newer than the row, by ``(occurredAt, eventId)``
(``connectors/postgres/contacts.py``), so late, replayed and duplicated events never
undo a newer contact. Batched like the other projections; a record that does not decode,
or of another event type, is dead-lettered by the runner. Logs carry user and event ids
only, never the contact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from connectors.postgres.contacts import ContactUpsert
from streams.agents.batched import register_batched
from streams.context import WorkerContext
from streams.domain.notifications import ContactUpdate
from streams.records import Inbound

__all__ = ["AGENT", "TOPIC", "contact_upsert", "register"]

log = logging.getLogger(__name__)

AGENT: Final = "project_contacts"
TOPIC: Final = "users.contacts"


def contact_upsert(update: ContactUpdate) -> ContactUpsert:
    """The ``user_contacts`` write of one event (pure)."""
    return ContactUpsert(
        user_id=update.user_id,
        email=update.email,
        phone=update.phone,
        push_tokens=update.push_tokens,
        preferred_channels=update.preferred_channels,
        locale=update.locale,
        occurred_at=update.occurred_at,
        event_id=update.event_id,
    )


def register(ctx: WorkerContext) -> None:
    async def project(records: Sequence[Inbound]) -> None:
        # Decoding failures raise InvalidEvent: the runner isolates and dead-letters them.
        upserts = [
            contact_upsert(ContactUpdate.from_record(ctx.codec.decode(r.value, topic=TOPIC).record))
            for r in records
        ]
        store = await ctx.contacts()
        changed = await store.apply(upserts)
        log.info(
            "contacts projected",
            extra={"events": len(upserts), "changed": changed, "position": records[-1].position},
        )

    register_batched(ctx, AGENT, project)
