"""BACKWARD compatibility of Avro schemas, by the Avro specification's resolution rules.

A change is BACKWARD compatible when a consumer using the *new* schema (the reader) can
decode every record written with the *old* one (the writer). That is the guarantee Sluice
needs: consumers upgrade first and keep reading what is already on the topics, and the
codec decodes older records with the latest schema. ``check_backward(reader, writer)``
lists every way that would fail; an empty list means compatible. The test suite runs it
for every ``schemas/avro/<subject>/<n>.avsc`` against ``<n-1>.avsc``.

The rules, from the specification's "Schema Resolution" section, applied recursively:

- Primitives must have the same type, or the writer's promotes to the reader's:
  ``int`` → ``long``/``float``/``double``, ``long`` → ``float``/``double``,
  ``float`` → ``double``, ``string`` ↔ ``bytes``. Logical types are ignored (they do not
  change the encoding).
- Records, enums and fixed match when their unqualified names are equal or the reader
  lists the writer's name (full or unqualified) among its aliases.
- Records: fields are matched by name (or a reader field's alias); writer fields the
  reader lacks are skipped; a reader field the writer lacks must have a default.
- Enums: a writer symbol the reader lacks is an error unless the reader has a default.
- Fixed: sizes must be equal. Arrays and maps: items / values resolve recursively.
- Unions: each writer branch must resolve against the reader; against a reader union
  the first reader branch that *matches* (same type or promotable; same-named named
  type; array with array; map with map) is the one resolved, as decoders do.

The check is pure, never raises for a well-formed schema, and does not touch the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fastavro

__all__ = ["check_backward", "is_backward_compatible"]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "enum", "fixed"})

# (writer type, reader type) pairs the specification lets a reader promote.
_PROMOTIONS = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)


def check_backward(reader: Any, writer: Any) -> list[str]:
    """Return why ``reader`` cannot decode data written with ``writer`` (``[]``: it can).

    :param reader: the new schema, as JSON-like Python (a dict, list or type name, as
        ``json.load`` returns it) or as returned by ``fastavro.parse_schema``.
    :param writer: the old schema, in the same forms.
    :returns: one message per problem, each starting with the path of the field it is in
        (``OrderEvent.data.amount: ...``).
    :raises fastavro.schema.SchemaParseException: if either schema is malformed.
    """
    reader_names: dict[str, Any] = {}
    writer_names: dict[str, Any] = {}
    parsed_reader = _parse(reader, reader_names)
    parsed_writer = _parse(writer, writer_names)
    checker = _Checker(reader_names, writer_names)
    checker.resolve(parsed_reader, parsed_writer, _root_path(parsed_reader))
    return checker.problems


def is_backward_compatible(reader: Any, writer: Any) -> bool:
    """``True`` when ``check_backward(reader, writer)`` finds no problem."""
    return not check_backward(reader, writer)


def _parse(schema: Any, names: dict[str, Any]) -> Any:
    if isinstance(schema, Mapping) and "__fastavro_parsed" in schema:
        names.update(schema.get("__named_schemas", {}))
        return schema
    return fastavro.parse_schema(schema, named_schemas=names)


def _root_path(schema: Any) -> str:
    if isinstance(schema, Mapping) and "name" in schema:
        return _unqualified(str(schema["name"]))
    return "<root>"


def _unqualified(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _namespace(fullname: str) -> str:
    return fullname.rsplit(".", 1)[0] if "." in fullname else ""


class _Checker:
    def __init__(self, reader_names: dict[str, Any], writer_names: dict[str, Any]) -> None:
        self._reader_names = reader_names
        self._writer_names = writer_names
        self.problems: list[str] = []
        # (reader full name, writer full name) pairs already resolved or in progress,
        # so recursive types terminate and shared types are reported once.
        self._seen: set[tuple[str, str]] = set()

    def _deref(self, schema: Any, names: Mapping[str, Any]) -> Any:
        """Replace a named-type reference with its definition; unwrap ``{"type": "int"}``."""
        while True:
            if isinstance(schema, str):
                if schema in _PRIMITIVES:
                    return schema
                return names[schema]
            if isinstance(schema, Mapping) and isinstance(schema.get("type"), str):
                kind = schema["type"]
                if kind in _PRIMITIVES:
                    return kind  # logical types do not change resolution
                if kind not in _NAMED and kind not in ("array", "map"):
                    schema = kind  # a reference written as {"type": "ns.Name"}
                    continue
            return schema

    @staticmethod
    def _kind(schema: Any) -> str:
        if isinstance(schema, str):
            return schema
        if isinstance(schema, list):
            return "union"
        return str(schema["type"])

    def _describe(self, schema: Any) -> str:
        kind = self._kind(schema)
        if kind in _NAMED:
            return f"{kind} {schema['name']}"
        return kind

    @staticmethod
    def _names_match(reader: Mapping[str, Any], writer: Mapping[str, Any]) -> bool:
        reader_full = str(reader["name"])
        writer_full = str(writer["name"])
        if _unqualified(reader_full) == _unqualified(writer_full):
            return True
        namespace = _namespace(reader_full)
        for alias in reader.get("aliases", ()):
            alias_full = alias if "." in alias or not namespace else f"{namespace}.{alias}"
            if writer_full in (alias, alias_full) or _unqualified(writer_full) == alias:
                return True
        return False

    def _matches(self, reader: Any, writer: Any) -> bool:
        """The specification's shallow "match", used to pick a reader union branch."""
        r_kind, w_kind = self._kind(reader), self._kind(writer)
        if w_kind in _PRIMITIVES and r_kind in _PRIMITIVES:
            return r_kind == w_kind or (w_kind, r_kind) in _PROMOTIONS
        if r_kind != w_kind:
            return False
        if r_kind in _NAMED:
            return self._names_match(reader, writer)
        return r_kind in ("array", "map")

    def resolve(self, reader: Any, writer: Any, path: str) -> None:
        reader = self._deref(reader, self._reader_names)
        writer = self._deref(writer, self._writer_names)
        r_kind, w_kind = self._kind(reader), self._kind(writer)

        if w_kind == "union":
            for branch in writer:
                self.resolve(reader, branch, path)
            return
        if r_kind == "union":
            for branch in reader:
                candidate = self._deref(branch, self._reader_names)
                if self._matches(candidate, writer):
                    self.resolve(candidate, writer, path)
                    return
            self.problems.append(
                f"{path}: writer type {self._describe(writer)} matches no branch of the "
                f"reader's {self._describe_reader_union(reader)}"
            )
            return

        if w_kind in _PRIMITIVES or r_kind in _PRIMITIVES:
            if r_kind != w_kind and (w_kind, r_kind) not in _PROMOTIONS:
                self.problems.append(
                    f"{path}: writer type {self._describe(writer)} cannot be read as "
                    f"{self._describe(reader)}"
                )
            return
        if r_kind != w_kind:
            self.problems.append(
                f"{path}: writer type {self._describe(writer)} cannot be read as "
                f"{self._describe(reader)}"
            )
            return
        if r_kind == "array":
            self.resolve(reader["items"], writer["items"], f"{path}[]")
            return
        if r_kind == "map":
            self.resolve(reader["values"], writer["values"], f"{path}{{}}")
            return

        # Named types from here on.
        if not self._names_match(reader, writer):
            self.problems.append(
                f"{path}: writer {w_kind} {writer['name']} does not match reader "
                f"{r_kind} {reader['name']} (names differ and no alias)"
            )
            return
        pair = (str(reader["name"]), str(writer["name"]))
        if pair in self._seen:
            return
        self._seen.add(pair)
        if r_kind == "fixed":
            if reader["size"] != writer["size"]:
                self.problems.append(
                    f"{path}: fixed size changed from {writer['size']} to {reader['size']}"
                )
        elif r_kind == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                self.problems.append(
                    f"{path}: enum {reader['name']} lacks writer symbols {missing} "
                    "and has no default"
                )
        else:
            self._resolve_record(reader, writer, path)

    def _describe_reader_union(self, union: list[Any]) -> str:
        names = [self._describe(self._deref(b, self._reader_names)) for b in union]
        return "union [" + ", ".join(names) + "]"

    def _resolve_record(
        self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: str
    ) -> None:
        writer_fields = {f["name"]: f for f in writer["fields"]}
        for field in reader["fields"]:
            name = field["name"]
            match = writer_fields.get(name)
            if match is None:
                for alias in field.get("aliases", ()):
                    match = writer_fields.get(alias)
                    if match is not None:
                        break
            if match is not None:
                self.resolve(field["type"], match["type"], f"{path}.{name}")
            elif "default" not in field:
                self.problems.append(
                    f"{path}.{name}: field added without a default, so records written "
                    "before it existed cannot be read"
                )
