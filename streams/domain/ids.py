"""Deterministic ids for events the streams layer derives from other events.

A derived event's id is a pure function of the event it came from and of what it is, so
reprocessing a redelivered input (at-least-once delivery, a replay, a rebalance) emits
records with the *same* ids, and every downstream consumer's idempotency check
(``processed_events``, Postgres unique constraints) recognises them as repeats.
"""

from __future__ import annotations

import uuid

__all__ = ["DERIVED_EVENT_NAMESPACE", "derived_event_id"]

DERIVED_EVENT_NAMESPACE = uuid.UUID("ecb566be-e646-4bbd-97ed-c411a939f670")
"""uuid5 namespace of every derived event id. Fixed forever: changing it would give
reprocessed events new ids, and consumers would take repeats for new events. It differs
from ingress's namespace for raw webhook ids, so a derived id never equals an input id."""


def derived_event_id(input_event_id: str, output_type: str) -> str:
    """The id of the ``output_type`` event derived from event ``input_event_id``.

    ``uuid5(DERIVED_EVENT_NAMESPACE, f"{input_event_id}:{output_type}")`` as a string:
    the same input and type always give the same id; another type, or another input,
    gives another id. Pure; never raises for string arguments.

    :param input_event_id: the ``eventId`` of the input record (not the provider's id).
    :param output_type: what is derived, e.g. the output topic ``billing.payment.succeeded``.
    """
    return str(uuid.uuid5(DERIVED_EVENT_NAMESPACE, f"{input_event_id}:{output_type}"))
