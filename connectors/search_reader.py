"""Read side of the search indices, for the ingress's support query route.

:class:`SearchReader` runs one ``_search`` against ``index_prefix + index`` and returns
the hits as plain values. It never creates an index (the worker does): a search of an
index that does not exist yet finds nothing. Errors are translated as the projection's
(``connectors.elasticsearch.translate_error``): unreachable, timeouts, 429 and 5xx are a
:class:`~base.errors.TransientError` (the route answers 503); the client never retries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import elasticsearch
from elasticsearch import AsyncElasticsearch

from connectors.elasticsearch import translate_error

__all__ = ["SearchHit", "SearchPage", "SearchReader"]


@dataclass(frozen=True, slots=True)
class SearchHit:
    id: str
    version: int | None
    score: float | None
    source: Mapping[str, Any]
    sort: Sequence[Any]


@dataclass(frozen=True, slots=True)
class SearchPage:
    """``total`` matches (a lower bound unless ``total_exact``) and this page's hits."""

    total: int
    total_exact: bool
    hits: Sequence[SearchHit]


class SearchReader:
    """Searches of ``index_prefix + index``. ``start()`` makes the client (no request);
    ``close()`` releases it. Each call fails within about ``request_timeout_s``."""

    def __init__(
        self, url: str, *, index_prefix: str = "", request_timeout_s: float = 10.0
    ) -> None:
        self.url = url
        self.index_prefix = index_prefix
        self.request_timeout_s = request_timeout_s
        self._client: AsyncElasticsearch | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = AsyncElasticsearch(
                self.url,
                request_timeout=self.request_timeout_s,
                max_retries=0,
                retry_on_timeout=False,
            )

    async def close(self) -> None:
        """Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def search(
        self,
        index: str,
        *,
        query: Mapping[str, Any],
        sort: Sequence[Any],
        size: int,
        from_: int | None = None,
        search_after: Sequence[Any] | None = None,
    ) -> SearchPage:
        """Run one search of ``index``: the hits of ``query`` in ``sort`` order, a page of
        ``size`` from ``from_`` or after the ``search_after`` sort values.

        :raises TransientError: Elasticsearch unreachable or overloaded.
        :raises PermanentError: it refused the search (a bug in the caller's body).
        """
        if self._client is None:
            await self.start()
        assert self._client is not None
        name = self.index_prefix + index
        try:
            response = await self._client.search(
                index=name,
                query=dict(query),
                sort=list(sort),
                size=size,
                from_=from_,
                search_after=list(search_after) if search_after is not None else None,
                version=True,
                ignore_unavailable=True,
                track_total_hits=10_000,
            )
        except (elasticsearch.ApiError, elasticsearch.TransportError) as exc:
            error = translate_error(exc, f"search {name}")
            if error is None:
                raise
            raise error from exc
        total = response["hits"]["total"]
        return SearchPage(
            total=int(total["value"]),
            total_exact=total["relation"] == "eq",
            hits=[
                SearchHit(
                    id=str(hit["_id"]),
                    version=hit.get("_version"),
                    score=hit.get("_score"),
                    source=hit.get("_source") or {},
                    sort=hit.get("sort") or (),
                )
                for hit in response["hits"]["hits"]
            ],
        )
