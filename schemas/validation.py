"""Strict validation of records before they are encoded: fastavro decides, this explains.

fastavro's writer alone silently truncates floats into ``long`` fields, accepts any
truthy value as a ``boolean``, writes out-of-range ``int`` values and ignores unknown
keys, so the codec checks each record first:

- :func:`fastavro.validation.validate` with ``strict=True`` (types, ranges, enum symbols,
  unions, required fields) on every record, and the codec writes with fastavro's
  ``strict_allow_default`` (unknown keys, at any depth, are refused);
- two rules of Sluice's own that Avro has no word for, on the record's top-level fields
  (where every timestamp and raw-bytes field of the catalog is): a naive ``datetime`` in
  a timestamp field is refused (fastavro would read it as the machine's local time), and
  a ``memoryview`` in a ``bytes`` field is accepted (fastavro accepts only ``bytes`` and
  ``bytearray``) by copying it to ``bytes``.

fastavro's errors name a field as ``<record full name>.<field>``, without array indices,
map keys or the path above the innermost record. So once fastavro has refused a record
(and only then: the happy path builds no strings), :func:`explain` walks the record
along the schema to the first bad value and says what is wrong there, with its path
(``data.items[1].quantity``, ``attributes[k]``). The verdict on each primitive value is
fastavro's own; the walk only finds where it is.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastavro.validation import validate

__all__ = ["Problem", "TopLevelRules", "explain"]

_TIMESTAMPS = frozenset(
    {"timestamp-millis", "timestamp-micros", "local-timestamp-millis", "local-timestamp-micros"}
)
_EXPECTED = {
    "null": "null",
    "boolean": "a boolean",
    "int": "an int",
    "long": "a long (integer)",
    "float": "a number",
    "double": "a number",
    "string": "a string",
    "bytes": "bytes",
}
_RANGE = {"int": "an int (32-bit)", "long": "a long (64-bit)"}


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with a record: ``path`` is empty for the record itself."""

    path: str
    message: str


class _Bad(Exception):
    """Raised at the bad value; each enclosing record/array/map adds its step going out."""

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.steps: list[str] = [] if step is None else [step]  # innermost first


@dataclass(frozen=True, slots=True)
class TopLevelRules:
    """Sluice's own rules for one schema's top-level fields (see the module doc)."""

    timestamps: tuple[str, ...]
    byte_fields: tuple[str, ...]

    @classmethod
    def of(cls, parsed: Any) -> TopLevelRules:
        named = parsed.get("__named_schemas", {}) if isinstance(parsed, Mapping) else {}
        timestamps: list[str] = []
        byte_fields: list[str] = []
        fields = parsed.get("fields", ()) if isinstance(parsed, Mapping) else ()
        for field in fields:
            branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
            for branch in (_deref(b, named) for b in branches):
                if _logical(branch) in _TIMESTAMPS:
                    timestamps.append(field["name"])
                elif _kind(branch) == "bytes":
                    byte_fields.append(field["name"])
        return cls(tuple(timestamps), tuple(byte_fields))

    def apply(self, record: Mapping[str, Any]) -> Mapping[str, Any]:
        """``record``, with memoryviews copied to bytes (a copy of the dict, only then).
        A non-mapping record is returned as it is, for fastavro to refuse.

        :raises _Bad: a timestamp field holds a naive datetime.
        """
        if not isinstance(record, Mapping):
            return record
        for name in self.timestamps:
            value = record.get(name)
            if isinstance(value, _dt.datetime) and value.utcoffset() is None:
                raise _Bad("expected a timezone-aware datetime, got a naive one", "." + name)
        for name in self.byte_fields:
            if isinstance(record.get(name), memoryview):
                record = {**record, name: bytes(record[name])}
        return record


def check(record: Any, parsed: Any, rules: TopLevelRules) -> Mapping[str, Any] | Problem:
    """The record to write (see :meth:`TopLevelRules.apply`), or why it cannot be written."""
    try:
        adapted = rules.apply(record)
    except _Bad as bad:
        return _problem(bad)
    if validate(adapted, parsed, raise_errors=False, strict=True):
        return adapted
    return explain(record, parsed)


def explain(record: Any, parsed: Any) -> Problem:
    """Why ``record`` does not fit ``parsed`` (a ``fastavro.parse_schema`` result).

    Call it after fastavro refused the record (its validation or its strict writer); if
    the walk finds nothing wrong, fastavro's refusal is reported for the whole record.
    """
    named = parsed.get("__named_schemas", {}) if isinstance(parsed, Mapping) else {}
    try:
        _Walk(named).value(record, parsed)
    except _Bad as bad:
        return _problem(bad)
    return Problem("", "refused by the Avro writer")


def _problem(bad: _Bad) -> Problem:
    return Problem("".join(reversed(bad.steps)).lstrip("."), bad.message)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _deref(schema: Any, named: Mapping[str, Any]) -> Any:
    if isinstance(schema, str) and schema in named:
        return named[schema]
    return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    kind = schema["type"]
    return kind if isinstance(kind, str) else _kind(kind)


def _logical(schema: Any) -> str | None:
    return schema.get("logicalType") if isinstance(schema, Mapping) else None


class _Walk:
    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named

    def ok(self, value: Any, schema: Any) -> bool:
        try:
            self.value(value, schema)
        except _Bad:
            return False
        return True

    def value(self, value: Any, schema: Any) -> None:
        schema = _deref(schema, self._named)
        kind = _kind(schema)
        if kind == "union":
            self._union(value, schema)
        elif kind in ("record", "error"):
            self._record(value, schema)
        elif kind == "array":
            self._array(value, schema)
        elif kind == "map":
            self._map(value, schema)
        else:
            self._leaf(value, schema, kind)

    def _leaf(self, value: Any, schema: Any, kind: str) -> None:
        logical = _logical(schema)
        if logical in _TIMESTAMPS and isinstance(value, _dt.datetime):
            if value.utcoffset() is None:
                raise _Bad("expected a timezone-aware datetime, got a naive one")
            return
        if kind == "bytes" and isinstance(value, memoryview):
            value = bytes(value)
        # fastavro's verdict; the message is ours.
        if validate(value, schema, raise_errors=False, strict=True):
            return
        name = _type_name(value)
        if logical in _TIMESTAMPS:
            raise _Bad(
                f"expected a timestamp (int ms since the epoch or an aware datetime), got {name}"
            )
        if logical is not None:
            raise _Bad(f"expected a {logical}, got {name}")
        if kind in _RANGE and isinstance(value, int) and not isinstance(value, bool):
            raise _Bad(f"{value} is out of range for {_RANGE[kind]}")
        if kind == "enum":
            raise _Bad(f"expected one of {', '.join(schema['symbols'])}, got {value!r}")
        if kind == "fixed":
            raise _Bad(f"expected {schema['size']} bytes ({schema['name']})")
        raise _Bad(f"expected {_EXPECTED.get(kind, kind)}, got {name}")

    def _record(self, value: Any, schema: Mapping[str, Any]) -> None:
        short = str(schema["name"]).rsplit(".", 1)[-1]
        if not isinstance(value, Mapping):
            raise _Bad(f"expected an object ({short}), got {_type_name(value)}")
        names = set()
        for field in schema["fields"]:
            name = field["name"]
            names.add(name)
            if name in value:
                try:
                    self.value(value[name], field["type"])
                except _Bad as bad:
                    bad.steps.append("." + name)
                    raise
            elif "default" not in field:
                raise _Bad("is required", "." + name)
        extra = sorted(str(key) for key in value if key not in names)
        if extra:
            raise _Bad(f"unknown field (not in {short})", "." + extra[0])

    def _array(self, value: Any, schema: Mapping[str, Any]) -> None:
        if not isinstance(value, list | tuple):
            raise _Bad(f"expected an array, got {_type_name(value)}")
        for index, item in enumerate(value):
            try:
                self.value(item, schema["items"])
            except _Bad as bad:
                bad.steps.append(f"[{index}]")
                raise

    def _map(self, value: Any, schema: Mapping[str, Any]) -> None:
        if not isinstance(value, Mapping):
            raise _Bad(f"expected a map (object), got {_type_name(value)}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Bad(f"map keys must be strings, got {_type_name(key)}", f"[{key!r}]")
            try:
                self.value(item, schema["values"])
            except _Bad as bad:
                bad.steps.append(f"[{key}]")
                raise

    def _union(self, value: Any, branches: list[Any]) -> None:
        others = [_deref(b, self._named) for b in branches if b != "null"]
        if value is None:
            if len(others) == len(branches):
                raise _Bad(f"expected {self._labels(branches)}, got null")
            return
        if len(others) == 1:
            # The common ["null", T]: T's own error (with its deeper path) is the best.
            self.value(value, others[0])
            return
        if any(self.ok(value, branch) for branch in others):
            return
        # Blame the record branch the value most resembles (most shared field names), so
        # the error names the bad field inside it rather than the whole union.
        records = [b for b in others if _kind(b) in ("record", "error")]
        if isinstance(value, Mapping) and records:
            best = max(records, key=lambda b: len({f["name"] for f in b["fields"]} & set(value)))
            self.value(value, best)
        raise _Bad(f"expected {self._labels(branches)}, got {_type_name(value)}")

    def _labels(self, branches: list[Any]) -> str:
        labels = []
        for branch in (_deref(b, self._named) for b in branches):
            if isinstance(branch, Mapping) and "name" in branch:
                labels.append(str(branch["name"]).rsplit(".", 1)[-1])
            else:
                labels.append(_logical(branch) or _kind(branch))
        return " or ".join(labels)
