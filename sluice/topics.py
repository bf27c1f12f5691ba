"""Which catalog topics something uses today, for ``sluice topics list``.

The catalog declares topics for capabilities still to come (partner leads, search
commands, runtime config), so ``topics create`` makes them ahead of time. Listing them
without a word would suggest a pipeline that is not there: each topic is marked
``built`` (the worker's topology or the ingress reads or writes it), ``planned`` (in the
catalog, nothing uses it yet) or ``internal`` (not in the catalog: faust's changelog and
bookkeeping topics).
"""

from __future__ import annotations

from collections.abc import Iterable

from connectors.kafka_admin import TopicState
from schemas.catalog import WEBHOOK_TOPICS, all_topics

__all__ = ["BUILT", "INTERNAL", "PLANNED", "topic_lines", "topics_in_use"]

BUILT = "built"
PLANNED = "planned"
INTERNAL = "internal"


def topics_in_use() -> frozenset[str]:
    """Every topic the worker's wiring or the ingress reads or writes."""
    # Imported here: the worker's topology pulls in faust, which only this command needs.
    from connectors.runtime_config import CATALOG_TOPIC as CONFIG_TOPIC
    from ingress.cache_api import INVALIDATE_TOPIC
    from ingress.domain_events import EVENT_ROUTES
    from ingress.lead_api import DELIVER_COMMAND_TOPIC
    from ingress.leads import LEAD_TOPIC
    from ingress.notifications import NOTIFICATION_TOPIC
    from ingress.payments import COMMAND_TOPIC
    from ingress.search_index import INDEX_COMMAND_TOPIC
    from streams.topology import WIRING

    worker = {name for wire in WIRING for name in (*wire.reads, *wire.writes)}
    ingress = {route.topic for route in EVENT_ROUTES.values()} | {
        COMMAND_TOPIC,
        DELIVER_COMMAND_TOPIC,
        INVALIDATE_TOPIC,
        LEAD_TOPIC,
        NOTIFICATION_TOPIC,
        INDEX_COMMAND_TOPIC,
        CONFIG_TOPIC,  # written by the config route, followed by every process
    }
    return frozenset(worker | ingress | set(WEBHOOK_TOPICS))


def topic_lines(states: Iterable[TopicState], in_use: frozenset[str]) -> list[str]:
    """``name<TAB>partitions<TAB>built|planned|internal`` for each topic on the broker."""
    catalog = {spec.name for spec in all_topics()}
    lines = []
    for state in states:
        if state.name not in catalog:
            status = INTERNAL
        elif state.name in in_use:
            status = BUILT
        else:
            status = PLANNED
        lines.append(f"{state.name}\t{state.partitions}\t{status}")
    return lines
