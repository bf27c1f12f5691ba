"""The search indices the repository declares: the allow-list and each index's mapping.

``schemas/search/<name>.json`` declares index ``<name>`` (``listings.json``: the property
listings). A file holds ``description`` (text), ``mappings`` (Elasticsearch's, with
``"dynamic": "strict"`` and flat ``properties``) and optionally ``settings`` (passed to
Elasticsearch when the index is created). The file names are the allow-list: the index
route refuses any other index, and the worker creates exactly these (``SLUICE_SEARCH_INDEX_
PREFIX`` + name) with their mapping.

Each property has one of the types the door can check, so a document the index route
accepts is one Elasticsearch takes (:meth:`SearchIndex.check_doc`, a 400 naming the field):

=================================  ==========================================================
type                               a value the route accepts (``null`` = absent, arrays ok)
=================================  ==========================================================
``text``                           a string
``keyword``                        a string of at most 32766 UTF-8 bytes (Lucene's longest
                                   term), unless the property sets ``ignore_above``
``long`` ``integer`` ``short``     an integer (not ``3.0``, not ``true``) in the type's range
``byte``
``double`` ``float`` ``half_float``  a number in the type's range
``scaled_float``
``date``                           an ISO 8601 string: ``2025-01-31``, ``2025-01-31T09:30``,
                                   seconds, fractions and a zone (``Z``, ``+02:00``) optional
``geo_point``                      ``{"lat": -90..90, "lon": -180..180}``
``boolean``                        ``true`` or ``false``
=================================  ==========================================================

A date property may set ``format`` only to one that reads those strings
(``strict_date_optional_time`` and its relatives): anything else could refuse, at write
time, a date the door accepted.

**Reserved fields.** The stored mapping adds two fields the declared ones may not use
(no declared field starts with ``sluice``): ``sluiceId`` (keyword, the document id, so
searches can sort on it as a tie-breaker: Elasticsearch 8 refuses to sort on ``_id``) and
``sluiceDeleted`` (boolean). A delete is stored as a *tombstone*, a document
``{"sluiceId": id, "sluiceDeleted": true}`` written with the delete's external version,
never as an Elasticsearch delete: Elasticsearch forgets a deleted document's version after
``index.gc_deletes`` (60 s), after which an older upsert would bring it back; a tombstone's
version stays for as long as the document does. Searches filter tombstones out
(:func:`public_source` strips the reserved fields from what callers see).

Pure: reading the files is the only IO, done once (:func:`default_indices`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

from base.errors import ConfigError, InvalidEvent

__all__ = [
    "ID_FIELD",
    "RESERVED_PREFIX",
    "SEARCH_DIR",
    "TOMBSTONE_FIELD",
    "FieldKind",
    "FieldSpec",
    "SearchIndex",
    "SearchIndices",
    "check_date",
    "default_indices",
    "load_indices",
    "public_source",
    "stored_doc",
    "tombstone_doc",
]

SEARCH_DIR: Final = Path(__file__).resolve().parent / "search"

TOMBSTONE_FIELD: Final = "sluiceDeleted"
ID_FIELD: Final = "sluiceId"
RESERVED_PREFIX: Final = "sluice"

FieldKind = Literal["text", "keyword", "integer", "number", "date", "geo_point", "boolean"]

MAX_KEYWORD_BYTES: Final = 32766
"""Lucene's longest term: a longer keyword value makes Elasticsearch refuse the document."""

# Elasticsearch type → (kind, smallest, largest).
_INTEGERS: Final[dict[str, tuple[int, int]]] = {
    "long": (-(2**63), 2**63 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "short": (-(2**15), 2**15 - 1),
    "byte": (-(2**7), 2**7 - 1),
}
_NUMBERS: Final[dict[str, float]] = {
    "double": 1.7976931348623157e308,
    "float": 3.4028234663852886e38,
    "half_float": 65504.0,
    "scaled_float": 1.7976931348623157e308,
}
_PLAIN: Final[dict[str, FieldKind]] = {
    "text": "text",
    "keyword": "keyword",
    "date": "date",
    "geo_point": "geo_point",
    "boolean": "boolean",
}
_DATE_FORMATS: Final = frozenset(
    {
        "strict_date_optional_time",
        "strict_date_optional_time_nanos",
        "date_optional_time",
        "strict_date_optional_time||epoch_millis",
    }
)
# What a property may say besides its type (the rest would change what the door checks).
_PROPERTY_KEYS: Final = frozenset(
    {"type", "format", "ignore_above", "analyzer", "search_analyzer", "scaling_factor"}
)
_INDEX_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_FIELD_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_RESERVED_INDICES: Final = frozenset({"orders"})  # the orders projection's index
# yyyy-MM-dd, then optionally THH:mm[:ss[.fraction]] and a zone.
_ISO_DATE: Final = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.\d{1,9})?)?"
    r"(?P<zone>Z|[+-](?P<zh>\d{2}):?(?P<zm>\d{2}))?)?"
)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One declared property: its Elasticsearch ``type`` and what the door accepts."""

    name: str
    type: str
    kind: FieldKind
    low: float = 0
    high: float = 0
    max_bytes: int | None = None


@dataclass(frozen=True)
class SearchIndex:
    """One declared index: ``name`` (without the deployment's prefix), its mapping."""

    name: str
    description: str
    mappings: Mapping[str, Any]
    settings: Mapping[str, Any]
    fields: Mapping[str, FieldSpec]

    def stored_mappings(self) -> dict[str, Any]:
        """The mapping the index is created with: the declared one plus the reserved
        fields (module docstring)."""
        properties = {
            **self.mappings["properties"],
            ID_FIELD: {"type": "keyword"},
            TOMBSTONE_FIELD: {"type": "boolean"},
        }
        return {**self.mappings, "properties": properties}

    def fields_of(self, *kinds: FieldKind) -> tuple[str, ...]:
        """The names of the declared fields of ``kinds``, in declaration order."""
        return tuple(name for name, spec in self.fields.items() if spec.kind in kinds)

    def check_doc(self, doc: Any, path: str = "doc") -> dict[str, Any]:
        """``doc`` if every field is declared and of its field's kind (table above).

        :raises InvalidEvent: naming the first bad field, e.g. ``doc.location.lat``.
        """
        if not isinstance(doc, dict):
            raise InvalidEvent(f"{path} must be a JSON object of the index's fields", field=path)
        for name, value in doc.items():
            spec = self.fields.get(name)
            where = f"{path}.{name[:64]}"
            if spec is None:
                raise InvalidEvent(
                    f"{where} is not a field of index {self.name} "
                    f"(fields: {', '.join(self.fields)})",
                    field=where,
                )
            if isinstance(value, list):
                for position, item in enumerate(value):
                    _check_value(spec, item, f"{where}[{position}]")
            else:
                _check_value(spec, value, where)
        return doc


class SearchIndices(Mapping[str, SearchIndex]):
    """The allow-list: every declared index by name."""

    def __init__(self, indices: Mapping[str, SearchIndex]) -> None:
        self._indices = dict(indices)

    def __getitem__(self, name: str) -> SearchIndex:
        return self._indices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)

    def require(self, name: Any, path: str = "index") -> SearchIndex:
        """The index ``name``.

        :raises InvalidEvent: ``name`` is not on the allow-list (``field=path``).
        """
        index = self._indices.get(name) if isinstance(name, str) else None
        if index is None:
            allowed = ", ".join(sorted(self._indices)) or "none"
            shown = repr(name[:64]) if isinstance(name, str) else "that"
            raise InvalidEvent(
                f"{path} {shown} is not a search index of this deployment (allowed: {allowed})",
                field=path,
            )
        return index


def stored_doc(doc_id: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document as stored: the caller's fields and the id for sorting."""
    return {**doc, ID_FIELD: doc_id}


def tombstone_doc(doc_id: str) -> dict[str, Any]:
    """What a delete stores (module docstring): nothing but the id and the mark."""
    return {ID_FIELD: doc_id, TOMBSTONE_FIELD: True}


def public_source(source: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document as callers see it: without the reserved fields."""
    return {name: value for name, value in source.items() if not name.startswith(RESERVED_PREFIX)}


def check_date(value: Any, path: str) -> str:
    """An ISO 8601 date or date-time string as the table above says.

    :raises InvalidEvent: anything else (``field=path``).
    """
    match = _ISO_DATE.fullmatch(value) if isinstance(value, str) else None
    try:
        if match is None:
            raise ValueError
        dt.datetime(
            int(match["y"]),
            int(match["mo"]),
            int(match["d"]),
            int(match["h"] or 0),
            int(match["mi"] or 0),
            int(match["s"] or 0),
        )
        if match["zh"] is not None and (int(match["zh"]) > 23 or int(match["zm"]) > 59):
            raise ValueError
    except ValueError:
        raise InvalidEvent(
            f"{path} must be an ISO 8601 date or date-time, e.g. 2025-01-31 or "
            "2025-01-31T09:30:00Z",
            field=path,
        ) from None
    return str(value)


def _check_value(spec: FieldSpec, value: Any, path: str) -> None:
    if value is None:
        return  # Elasticsearch indexes null as absent
    if spec.kind in ("text", "keyword"):
        if not isinstance(value, str):
            raise InvalidEvent(f"{path} must be a string ({spec.type} field)", field=path)
        if spec.max_bytes is not None and len(value.encode()) > spec.max_bytes:
            raise InvalidEvent(
                f"{path} is longer than {spec.max_bytes} bytes ({spec.type} field)", field=path
            )
    elif spec.kind == "integer":
        if type(value) is not int or not spec.low <= value <= spec.high:
            raise InvalidEvent(
                f"{path} must be an integer from {int(spec.low)} to {int(spec.high)} "
                f"({spec.type} field)",
                field=path,
            )
    elif spec.kind == "number":
        if not _is_number(value) or not spec.low <= value <= spec.high:
            raise InvalidEvent(f"{path} must be a number ({spec.type} field)", field=path)
    elif spec.kind == "date":
        check_date(value, path)
    elif spec.kind == "geo_point":
        _check_geo_point(value, path)
    elif type(value) is not bool:
        raise InvalidEvent(f"{path} must be true or false", field=path)


def _check_geo_point(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise InvalidEvent(f"{path} must be an object {{lat, lon}} (geo_point field)", field=path)
    for name in sorted(value.keys() - {"lat", "lon"}):
        raise InvalidEvent(f"{path} has only lat and lon", field=f"{path}.{name[:64]}")
    for name, limit in (("lat", 90.0), ("lon", 180.0)):
        where = f"{path}.{name}"
        number: Any = value.get(name)
        if not _is_number(number) or not -limit <= number <= limit:
            raise InvalidEvent(
                f"{where} must be a number from {-limit:g} to {limit:g}", field=where
            )


def _is_number(value: Any) -> bool:
    # bool is an int to Python, not a number to a mapping.
    return type(value) in (int, float) and math.isfinite(value)


# -- loading ------------------------------------------------------------------------------


def load_indices(directory: Path = SEARCH_DIR) -> SearchIndices:
    """Every ``*.json`` of ``directory``, checked.

    :raises ConfigError: naming the file and the problem.
    """
    indices: dict[str, SearchIndex] = {}
    for path in sorted(directory.glob("*.json")):
        indices[path.stem] = _load_index(path)
    return SearchIndices(indices)


@cache
def default_indices() -> SearchIndices:
    """The repository's allow-list (``schemas/search/``), loaded once."""
    return load_indices()


def _load_index(path: Path) -> SearchIndex:
    name = path.stem

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"search index {path.name}: {problem}")

    if not _INDEX_NAME.fullmatch(name) or name in _RESERVED_INDICES:
        raise fail("the file name must be a lower-case index name, not orders")
    try:
        declared = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"cannot be read: {exc}") from None
    if not isinstance(declared, dict) or declared.keys() - {"description", "mappings", "settings"}:
        raise fail("must be an object of description, mappings and settings")
    mappings = declared.get("mappings")
    settings = declared.get("settings", {})
    description = declared.get("description", "")
    if not isinstance(description, str) or not isinstance(settings, dict):
        raise fail("description must be text and settings an object")
    if not isinstance(mappings, dict) or mappings.keys() - {"dynamic", "properties"}:
        raise fail("mappings must be an object of dynamic and properties")
    if mappings.get("dynamic") != "strict":
        raise fail('mappings.dynamic must be "strict" (an unknown field is refused)')
    properties = mappings.get("properties")
    if not isinstance(properties, dict) or not properties:
        raise fail("mappings.properties must name at least one field")
    fields = {
        field_name: _field_spec(field_name, spec, fail) for field_name, spec in properties.items()
    }
    return SearchIndex(name, description, mappings, settings, fields)


def _field_spec(name: str, spec: Any, fail: Any) -> FieldSpec:
    where = f"mappings.properties.{name}"
    if not _FIELD_NAME.fullmatch(name) or name.lower().startswith(RESERVED_PREFIX):
        raise fail(f"{where}: field names are 1-64 letters, digits and _, not starting sluice")
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise fail(f"{where} must be an object with a type")
    if unknown := sorted(spec.keys() - _PROPERTY_KEYS):
        raise fail(f"{where}: {', '.join(unknown)} not supported")
    es_type: str = spec["type"]
    if es_type == "date" and spec.get("format", "strict_date_optional_time") not in _DATE_FORMATS:
        raise fail(f"{where}.format must read ISO 8601 ({', '.join(sorted(_DATE_FORMATS))})")
    if es_type == "scaled_float" and not isinstance(spec.get("scaling_factor"), int | float):
        raise fail(f"{where}.scaling_factor is required for scaled_float")
    if es_type in _INTEGERS:
        low, high = _INTEGERS[es_type]
        return FieldSpec(name, es_type, "integer", low, high)
    if es_type in _NUMBERS:
        limit = _NUMBERS[es_type]
        return FieldSpec(name, es_type, "number", -limit, limit)
    kind = _PLAIN.get(es_type)
    if kind is None:
        known = ", ".join([*_PLAIN, *_INTEGERS, *_NUMBERS])
        raise fail(f"{where}.type {es_type!r} is not one the index route can check ({known})")
    max_bytes = None
    if kind == "keyword" and "ignore_above" not in spec:
        max_bytes = MAX_KEYWORD_BYTES
    return FieldSpec(name, es_type, kind, max_bytes=max_bytes)
