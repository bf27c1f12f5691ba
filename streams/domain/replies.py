"""Request/reply answers: the ``sluice.commands.Reply`` record a waiting ingress reads.

Whoever finishes a command that carries a ``taskId`` and ``replyTo`` (the join when it
refuses one, the Stripe agent when it made the call) writes one reply. Its id is derived
from the command's id, so a redelivered command re-sends the same reply, and the
ingress, which answers the first reply for a task, ignores the repeat.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from streams.domain.ids import derived_event_id

__all__ = ["REPLY_TYPE", "reply_record"]

REPLY_TYPE = "command.reply"


def reply_record(
    *,
    task_id: str,
    status: int,
    body: Mapping[str, Any],
    cause_event_id: str,
    correlation_id: str,
    now_ms: int,
    source: str,
) -> dict[str, Any]:
    """The reply to task ``task_id``: answer the caller with ``status`` and ``body``."""
    return {
        "eventId": derived_event_id(cause_event_id, REPLY_TYPE),
        "eventType": REPLY_TYPE,
        "version": 1,
        "occurredAt": now_ms,
        "correlationId": correlation_id,
        "source": source,
        "taskId": task_id,
        "status": status,
        "body": json.dumps(body, separators=(",", ":"), sort_keys=True),
    }
