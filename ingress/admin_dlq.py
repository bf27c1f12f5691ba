"""The admin API's dead-letter routes, matching ``sluice dlq list|replay`` (the same code:
``connectors.dead_letters``, run in a thread since it blocks on the broker):

- ``GET /v1/admin/dlq`` (``admin.dlq.list``): dead letters oldest first. Query:
  ``originTopic``, ``reason`` (case-insensitive substring of the reason or error class),
  ``since``/``until`` (ISO 8601 with offset, ``failedAt`` in ``[since, until)``),
  ``limit`` (1 to 200, default 50), ``cursor``. 200 ``{"items": [...], "next"}``; items are
  the CLI's lines without the value.
- ``GET /v1/admin/dlq/{id}`` (``admin.dlq.show``): one dead letter by its ``eventId``,
  with the original value (base64), its headers and, when it decodes as a record of its
  origin topic, the record (``original``); 404 when there is none.
- ``POST /v1/admin/dlq/replay`` (``admin.dlq.replay``): ``{"eventIds": [...]}``, a filter
  (``originTopic``, ``reason``, ``since``, ``until``), or ``{"all": true}`` (the CLI's
  ``--all``); re-produces the originals to their topics with ``sluice-replay: 1`` and
  ``sluice-replay-id``. 202 ``{"accepted": true, "replayId", "count", "eventIds"}``;
  at most ``SLUICE_REPLAY_MAX_EVENTS`` per call (oldest first: call again for the rest).

503 when Kafka cannot be read or does not take the records in time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from base.errors import InvalidEvent
from connectors.dead_letters import (
    DeadLetterFilter,
    dead_letter_detail,
    find_dead_letter,
    page_dead_letters,
    parse_cursor,
    replay,
    summary,
)
from ingress.admin_params import check_query, parse_limit, parse_range, short_text
from ingress.domain_events import parse_json, reject_unknown_fields
from ingress.outcomes import NotFound
from ingress.requests import read_json_body
from ingress.responses import json_response
from ingress.scopes import caller_name
from schemas.codec import Codec

__all__ = ["dlq_list_handler", "dlq_replay_handler", "dlq_show_handler", "parse_dlq_replay"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.Response]]

_LIST_PARAMS = ("originTopic", "reason", "since", "until", "limit", "cursor")
_REPLAY_FIELDS = ("eventIds", "originTopic", "reason", "since", "until", "all")


def _ms(moment: Any) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _filter(values: Mapping[str, Any], event_ids: frozenset[str] = frozenset()) -> DeadLetterFilter:
    since, until = parse_range(values.get("since"), values.get("until"))
    origin = values.get("originTopic")
    reason = values.get("reason")
    return DeadLetterFilter(
        event_ids=event_ids,
        origin_topic=short_text(origin, "originTopic") if origin is not None else None,
        reason=short_text(reason, "reason") if reason is not None else None,
        since_ms=_ms(since),
        until_ms=_ms(until),
    )


def dlq_list_handler(bootstrap_servers: str, codec: Codec) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        query = request.query
        check_query(query, _LIST_PARAMS)
        selection = _filter(query)
        limit = parse_limit(query.get("limit"))
        after = parse_cursor(query["cursor"]) if "cursor" in query else None
        page = await asyncio.to_thread(
            functools.partial(
                page_dead_letters, bootstrap_servers, codec, selection, limit=limit, after=after
            )
        )
        items = [
            {**summary(item.record), "dlqPartition": item.partition, "dlqOffset": item.offset}
            for item in page.items
        ]
        return json_response({"items": items, "next": page.next_cursor})

    return handle


def dlq_show_handler(bootstrap_servers: str, codec: Codec) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        event_id = request.match_info["id"]
        if len(event_id) > 256:
            raise InvalidEvent("id is longer than 256 characters", field="id")
        found = await asyncio.to_thread(find_dead_letter, bootstrap_servers, codec, event_id)
        if found is None:
            raise NotFound(f"no dead letter {event_id[:100]!r} on dlq")
        return json_response(dead_letter_detail(found, codec))

    return handle


def parse_dlq_replay(body: Any) -> DeadLetterFilter:
    """The selection of a dead-letter replay body.

    :raises InvalidEvent: naming the field: not an object, an unknown field, no selection
        at all (``eventIds``, a filter field or ``"all": true``), a bad value.
    """
    if not isinstance(body, Mapping):
        raise InvalidEvent("the body must be a JSON object")
    reject_unknown_fields(body, _REPLAY_FIELDS)
    everything = body.get("all", False)
    if not isinstance(everything, bool):
        raise InvalidEvent("all must be true or false", field="all")
    ids = body.get("eventIds")
    event_ids: frozenset[str] = frozenset()
    if ids is not None:
        if not isinstance(ids, list) or not ids:
            raise InvalidEvent("eventIds must be a non-empty list of ids", field="eventIds")
        event_ids = frozenset(short_text(item, "eventIds") for item in ids)
    selection = _filter(body, event_ids)
    if selection == DeadLetterFilter() and not everything:
        raise InvalidEvent(
            "say which dead letters: eventIds, originTopic, reason, since/until, or all: true",
            field="eventIds",
        )
    return selection


def dlq_replay_handler(
    bootstrap_servers: str, codec: Codec, *, max_body_bytes: int, max_events: int
) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        selection = parse_dlq_replay(parse_json(await read_json_body(request, max_body_bytes)))
        replay_id = str(uuid.uuid4())
        replayed = await asyncio.to_thread(
            functools.partial(
                replay,
                bootstrap_servers,
                codec,
                selection=selection,
                replay_id=replay_id,
                max_count=max_events,
            )
        )
        log.info(
            "dead letters replayed",
            extra={"replay_id": replay_id, "count": len(replayed), "caller": caller_name(request)},
        )
        body = {"accepted": True, "replayId": replay_id, "count": len(replayed)}
        return json_response({**body, "eventIds": replayed}, status=202)

    return handle
