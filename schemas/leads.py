"""The lead contract shared by the ingress and the worker: the lead id and its statuses.

A lead's id is a pure function of who sent it and the sender's own id, so every copy of
one lead (a partner's retry, a duplicate post, a replay) has the same id: the ingress
answers it again, the worker stores it once (``leads`` is keyed by it), and the CRM sees
it as the ``Idempotency-Key`` of every delivery.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Final

__all__ = ["LEAD_NAMESPACE", "LeadStatus", "lead_id"]

LEAD_NAMESPACE: Final = uuid.UUID("5a1c3e0e-9a51-4f0c-8d0e-2f6f3b1c7a42")
"""uuid5 namespace of lead ids. Fixed forever: changing it would give known leads new
ids, and a partner's retry of an old lead would be stored and delivered again."""


def lead_id(partner_id: str, external_lead_id: str) -> str:
    """``uuid5(LEAD_NAMESPACE, f"{partner_id}:{external_lead_id}")`` as a string."""
    return str(uuid.uuid5(LEAD_NAMESPACE, f"{partner_id}:{external_lead_id}"))


class LeadStatus(StrEnum):
    """``leads.status`` (DESIGN §6)."""

    RECEIVED = "RECEIVED"
    """Stored; not delivered yet (first attempt pending, or its delivery is held)."""
    RETRYING = "RETRYING"
    """An attempt failed transiently; the next one waits on a delay topic."""
    DELIVERED = "DELIVERED"
    """The CRM answered 2xx. Final, unless a forced delivery is asked for."""
    DELIVERY_FAILED = "DELIVERY_FAILED"
    """The CRM refused it (4xx) or retries ran out; dead-lettered with an alert."""
