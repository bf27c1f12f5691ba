"""The Avro codec: the only code in Sluice that turns records into bytes and back.

Values are Avro in the Confluent wire format::

    byte 0      magic byte, always 0
    bytes 1-4   schema id, big-endian unsigned
    bytes 5-    the record, Avro binary encoding (no container, no schema)

A :class:`Codec` encodes a record for a topic with the latest schema of the topic's
subject (``schemas/catalog.py``) and decodes any value whose schema id it can resolve,
always into the shape of the *latest* schema of that subject (Avro schema resolution,
so consumers read older records with the newest schema). Where schema ids come from is
a :class:`SchemaResolver`:

- :class:`CatalogResolver`: the checked-in id table ``schemas/ids.json``; no network.
- :class:`RegistryResolver`: a Confluent-compatible schema registry (``SCHEMA_REGISTRY_URL``).
  On first use of a topic it registers the schema under the TopicNameStrategy subject
  ``<topic>-value`` and caches the id; ids it does not know are fetched by id. These
  calls block (one HTTP round trip, once per topic / per unknown id): the ingress and
  the worker call :meth:`Codec.prepare` at start-up, so encoding never blocks, and only
  a value written with a schema this deployment did not register (an older or newer
  writer's) costs one fetch, once per id.

Records are plain dicts of JSON-like values plus ``bytes``. ``timestamp-millis`` fields
accept an ``int`` (ms since the epoch) or a timezone-aware ``datetime`` when encoding, and
always decode to the ``int`` (ms since the epoch): decoded records go into RocksDB tables,
JSON lines and Postgres parameters, where plain numbers travel and datetimes do not, and
``decode(encode(r)) == r`` holds for the records producers actually build. (Date and time
logical types likewise decode to their underlying number.) ``bytes`` fields accept
``bytes``, ``bytearray`` or ``memoryview`` and decode to ``bytes``. A field with a default
may be left out when encoding.

Encoding validates the record first, strictly, with fastavro's own validation and its
strict writer (``schemas/validation.py``: fastavro's writer alone silently truncates
floats into ``long`` fields, accepts any truthy value as a ``boolean``, writes
out-of-range ``int`` values and ignores unknown keys); only a refused record is walked
to name the bad field. Parsed schemas and the 5-byte header are cached per topic.
Every method is thread-safe; ``encode`` and ``decode`` are pure apart from the caches.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from base.errors import InvalidEvent, PermanentError, TransientError
from schemas.catalog import (
    TOPICS,
    SchemaCatalog,
    SchemaNotFound,
    TopicSpec,
    UnknownTopic,
    default_catalog,
    topic_spec,
)
from schemas.validation import Problem, TopLevelRules, check, explain

__all__ = [
    "MAGIC_BYTE",
    "CatalogResolver",
    "Codec",
    "Decoded",
    "RegistryResolver",
    "ResolvedSchema",
    "SchemaNotFound",
    "SchemaResolver",
    "make_codec",
]

MAGIC_BYTE = 0
_HEADER_SIZE = 5


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded value.

    :param subject: the catalog subject of the record type (``sluice.billing.BillingEvent``).
    :param version: the subject version the record was *written* with; ``None`` only in
        registry mode, for a writer schema that is none of the checked-in versions (e.g.
        written by a newer deployment).
    :param schema_id: the id in the value's header.
    :param record: the record, in the shape of the subject's latest schema.
    """

    subject: str
    version: int | None
    schema_id: int
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResolvedSchema:
    """A schema id and the schema it stands for.

    :param schema: parsed by ``fastavro.parse_schema`` (shared; do not mutate).
    :param raw: the schema's JSON, as checked in or as the registry returned it.
    """

    schema_id: int
    subject: str
    version: int | None
    schema: Any
    raw: Any


class SchemaResolver(Protocol):
    """Where a :class:`Codec` gets schema ids and writer schemas."""

    @property
    def catalog(self) -> SchemaCatalog:
        """The checked-in schemas (reader schemas always come from here)."""
        ...

    def for_topic(self, topic: str, subject: str) -> ResolvedSchema:
        """The schema to write ``topic`` with: the latest version of ``subject``.

        :raises SchemaNotFound: no schema file or id for the subject.
        :raises TransientError: the registry is unreachable or busy (registry mode).
        :raises PermanentError: the registry refused the schema (registry mode).
        """
        ...

    def by_id(self, schema_id: int) -> ResolvedSchema | None:
        """The writer schema of ``schema_id``, or ``None`` when no one knows that id.

        :raises InvalidEvent: the id names a schema Sluice cannot read (registry mode).
        :raises TransientError: the registry is unreachable or busy (registry mode).
        """
        ...


class CatalogResolver:
    """Schema ids from the checked-in table ``schemas/ids.json``; never blocks."""

    def __init__(self, catalog: SchemaCatalog | None = None) -> None:
        self._catalog = catalog if catalog is not None else default_catalog()

    @property
    def catalog(self) -> SchemaCatalog:
        return self._catalog

    def for_topic(self, topic: str, subject: str) -> ResolvedSchema:
        version = self._catalog.latest_version(subject)
        return ResolvedSchema(
            schema_id=self._catalog.schema_id(subject, version),
            subject=subject,
            version=version,
            schema=self._catalog.parsed(subject, version),
            raw=self._catalog.schema(subject, version),
        )

    def by_id(self, schema_id: int) -> ResolvedSchema | None:
        owner = self._catalog.lookup_id(schema_id)
        if owner is None:
            return None
        subject, version = owner
        try:
            schema = self._catalog.parsed(subject, version)
        except SchemaNotFound:
            return None  # an id whose file is gone: as good as unknown
        return ResolvedSchema(
            schema_id, subject, version, schema, self._catalog.schema(subject, version)
        )


class RegistryResolver:
    """Schema ids from a Confluent-compatible schema registry.

    Registration is idempotent (the registry returns the existing id for a schema it
    already has). Calls block; results are cached for the life of the resolver.

    :param client: a ``confluent_kafka.schema_registry.SchemaRegistryClient``.
    :param catalog: the checked-in schemas (what is registered, and the reader schemas).
    """

    def __init__(self, client: SchemaRegistryClient, catalog: SchemaCatalog | None = None) -> None:
        self._client = client
        self._catalog = catalog if catalog is not None else default_catalog()

    @classmethod
    def from_url(
        cls, url: str, catalog: SchemaCatalog | None = None, *, timeout: float = 10.0
    ) -> RegistryResolver:
        """A resolver for the registry at ``url`` (several may be comma-separated; basic
        auth may be given as ``https://user:password@host``)."""
        return cls(SchemaRegistryClient({"url": url, "timeout": timeout}), catalog)

    @property
    def catalog(self) -> SchemaCatalog:
        return self._catalog

    def for_topic(self, topic: str, subject: str) -> ResolvedSchema:
        version = self._catalog.latest_version(subject)
        raw = self._catalog.schema(subject, version)
        schema_str = json.dumps(raw, separators=(",", ":"))
        registry_subject = f"{topic}-value"
        try:
            schema_id = self._client.register_schema(registry_subject, Schema(schema_str, "AVRO"))
        except SchemaRegistryError as exc:
            raise _registry_failure(
                f"registering {subject} v{version} as {registry_subject}", exc
            ) from exc
        except Exception as exc:  # transport failure of whichever HTTP client it uses
            raise TransientError(
                f"schema registry unreachable registering {registry_subject} ({type(exc).__name__})"
            ) from exc
        return ResolvedSchema(
            int(schema_id), subject, version, self._catalog.parsed(subject, version), raw
        )

    def by_id(self, schema_id: int) -> ResolvedSchema | None:
        try:
            registered = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise _registry_failure(f"fetching schema id {schema_id}", exc) from exc
        except Exception as exc:  # transport failure of whichever HTTP client it uses
            raise TransientError(
                f"schema registry unreachable fetching schema id {schema_id} ({type(exc).__name__})"
            ) from exc
        if (registered.schema_type or "AVRO") != "AVRO":
            raise InvalidEvent(
                f"schema id {schema_id} is a {registered.schema_type} schema, not Avro"
            )
        if registered.references:
            raise InvalidEvent(f"schema id {schema_id} uses schema references (unsupported)")
        try:
            raw = json.loads(registered.schema_str or "")
            schema = fastavro.parse_schema(raw)
        except Exception as exc:
            raise InvalidEvent(f"schema id {schema_id} is not a valid Avro schema: {exc}") from exc
        name = schema.get("name") if isinstance(schema, dict) else None
        subject = self._catalog.subject_for_name(str(name)) if name else None
        if subject is None:
            raise InvalidEvent(
                f"schema id {schema_id} is {name or 'a non-record schema'}, which no subject "
                "in the schema catalog defines"
            )
        version = self._catalog.match_version(subject, schema)
        return ResolvedSchema(schema_id, subject, version, schema, raw)


def _registry_failure(action: str, exc: SchemaRegistryError) -> Exception:
    status = exc.http_status_code
    message = f"schema registry failed {action}: {exc.error_message} (HTTP {status})"
    if status in (408, 429) or status >= 500:
        return TransientError(message)
    return PermanentError(message)


@dataclass(frozen=True, slots=True)
class _WritePlan:
    header: bytes
    schema: Any
    rules: TopLevelRules
    resolved: ResolvedSchema


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    resolved: ResolvedSchema
    writer: Any  # parsed for reading: time logical types stripped
    reader: Any  # likewise; None when the writer schema is the latest one


class Codec:
    """Encodes records to Confluent-framed Avro and decodes them back.

    :param resolver: where schema ids come from (see the module docstring).
    :param topics: the topic catalog; defaults to :data:`schemas.catalog.TOPICS` plus any
        canonical ``retry.<delay>`` topic.
    """

    def __init__(
        self, resolver: SchemaResolver, *, topics: Mapping[str, TopicSpec] | None = None
    ) -> None:
        self._resolver = resolver
        self._topics = topics
        self._writers: dict[str, _WritePlan] = {}
        self._readers: dict[int, _ReadPlan] = {}
        self._lock = threading.Lock()

    @property
    def resolver(self) -> SchemaResolver:
        return self._resolver

    def encode(self, topic: str, record: Mapping[str, Any]) -> bytes:
        """The value to produce to ``topic`` for ``record``.

        Idempotent: the same record always gives the same bytes (for a given schema id).

        :raises InvalidEvent: the record does not fit the schema; ``field`` is the path of
            the first bad field (``data.items[0].quantity``, ``attributes[k]``).
        :raises SchemaNotFound: the topic is unknown or has no schema.
        :raises TransientError: / :raises PermanentError: registry mode, first use of the
            topic only, see :meth:`SchemaResolver.for_topic`.
        """
        plan = self._writers.get(topic)
        if plan is None:
            plan = self._write_plan(topic)
        checked = check(record, plan.schema, plan.rules)
        if isinstance(checked, Problem):
            raise _invalid(topic, checked)
        buffer = io.BytesIO()
        buffer.write(plan.header)
        try:
            # strict_allow_default: unknown keys (at any depth) are refused, fields with
            # a default may be left out.
            fastavro.schemaless_writer(buffer, plan.schema, checked, strict_allow_default=True)
        except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
            raise _invalid(topic, explain(record, plan.schema)) from exc
        return buffer.getvalue()

    def validate(self, topic: str, record: Mapping[str, Any]) -> None:
        """Check ``record`` as :meth:`encode` would (it encodes and drops the bytes: the
        writer is what refuses unknown keys).

        :raises InvalidEvent: / :raises SchemaNotFound: as :meth:`encode`.
        """
        self.encode(topic, record)

    def decode(self, data: bytes, *, topic: str | None = None) -> Decoded:
        """Decode one Confluent-framed Avro value.

        :param topic: when given, the value's subject must be the one ``topic`` carries
            (any subject for topics without one, such as ``retry.<delay>``).
        :raises InvalidEvent: with a distinct message when the value is too short, has the
            wrong magic byte, names an unknown schema id, holds a record of another
            subject than ``topic`` carries, or has a body that does not decode (including
            trailing bytes).
        :raises TransientError: registry mode, when an unknown id cannot be looked up.
        """
        size = len(data)
        if size < _HEADER_SIZE:
            raise InvalidEvent(
                f"value too short: {size} bytes; a Confluent-framed Avro value has a "
                f"{_HEADER_SIZE}-byte header (magic byte and schema id)"
            )
        if data[0] != MAGIC_BYTE:
            raise InvalidEvent(
                f"wrong magic byte 0x{data[0]:02x}: not a Confluent-framed Avro value "
                f"(expected 0x{MAGIC_BYTE:02x})"
            )
        schema_id = int.from_bytes(data[1:_HEADER_SIZE], "big")
        plan = self._readers.get(schema_id)
        if plan is None:
            plan = self._read_plan(schema_id)
        resolved = plan.resolved
        if topic is not None:
            expected = self._spec(topic).subject
            # Topics without a subject of their own (retry.<delay>) carry any record.
            if expected is not None and resolved.subject != expected:
                raise InvalidEvent(
                    f"schema id {schema_id} is {resolved.subject}, but topic {topic} carries "
                    f"{expected}"
                )
        buffer = io.BytesIO(data)
        buffer.seek(_HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(buffer, plan.writer, plan.reader)
        except Exception as exc:  # any failure to decode is the bytes' fault
            raise InvalidEvent(
                f"undecodable Avro body for schema id {schema_id} "
                f"({resolved.subject} v{resolved.version}): {type(exc).__name__}: {exc}"
            ) from exc
        if buffer.tell() != size:
            raise InvalidEvent(
                f"undecodable Avro body for schema id {schema_id} "
                f"({resolved.subject} v{resolved.version}): {size - buffer.tell()} "
                "trailing bytes after the record"
            )
        if not isinstance(record, dict):
            raise InvalidEvent(f"schema id {schema_id} does not describe a record")
        return Decoded(resolved.subject, resolved.version, schema_id, record)

    def writer_schema(self, topic: str) -> ResolvedSchema:
        """The schema (id, subject, version) :meth:`encode` writes ``topic`` with; its
        ``version`` is what producers put in the envelope's ``version`` field.

        :raises SchemaNotFound: / :raises TransientError: / :raises PermanentError: as
            :meth:`encode`.
        """
        plan = self._writers.get(topic) or self._write_plan(topic)
        return plan.resolved

    def prepare(self, topics: Iterable[str] | None = None) -> None:
        """Resolve (in registry mode: register) the schemas of ``topics`` now, so that
        ``encode`` never blocks later, and neither does ``decode`` of a value written with
        one of those schemas. Defaults to every catalog topic with a schema. Blocks (one
        registry round trip per topic): the ingress and the worker call it at start-up,
        before they take traffic, off the event loop.

        :raises SchemaNotFound: / :raises TransientError: / :raises PermanentError:
        """
        if topics is None:
            catalog = self._topics if self._topics is not None else TOPICS
            topics = [name for name, spec in catalog.items() if spec.subject is not None]
        for topic in topics:
            resolved = self.writer_schema(topic)
            if resolved.schema_id not in self._readers:
                self._plan_reading(resolved)

    def _spec(self, topic: str) -> TopicSpec:
        try:
            if self._topics is not None:
                return self._topics[topic]
            return topic_spec(topic)
        except (UnknownTopic, KeyError):
            raise SchemaNotFound(f"unknown topic {topic!r}: not in the topic catalog") from None

    def _write_plan(self, topic: str) -> _WritePlan:
        spec = self._spec(topic)
        if spec.subject is None:
            raise SchemaNotFound(
                f"topic {topic} has no schema: "
                + (
                    "it carries the original record's bytes unchanged"
                    if spec.key == "origin"
                    else "none is defined yet"
                )
            )
        resolved = self._resolver.for_topic(topic, spec.subject)
        plan = _WritePlan(
            header=bytes([MAGIC_BYTE]) + resolved.schema_id.to_bytes(4, "big"),
            schema=resolved.schema,
            rules=TopLevelRules.of(resolved.schema),
            resolved=resolved,
        )
        with self._lock:
            return self._writers.setdefault(topic, plan)

    def _read_plan(self, schema_id: int) -> _ReadPlan:
        resolved = self._resolver.by_id(schema_id)
        if resolved is None:
            raise InvalidEvent(
                f"unknown schema id {schema_id}: not in the schema catalog"
                if isinstance(self._resolver, CatalogResolver)
                else f"unknown schema id {schema_id}: the schema registry does not know it"
            )
        return self._plan_reading(resolved)

    def _plan_reading(self, resolved: ResolvedSchema) -> _ReadPlan:
        catalog = self._resolver.catalog
        latest = catalog.latest_version(resolved.subject)
        reader = None
        if resolved.version != latest:
            reader = _parse_for_reading(catalog.schema(resolved.subject, latest))
        plan = _ReadPlan(resolved, _parse_for_reading(resolved.raw), reader)
        with self._lock:
            return self._readers.setdefault(resolved.schema_id, plan)


# Logical types fastavro would turn into datetime/date/time objects on read. The encoding
# is the underlying int/long either way, so dropping the annotation changes only the
# Python type decode returns, never the bytes or schema resolution.
_TIME_LOGICAL_TYPES = frozenset(
    {
        "timestamp-millis",
        "timestamp-micros",
        "timestamp-nanos",
        "local-timestamp-millis",
        "local-timestamp-micros",
        "local-timestamp-nanos",
        "date",
        "time-millis",
        "time-micros",
    }
)


def _parse_for_reading(raw: Any) -> Any:
    return fastavro.parse_schema(_strip_time_logical_types(raw))


def _strip_time_logical_types(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strip_time_logical_types(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: _strip_time_logical_types(value)
        for key, value in schema.items()
        if not (key == "logicalType" and value in _TIME_LOGICAL_TYPES)
    }


def make_codec(schema_registry_url: str | None) -> Codec:
    """The codec for a deployment: registry-backed when ``schema_registry_url`` is set
    (non-empty), else backed by the checked-in catalog. Connects to nothing yet."""
    if schema_registry_url and schema_registry_url.strip():
        return Codec(RegistryResolver.from_url(schema_registry_url.strip()))
    return Codec(CatalogResolver())


def _invalid(topic: str, problem: Problem) -> InvalidEvent:
    return InvalidEvent(
        f"invalid {topic} record: {problem.path or '<record>'}: {problem.message}",
        field=problem.path or None,
    )
