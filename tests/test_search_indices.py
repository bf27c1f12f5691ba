"""Unit tests: the declared search indices, the door checks of documents, the index
request, the version sequence, and the search parameters (no services)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict

from base.clock import FrozenClock
from base.errors import ConfigError, InvalidEvent
from ingress.search_index import MAX_VERSION, VersionSequence, parse_index_request
from ingress.search_query import parse_search, search_query, search_sort
from schemas.search_indices import (
    ID_FIELD,
    TOMBSTONE_FIELD,
    default_indices,
    load_indices,
    public_source,
    stored_doc,
    tombstone_doc,
)

LISTINGS = default_indices()["listings"]

GOOD: dict[str, Any] = {
    "title": "Bright two-bed flat",
    "description": "Near the river",
    "city": "Lisbon",
    "type": "flat",
    "status": "active",
    "features": ["balcony", "lift"],
    "currency": "EUR",
    "price": 350000,
    "bedrooms": 2,
    "bathrooms": 1.5,
    "areaSqm": 78.5,
    "listedAt": "2025-01-31T09:30:00Z",
    "location": {"lat": 38.72, "lon": -9.14},
}


def _field_of(call: Any) -> str | None:
    with pytest.raises(InvalidEvent) as caught:
        call()
    return caught.value.field


# -- the declared indices -----------------------------------------------------------------


def test_listings_is_declared_with_every_kind_of_field() -> None:
    assert "listings" in default_indices()
    assert LISTINGS.fields_of("text") == ("title", "description")
    assert set(LISTINGS.fields_of("keyword")) >= {"city", "type", "status"}
    assert set(LISTINGS.fields_of("integer", "number")) >= {"price", "bedrooms"}
    assert LISTINGS.fields_of("date") == ("listedAt",)
    assert LISTINGS.fields_of("geo_point") == ("location",)


def test_the_stored_mapping_adds_the_reserved_fields_and_stays_strict() -> None:
    stored = LISTINGS.stored_mappings()
    assert stored["dynamic"] == "strict"
    assert stored["properties"][ID_FIELD] == {"type": "keyword"}
    assert stored["properties"][TOMBSTONE_FIELD] == {"type": "boolean"}
    assert ID_FIELD not in LISTINGS.mappings["properties"]  # the declaration is untouched


def _declare(tmp_path: Path, name: str, content: Any) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _mapping(**properties: Any) -> dict[str, Any]:
    return {"mappings": {"dynamic": "strict", "properties": properties}}


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("orders", _mapping(a={"type": "text"}), "not orders"),
        ("Bad", _mapping(a={"type": "text"}), "lower-case"),
        ("x", "{not json", "cannot be read"),
        ("x", {"mappings": {"properties": {"a": {"type": "text"}}}}, "strict"),
        ("x", {"mappings": {"dynamic": "strict", "properties": {}}}, "at least one"),
        ("x", {"mappings": {"dynamic": "strict"}, "extra": 1}, "description, mappings"),
        ("x", _mapping(a={"type": "nested"}), "nested"),
        ("x", _mapping(a={"type": "text", "copy_to": "b"}), "copy_to not supported"),
        ("x", _mapping(sluiceFlag={"type": "keyword"}), "not starting sluice"),
        ("x", _mapping(d={"type": "date", "format": "epoch_millis"}), "ISO 8601"),
        ("x", _mapping(s={"type": "scaled_float"}), "scaling_factor"),
    ],
)
def test_a_bad_declaration_stops_loading_naming_the_file(
    tmp_path: Path, name: str, content: Any, problem: str
) -> None:
    _declare(tmp_path, name, content)
    with pytest.raises(ConfigError) as caught:
        load_indices(tmp_path)
    assert f"{name}.json" in str(caught.value)
    assert problem in str(caught.value)


def test_the_file_names_are_the_allow_list(tmp_path: Path) -> None:
    _declare(tmp_path, "a", _mapping(t={"type": "text"}))
    _declare(tmp_path, "b", _mapping(k={"type": "keyword", "ignore_above": 10}))
    indices = load_indices(tmp_path)
    assert sorted(indices) == ["a", "b"]
    assert _field_of(lambda: indices.require("c")) == "index"
    assert _field_of(lambda: indices.require(3)) == "index"
    # ignore_above: longer keywords are accepted (Elasticsearch does not index them).
    indices["b"].check_doc({"k": "x" * 40_000})


# -- the door checks ----------------------------------------------------------------------


def test_a_whole_listing_passes() -> None:
    assert LISTINGS.check_doc(GOOD) == GOOD
    assert LISTINGS.check_doc({}) == {}
    assert LISTINGS.check_doc({"title": None, "features": []}) == {"title": None, "features": []}


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"colour": "red"}, "doc.colour"),
        ({"title": 5}, "doc.title"),
        ({"city": ["Lisbon", 3]}, "doc.city[1]"),
        ({"city": "x" * 32767}, "doc.city"),
        ({"price": 1.5}, "doc.price"),
        ({"price": "350000"}, "doc.price"),
        ({"price": True}, "doc.price"),
        ({"price": 2**63}, "doc.price"),
        ({"bedrooms": 2**31}, "doc.bedrooms"),
        ({"bathrooms": "1"}, "doc.bathrooms"),
        ({"bathrooms": False}, "doc.bathrooms"),
        ({"areaSqm": 1e39}, "doc.areaSqm"),
        ({"listedAt": "31/01/2025"}, "doc.listedAt"),
        ({"listedAt": "2025-02-30"}, "doc.listedAt"),
        ({"listedAt": "2025-01-31T25:00:00Z"}, "doc.listedAt"),
        ({"listedAt": "20250131"}, "doc.listedAt"),
        ({"listedAt": 1738315800000}, "doc.listedAt"),
        ({"location": [1, 2]}, "doc.location[0]"),
        ({"location": "38.7,-9.1"}, "doc.location"),
        ({"location": {"lat": 91, "lon": 0}}, "doc.location.lat"),
        ({"location": {"lat": 0, "lon": -180.5}}, "doc.location.lon"),
        ({"location": {"lat": 0}}, "doc.location.lon"),
        ({"location": {"lat": "0", "lon": 0}}, "doc.location.lat"),
        ({"location": {"lat": 0, "lon": 0, "alt": 3}}, "doc.location.alt"),
        ({ID_FIELD: "x"}, f"doc.{ID_FIELD}"),
        ({TOMBSTONE_FIELD: True}, f"doc.{TOMBSTONE_FIELD}"),
    ],
)
def test_a_bad_field_is_named(doc: dict[str, Any], field: str) -> None:
    assert _field_of(lambda: LISTINGS.check_doc(doc)) == field


@pytest.mark.parametrize(
    "value",
    [
        "2025-01-31",
        "2025-01-31T09:30",
        "2025-01-31T09:30:15",
        "2025-01-31T09:30:15.123Z",
        "2025-01-31T09:30:15.123456789+05:30",
        "2025-01-31T09:30:15-0800",
    ],
)
def test_iso_dates_pass(value: str) -> None:
    LISTINGS.check_doc({"listedAt": value})


def test_stored_documents_and_tombstones() -> None:
    assert stored_doc("l1", {"title": "t"}) == {"title": "t", ID_FIELD: "l1"}
    assert tombstone_doc("l1") == {ID_FIELD: "l1", TOMBSTONE_FIELD: True}
    assert public_source(stored_doc("l1", {"title": "t"})) == {"title": "t"}


# -- the index request --------------------------------------------------------------------


def _request(**fields: Any) -> dict[str, Any]:
    return {"index": "listings", "id": "l1", "op": "upsert", "doc": {"title": "t"}, **fields}


def test_an_upsert_and_a_delete_parse() -> None:
    upsert = parse_index_request(_request(version=7), default_indices())
    assert (upsert.key, upsert.op, upsert.version) == ("listings:l1", "upsert", 7)
    assert json.loads(upsert.doc_json or "") == {"title": "t"}
    delete = parse_index_request(
        {"index": "listings", "id": "l1", "op": "delete"}, default_indices()
    )
    assert (delete.op, delete.doc_json, delete.version) == ("delete", None, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], None),
        (_request(extra=1), "extra"),
        (_request(index="orders"), "index"),
        (_request(index=None), "index"),
        (_request(id=""), "id"),
        (_request(id="a\x00b"), "id"),
        (_request(id="x" * 257), "id"),
        (_request(op="merge"), "op"),
        (_request(op=None), "op"),
        (_request(version=0), "version"),
        (_request(version=-1), "version"),
        (_request(version=1.5), "version"),
        (_request(version="3"), "version"),
        (_request(version=True), "version"),
        (_request(version=MAX_VERSION + 1), "version"),
        (_request(doc=None), "doc"),
        (_request(doc=[1]), "doc"),
        (_request(doc={"location": {"lat": 99, "lon": 0}}), "doc.location.lat"),
        (_request(op="delete"), "doc"),
    ],
)
def test_a_bad_request_is_named(body: Any, field: str | None) -> None:
    assert _field_of(lambda: parse_index_request(body, default_indices())) == field


def test_versions_grow_with_the_clock_and_never_repeat() -> None:
    clock = FrozenClock(1_750_000_000.0)
    sequence = VersionSequence(clock)
    first = sequence.next()
    assert first == 1_750_000_000_000_000  # microseconds since the epoch
    assert [sequence.next() for _ in range(3)] == [first + 1, first + 2, first + 3]
    clock.advance(-5)  # the clock stepped back: still growing
    assert sequence.next() == first + 4
    clock.advance(10)
    assert sequence.next() == first + 5_000_000
    # A new process (a restart) starts from the clock, past what the old one handed out.
    clock.advance(1)
    assert VersionSequence(clock).next() > first + 5_000_000


# -- search parameters --------------------------------------------------------------------


def _search(**params: str | list[str]) -> Any:
    query: MultiDict[str] = MultiDict()
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            query.add(name, item)
    return parse_search(query, LISTINGS)


def test_search_parameters_become_filters() -> None:
    params = _search(
        q="river view",
        city=["Lisbon", "Porto"],
        type="flat",
        price_min="100000",
        price_max="400000",
        listedAt_from="2025-01-01",
        lat="38.7",
        lon="-9.1",
        distance="5km",
        size="10",
        sort="-price",
    )
    query = search_query(params, LISTINGS)["bool"]
    assert query["must"][0]["simple_query_string"]["fields"] == ["title", "description"]
    assert {"terms": {"city": ["Lisbon", "Porto"]}} in query["filter"]
    assert {"range": {"price": {"gte": 100000, "lte": 400000}}} in query["filter"]
    assert {"range": {"listedAt": {"gte": "2025-01-01"}}} in query["filter"]
    assert {"geo_distance": {"distance": "5km", "location": {"lat": 38.7, "lon": -9.1}}} in query[
        "filter"
    ]
    assert query["must_not"] == [{"term": {TOMBSTONE_FIELD: True}}]
    assert search_sort(params) == [{"price": {"order": "desc"}}, {ID_FIELD: {"order": "asc"}}]
    assert params.size == 10


def test_no_parameters_is_every_live_document_best_first() -> None:
    params = _search()
    assert search_query(params, LISTINGS)["bool"]["must"] == [{"match_all": {}}]
    assert search_sort(params)[0] == {"_score": {"order": "desc"}}
    assert params.size == 20


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"prce_min": "1"}, "prce_min"),
        ({"title": "x"}, "title"),  # text fields are searched with q, not filtered
        ({"q": ""}, "q"),
        ({"q": "x" * 1001}, "q"),
        ({"price_min": "cheap"}, "price_min"),
        ({"price_min": "1.5"}, "price_min"),
        ({"bathrooms_max": "nan"}, "bathrooms_max"),
        ({"listedAt_to": "yesterday"}, "listedAt_to"),
        ({"lat": "38.7", "lon": "-9.1"}, "distance"),
        ({"lat": "38.7", "distance": "5km"}, "lon"),
        ({"lat": "91", "lon": "0", "distance": "5km"}, "lat"),
        ({"lat": "0", "lon": "0", "distance": "5 miles"}, "distance"),
        ({"lat": "0", "lon": "0", "distance": "0km"}, "distance"),
        ({"size": "0"}, "size"),
        ({"size": "101"}, "size"),
        ({"from": "-1"}, "from"),
        ({"from": "9990", "size": "20"}, "from"),
        ({"from": "0", "search_after": "WzFd"}, "search_after"),
        ({"search_after": "not-a-cursor"}, "search_after"),
        ({"search_after": "WzFd"}, "search_after"),  # [1]: one value, two sort keys
        ({"sort": "title"}, "sort"),
        ({"sort": "-location"}, "sort"),
        ({"size": ["10", "20"]}, "size"),
    ],
)
def test_a_bad_search_parameter_is_named(params: dict[str, Any], field: str) -> None:
    assert _field_of(lambda: _search(**params)) == field
