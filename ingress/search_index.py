"""``POST /internal/v1/search/index``: upsert or delete one search document.

Body ``{index, id, op, doc?, version?}``. The handler's steps, and what answers each bad
input (nothing is published for any of them):

1. content type and size (``ingress.requests.read_json_body``): 415, 413;
2. the body as JSON (``ingress.domain_events.parse_json``): 400 when malformed;
3. the request (:func:`parse_index_request`), each a 400 naming the field: not an object
   or a field other than the five; ``index`` not on the allow-list
   (``schemas.search_indices``); ``id`` not a printable id of at most 256 characters;
   ``op`` neither ``upsert`` nor ``delete``; ``version`` not a positive integer of at most
   2^63-1; an upsert's ``doc`` not an object of the index's fields, each of its field's
   kind (``doc.<field>``, ``doc.location.lat``); a delete with a ``doc``;
4. encode and publish a ``sluice.search.IndexCommand`` on ``commands.search.index`` keyed
   ``index:id`` (one document's commands stay in one partition, in order); the publisher
   returns only once the record is durable (503 otherwise), then 202
   ``{"accepted": true, "taskId": …, "version": n}``.

**Versions.** The document's external version is the caller's ``version`` when given,
else the next number of this process's :class:`VersionSequence`: the wall clock in
microseconds since the epoch, or one more than the last number handed out when the clock
has not moved on (or went back). Why that is monotonic enough:

- within one process it strictly increases, whatever the clock does;
- across a restart it keeps growing: a restart takes far longer than the few
  microseconds the sequence can run ahead of the clock (it runs ahead only while more
  than a million commands a second arrive, or while the clock is stepped back);
- across several ingress processes, two commands for one document a few milliseconds
  apart are ordered by the hosts' clocks (NTP keeps them within milliseconds); two
  callers racing on one document that closely had no order to keep anyway. A caller
  that needs a strict order across its own writes (a database row's revision, say) sends
  ``version``;
- microseconds since 1970 (about 1.8e15) stay far below Elasticsearch's limit (2^63-1)
  and above any revision counter a caller is likely to send, so a document written with
  callers' small versions and later without ``version`` moves forward, not back. The
  reverse (a caller's versions after generated ones) is refused as stale: one document
  should be written one way.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web

from base.clock import Clock
from base.errors import InvalidEvent
from base.metrics import Metrics
from ingress.domain_events import check_identifier, parse_json, reject_unknown_fields
from ingress.events import publish_counted
from ingress.middleware import correlation_id
from ingress.publisher import Publisher
from ingress.requests import read_json_body, traceparent_of
from ingress.responses import json_response
from schemas.catalog import SEARCH_INDEX_SUBJECT
from schemas.codec import Codec
from schemas.headers import record_headers
from schemas.search_indices import SearchIndices, default_indices

__all__ = [
    "INDEX_COMMAND_TOPIC",
    "MAX_VERSION",
    "IndexRequest",
    "VersionSequence",
    "index_handler",
    "index_record",
    "parse_index_request",
]

INDEX_COMMAND_TOPIC: Final = "commands.search.index"
SOURCE: Final = "ingress"
MAX_VERSION: Final = 2**63 - 1
"""Avro's long and Elasticsearch's largest external version."""

_FIELDS: Final = ("index", "id", "op", "doc", "version")

Op = Literal["upsert", "delete"]


@dataclass(frozen=True, slots=True)
class IndexRequest:
    """A checked request; ``doc_json`` is the upsert's document as compact JSON text."""

    index: str
    id: str
    op: Op
    doc_json: str | None
    version: int | None

    @property
    def key(self) -> str:
        return f"{self.index}:{self.id}"


class VersionSequence:
    """Monotonic external versions for commands without one (module docstring)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        now_us = int(self._clock.time() * 1_000_000)
        self._last = max(now_us, self._last + 1)
        return self._last


def parse_index_request(body: Any, indices: SearchIndices) -> IndexRequest:
    """``{index, id, op, doc?, version?}``, checked (module docstring, step 3).

    :raises InvalidEvent: naming the first bad field.
    """
    if not isinstance(body, dict):
        raise InvalidEvent("the body must be a JSON object")
    reject_unknown_fields(body, _FIELDS)
    index = indices.require(body.get("index"))
    doc_id = check_identifier(body.get("id"), "id")
    op = body.get("op")
    if op not in ("upsert", "delete"):
        raise InvalidEvent("op must be upsert or delete", field="op")
    version = _version(body.get("version"))
    doc = body.get("doc")
    if op == "delete":
        if doc is not None:
            raise InvalidEvent("a delete takes no doc", field="doc")
        return IndexRequest(index.name, doc_id, "delete", None, version)
    checked = index.check_doc(doc)
    # Compact; non-ASCII kept as is (the codec refuses what UTF-8 cannot carry).
    doc_json = json.dumps(checked, separators=(",", ":"), ensure_ascii=False)
    return IndexRequest(index.name, doc_id, "upsert", doc_json, version)


def _version(value: Any) -> int | None:
    if value is None:
        return None
    # type() rather than isinstance: True is an int to Python, not a version.
    if type(value) is not int or not 1 <= value <= MAX_VERSION:
        raise InvalidEvent(f"version must be an integer from 1 to {MAX_VERSION}", field="version")
    return value


def index_record(
    request: IndexRequest,
    *,
    doc_version: int,
    task_id: str,
    correlation_id: str,
    now_ms: int,
    version: int,
) -> dict[str, Any]:
    """The ``IndexCommand`` for ``request``; ``eventId`` is the task id."""
    return {
        "eventId": task_id,
        "eventType": f"search.index.{request.op}",
        "version": version,
        "occurredAt": now_ms,
        "correlationId": correlation_id,
        "source": SOURCE,
        "index": request.index,
        "id": request.id,
        "op": request.op,
        "doc": request.doc_json,
        "docVersion": doc_version,
        "taskId": task_id,
    }


def index_handler(
    *,
    publisher: Publisher,
    codec: Codec,
    clock: Clock,
    metrics: Metrics,
    max_body_bytes: int,
    indices: SearchIndices | None = None,
    versions: VersionSequence | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    # Loaded now: a broken mapping file stops the ingress at start-up, not on a request.
    allowed = indices if indices is not None else default_indices()
    sequence = versions if versions is not None else VersionSequence(clock)
    schema_version = codec.resolver.catalog.latest_version(SEARCH_INDEX_SUBJECT)

    async def handle(request: web.Request) -> web.Response:
        raw_body = await read_json_body(request, max_body_bytes)
        checked = parse_index_request(parse_json(raw_body), allowed)
        doc_version = checked.version if checked.version is not None else sequence.next()
        task_id = str(uuid.uuid4())
        record = index_record(
            checked,
            doc_version=doc_version,
            task_id=task_id,
            correlation_id=correlation_id(request),
            now_ms=int(clock.time() * 1000),
            version=schema_version,
        )
        value = codec.encode(INDEX_COMMAND_TOPIC, record)
        headers = record_headers(INDEX_COMMAND_TOPIC, record, traceparent=traceparent_of(request))
        await publish_counted(publisher, metrics, INDEX_COMMAND_TOPIC, checked.key, value, headers)
        body: Mapping[str, Any] = {"accepted": True, "taskId": task_id, "version": doc_version}
        return json_response(dict(body), status=202)

    return handle
