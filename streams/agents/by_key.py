"""Run an effect once per record: one key's records in order, other keys concurrently.

Shared by the side-effect agents that call an outside service per record (Stripe, partner
CRMs, notification channels, Redis), so one record's slow or failing call holds up only
the records of its own key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from streams.effects import EffectRunner
from streams.records import Inbound

__all__ = ["run_by_key"]


async def run_by_key(
    runner: EffectRunner,
    name: str | Callable[[Inbound], str],
    records: Sequence[Inbound],
    *,
    limit: int,
) -> None:
    """Run effect ``name`` once per record: records with the same key in order, other
    keys concurrently, at most ``limit`` at a time. Returns when all are done; an
    exception the runner lets through (a bug, a tripped dead-letter guard) is raised
    after every lane has stopped.

    :param name: the effect, or a function naming each record's (an agent reading
        topics whose records take different effects).
    """
    effect_of = (lambda _: name) if isinstance(name, str) else name
    lanes: dict[bytes | None, list[Inbound]] = {}
    for record in records:
        lanes.setdefault(record.key, []).append(record)
    slots = asyncio.Semaphore(limit)

    async def lane(queue: list[Inbound]) -> None:
        for record in queue:
            async with slots:
                await runner.run(effect_of(record), [record])

    results = await asyncio.gather(
        *(lane(queue) for queue in lanes.values()), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
