"""BACKWARD compatibility of Avro schemas: Apache Avro's reader/writer checker, explained.

A change is BACKWARD compatible when a consumer using the *new* schema (the reader) can
decode every record written with the *old* one (the writer). That is the guarantee Sluice
needs: consumers upgrade first and keep reading what is already on the topics, and the
codec decodes older records with the latest schema. ``check_backward(reader, writer)``
lists every way that would fail; an empty list means compatible. The test suite runs it
for every ``schemas/avro/<subject>/<n>.avsc`` against ``<n-1>.avsc``.

The verdict is the Apache ``avro`` package's
:class:`avro.compatibility.ReaderWriterCompatibilityChecker` (the Avro specification's
"Schema Resolution" rules, as the Java checker Confluent-style registries run). This
module only makes its answer readable and adds three things around it:

- Schemas are parsed with fastavro first (so a malformed schema raises fastavro's
  ``SchemaParseException``/``UnknownType`` as before, and fastavro-parsed schemas are
  accepted), and reader aliases are qualified with the alias's namespace, as the
  specification says; the Python checker compares a writer's full name to the aliases
  as written, so ``"aliases": ["R"]`` would not match a writer ``t.R``.
- The checker keeps one ``(locations, messages)`` set pair per result, merged across
  problems, and forgets the location when it descends into a union branch. A subclass
  follows the descent instead, and reports each problem at the pair of schemas where
  the checker found it, with the path of the field it is in
  (``OrderEvent.data.amount: ...``).

The check is pure, never raises for a well-formed schema, and does not touch the network.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import avro.schema
import fastavro
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityResult,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
    lookup_writer_field,
)

__all__ = ["check_backward", "is_backward_compatible"]

_NAMED = frozenset({"record", "error", "enum", "fixed"})


def check_backward(reader: Any, writer: Any) -> list[str]:
    """Return why ``reader`` cannot decode data written with ``writer`` (``[]``: it can).

    :param reader: the new schema, as JSON-like Python (a dict, list or type name, as
        ``json.load`` returns it) or as returned by ``fastavro.parse_schema``.
    :param writer: the old schema, in the same forms.
    :returns: one message per problem, each starting with the path of the field it is in
        (``OrderEvent.data.amount: ...``).
    :raises fastavro.schema.SchemaParseException: if either schema is malformed.
    """
    avro_reader, avro_writer = _to_avro(reader), _to_avro(writer)
    checker = _ExplainingChecker()
    result = checker.get_compatibility(avro_reader, avro_writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    return checker.problems(result) or [
        f"{_root_path(avro_reader)}: {'; '.join(sorted(result.messages))}"
    ]


def is_backward_compatible(reader: Any, writer: Any) -> bool:
    """``True`` when ``check_backward(reader, writer)`` finds no problem."""
    return not check_backward(reader, writer)


def _to_avro(schema: Any) -> avro.schema.Schema:
    parsed = fastavro.parse_schema(schema)
    return avro.schema.parse(json.dumps(_for_avro(parsed)))


def _for_avro(schema: Any) -> Any:
    """fastavro's parsed form, less its bookkeeping keys, with aliases fully qualified."""
    if isinstance(schema, list):
        return [_for_avro(branch) for branch in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {k: _for_avro(v) for k, v in schema.items() if not k.startswith("__")}
    if "fields" in out:
        out["fields"] = [
            {**f, "type": _for_avro(f["type"])} for f in cast(list[Any], schema["fields"])
        ]
    if isinstance(out.get("type"), str) and out["type"] in _NAMED and "aliases" in out:
        name = str(out["name"])
        namespace = name.rsplit(".", 1)[0] if "." in name else ""
        out["aliases"] = [
            a if "." in a or not namespace else f"{namespace}.{a}" for a in out["aliases"]
        ]
    return out


def _root_path(schema: avro.schema.Schema) -> str:
    if isinstance(schema, avro.schema.NamedSchema):
        return str(schema.name)
    return "<root>"


def _describe(schema: avro.schema.Schema) -> str:
    if isinstance(schema, avro.schema.NamedSchema):
        return f"{schema.type} {schema.fullname}"
    return str(schema.type)


@dataclass
class _Frame:
    """One reader/writer pair the checker is resolving, and its children's results."""

    reader: avro.schema.Schema
    writer: avro.schema.Schema
    location: list[str]
    path: str
    children: list[SchemaCompatibilityResult] = field(default_factory=list)


class _ExplainingChecker(ReaderWriterCompatibilityChecker):
    """Avro's checker, with each incompatible result annotated with its problems in words.

    A result's problems are its own (found at its pair of schemas) plus those of the
    children it merged. Children of a pair whose reader is a union are probes (which
    reader branch fits?): the checker does not merge them, and neither does this.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._frames: list[_Frame] = []
        self._next_path = ""
        # id(result) -> (result, its problems); the result is kept so the id stays its own.
        self._notes: dict[int, tuple[SchemaCompatibilityResult, list[str]]] = {}

    def problems(self, result: SchemaCompatibilityResult) -> list[str]:
        return list(dict.fromkeys(self._notes.get(id(result), (result, []))[1]))

    def get_compatibility(
        self,
        reader: avro.schema.Schema,
        writer: avro.schema.Schema,
        reference_token: str = ReaderWriterCompatibilityChecker.ROOT_REFERENCE_TOKEN,
        location: list[str] | None = None,
    ) -> SchemaCompatibilityResult:
        parent = self._frames[-1] if self._frames else None
        if parent is None:
            path = _root_path(reader)
        elif location is None:
            # A union branch: the checker passes no location; the branch is at the
            # union's place in the schema.
            location, reference_token = parent.location[:-1], parent.location[-1]
            path = parent.path
        else:
            path = parent.path + self._step(parent, location, reference_token)
        self._next_path = path
        result = super().get_compatibility(reader, writer, reference_token, location)
        if parent is not None:
            parent.children.append(result)
        return result

    @staticmethod
    def _step(parent: _Frame, location: list[str], reference: str) -> str:
        if reference == "items":
            return "[]"
        if reference == "values":
            return "{}"
        if reference == "type" and len(location) >= 2 and location[-2] == "fields":
            fields = cast(avro.schema.RecordSchema, parent.reader).fields
            return "." + str(fields[int(location[-1])].name)
        return ""

    def calculate_compatibility(
        self, reader: avro.schema.Schema, writer: avro.schema.Schema, location: list[str]
    ) -> SchemaCompatibilityResult:
        frame = _Frame(reader, writer, location, self._next_path)
        self._frames.append(frame)
        try:
            result = super().calculate_compatibility(reader, writer, location)
        finally:
            self._frames.pop()
        if result.compatibility is not SchemaCompatibilityType.incompatible:
            return result
        problems: list[str] = []
        if isinstance(reader, avro.schema.UnionSchema):
            problems = self._union_problems(frame)
        else:
            own = Counter(result.incompatibilities)
            for child in frame.children:
                own.subtract(child.incompatibilities)
                problems.extend(self.problems(child))
            for kind, count in own.items():
                if count > 0:
                    problems.extend(_explain(frame, kind))
        self._notes[id(result)] = (result, problems)
        return result

    def _union_problems(self, frame: _Frame) -> list[str]:
        """A reader union's children are probes. Against a writer union, each child is
        one writer branch against the whole reader union: report the failing ones. Against
        one writer type, the children are the reader branches tried in order: if one is
        the same named type as the writer's (a record that gained a required field, say),
        what failed there is the useful answer."""
        reader = cast(avro.schema.UnionSchema, frame.reader)
        if isinstance(frame.writer, avro.schema.UnionSchema):
            problems = [p for child in frame.children for p in self.problems(child)]
        else:
            problems = [
                p
                for branch, probe in zip(reader.schemas, frame.children, strict=False)
                if _same_named_type(branch, frame.writer)
                for p in self.problems(probe)
            ]
        return problems or _explain(frame, SchemaIncompatibilityType.missing_union_branch)


def _explain(frame: _Frame, kind: SchemaIncompatibilityType) -> list[str]:
    """What went wrong at ``frame`` itself (not in its children), in words."""
    reader: Any = frame.reader  # the kind says which schema classes these are
    writer: Any = frame.writer
    path = frame.path
    if kind is SchemaIncompatibilityType.type_mismatch:
        return [f"{path}: writer type {_describe(writer)} cannot be read as {_describe(reader)}"]
    if kind is SchemaIncompatibilityType.name_mismatch:
        return [
            f"{path}: writer {writer.type} {writer.fullname} does not match reader "
            f"{reader.type} {reader.fullname} (names differ and no alias)"
        ]
    if kind is SchemaIncompatibilityType.fixed_size_mismatch:
        return [f"{path}: fixed size changed from {writer.size} to {reader.size}"]
    if kind is SchemaIncompatibilityType.missing_enum_symbols:
        missing = [s for s in writer.symbols if s not in reader.symbols]
        return [f"{path}: enum {reader.fullname} lacks writer symbols {missing} and has no default"]
    if kind is SchemaIncompatibilityType.missing_union_branch:
        branches = writer.schemas if isinstance(writer, avro.schema.UnionSchema) else [writer]
        reader_union = "union [" + ", ".join(_describe(b) for b in reader.schemas) + "]"
        return [
            f"{path}: writer type {_describe(b)} matches no branch of the reader's {reader_union}"
            for b in branches
            if not _fits_some_branch(reader, b)
        ]
    if kind is SchemaIncompatibilityType.reader_field_missing_default_value:
        return [
            f"{path}.{f.name}: field added without a default, so records written before it "
            "existed cannot be read"
            for f in reader.fields
            if lookup_writer_field(writer, f) is None and not f.has_default
        ]
    return [f"{path}: {kind.value}"]


def _same_named_type(reader: avro.schema.Schema, writer: avro.schema.Schema) -> bool:
    return (
        isinstance(reader, avro.schema.NamedSchema)
        and isinstance(writer, avro.schema.NamedSchema)
        and reader.type == writer.type
        and reader.fullname == writer.fullname
    )


def _fits_some_branch(reader_union: Any, writer_branch: avro.schema.Schema) -> bool:
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(reader_union, writer_branch)
    return bool(result.compatibility is SchemaCompatibilityType.compatible)
