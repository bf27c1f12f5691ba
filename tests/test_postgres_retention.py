"""Retention of processed_events and webhook_events on the real PostgreSQL (issue 10 §5.12).

Old rows (beyond the retention) go, recent ones stay, in batches that each commit; the
worker's purge takes its cutoff from the injected clock and the settings.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from base.clock import FrozenClock
from base.errors import ConfigError
from base.settings import load_settings
from connectors.postgres.retention import purge_expired, purge_expired_at
from streams.retention import purge_once
from tests.fixtures.worker import Pipeline

pytestmark = pytest.mark.integration

# The running worker's purge, every second, with a two-day retention.
PIPELINE_ENV = {
    "SLUICE_DEDUPE_WINDOW": "1d",
    "SLUICE_POSTGRES_RETENTION": "2d",
    "SLUICE_POSTGRES_PURGE_EVERY": "1s",
}

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


async def _seed(url: str, ages: dict[str, timedelta]) -> None:
    """One processed_events and one webhook_events row per id, aged as given."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for event_id, age in ages.items():
            await conn.execute(
                "INSERT INTO processed_events (consumer, event_id, processed_at) "
                "VALUES ('project_billing', %s, %s)",
                (event_id, NOW - age),
            )
            await conn.execute(
                "INSERT INTO webhook_events (provider, event_id, event_type, raw_body, "
                "content_type, received_at) VALUES ('stripe', %s, 'x', '\\x00', "
                "'application/json', %s)",
                (event_id, NOW - age),
            )


async def _left(url: str) -> dict[str, set[str]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        processed = await (await conn.execute("SELECT event_id FROM processed_events")).fetchall()
        webhooks = await (await conn.execute("SELECT event_id FROM webhook_events")).fetchall()
    return {
        "processed_events": {row[0] for row in processed},
        "webhook_events": {row[0] for row in webhooks},
    }


async def test_purge_deletes_only_rows_older_than_the_cutoff_in_batches(migrated_db: str) -> None:
    old = {f"old{i}": 40 * DAY + i * timedelta(minutes=1) for i in range(7)}
    recent = {
        "new0": 34 * DAY,
        "new1": timedelta(seconds=1),
        "edge": 35 * DAY - timedelta(seconds=1),
    }
    await _seed(migrated_db, {**old, **recent})

    async with await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) as conn:
        # 3 rows per batch: 7 old rows take three batches, each its own commit.
        deleted = await purge_expired(conn, NOW - 35 * DAY, batch_rows=3)

    assert deleted == {"processed_events": 7, "webhook_events": 7}
    assert await _left(migrated_db) == {
        "processed_events": set(recent),
        "webhook_events": set(recent),
    }
    # Nothing left to purge: a second pass deletes nothing.
    assert await purge_expired_at(migrated_db, NOW - 35 * DAY) == {
        "processed_events": 0,
        "webhook_events": 0,
    }


async def test_purge_refuses_a_connection_that_would_hold_one_long_transaction(
    migrated_db: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
        with pytest.raises(ValueError, match="autocommit"):
            await purge_expired(conn, NOW)


async def test_the_workers_purge_takes_its_cutoff_from_the_clock_and_settings(
    postgres_database_factory: Any,
) -> None:
    from connectors.migrate import apply_migrations

    url = postgres_database_factory("retention_worker")
    apply_migrations(url)
    await _seed(url, {"a": 11 * DAY, "b": 9 * DAY})
    settings = load_settings(
        {
            "DATABASE_URL": url,
            "SLUICE_DEDUPE_WINDOW": "5d",
            "SLUICE_POSTGRES_RETENTION": "10d",
            "SLUICE_POSTGRES_PURGE_BATCH": "1",
        }
    )
    ctx: Any = SimpleNamespace(settings=settings, clock=FrozenClock(NOW.timestamp()))
    assert await purge_once(ctx) == {"processed_events": 1, "webhook_events": 1}
    assert await _left(url) == {"processed_events": {"b"}, "webhook_events": {"b"}}


def test_retention_settings_default_to_35_days_and_never_undercut_the_dedupe_window() -> None:
    settings = load_settings({})
    assert settings.postgres_retention_s == 35 * 86400
    assert settings.postgres_retention_s > settings.dedupe_window_s
    with pytest.raises(ConfigError, match="SLUICE_POSTGRES_RETENTION"):
        load_settings({"SLUICE_POSTGRES_RETENTION": "7d"})
    with pytest.raises(ConfigError, match="SLUICE_POSTGRES_PURGE_BATCH"):
        load_settings({"SLUICE_POSTGRES_PURGE_BATCH": "0"})


async def test_the_running_worker_purges_expired_rows_by_itself(pipeline: Pipeline) -> None:
    now = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(pipeline.database_url, autocommit=True) as c:
        for event_id, age in {"expired": 3 * DAY, "kept": DAY}.items():
            await c.execute(
                "INSERT INTO processed_events (consumer, event_id, processed_at) "
                "VALUES ('retention_test', %s, %s)",
                (event_id, now - age),
            )

    def expired_gone() -> bool:
        rows = pipeline.query(
            "SELECT event_id FROM processed_events WHERE consumer = 'retention_test'"
        )
        return {row[0] for row in rows} == {"kept"}

    await pipeline.wait_for("the worker's purge of the expired row", expired_gone, 120)
