"""The search projection: versioned documents in Elasticsearch (DESIGN §2, §5).

:class:`SearchProjection` wraps the official ``AsyncElasticsearch`` client. Its one
write, :meth:`SearchProjection.write_versioned`, sends a whole batch as a single
``_bulk`` request of ``index`` operations with **external versioning**: each document
carries the version of the state it was built from (an order's ``revision``), and
Elasticsearch stores it only if that version is higher than the stored one. That is what
makes the projection replay-safe without reading before writing:

- a redelivery or replay of a batch writes nothing new (same versions);
- a late event cannot overwrite newer state, whatever order batches land in;
- re-running a batch that partly failed is always safe: what was written the first time
  is refused the second.

A refused write is a ``409 version_conflict_engine_exception`` for that item. It is
counted as ``stale`` in the :class:`BulkOutcome`, never raised.

Failures are translated for the worker's retry topics (``streams/domain/retry.py``
``classify``): connection errors, timeouts, 408/425/429 and 5xx, for the whole request or
for any item, are :class:`~base.errors.TransientError` (with ``retry_after`` when the
server sent ``Retry-After``); any other item failure (a strict-mapping violation, a bad
value) is :class:`DocumentsRejected`, a :class:`~base.errors.PermanentError` naming the
document ids and reasons. When a batch holds both, the transient error wins: the whole
batch is retried, and once the transient cause is gone the rejected documents are
reported. The connector never retries by itself (the client runs with
``max_retries=0``): the caller's retry topics do.

Every request also carries a server-side ``timeout`` of half the client's, so a shard
that cannot take writes comes back as per-item 503s (the rest of the batch written and
accounted for) instead of a client timeout that says nothing about the batch.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import elasticsearch
from elasticsearch import AsyncElasticsearch

from base.errors import PermanentError, SluiceError, TransientError
from base.http_status import classify_http_status, parse_retry_after
from base.sinks import Sink, sink_call

__all__ = [
    "ORDERS_INDEX",
    "ORDERS_MAPPING",
    "BulkOutcome",
    "DocumentsRejected",
    "SearchProjection",
    "VersionedDoc",
    "bulk_outcome",
    "translate_error",
]

_log = logging.getLogger(__name__)

ORDERS_INDEX: Final = "orders"

#: The orders projection. ``dynamic: strict``: a field the mapping does not know is a
#: bug in the producer, and must fail loudly (a permanent error) rather than grow the
#: mapping. Ids are ``keyword`` (exact match, which is how support searches them).
ORDERS_MAPPING: Final[dict[str, Any]] = {
    "dynamic": "strict",
    "properties": {
        "orderId": {"type": "keyword"},
        "userId": {"type": "keyword"},
        "status": {"type": "keyword"},
        "amountMinor": {"type": "long"},
        "currency": {"type": "keyword"},
        "refundedMinor": {"type": "long"},
        "paymentProvider": {"type": "keyword"},
        "paymentIntentId": {"type": "keyword"},
        # Every provider object id seen for the order (pi_, ch_, re_, cs_, pay_, ...).
        "providerIds": {"type": "keyword"},
        "revision": {"type": "long"},
        "createdAt": {"type": "date", "format": "epoch_millis"},
        "updatedAt": {"type": "date", "format": "epoch_millis"},
        "lastEventType": {"type": "keyword"},
    },
}

_VERSION_CONFLICT: Final = "version_conflict_engine_exception"
_ALREADY_EXISTS: Final = "resource_already_exists_exception"
_MAX_REASON_CHARS: Final = 300
_MAX_NAMED_IDS: Final = 5
# Mapping errors end with "Preview of field's value: '<the value>'".
_VALUE_PREVIEW: Final = re.compile(r"(?s)\s*Preview of field's value:.*")


@dataclass(frozen=True, slots=True)
class VersionedDoc:
    """One document to write, with its external version.

    A write whose ``version`` is lower than or equal to the stored one is ignored (and
    counted as stale): use a number that grows with every change of the source state.
    """

    id: str
    version: int
    doc: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    """What a batch did: ``written`` documents stored, ``stale`` ones refused with 409
    because a newer (or the same) version is already there."""

    written: int
    stale: int


class DocumentsRejected(PermanentError):
    """Elasticsearch refused some documents of a batch for good (mapping, bad value).

    ``rejected`` maps each refused document id to its reason, so the caller can
    dead-letter the records behind them and resubmit the rest. The other documents of
    the batch were processed: ``written`` stored, ``stale`` refused as old.
    """

    def __init__(
        self, index: str, rejected: Mapping[str, str], *, written: int, stale: int
    ) -> None:
        named = "; ".join(
            f"{doc_id!r}: {reason}" for doc_id, reason in list(rejected.items())[:_MAX_NAMED_IDS]
        )
        more = len(rejected) - _MAX_NAMED_IDS
        super().__init__(
            f"elasticsearch rejected {len(rejected)} document(s) for {index}: {named}"
            + (f"; and {more} more" if more > 0 else "")
        )
        self.index = index
        self.rejected = dict(rejected)
        self.written = written
        self.stale = stale


def translate_error(exc: BaseException, action: str = "request") -> SluiceError | None:
    """The Sluice error a client error stands for, or ``None`` to let it crash.

    Transient: connection errors and timeouts, and answers with status 408, 425, 429 or
    5xx (``retry_after`` from ``Retry-After``). Permanent: any other error answer (a bad
    request, a missing index, authentication). Anything else (serialization of a value
    that is not JSON, TLS set-up, a bug) is ``None``.
    """
    if isinstance(exc, elasticsearch.ApiError):
        status = exc.meta.status
        reason = _reason(exc.body)
        if status >= 300 and classify_http_status(status) == "transient":
            retry_after = parse_retry_after(exc.meta.headers.get("retry-after"), time.time())
            return TransientError(
                f"elasticsearch {action}: answered {status}: {reason}", retry_after=retry_after
            )
        return PermanentError(f"elasticsearch {action}: refused ({status}): {reason}")
    if isinstance(exc, elasticsearch.ConnectionError | elasticsearch.ConnectionTimeout):
        return TransientError(f"elasticsearch {action}: unavailable: {exc}")
    return None


def bulk_outcome(index: str, items: Sequence[Mapping[str, Any]]) -> BulkOutcome:
    """Account for the per-item results of a ``_bulk`` response (see the module doc).

    :raises TransientError: if any item failed transiently (429, 5xx).
    :raises DocumentsRejected: else, if any item failed otherwise (409s excepted).
    """
    written = stale = 0
    transient: list[tuple[str, str]] = []
    rejected: dict[str, str] = {}
    for item in items:
        (result,) = item.values()  # {"index": {...}}: one operation per item
        status: int = result["status"]
        doc_id = str(result.get("_id"))
        if status < 300:
            written += 1
            continue
        error = result.get("error")
        if status == 409 and isinstance(error, Mapping) and error.get("type") == _VERSION_CONFLICT:
            stale += 1
            continue
        reason = f"{status} {_reason(error)}"
        if classify_http_status(status) == "transient":
            transient.append((doc_id, reason))
        else:
            rejected[doc_id] = reason
    if transient:
        first_id, first_reason = transient[0]
        raise TransientError(
            f"elasticsearch could not write {len(transient)} of {len(items)} document(s) to "
            f"{index} yet (first {first_id!r}: {first_reason}); {written} written, {stale} "
            "stale, and the batch is safe to write again"
        )
    if rejected:
        raise DocumentsRejected(index, rejected, written=written, stale=stale)
    return BulkOutcome(written=written, stale=stale)


def _reason(error: object) -> str:
    """``type: reason`` of an error body (whole response or one item), shortened.

    Document values are cut out: reasons end up in logs and dead-letter headers, and
    (as for the Postgres projections) those never carry row values.
    """
    if isinstance(error, Mapping) and isinstance(error.get("error"), Mapping | str):
        error = error["error"]  # a whole response: {"error": {...}, "status": 400}
    if isinstance(error, Mapping):
        reason = _VALUE_PREVIEW.sub("", str(error.get("reason", "")))
        text = f"{error.get('type', 'error')}: {reason}"
    else:
        text = str(error)
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


def _error_type(body: object) -> str | None:
    error = body.get("error") if isinstance(body, Mapping) else None
    return str(error.get("type")) if isinstance(error, Mapping) else None


@asynccontextmanager
async def _translated(action: str) -> AsyncIterator[None]:
    try:
        yield
    except (elasticsearch.ApiError, elasticsearch.TransportError) as exc:
        error = translate_error(exc, action)
        if error is None:
            raise
        raise error from exc


def _keyword_fields(mapping: Mapping[str, Any]) -> list[str]:
    properties = mapping.get("properties", {})
    return [name for name, spec in properties.items() if spec.get("type") == "keyword"]


class SearchProjection:
    """Versioned documents in Elasticsearch indices named ``index_prefix + base``.

    ``start()`` creates the client and the orders index; ``close()`` releases the
    connections. Also an async context manager. Every call fails within about
    ``request_timeout_s`` seconds while the server is unreachable, and works again by
    itself once it is back. Not bound to one event loop task; use one instance per loop.
    """

    def __init__(
        self, url: str, *, index_prefix: str = "", request_timeout_s: float = 10.0
    ) -> None:
        self.url = url
        self.index_prefix = index_prefix
        self.request_timeout_s = request_timeout_s
        self._server_timeout = f"{max(int(request_timeout_s * 500), 100)}ms"
        self._client: AsyncElasticsearch | None = None
        self._search_fields: dict[str, list[str]] = {ORDERS_INDEX: _keyword_fields(ORDERS_MAPPING)}

    async def start(self) -> None:
        """Create the client and make sure the orders index exists.

        :raises TransientError: the server is unreachable (nothing is left open).
        """
        if self._client is None:
            self._client = AsyncElasticsearch(
                self.url,
                request_timeout=self.request_timeout_s,
                max_retries=0,
                retry_on_timeout=False,
            )
        try:
            await self.ensure_index(ORDERS_INDEX, ORDERS_MAPPING)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the client's connections. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def index_name(self, base: str) -> str:
        return self.index_prefix + base

    def _require_client(self) -> AsyncElasticsearch:
        if self._client is None:
            raise RuntimeError("SearchProjection used before start()")
        return self._client

    @sink_call(Sink.ELASTICSEARCH)
    async def ensure_index(
        self,
        base: str,
        mapping: Mapping[str, Any],
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Create the index with ``mapping`` (and index ``settings``) unless it exists.
        Idempotent and safe to race. An existing index is left as it is (its mapping is
        not compared)."""
        client = self._require_client()
        name = self.index_name(base)
        self._search_fields[base] = _keyword_fields(mapping)
        async with _translated(f"create index {name}"):
            try:
                await client.indices.create(
                    index=name,
                    mappings=mapping,
                    settings=dict(settings) if settings else None,
                    timeout=self._server_timeout,
                    master_timeout=self._server_timeout,
                )
            except elasticsearch.BadRequestError as exc:
                if _error_type(exc.body) != _ALREADY_EXISTS:
                    raise
                return
        _log.info("created index %s", name)

    @sink_call(Sink.ELASTICSEARCH)
    async def write_versioned(self, base: str, docs: Sequence[VersionedDoc]) -> BulkOutcome:
        """Write ``docs`` with external versions in one ``_bulk`` request.

        Not refreshed: documents are visible to ``get`` at once, to search within the
        index's refresh interval (or after :meth:`refresh`).

        :raises TransientError: the request or any document failed transiently; the
            whole batch is safe to write again.
        :raises DocumentsRejected: documents were refused for good (others processed).
        """
        if not docs:
            return BulkOutcome(written=0, stale=0)
        client = self._require_client()
        name = self.index_name(base)
        operations: list[Mapping[str, Any]] = []
        for doc in docs:
            action = {"_id": doc.id, "version": doc.version, "version_type": "external"}
            operations += [{"index": action}, doc.doc]
        async with _translated(f"bulk write to {name}"):
            response = await client.bulk(
                index=name,
                operations=operations,
                refresh=False,
                timeout=self._server_timeout,
                # A document that is not valid JSON is not quoted back (see _reason).
                include_source_on_error=False,
            )
        return bulk_outcome(name, response["items"])

    @sink_call(Sink.ELASTICSEARCH)
    async def get(self, base: str, doc_id: str) -> dict[str, Any] | None:
        """The stored document with ``_id`` and ``_version`` added, or ``None``."""
        client = self._require_client()
        name = self.index_name(base)
        async with _translated(f"get from {name}"):
            try:
                response = await client.get(index=name, id=doc_id)
            except elasticsearch.NotFoundError as exc:
                if isinstance(exc.body, Mapping) and exc.body.get("found") is False:
                    return None
                raise  # the index itself is missing
        return {**response["_source"], "_id": response["_id"], "_version": response["_version"]}

    @sink_call(Sink.ELASTICSEARCH)
    async def search(self, base: str, query: str, size: int = 20) -> list[dict[str, Any]]:
        """Documents matching ``query`` over the index's keyword fields, for support.

        ``simple_query_string`` syntax: terms are ANDed, match exactly (``ord_123``,
        ``pi_3N...``), and ``pi_3N*`` matches a prefix; it never fails on bad syntax.
        Best matches first, then the most recently updated. Hits carry ``_id`` and
        ``_version``. A blank query or a missing index gives ``[]``.
        """
        if not query.strip():
            return []
        client = self._require_client()
        name = self.index_name(base)
        async with _translated(f"search {name}"):
            response = await client.search(
                index=name,
                query={
                    "simple_query_string": {
                        "query": query,
                        "fields": self._search_fields.get(base, ["*"]),
                        "default_operator": "and",
                        "lenient": True,
                    }
                },
                size=size,
                version=True,
                sort=["_score", {"updatedAt": {"order": "desc", "unmapped_type": "date"}}],
                ignore_unavailable=True,
                timeout=self._server_timeout,
            )
        return [
            {**hit["_source"], "_id": hit["_id"], "_version": hit["_version"]}
            for hit in response["hits"]["hits"]
        ]

    @sink_call(Sink.ELASTICSEARCH)
    async def refresh(self, base: str) -> None:
        """Make every write so far visible to search (tests, operators)."""
        client = self._require_client()
        name = self.index_name(base)
        async with _translated(f"refresh {name}"):
            await client.indices.refresh(index=name)
