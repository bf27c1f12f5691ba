"""Publish a command and answer with its reply: what every request/reply route shares.

A request/reply route (payments, lead delivery) checks its request, builds a command
record carrying a fresh ``taskId`` and ``replyTo``, then hands it to
:meth:`CommandSender.send`, which:

1. encodes the record (a record the schema refuses is a 400, nothing published);
2. registers the reply expectation *before* publishing (a worker may answer within
   milliseconds, see :mod:`ingress.replies`);
3. publishes it (returns once durable; ``NotDurable`` → 503, the caller retries);
4. waits up to ``SLUICE_REPLY_TIMEOUT`` and answers with the reply's own status and
   body, or 202 ``{"accepted": true, "taskId"}`` when none came in time: the command is
   durable and will still be carried out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from base.metrics import Metrics
from ingress.events import publish_counted
from ingress.publisher import Publisher
from ingress.replies import Reply, ReplyWaiter
from ingress.responses import json_response
from schemas.codec import Codec
from schemas.headers import record_headers

__all__ = ["CommandSender", "reply_response"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CommandSender:
    """Publishes commands on the ingress's publisher and waits on its reply waiter."""

    publisher: Publisher
    codec: Codec
    metrics: Metrics
    replies: ReplyWaiter
    reply_timeout_s: float

    @property
    def reply_topic(self) -> str:
        """What a command names as its ``replyTo``."""
        return self.replies.topic

    async def send(
        self,
        topic: str,
        key: str,
        record: Mapping[str, Any],
        *,
        traceparent: str,
    ) -> web.Response:
        """Publish ``record`` (its ``taskId`` set) under ``key``; the reply or a 202.

        :raises InvalidEvent: the record does not fit the topic's schema (400).
        :raises NotDurable: Kafka did not take it in time (503).
        """
        task_id = str(record["taskId"])
        value = self.codec.encode(topic, dict(record))
        headers = record_headers(topic, record, traceparent=traceparent)
        with self.replies.expect(task_id) as pending:
            await publish_counted(self.publisher, self.metrics, topic, key, value, headers)
            reply = await pending.wait(self.reply_timeout_s)
        if reply is None:
            log.info(
                "no reply in time; answered 202",
                extra={"task_id": task_id, "event_type": record.get("eventType")},
            )
            return json_response({"accepted": True, "taskId": task_id}, status=202)
        return reply_response(reply)


def reply_response(reply: Reply) -> web.Response:
    """Answer with the reply's status and JSON body; 502 if the worker wrote nonsense."""
    if 200 <= reply.status <= 599 and reply.status not in (204, 205, 304):
        try:
            body = json.loads(reply.body)
        except ValueError:
            pass
        else:
            # Written again in the ingress's one format, whatever the worker's was.
            return json_response(body, status=reply.status)
    log.error(
        "malformed reply",
        extra={"task_id": reply.task_id, "reply_status": reply.status, "event_id": reply.event_id},
    )
    return json_response(
        {"error": "bad_gateway", "detail": "the worker's reply could not be used"}, status=502
    )
