"""The worker's periodic purge of expired bookkeeping rows (connectors/postgres/retention.py).

A faust timer on the group's leader only: one purge per interval for the whole group,
however many worker processes run. A failed purge is logged and tried again next
interval; it never stops the worker (the rows just wait a little longer).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from connectors.postgres.retention import purge_expired_at
from streams.context import WorkerContext

__all__ = ["purge_once", "register"]

log = logging.getLogger(__name__)


async def purge_once(ctx: WorkerContext) -> dict[str, int]:
    """Delete the rows older than the retention, as of the worker's clock."""
    assert ctx.settings.database_url is not None  # create_worker refuses a worker without
    cutoff = datetime.fromtimestamp(ctx.clock.time() - ctx.settings.postgres_retention_s, UTC)
    return await purge_expired_at(
        ctx.settings.database_url, cutoff, batch_rows=ctx.settings.postgres_purge_batch
    )


def register(ctx: WorkerContext) -> None:
    async def purge_expired_rows() -> None:
        try:
            await purge_once(ctx)
        except Exception:  # the next interval tries again; the worker keeps processing
            log.exception("purging expired rows failed")

    ctx.topology.app.timer(
        ctx.settings.postgres_purge_every_s, on_leader=True, name="retention.purge"
    )(purge_expired_rows)
