"""commands.search.index → the declared search indices in Elasticsearch (``_bulk``,
external versions).

Batched (``streams.agents.batched``): each batch of ``IndexCommand`` records becomes one
``_bulk`` request per index, every operation an ``index`` with ``version_type=external``
and the command's ``docVersion``. An upsert stores the caller's document (plus the id for
sorting); a delete stores a *tombstone* (``schemas.search_indices``) with the delete's
version. Elasticsearch keeps a document only when its version is above the stored one,
so:

- a late or replayed command never overwrites newer state: it is refused with a version
  conflict, which is success here (the newer state is what should be there);
- a delete is never undone by an older upsert, however late the upsert comes: the
  tombstone is a document whose version Elasticsearch keeps for as long as the document
  exists. A real ``delete`` would not do: Elasticsearch forgets a deleted document's
  version after ``index.gc_deletes`` (60 s by default), and an older upsert arriving
  after that would bring the document back. Tombstones cost a small document per
  deleted id, kept until the index is rebuilt;
- commands for one document keep their order (keyed ``index:id``), and the order does
  not even matter: whatever order the batches land in, each document ends at its
  highest version. Equal versions: the first one written stays.

Failures go through the shared runner (``streams.effects``): Elasticsearch unreachable,
429 or 5xx for the request or any document → the whole batch to the next
``retry.<delay>`` topic (rewriting what was already written is refused as stale, so that
is harmless); a document Elasticsearch refuses for good (a mapping conflict, a document
too large) → ``DocumentsRejected``, so the runner writes the batch's records one by one
and dead-letters only the refused one, with Elasticsearch's reason; the rest of the batch
is written. A command that does not decode, names an index not on this worker's
allow-list or carries a doc that is not a JSON object is dead-lettered too.

The indices (``SLUICE_SEARCH_INDEX_PREFIX`` + each declared name) are created with their
mapping when the worker starts, and again before the first batch if that failed (an
index that exists is left as it is). Without ``ELASTICSEARCH_URL`` the agent is not
registered: commands wait on the topic for a worker that has it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Final

from base.errors import InvalidEvent, PermanentError
from connectors.elasticsearch import SearchProjection, VersionedDoc
from schemas.search_indices import SearchIndices, default_indices, stored_doc, tombstone_doc
from streams.agents.batched import register_batched
from streams.context import WorkerContext
from streams.records import Inbound

__all__ = ["AGENT", "SearchIndexer", "register"]

log = logging.getLogger(__name__)

AGENT: Final = "index_search"


def register(ctx: WorkerContext) -> None:
    if not ctx.settings.elasticsearch_url:
        log.info("ELASTICSEARCH_URL is not set: search index commands are not consumed")
        return
    indexer = SearchIndexer(ctx, default_indices())
    register_batched(ctx, AGENT, indexer.run)
    ctx.topology.app.task(indexer.create_indices)


class SearchIndexer:
    """The effect: decode a batch of commands and write them (module docstring)."""

    def __init__(self, ctx: WorkerContext, indices: SearchIndices) -> None:
        self._ctx = ctx
        self._indices = indices
        self._created = False

    async def create_indices(self) -> None:
        """At worker start: create the declared indices; a failure is logged (the first
        batch tries again)."""
        try:
            search = await self._ctx.search()
            if search is not None:
                await self._ensure(search)
        except Exception:
            log.exception("creating the search indices failed; retried on the first command")

    async def run(self, records: Sequence[Inbound]) -> None:
        """Write ``records``' commands.

        :raises InvalidEvent: / :raises PermanentError: a command cannot be written (the
            runner dead-letters it, after splitting the batch).
        :raises DocumentsRejected: Elasticsearch refused documents.
        :raises TransientError: Elasticsearch unavailable.
        """
        search = await self._ctx.search()
        if search is None:  # not registered without ELASTICSEARCH_URL
            raise PermanentError("ELASTICSEARCH_URL is not set")
        batches: dict[str, list[VersionedDoc]] = {}
        for record in records:
            index, doc = self._versioned_doc(record)
            batches.setdefault(index, []).append(doc)
        await self._ensure(search)
        for index, docs in batches.items():
            outcome = await search.write_versioned(index, docs)
            if outcome.stale:
                log.debug(
                    "stale search commands ignored",
                    extra={"index": index, "stale": outcome.stale, "written": outcome.written},
                )

    async def _ensure(self, search: SearchProjection) -> None:
        if self._created:
            return
        for index in self._indices.values():
            await search.ensure_index(index.name, index.stored_mappings(), index.settings)
        self._created = True

    def _versioned_doc(self, record: Inbound) -> tuple[str, VersionedDoc]:
        command = self._ctx.codec.decode(record.value, topic=record.topic).record
        name = command["index"]
        if name not in self._indices:
            raise PermanentError(f"index {name[:64]!r} is not on this worker's allow-list")
        doc_id: str = command["id"]
        version: int = command["docVersion"]
        if command["op"] == "delete":
            return name, VersionedDoc(doc_id, version, tombstone_doc(doc_id))
        if command["op"] != "upsert":
            raise InvalidEvent(f"op must be upsert or delete, not {command['op'][:32]!r}")
        return name, VersionedDoc(doc_id, version, stored_doc(doc_id, _doc(command.get("doc"))))


def _doc(text: Any) -> dict[str, Any]:
    try:
        doc = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise InvalidEvent("an upsert's doc must be a JSON object text")
    return doc
