"""The Confluent Schema Registry READ API, served from the shipped schema catalog.

Where no registry runs (``sluice dev``, the tests, a deployment without
``SCHEMA_REGISTRY_URL``), the values on our topics carry the catalog's schema ids
(``schemas/ids.json``). An analytics team's standard Confluent deserializers look those
ids up in a registry: the internal listener answers them, read-only and without a token
(schemas are no secret; like ``/healthz``):

- ``GET /schemas/ids/{id}`` → ``{"schema": "<the schema as JSON text>"}``; the
  ``subject`` and ``format`` query parameters Confluent's clients send are accepted and
  ignored (ids are global in the catalog);
- ``GET /subjects`` → the registry subject names, ``<topic>-value`` for every catalog
  topic with a schema: the TopicNameStrategy names the codec registers under in registry
  mode (``schemas.codec.RegistryResolver``), so a consumer configured for one works
  against the other. ``subjectPrefix`` filters; other parameters are ignored;
- ``GET /subjects/{subject}/versions`` → ``[1, 2, …]``;
- ``GET /subjects/{subject}/versions/{version}`` (a number, ``latest`` or ``-1``) →
  ``{"subject", "version", "id", "schema"}``.

Errors have Confluent's shape, ``{"error_code": 40401, "message": …}``: 404 with 40401
(unknown subject), 40402 (unknown version) or 40403 (unknown schema id), 422 with 42202
for a version that is neither a number from 1 to 2^31-1 nor ``latest``. Answers are
``application/vnd.schemaregistry.v1+json``, compact and key-sorted like every answer.

The schema text is the checked-in ``.avsc`` as compact JSON: the same text the codec
registers in registry mode, so the two modes describe a record identically.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from ingress.responses import json_bytes
from schemas.catalog import TOPICS, SchemaCatalog, TopicSpec

__all__ = [
    "REGISTRY_CONTENT_TYPE",
    "RegistryView",
    "add_registry_routes",
    "registry_subject",
]

REGISTRY_CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
SUBJECT_NOT_FOUND: Final = 40401
VERSION_NOT_FOUND: Final = 40402
SCHEMA_NOT_FOUND: Final = 40403
INVALID_VERSION: Final = 42202
_MAX_VERSION: Final = 2**31 - 1


def registry_subject(topic: str) -> str:
    """The registry subject of ``topic``'s values (TopicNameStrategy), as the codec
    registers it in registry mode."""
    return f"{topic}-value"


class RegistryError(Exception):
    """A Confluent-shaped refusal."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class RegistryView:
    """The catalog seen as a registry: registry subject → catalog subject."""

    catalog: SchemaCatalog
    subjects: Mapping[str, str]

    @classmethod
    def of(cls, catalog: SchemaCatalog, topics: Mapping[str, TopicSpec] = TOPICS) -> RegistryView:
        subjects = {
            registry_subject(name): spec.subject
            for name, spec in sorted(topics.items())
            if spec.subject is not None
        }
        return cls(catalog, subjects)

    def schema_text(self, subject: str, version: int) -> str:
        return json.dumps(self.catalog.schema(subject, version), separators=(",", ":"))

    def by_id(self, raw_id: str) -> dict[str, Any]:
        owner = self.catalog.lookup_id(int(raw_id)) if _is_number(raw_id) else None
        if owner is None:
            raise RegistryError(404, SCHEMA_NOT_FOUND, "Schema not found")
        return {"schema": self.schema_text(*owner)}

    def versions(self, registry_name: str) -> list[int]:
        return self.catalog.versions(self._catalog_subject(registry_name))

    def version(self, registry_name: str, raw_version: str) -> dict[str, Any]:
        subject = self._catalog_subject(registry_name)
        versions = self.catalog.versions(subject)
        if raw_version in ("latest", "-1"):
            version = versions[-1]
        elif _is_number(raw_version) and 1 <= int(raw_version) <= _MAX_VERSION:
            version = int(raw_version)
        else:
            raise RegistryError(
                422,
                INVALID_VERSION,
                f"The specified version '{raw_version[:32]}' is not a valid version id. "
                f'Allowed values are between [1, {_MAX_VERSION}] and the string "latest"',
            )
        if version not in versions:
            raise RegistryError(404, VERSION_NOT_FOUND, "Version not found.")
        return {
            "subject": registry_name,
            "version": version,
            "id": self.catalog.schema_id(subject, version),
            "schema": self.schema_text(subject, version),
        }

    def _catalog_subject(self, registry_name: str) -> str:
        subject = self.subjects.get(registry_name)
        if subject is None:
            raise RegistryError(
                404, SUBJECT_NOT_FOUND, f"Subject '{registry_name[:256]}' not found."
            )
        return subject


def _is_number(text: str) -> bool:
    # isdigit() alone takes other scripts' digits; ids and versions are ASCII.
    return text.isascii() and text.isdigit() and len(text) <= 10


def registry_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json_bytes(body), status=status, headers={"Content-Type": REGISTRY_CONTENT_TYPE}
    )


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _answering(read: Callable[[web.Request], Any]) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        try:
            return registry_response(read(request))
        except RegistryError as exc:
            return registry_response(
                {"error_code": exc.error_code, "message": exc.message}, exc.status
            )

    return handle


def add_registry_routes(app: web.Application, view: RegistryView) -> None:
    """Register the read API on ``app`` (route names ``registry.*``)."""

    def subjects(request: web.Request) -> list[str]:
        prefix = request.query.get("subjectPrefix", "")
        return [name for name in view.subjects if name.startswith(prefix)]

    app.router.add_get(
        "/schemas/ids/{id}",
        _answering(lambda request: view.by_id(request.match_info["id"])),
        name="registry.schema",
    )
    app.router.add_get("/subjects", _answering(subjects), name="registry.subjects")
    app.router.add_get(
        "/subjects/{subject}/versions",
        _answering(lambda request: view.versions(request.match_info["subject"])),
        name="registry.versions",
    )
    app.router.add_get(
        "/subjects/{subject}/versions/{version}",
        _answering(
            lambda request: view.version(
                request.match_info["subject"], request.match_info["version"]
            )
        ),
        name="registry.version",
    )
