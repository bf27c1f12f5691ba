"""The internal cache API: drop cache keys now (request/reply).

Route (internal listener, scope ``cache:write``): ``POST /internal/v1/cache/invalidate``
``{keys?, patterns?}``.

A request becomes a ``sluice.cache.InvalidateCommand`` on ``commands.cache.invalidate``,
keyed by its task id (a fresh uuid4, also the ``eventId``), with ``replyTo`` the reply
topic, published and answered through :class:`ingress.commands.CommandSender`: the cache
agent's reply, 200 ``{"invalidated": N}`` (N keys removed), or after
``SLUICE_REPLY_TIMEOUT`` 202 ``{"accepted": true, "taskId"}``: the command is durable and
is still carried out (retried while Redis is down; the agent answers only when a run
completes).

Checks (400 naming the field, nothing published; rules in ``schemas.cache``): at least
one of ``keys`` and ``patterns``, each a list; at most ``MAX_KEYS`` (1,000) keys and
``MAX_PATTERNS`` (20) patterns; each entry a non-empty string of at most 512 printable
characters (field ``keys[i]`` / ``patterns[i]``); a pattern needs a literal prefix of at
least three characters before any glob character (``*``, ``?``, ``[``, ``\\``), so a
bare ``*`` or ``*foo`` is refused naming the pattern; no other field. Repeated entries
are dropped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from base.clock import Clock
from base.errors import InvalidEvent
from ingress.commands import CommandSender
from ingress.domain_events import parse_json, reject_unknown_fields
from ingress.middleware import correlation_id
from ingress.requests import read_json_body, traceparent_of
from ingress.scopes import caller_name
from schemas.cache import MAX_KEYS, MAX_PATTERNS, check_cache_key, check_pattern
from schemas.catalog import CACHE_INVALIDATE_SUBJECT

__all__ = [
    "INVALIDATE_EVENT_TYPE",
    "INVALIDATE_TOPIC",
    "InvalidateRequest",
    "cache_invalidate_handler",
    "invalidate_record",
    "parse_invalidate",
]

log = logging.getLogger(__name__)

INVALIDATE_TOPIC: Final = "commands.cache.invalidate"
INVALIDATE_EVENT_TYPE: Final = "cache.invalidate"
SOURCE: Final = "ingress"

_FIELDS = ("keys", "patterns")


@dataclass(frozen=True, slots=True)
class InvalidateRequest:
    """A checked invalidation: keys and patterns, without repeats."""

    keys: tuple[str, ...]
    patterns: tuple[str, ...]


def parse_invalidate(body: Any) -> InvalidateRequest:
    """``{keys?, patterns?}``, checked.

    :raises InvalidEvent: naming the first bad field.
    """
    if not isinstance(body, dict):
        raise InvalidEvent("the body must be a JSON object")
    reject_unknown_fields(body, _FIELDS)
    keys = _entries(body.get("keys"), "keys", MAX_KEYS, check_cache_key)
    patterns = _entries(body.get("patterns"), "patterns", MAX_PATTERNS, check_pattern)
    if not keys and not patterns:
        raise InvalidEvent("name at least one key or pattern", field="keys")
    return InvalidateRequest(keys=keys, patterns=patterns)


def _entries(value: Any, name: str, limit: int, check: Callable[[object], str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidEvent(f"{name} must be a list of strings", field=name)
    if len(value) > limit:
        raise InvalidEvent(f"{name} holds at most {limit} entries per call", field=name)
    checked: dict[str, None] = {}
    for index, item in enumerate(value):
        try:
            checked[check(item)] = None
        except ValueError as exc:
            raise InvalidEvent(str(exc), field=f"{name}[{index}]") from None
    return tuple(checked)


def invalidate_record(
    request: InvalidateRequest,
    *,
    task_id: str,
    reply_to: str,
    correlation_id: str,
    now_ms: int,
    version: int,
) -> dict[str, Any]:
    """The ``InvalidateCommand`` for ``request``."""
    return {
        "eventId": task_id,
        "eventType": INVALIDATE_EVENT_TYPE,
        "version": version,
        "occurredAt": now_ms,
        "correlationId": correlation_id,
        "source": SOURCE,
        "keys": list(request.keys),
        "patterns": list(request.patterns),
        "taskId": task_id,
        "replyTo": reply_to,
    }


def cache_invalidate_handler(
    *, sender: CommandSender, clock: Clock, max_body_bytes: int
) -> Callable[[web.Request], Awaitable[web.Response]]:
    # The subject's latest version, read without the codec (no registry call at build).
    version = sender.codec.resolver.catalog.latest_version(CACHE_INVALIDATE_SUBJECT)

    async def handle(request: web.Request) -> web.Response:
        raw_body = await read_json_body(request, max_body_bytes)
        invalidate = parse_invalidate(parse_json(raw_body))
        task_id = str(uuid.uuid4())
        record = invalidate_record(
            invalidate,
            task_id=task_id,
            reply_to=sender.reply_topic,
            correlation_id=correlation_id(request),
            now_ms=int(clock.time() * 1000),
            version=version,
        )
        log.info(
            "cache invalidation requested",
            extra={
                "task_id": task_id,
                "caller": caller_name(request),
                "keys": len(invalidate.keys),
                "patterns": _shown(invalidate.patterns),
            },
        )
        return await sender.send(
            INVALIDATE_TOPIC, task_id, record, traceparent=traceparent_of(request)
        )

    return handle


def _shown(patterns: Sequence[str]) -> list[str]:
    """Patterns for a log line: the first few, each cut short."""
    return [pattern[:64] for pattern in patterns[:5]]
