"""``GET``/``POST /internal/v1/config``: read and change runtime configuration.

Routes (internal listener; scopes ``config:read`` / ``config:write`` by route name,
``ingress/scopes.py``):

- ``GET /internal/v1/config?key=K`` → 200 ``{key, value, version, updatedAt, updatedBy}``
  from this process's follower (``connectors.runtime_config``); a key never set shows
  its default with version 0 and ``updatedAt``/``updatedBy`` null; 404 for an
  undeclared key. Without ``key``: 200 ``{"entries": [...]}``, every declared key in
  name order. The answer carries ``ETag: "<version>"`` for a later ``If-Match``.
- ``POST /internal/v1/config`` ``{key, value}`` with ``If-Match: <version>`` (the version
  the caller last read; ``"3"`` and ``3`` both accepted):

  1. 415/413 as every JSON route; 400 malformed JSON, a body that is not an object, an
     unknown field, a missing or undeclared ``key`` (``field`` says which);
  2. 428 without ``If-Match``; 400 when it is not a version number;
  3. 400 naming the problem when ``value`` does not fit the key's type or bounds;
  4. the follower catches up with the topic (everything durable now is read), then 409
     ``{"error":"conflict","version":<current>}`` when ``If-Match`` is not the key's
     current version;
  5. a ``RuntimeConfigEntry`` (v2) with ``configVersion`` = current + 1 and ``updatedBy``
     = the calling token's name is published to the topic, keyed by the key; 503 when
     it is not durable; then this process's follower applies it (waited for, at most
     :data:`APPLY_WAIT_S`) and the answer is 200 ``{key, value, version}``.

Writes of one process are serialised (one lock), so two calls racing on one ingress get
200 and 409. Two ingresses racing on one key within milliseconds can both write the same
next version: Kafka has no compare-and-set. The later record in the topic wins in every
process (docs/decisions.md, "Runtime configuration").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web

from base.clock import Clock
from base.errors import InvalidEvent, TransientError
from base.metrics import Metrics
from connectors.runtime_config import CATALOG_TOPIC, ConfigFollower
from ingress.domain_events import parse_json, reject_unknown_fields
from ingress.events import publish_counted
from ingress.middleware import correlation_id
from ingress.outcomes import NotFound, RequestRejected, Unavailable
from ingress.publisher import Publisher
from ingress.requests import read_json_body, traceparent_of
from ingress.responses import iso_time, json_response
from ingress.scopes import caller_name
from schemas.catalog import RUNTIME_CONFIG_SUBJECT
from schemas.codec import Codec
from schemas.headers import record_headers
from schemas.runtime_keys import BadValue, KeySpec

__all__ = [
    "APPLY_WAIT_S",
    "EVENT_TYPE",
    "PreconditionRequired",
    "config_get_handler",
    "config_set_handler",
    "entry_body",
    "parse_if_match",
]

log = logging.getLogger(__name__)

EVENT_TYPE: Final = "config.updated"
SOURCE: Final = "ingress"
APPLY_WAIT_S: Final = 2.0
"""How long a write waits for this process's follower to apply it before answering 200
anyway (it is durable; other processes apply it on their own)."""
_SYNC_TIMEOUT_S: Final = 5.0
_VERSION: Final = re.compile(r'(?:W/)?"?([0-9]{1,18})"?')


class PreconditionRequired(RequestRejected):
    """A write without ``If-Match`` (RFC 6585): blind overwrites are not allowed."""

    status = 428


def parse_if_match(header: str | None) -> int:
    """The version an ``If-Match`` header names.

    :raises PreconditionRequired: no header.
    :raises InvalidEvent: not a version number (``3``, ``"3"``).
    """
    if header is None:
        raise PreconditionRequired("If-Match is required: the version you last read (0: never set)")
    match = _VERSION.fullmatch(header.strip())
    if match is None:
        raise InvalidEvent("If-Match must be a version number such as 3", field="If-Match")
    return int(match.group(1))


def entry_body(follower: ConfigFollower, spec: KeySpec) -> dict[str, Any]:
    """One key as the API shows it."""
    entry = follower.entry(spec.name)
    if entry is None:
        return {
            "key": spec.name,
            "value": spec.to_json(spec.default),
            "version": 0,
            "updatedAt": None,
            "updatedBy": None,
            "type": spec.kind.value,
            "live": spec.live,
        }
    updated = dt.datetime.fromtimestamp(entry.updated_at_ms / 1000, dt.UTC)
    return {
        "key": spec.name,
        "value": spec.to_json(entry.value),
        "version": entry.version,
        "updatedAt": iso_time(updated),
        "updatedBy": entry.updated_by,
        "type": spec.kind.value,
        "live": spec.live,
    }


def _spec_of(follower: ConfigFollower, key: Any) -> KeySpec:
    if not isinstance(key, str) or not key:
        raise InvalidEvent("key must be a non-empty string", field="key")
    spec = follower.keys.get(key)
    if spec is None:
        raise InvalidEvent(f"unknown config key {key[:200]!r}", field="key")
    return spec


def config_get_handler(
    follower: ConfigFollower,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        key = request.query.get("key")
        if key is None:
            specs = follower.keys.values()
            return json_response({"entries": [entry_body(follower, spec) for spec in specs]})
        spec = follower.keys.get(key)
        if spec is None:
            raise NotFound(f"unknown config key {key[:200]!r}")
        body = entry_body(follower, spec)
        return json_response(body, headers={"ETag": f'"{body["version"]}"'})

    return handle


def config_set_handler(
    *,
    follower: ConfigFollower,
    publisher: Publisher,
    codec: Codec,
    clock: Clock,
    metrics: Metrics,
    max_body_bytes: int,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    version = codec.resolver.catalog.latest_version(RUNTIME_CONFIG_SUBJECT)
    lock = asyncio.Lock()  # one write at a time per process (see the module docstring)

    async def handle(request: web.Request) -> web.Response:
        body = parse_json(await read_json_body(request, max_body_bytes))
        if not isinstance(body, Mapping):
            raise InvalidEvent("the body must be a JSON object")
        reject_unknown_fields(body, ("key", "value"))
        spec = _spec_of(follower, body.get("key"))
        expected = parse_if_match(request.headers.get("If-Match"))
        if "value" not in body:
            raise InvalidEvent("value is required", field="value")
        try:
            value = spec.parse(body["value"])
        except BadValue as exc:
            raise InvalidEvent(str(exc), field="value") from None
        async with lock:
            await _sync(follower)
            current = follower.version(spec.name)
            if expected != current:
                return json_response(
                    {
                        "error": "conflict",
                        "detail": f"{spec.name} is at version {current}, not {expected}",
                        "key": spec.name,
                        "version": current,
                    },
                    status=409,
                    headers={"ETag": f'"{current}"'},
                )
            now_ms = int(clock.time() * 1000)
            event_id = str(uuid.uuid4())
            record: dict[str, Any] = {
                "eventId": event_id,
                "eventType": EVENT_TYPE,
                "version": version,
                "occurredAt": now_ms,
                "correlationId": correlation_id(request),
                "source": SOURCE,
                "key": spec.name,
                "value": spec.to_text(value),
                "configVersion": current + 1,
                "updatedAt": now_ms,
                "updatedBy": caller_name(request),
            }
            encoded = codec.encode(CATALOG_TOPIC, record)
            headers = record_headers(CATALOG_TOPIC, record, traceparent=traceparent_of(request))
            await publish_counted(publisher, metrics, follower.topic, spec.name, encoded, headers)
            log.info(
                "runtime config written",
                extra={
                    "key": spec.name,
                    "version": current + 1,
                    "value": record["value"],
                    "updated_by": record["updatedBy"],
                },
            )
            # Read-your-writes on this ingress: the next GET here shows the new value.
            await asyncio.to_thread(follower.wait_for, spec.name, event_id, APPLY_WAIT_S)
        return json_response(
            {"key": spec.name, "value": spec.to_json(value), "version": current + 1},
            headers={"ETag": f'"{current + 1}"'},
        )

    return handle


async def _sync(follower: ConfigFollower) -> None:
    """Read everything durable on the topic before comparing versions, so ``If-Match``
    is checked against the latest write of any ingress, not a lagging copy."""
    try:
        synced = await asyncio.to_thread(follower.sync, _SYNC_TIMEOUT_S)
    except TransientError as exc:
        log.warning("runtime config topic unreachable", extra={"error": str(exc)})
        raise Unavailable("runtime config cannot be read from Kafka; retry later") from None
    if not synced:
        raise Unavailable("runtime config is still being read from Kafka; retry later")
