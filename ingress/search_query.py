"""``GET /internal/v1/search/{index}``: a small query pass-through for support staff.

The index must be on the allow-list (404 otherwise). Parameters, each checked (400 naming
the parameter; an unknown one too, so a typo never silently widens a search):

- ``q``: full text over the index's ``text`` fields (Elasticsearch's
  ``simple_query_string``, terms ANDed; never fails on its syntax), at most 1000
  characters;
- ``<keyword field>=value`` (``city=Lisbon``, ``type=flat``): exact match; repeated, any
  of the values;
- ``<numeric field>_min`` / ``_max`` (``price_min=100000``): an inclusive range; a number
  (an integer for integer fields);
- ``<date field>_from`` / ``_to`` (``listedAt_from=2025-01-01``): an inclusive range of
  ISO 8601 dates;
- ``lat``, ``lon``, ``distance`` (``5km``, ``800m``, ``3mi``), all three or none: within
  that distance of the point, on the index's ``geo_point`` field;
- ``sort``: a keyword, numeric or date field, ``-field`` for descending; default: best
  match first. The document id always breaks ties, so paging is stable;
- ``size`` 1-100 (default 20); then ``from`` (``from + size`` at most 10000) or
  ``search_after``, the ``next`` cursor of the previous page (not both).

Answer: ``{"index", "total", "totalExact", "hits": [{"id", "version", "score", "doc"}],
"next"}``; ``next`` is the cursor of the page after this one (``null`` on a short page).
Deleted documents (tombstones, ``schemas.search_indices``) are never shown, and the
stored documents' reserved fields are left out. 503 when this ingress has no
``ELASTICSEARCH_URL`` or Elasticsearch is unreachable.

Parameter parsing and the query it builds are plain functions (:func:`parse_search`,
:func:`search_query`); the handler is the glue.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from multidict import MultiMapping

from base.errors import InvalidEvent, TransientError
from connectors.search_reader import SearchPage, SearchReader
from ingress.outcomes import NotFound, Unavailable
from ingress.responses import json_response
from schemas.search_indices import (
    ID_FIELD,
    TOMBSTONE_FIELD,
    SearchIndex,
    SearchIndices,
    check_date,
    default_indices,
    public_source,
)

__all__ = [
    "MAX_SIZE",
    "SearchParams",
    "page_body",
    "parse_search",
    "search_query",
    "search_query_handler",
    "search_sort",
]

log = logging.getLogger(__name__)

MAX_SIZE: Final = 100
DEFAULT_SIZE: Final = 20
MAX_WINDOW: Final = 10_000  # Elasticsearch's index.max_result_window
MAX_Q: Final = 1000
_DISTANCE: Final = re.compile(r"(?P<n>\d{1,7}(?:\.\d{1,6})?)(?P<unit>km|m|mi)")
_GEO_PARAMS: Final = ("lat", "lon", "distance")
_PAGING_PARAMS: Final = ("q", "sort", "size", "from", "search_after")


@dataclass(frozen=True)
class SearchParams:
    """A checked search: what :func:`search_query` turns into Elasticsearch's terms."""

    q: str | None = None
    terms: Mapping[str, Sequence[str]] = field(default_factory=dict)
    ranges: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    geo: tuple[str, float, float, str] | None = None  # field, lat, lon, distance
    sort: tuple[str, str] | None = None  # field, asc|desc
    size: int = DEFAULT_SIZE
    from_: int | None = None
    search_after: Sequence[Any] | None = None


def parse_search(params: MultiMapping[str], index: SearchIndex) -> SearchParams:
    """The query string of a search of ``index``, checked (module docstring).

    :raises InvalidEvent: naming the first bad parameter.
    """
    keywords = index.fields_of("keyword")
    numbers = index.fields_of("integer", "number")
    dates = index.fields_of("date")
    allowed = {
        *_PAGING_PARAMS,
        *_GEO_PARAMS,
        *keywords,
        *(f"{name}_{end}" for name in numbers for end in ("min", "max")),
        *(f"{name}_{end}" for name in dates for end in ("from", "to")),
    }
    for name in params:
        if name not in allowed:
            raise InvalidEvent(
                f"unknown parameter {name[:64]!r} for index {index.name}", field=name[:64]
            )
    for name in (*_PAGING_PARAMS, *_GEO_PARAMS, *(n for n in allowed if "_" in n)):
        if len(params.getall(name, [])) > 1:
            raise InvalidEvent(f"{name} may be given once", field=name)
    q = params.get("q")
    if q is not None and (not q.strip() or len(q) > MAX_Q):
        raise InvalidEvent(f"q must be 1-{MAX_Q} characters of search terms", field="q")
    terms = {name: params.getall(name) for name in keywords if name in params}
    ranges: dict[str, dict[str, Any]] = {}
    for name in numbers:
        integer = index.fields[name].kind == "integer"
        for end, op in (("min", "gte"), ("max", "lte")):
            key = f"{name}_{end}"
            if key in params:
                ranges.setdefault(name, {})[op] = _number(params[key], key, integer=integer)
    for name in dates:
        for end, op in (("from", "gte"), ("to", "lte")):
            key = f"{name}_{end}"
            if key in params:
                ranges.setdefault(name, {})[op] = check_date(params[key], key)
    size = _integer(params.get("size"), "size", 1, MAX_SIZE, DEFAULT_SIZE)
    from_ = params.get("from")
    if from_ is not None and "search_after" in params:
        raise InvalidEvent("give from or search_after, not both", field="search_after")
    start = None if from_ is None else _integer(from_, "from", 0, MAX_WINDOW - size, 0)
    sort = _sort(params.get("sort"), index)
    after = params.get("search_after")
    return SearchParams(
        q=q,
        terms=terms,
        ranges=ranges,
        geo=_geo(params, index),
        sort=sort,
        size=size,
        from_=start,
        search_after=None if after is None else _cursor(after, len(_sort_keys(sort))),
    )


def search_query(params: SearchParams, index: SearchIndex) -> dict[str, Any]:
    """Elasticsearch's ``query`` for ``params``: the text in ``must`` (it scores), the
    filters in ``filter``, and tombstones excluded."""
    filters: list[dict[str, Any]] = []
    for name, values in params.terms.items():
        filters.append({"terms": {name: list(values)}})
    for name, bounds in params.ranges.items():
        filters.append({"range": {name: dict(bounds)}})
    if params.geo is not None:
        geo_field, lat, lon, distance = params.geo
        filters.append(
            {"geo_distance": {"distance": distance, geo_field: {"lat": lat, "lon": lon}}}
        )
    must: list[dict[str, Any]] = []
    if params.q is not None:
        must.append(
            {
                "simple_query_string": {
                    "query": params.q,
                    "fields": list(index.fields_of("text")),
                    "default_operator": "and",
                }
            }
        )
    return {
        "bool": {
            "must": must or [{"match_all": {}}],
            "filter": filters,
            "must_not": [{"term": {TOMBSTONE_FIELD: True}}],
        }
    }


def search_sort(params: SearchParams) -> list[dict[str, Any]]:
    """The sort: the chosen field or the score, then the document id (a total order)."""
    return [{key: {"order": order}} for key, order in _sort_keys(params.sort)]


def page_body(index: str, page: SearchPage, size: int) -> dict[str, Any]:
    """The JSON answer for ``page`` (module docstring)."""
    hits = [
        {"id": hit.id, "version": hit.version, "score": hit.score, "doc": public_source(hit.source)}
        for hit in page.hits
    ]
    last = page.hits[-1] if page.hits else None
    more = last is not None and len(page.hits) >= size
    return {
        "index": index,
        "total": page.total,
        "totalExact": page.total_exact,
        "hits": hits,
        "next": _encode_cursor(last.sort) if more and last is not None else None,
    }


def _sort_keys(sort: tuple[str, str] | None) -> list[tuple[str, str]]:
    first = sort if sort is not None else ("_score", "desc")
    return [first, (ID_FIELD, "asc")]


def _sort(value: str | None, index: SearchIndex) -> tuple[str, str] | None:
    if value is None:
        return None
    name, order = (value[1:], "desc") if value.startswith("-") else (value, "asc")
    sortable = index.fields_of("keyword", "integer", "number", "date")
    if name not in sortable:
        raise InvalidEvent(
            f"sort must be one of {', '.join(sortable)} (- in front: descending)", field="sort"
        )
    return name, order


def _geo(params: MultiMapping[str], index: SearchIndex) -> tuple[str, float, float, str] | None:
    given = [name for name in _GEO_PARAMS if name in params]
    if not given:
        return None
    missing = [name for name in _GEO_PARAMS if name not in params]
    if missing:
        raise InvalidEvent(
            f"a distance search needs lat, lon and distance together ({missing[0]} is missing)",
            field=missing[0],
        )
    geo_fields = index.fields_of("geo_point")
    if len(geo_fields) != 1:
        raise InvalidEvent(f"index {index.name} has no single geo_point field", field="lat")
    lat = _number(params["lat"], "lat", integer=False)
    lon = _number(params["lon"], "lon", integer=False)
    if not -90 <= lat <= 90:
        raise InvalidEvent("lat must be from -90 to 90", field="lat")
    if not -180 <= lon <= 180:
        raise InvalidEvent("lon must be from -180 to 180", field="lon")
    distance = params["distance"]
    match = _DISTANCE.fullmatch(distance)
    if match is None or float(match["n"]) <= 0:
        raise InvalidEvent("distance must be like 5km, 800m or 3mi", field="distance")
    return geo_fields[0], lat, lon, distance


def _number(value: str, name: str, *, integer: bool) -> Any:
    try:
        number: Any = int(value) if integer else float(value)
    except ValueError:
        number = None
    if number is None or (not integer and number != number) or abs(number) == float("inf"):
        kind = "an integer" if integer else "a number"
        raise InvalidEvent(f"{name} must be {kind}", field=name)
    return number


def _integer(value: str | None, name: str, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise InvalidEvent(f"{name} must be an integer from {low} to {high}", field=name)
    return int(value)


def _encode_cursor(sort: Sequence[Any]) -> str:
    raw = json.dumps(list(sort), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(value: str, length: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        cursor = json.loads(raw)
    except (ValueError, binascii.Error):
        cursor = None
    if (
        not isinstance(cursor, list)
        or len(cursor) != length
        or not all(isinstance(item, str | int | float) for item in cursor)
    ):
        raise InvalidEvent(
            "search_after must be the next cursor of the previous page (same sort)",
            field="search_after",
        )
    return cursor


def search_query_handler(
    reader: SearchReader | None, indices: SearchIndices | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    allowed = indices if indices is not None else default_indices()

    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["index"]
        index = allowed.get(name)
        if index is None:
            raise NotFound(f"no search index {name[:64]!r}")
        params = parse_search(request.query, index)  # a bad parameter: 400, never 503
        if reader is None:
            raise Unavailable("search is unavailable: this ingress has no ELASTICSEARCH_URL")
        try:
            page = await reader.search(
                index.name,
                query=search_query(params, index),
                sort=search_sort(params),
                size=params.size,
                from_=params.from_,
                search_after=params.search_after,
            )
        except TransientError as exc:
            log.warning("search unavailable", extra={"error": str(exc)})
            raise Unavailable("search is unavailable: retry later") from exc
        return json_response(page_body(index.name, page, params.size))

    return handle
