"""The partner registry: who may post leads, how they prove it, where their leads go.

Loaded once at start-up by the ingress and the worker (:func:`load_partners`) from two
places, merged per partner id:

- the partners file, ``SLUICE_PARTNERS_FILE`` (JSON or TOML, by extension)::

      [partners.acme]
      auth = "hmac"                       # hmac | bearer | standard-webhooks
      secrets = ["s3cret-new", "s3cret-old"]
      mapping = { email = "contact.email", listingId = "property.ref" }
      [partners.acme.delivery]
      url = "https://crm.acme.example/leads"
      auth = "bearer"                     # none | bearer | standard-webhooks
      token = "…"
      timeout = "10s"
      max_attempts = 8
      enabled = true

- the environment, ``PARTNER_<ID>_<FIELD>`` (DESIGN §7), which wins over the file field
  by field: ``_AUTH``, ``_SECRET`` (hmac or ``whsec_`` secrets), ``_TOKEN`` (bearer
  tokens), ``_ENABLED``, ``_DELIVERY_URL``, ``_DELIVERY_AUTH``, ``_DELIVERY_TOKEN``,
  ``_DELIVERY_SECRET``, ``_DELIVERY_TIMEOUT``, ``_DELIVERY_MAX_ATTEMPTS``,
  ``_DELIVERY_ENABLED``. Lists are comma-separated. Without ``_AUTH`` the mode follows
  from what is set: ``_TOKEN`` → bearer, a ``whsec_`` secret → standard-webhooks, any
  other ``_SECRET`` → hmac.

Every bad entry is one line of the ``ConfigError`` (``partner acme: delivery.url: …``),
so an operator fixes them all in one go. No secret appears in an error or a ``repr``.

Two switches, two meanings: ``enabled = false`` refuses the partner's new leads at the
door (403); ``delivery.enabled = false`` keeps accepting them and holds their delivery
(the leads wait on the delay topics, they do not fail) until it is switched back on.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from base.durations import parse_duration
from base.errors import ConfigError

__all__ = [
    "CANONICAL_FIELDS",
    "Delivery",
    "InboundMode",
    "OutboundMode",
    "Partner",
    "PartnerRegistry",
    "env_partner_fields",
    "load_partners",
    "partners_from",
]

InboundMode: TypeAlias = Literal["hmac", "bearer", "standard-webhooks"]
OutboundMode: TypeAlias = Literal["none", "bearer", "standard-webhooks"]

CANONICAL_FIELDS: Final = ("name", "email", "phone", "listingId", "message")
"""The fields of a canonical lead; a partner's ``mapping`` says where each sits in its
payload (a dotted path), and a field it does not map is read from the same name."""

_ID: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_PATH: Final = re.compile(r"[A-Za-z0-9_$@-]+(\.[A-Za-z0-9_$@-]+)*")
_WHSEC: Final = "whsec_"
_ENV_FIELDS: Final = (
    # Longest first: _DELIVERY_TOKEN must not be read as _TOKEN.
    "_DELIVERY_MAX_ATTEMPTS",
    "_DELIVERY_TIMEOUT",
    "_DELIVERY_ENABLED",
    "_DELIVERY_SECRET",
    "_DELIVERY_TOKEN",
    "_DELIVERY_AUTH",
    "_DELIVERY_URL",
    "_ENABLED",
    "_SECRET",
    "_TOKEN",
    "_AUTH",
)


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


def _positive(value: float) -> float:
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _whsec(value: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of at least 24 bytes."""
    if not value.startswith(_WHSEC):
        raise ValueError("a standard-webhooks secret starts with whsec_")
    # Padding made exact: strict decoding refuses both missing and excess "=", and
    # secrets are pasted with and without it.
    encoded = value[len(_WHSEC) :].rstrip("=")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a standard-webhooks secret is whsec_ and base64") from None
    if len(key) < 24:
        raise ValueError("a standard-webhooks secret holds at least 24 bytes")
    return value


SecretList = Annotated[tuple[str, ...], BeforeValidator(_comma_list), Field(repr=False)]
Seconds = Annotated[float, BeforeValidator(_duration), AfterValidator(_positive)]
Url = Annotated[str, AfterValidator(_http_url)]


class Delivery(BaseModel):
    """Where and how a partner's leads are delivered (its CRM)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    url: Url | None = None
    auth: OutboundMode = "none"
    token: str | None = Field(None, repr=False)
    """Bearer token sent as ``Authorization: Bearer`` (``auth = "bearer"``)."""
    secret: str | None = Field(None, repr=False)
    """``whsec_`` secret the deliveries are signed with (``auth = "standard-webhooks"``)."""
    timeout_s: Seconds = Field(10.0, alias="timeout")
    max_attempts: PositiveInt = 8
    """Deliveries of one lead at most, the first included; then dead letter and alert."""
    enabled: bool = True

    @model_validator(mode="after")
    def _auth_has_credentials(self) -> Delivery:
        if self.auth == "bearer" and not self.token:
            raise ValueError("delivery.auth bearer needs delivery.token")
        if self.auth == "standard-webhooks":
            if not self.secret:
                raise ValueError("delivery.auth standard-webhooks needs delivery.secret")
            _whsec(self.secret)
        if self.enabled and self.url is None:
            raise ValueError("delivery.url is required while delivery is enabled")
        return self


class Partner(BaseModel):
    """One partner: its inbound auth, its payload mapping and its delivery."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    auth: InboundMode
    secrets: SecretList
    """HMAC secrets, bearer tokens or ``whsec_`` secrets, per ``auth``; several while one
    rotates (every one is accepted)."""
    enabled: bool = True
    mapping: Mapping[str, str] = Field(default_factory=dict)
    delivery: Delivery = Field(default_factory=lambda: Delivery(enabled=False))

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise ValueError("must be lower-case letters, digits, _ or -, at most 64")
        return value

    @field_validator("mapping")
    @classmethod
    def _mapping_shape(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        for name, path in value.items():
            if name not in CANONICAL_FIELDS:
                raise ValueError(f"{name!r} is not one of {', '.join(CANONICAL_FIELDS)}")
            if not isinstance(path, str) or not _PATH.fullmatch(path):
                raise ValueError(f"{name}: {path!r} is not a dotted path")
        return dict(value)

    @model_validator(mode="after")
    def _secrets_fit_auth(self) -> Partner:
        if not self.secrets:
            what = "tokens" if self.auth == "bearer" else "secrets"
            raise ValueError(f"secrets: {self.auth} needs at least one of its {what}")
        if self.auth == "standard-webhooks":
            for secret in self.secrets:
                _whsec(secret)
        return self

    def path_of(self, field: str) -> str:
        """The dotted path of canonical ``field`` in this partner's payload."""
        return self.mapping.get(field, field)


class PartnerRegistry:
    """The partners by id; read-only after start-up."""

    def __init__(self, partners: Iterable[Partner] = ()) -> None:
        self._by_id = {partner.id: partner for partner in partners}

    def get(self, partner_id: str) -> Partner | None:
        return self._by_id.get(partner_id)

    def __iter__(self) -> Iterator[Partner]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"PartnerRegistry({sorted(self._by_id)})"


def load_partners(
    partners_file: Path | None, env_partners: Mapping[str, Mapping[str, str]]
) -> PartnerRegistry:
    """The registry from the partners file and the grouped ``PARTNER_<ID>_…`` variables
    (``Settings.partners_file``, ``Settings.partners``).

    :raises ConfigError: one line per bad entry or unreadable file.
    """
    entries: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    if partners_file is not None:
        try:
            entries = _read_file(partners_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"SLUICE_PARTNERS_FILE {partners_file}: {exc}") from None
    for partner_id, fields in env_partners.items():
        _merge_env(entries.setdefault(partner_id, {}), fields)
    registry, problems = partners_from(entries)
    if problems:
        raise ConfigError("\n".join(problems))
    return registry


def partners_from(entries: Mapping[str, Mapping[str, Any]]) -> tuple[PartnerRegistry, list[str]]:
    """Validate raw entries (id → fields); the good partners and one line per problem."""
    partners: list[Partner] = []
    problems: list[str] = []
    for partner_id, fields in sorted(entries.items()):
        if not isinstance(fields, Mapping):
            problems.append(f"partner {partner_id}: must be a table of settings")
            continue
        try:
            partners.append(Partner.model_validate({**fields, "id": partner_id}))
        except ValidationError as exc:
            problems.extend(f"partner {partner_id}: {line}" for line in _describe(exc))
    return PartnerRegistry(partners), problems


def _read_file(path: Path) -> dict[str, dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("partners", {}), dict):
        raise ValueError('expected a "partners" table of partner id → settings')
    return dict(data.get("partners", {}))


def _merge_env(entry: dict[str, Any], fields: Mapping[str, str]) -> None:
    """Lay ``PARTNER_<ID>_*`` values (keys: lower-case suffixes) over a file entry."""
    delivery = dict(entry.get("delivery") or {})
    for name, value in fields.items():
        if name.startswith("delivery_"):
            delivery[name[len("delivery_") :]] = value
        elif name in ("secret", "token"):
            entry["secrets"] = value
        else:
            entry[name] = value
    if delivery:
        delivery.setdefault("enabled", True)
        entry["delivery"] = delivery
    if "auth" not in entry:
        if "token" in fields:
            entry["auth"] = "bearer"
        elif "secret" in fields:
            hmac_or_sw = fields["secret"].strip().startswith(_WHSEC)
            entry["auth"] = "standard-webhooks" if hmac_or_sw else "hmac"


def env_partner_fields(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Group ``PARTNER_<ID>_<FIELD>`` variables by partner id (lower-cased; ``_`` in an
    id is kept) into ``{field: value}`` with lower-case field names."""
    partners: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith("PARTNER_") or not value.strip():
            continue
        for suffix in _ENV_FIELDS:
            if name.endswith(suffix) and len(name) > len("PARTNER_") + len(suffix):
                partner = name[len("PARTNER_") : -len(suffix)].lower()
                partners.setdefault(partner, {})[suffix[1:].lower()] = value.strip()
                break
    return partners


def _describe(exc: ValidationError) -> Iterator[str]:
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        why = error["msg"].removeprefix("Value error, ")
        yield f"{where}: {why}" if where else why
