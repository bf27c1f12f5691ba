"""The ``user_contacts`` and ``notifications`` stores against a real PostgreSQL
(connectors/postgres/contacts.py, connectors/postgres/notifications.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from connectors.postgres import PostgresProjection
from connectors.postgres.contacts import ContactStore, ContactUpsert
from connectors.postgres.notifications import NewNotification, NotificationStore

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def projection(migrated_db: str) -> AsyncIterator[PostgresProjection]:
    async with PostgresProjection(migrated_db, timeout=10.0) as started:
        yield started


def _contact(user: str, email: str, at: datetime, event_id: str) -> ContactUpsert:
    return ContactUpsert(
        user_id=user,
        email=email,
        phone=None,
        push_tokens=["t1"],
        preferred_channels=["EMAIL"],
        locale="en",
        occurred_at=at,
        event_id=event_id,
    )


async def test_an_older_contact_event_never_overwrites_a_newer_one(
    projection: PostgresProjection,
) -> None:
    store = ContactStore(projection)
    newer = _contact("u-1", "new@example.com", T0 + timedelta(seconds=10), "e-5")
    assert await store.apply([newer]) == 1
    # Older; a copy of the applied one; same time, smaller event id: none changes it.
    assert await store.apply([_contact("u-1", "old@example.com", T0, "e-9")]) == 0
    assert await store.apply([newer]) == 0
    tie_low = _contact("u-1", "tie-low@example.com", T0 + timedelta(seconds=10), "e-1")
    assert await store.apply([tie_low]) == 0
    row = await store.contact("u-1")
    assert row is not None
    assert (row.email, row.last_event_id) == ("new@example.com", "e-5")
    assert "new@" not in repr(row)
    # Same time, greater event id: it wins. A newer one wins; in one batch too.
    tie_high = _contact("u-1", "tie-high@example.com", T0 + timedelta(seconds=10), "e-7")
    newest = _contact("u-1", "newest@example.com", T0 + timedelta(seconds=20), "e-2")
    assert await store.apply([tie_high, newest, tie_low]) == 2
    row = await store.contact("u-1")
    assert row is not None
    assert (row.email, row.push_tokens, row.last_event_id) == (
        "newest@example.com",
        ["t1"],
        "e-2",
    )
    assert await store.contact("u-unknown") is None


async def test_a_notification_is_stored_once_and_sent_or_failed_is_final(
    projection: PostgresProjection,
) -> None:
    store = NotificationStore(projection)
    new = NewNotification("n-1", "EMAIL", "ORDER_PAID", "u-1", "u-1", None)
    first = await store.store(new)
    assert (first.status, first.attempts) == ("QUEUED", 0)
    retrying = await store.record("n-1", status="RETRYING", attempted=True, error="smtp 450")
    assert retrying is not None
    assert (retrying.status, retrying.attempts, retrying.last_error) == ("RETRYING", 1, "smtp 450")
    again = await store.store(new)
    assert (again.status, again.attempts) == ("RETRYING", 1)
    sent = await store.record(
        "n-1",
        status="SENT",
        attempted=True,
        recipient="ada@example.com",
        provider_message_id="<n-1@sluice>",
        at=T0,
    )
    assert sent is not None
    assert (sent.status, sent.attempts, sent.last_error, sent.sent_at) == ("SENT", 2, None, T0)
    assert sent.provider_message_id == "<n-1@sluice>"
    # Final: a late failure of an older copy changes nothing.
    assert await store.record("n-1", status="FAILED", attempted=True, error="late") is None
    row = await store.get("n-1")
    assert row is not None
    assert (row.status, row.attempts, row.recipient) == ("SENT", 2, "ada@example.com")


async def test_recent_counts_the_recipients_notifications_before_this_one(
    projection: PostgresProjection,
) -> None:
    store = NotificationStore(projection)
    rows = [
        await store.store(
            NewNotification(f"c-{i}", "SMS", "ORDER_PAID", "+14155550100", None, None)
        )
        for i in range(4)
    ]
    await store.store(NewNotification("other", "SMS", "ORDER_PAID", "+14155550111", None, None))
    assert await store.recent(rows[0], 60) == 0
    assert await store.recent(rows[3], 60) == 3
    # Refused before any send (the cap, no contact): not counted.
    await store.record("c-1", status="FAILED", attempted=False, error="per-user cap")
    assert await store.recent(rows[3], 60) == 2
    # Failed after a send: it reached the provider, counted.
    await store.record("c-2", status="FAILED", attempted=True, error="smtp 550")
    assert await store.recent(rows[3], 60) == 2
    # Outside the window (measured from the row's creation).
    assert await store.recent(rows[3], 0.000001) == 0
