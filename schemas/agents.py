"""Which worker agent reads which topic, for readers outside the worker (the dashboard).

The worker's own declaration is ``streams.topology.wiring``; the ingress may not import
the worker, so the reads are listed here too and ``tests/test_dashboard.py`` checks both
agree. Every ``retry.<delay>`` topic is read by its own agent, ``retry_<delay>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from schemas.catalog import BILLING_TOPICS, JOIN_TOPICS, WEBHOOK_OUTCOMES_TOPIC, WEBHOOK_TOPICS

__all__ = ["AGENT_READS", "agents_reading"]

AGENT_READS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "normalise_webhooks": tuple(WEBHOOK_TOPICS),
        "project_webhooks": (WEBHOOK_OUTCOMES_TOPIC,),
        "project_billing": tuple(BILLING_TOPICS),
        "join_orders": tuple(JOIN_TOPICS),
        "stripe_calls": ("commands.stripe",),
        "deliver_leads": ("leads.received", "commands.leads.deliver"),
        "project_contacts": ("users.contacts",),
        "send_notifications": ("notifications.requested",),
        "project_orders": ("orders.lifecycle",),
        "index_search": ("commands.search.index",),
        "invalidate_cache": ("commands.cache.invalidate",),
        "notify_lifecycle": ("orders.lifecycle", "billing.invoice.updated"),
    }
)
"""Agent → the topics it reads, retry agents excepted (they follow the retry schedule)."""

_RETRY_PREFIX: Final = "retry."


def agents_reading(topic: str) -> tuple[str, ...]:
    """The agents that read ``topic`` (one consumer group: a topic two agents read has one
    committed offset, shared by both); empty for a topic no agent reads."""
    if topic.startswith(_RETRY_PREFIX):
        return (f"retry_{topic.removeprefix(_RETRY_PREFIX)}",)
    return tuple(agent for agent, reads in AGENT_READS.items() if topic in reads)
