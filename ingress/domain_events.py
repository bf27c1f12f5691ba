"""Domain events from internal services: the JSON envelope of DESIGN §4, checked (pure).

``POST /internal/v1/events`` takes ``{eventId?, eventType, version?, occurredAt?,
correlationId?, source, data}``. :class:`DomainEventParser` turns such a body into the
Avro record to publish, or raises ``InvalidEvent`` naming the first problem and its
field path (``data.items[0].quantity``), so the route answers 400 and publishes nothing.

Checks, in order:

1. the body is a JSON object whose keys are all envelope fields (a typo such as
   ``evenType`` is named, not reported as a missing ``eventType``);
2. ``eventType`` is in :data:`EVENT_ROUTES`, which says the topic and the Avro union
   branch ``data`` must fit (one line per event type);
3. the envelope fields (``source``, ``eventId``, ``version``, ``occurredAt``,
   ``correlationId``);
4. ``data`` against that branch of the topic's latest schema: shapes and types, field
   by field with fastavro's validation of each value, unknown fields refused at every
   level, defaults filled in. Validating against the *branch* rather than the whole
   union matters: an ``order.cancelled`` whose data happens to fit ``OrderCreated``
   would otherwise be published under the wrong type;
5. the rules Avro cannot state (:data:`FIELD_RULES`), by field name wherever the field
   appears: ids non-empty, printable and at most 256 characters, ``amount`` a positive
   integer of minor units up to :data:`MAX_AMOUNT_MINOR`, ``currency``
   three letters (lower-cased), ``items`` non-empty, ``quantity`` at least 1,
   ``paymentProvider`` null, ``stripe`` or ``razorpay``; for ``user.contact_updated``
   ``email`` a valid address (normalised) and ``phone`` E.164 (``schemas.recipients``,
   the send route's rules), ``pushTokens`` at most :data:`MAX_PUSH_TOKENS` printable
   ASCII tokens, ``preferredChannels`` EMAIL, SMS or PUSH without repeats, ``locale`` a
   BCP 47 tag. A new event type with an
   ``amount`` gets the amount rule without a line of code.

No string anywhere in a body may hold U+0000 (:func:`parse_json`): PostgreSQL text
cannot store it, so such an event would be accepted here and dead-lettered later.

Nothing here does IO: the catalog is read once when the parser is built, and the clock,
correlation id and id generator come in as arguments.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from fastavro.validation import validate as avro_validate

from base.errors import InvalidEvent
from schemas.catalog import SchemaCatalog, default_catalog, topic_spec
from schemas.notifications import Channel
from schemas.recipients import check_email, check_phone, check_push_token

__all__ = [
    "ENVELOPE_FIELDS",
    "EVENT_ROUTES",
    "FIELD_RULES",
    "MAX_AMOUNT_MINOR",
    "MAX_ID_LENGTH",
    "MAX_PUSH_TOKENS",
    "DomainEvent",
    "DomainEventParser",
    "EventRoute",
    "check_identifier",
    "parse_json",
    "positive_minor_units",
    "reject_unknown_fields",
]


@dataclass(frozen=True, slots=True)
class EventRoute:
    """Where an event type goes: its topic, the ``data`` union branch it must fit (the
    branch record's full Avro name), and the ``data`` field that is the record key."""

    topic: str
    branch: str
    key_field: str = "orderId"


EVENT_ROUTES: Final[Mapping[str, EventRoute]] = MappingProxyType(
    {
        "order.created": EventRoute("orders", "sluice.orders.OrderCreated"),
        "order.cancelled": EventRoute("orders", "sluice.orders.OrderCancelled"),
        "user.contact_updated": EventRoute(
            "users.contacts", "sluice.users.ContactUpdated", key_field="userId"
        ),
    }
)
"""The event types ``POST /internal/v1/events`` accepts. Union branches must differ in
their required fields: fastavro writes a union value with the first branch it fits."""

ENVELOPE_FIELDS: Final = frozenset(
    {"eventId", "eventType", "version", "occurredAt", "correlationId", "source", "data"}
)

# Ids travel as Kafka header values and keys; the same plain alphabet as correlation ids.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
MAX_ID_LENGTH: Final = 256
MAX_AMOUNT_MINOR: Final = 99_999_999
"""The largest amount accepted, in minor units: Stripe's own limit for a charge in most
currencies (999,999.99 USD); anything above is a unit mistake or a probe, and would
only fail later at the provider (docs/decisions.md)."""
_MAX_SOURCE_LENGTH = 128
# Year 9999: anything later is a unit mistake (seconds or micros), not a date.
_MAX_EPOCH_MS = 253_402_300_799_999
_PROVIDERS = frozenset({"stripe", "razorpay"})
MAX_PUSH_TOKENS: Final = 20
"""Push tokens one contact event may list (a user's devices; more is a runaway client)."""
# BCP 47 in the shape services send it (en, en-IN, zh-Hant-TW); RFC 5646 caps it at 35.
_LOCALE = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")
_MAX_LOCALE = 35
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """An accepted event: publish ``record`` to ``topic`` under ``key``."""

    topic: str
    key: str
    record: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.record["eventId"])


# -- JSON and shared field checks (also used by the payments API) ---------------------


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no ``NaN``/``Infinity``, no U+0000 in any string); ``InvalidEvent``
    when it does not parse or holds a NUL (naming where)."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidEvent("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise InvalidEvent(f"malformed JSON: {exc}") from None
    # Strict JSON has no raw control characters in strings, so a NUL can only arrive as
    # the escape; the walk (which finds the field to name) runs only when one is there.
    if b"\\u0000" in raw:
        path = _nul_path(value, "")
        if path is not None:
            raise InvalidEvent(
                f"{path or 'the body'} must not contain NUL (U+0000)", field=path or None
            )
    return value


def _nul_path(value: Any, path: str) -> str | None:
    """The path of the first string (or key) holding U+0000, else None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return where
            found = _nul_path(item, where)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def reject_unknown_fields(
    value: Mapping[str, Any], allowed: Iterable[str], *, prefix: str = ""
) -> None:
    """``InvalidEvent`` naming every key of ``value`` not in ``allowed`` (typos)."""
    unknown = sorted(str(key) for key in value.keys() - set(allowed))
    if unknown:
        names = ", ".join(prefix + name for name in unknown)
        raise InvalidEvent(f"unknown field(s): {names}", field=prefix + unknown[0])


def check_identifier(value: Any, path: str) -> str:
    """A non-blank string id of at most 256 printable characters.

    Printable as ``str.isprintable`` says: no control characters (NUL, ESC, newlines,
    DEL), no format or separator characters other than the space. Ids end up in keys,
    headers, log lines and PostgreSQL text (which refuses NUL outright)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidEvent(f"{path} must be a non-empty string", field=path)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(f"{path} is longer than {MAX_ID_LENGTH} characters", field=path)
    if not value.isprintable():
        raise InvalidEvent(
            f"{path} must be printable (no control characters such as NUL)", field=path
        )
    return value


def positive_minor_units(value: Any, path: str) -> int:
    """A positive whole number of minor units: no floats (``12.5``, ``12.0``), no
    strings, no booleans (``True`` is an ``int`` to Python, not an amount)."""
    if type(value) is not int:
        raise InvalidEvent(
            f"{path} must be a positive integer of minor units (e.g. 1999 for 19.99), "
            f"got {_json_type(value)}",
            field=path,
        )
    if value <= 0:
        raise InvalidEvent(f"{path} must be positive, got {value}", field=path)
    if value > MAX_AMOUNT_MINOR:
        raise InvalidEvent(
            f"{path} must be at most {MAX_AMOUNT_MINOR} minor units, got {value}", field=path
        )
    return value


# -- the rules Avro cannot state --------------------------------------------------------


def _currency(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise InvalidEvent(f"{path} must be a 3-letter ISO 4217 code, e.g. usd", field=path)
    return value.lower()


def _non_empty_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise InvalidEvent(f"{path} must list at least one entry", field=path)
    return value


def _quantity(value: Any, path: str) -> int:
    if type(value) is not int or value < 1:
        raise InvalidEvent(f"{path} must be at least 1", field=path)
    return value


def _provider(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in _PROVIDERS:
        raise InvalidEvent(
            f"{path} must be null or one of {', '.join(sorted(_PROVIDERS))}", field=path
        )
    return value.lower()


def _email(value: Any, path: str) -> str | None:
    return None if value is None else check_email(value, field=path)


def _phone(value: Any, path: str) -> str | None:
    return None if value is None else check_phone(value, field=path)


def _push_tokens(value: Any, path: str) -> list[str]:
    if len(value) > MAX_PUSH_TOKENS:
        raise InvalidEvent(f"{path} lists at most {MAX_PUSH_TOKENS} tokens", field=path)
    return [check_push_token(token, field=f"{path}[{i}]") for i, token in enumerate(value)]


def _channels(value: Any, path: str) -> list[str]:
    seen: set[str] = set()
    for index, channel in enumerate(value):
        where = f"{path}[{index}]"
        if channel not in Channel.__members__:
            raise InvalidEvent(f"{where} must be one of {', '.join(Channel)}", field=where)
        if channel in seen:
            raise InvalidEvent(f"{where}: {channel} is listed twice", field=where)
        seen.add(channel)
    return list(value)


def _locale(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_LOCALE or not _LOCALE.fullmatch(value):
        raise InvalidEvent(f"{path} must be a BCP 47 language tag, e.g. en-IN", field=path)
    return value


FieldRule = Callable[[Any, str], Any]

FIELD_RULES: Final[Mapping[str, FieldRule]] = MappingProxyType(
    {
        "orderId": check_identifier,
        "userId": check_identifier,
        "productId": check_identifier,
        "amount": positive_minor_units,
        "currency": _currency,
        "items": _non_empty_list,
        "quantity": _quantity,
        "paymentProvider": _provider,
        # user.contact_updated (schemas/recipients.py: the send route's rules for `to`).
        "email": _email,
        "phone": _phone,
        "pushTokens": _push_tokens,
        "preferredChannels": _channels,
        "locale": _locale,
    }
)
"""Checks (and normalisations) by ``data`` field name, applied at any depth after the
field passed its Avro type check; each returns the value to publish."""


# -- the parser -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    route: EventRoute
    version: int
    branch: Mapping[str, Any]  # the branch record, as fastavro parsed it


class DomainEventParser:
    """Checks envelopes against :data:`EVENT_ROUTES` and the checked-in schemas.

    :param catalog: where schemas come from (the codec's, so both agree on versions).
    :raises ValueError: when a route names a branch its topic's schema does not have
        (a programming error, caught at start-up rather than on a request).
    """

    def __init__(
        self,
        catalog: SchemaCatalog | None = None,
        routes: Mapping[str, EventRoute] = EVENT_ROUTES,
    ) -> None:
        catalog = catalog if catalog is not None else default_catalog()
        self._plans: dict[str, _Plan] = {}
        self._named: dict[str, Any] = {}
        for event_type, route in routes.items():
            subject = topic_spec(route.topic).subject
            if subject is None:
                raise ValueError(f"{event_type}: topic {route.topic} has no schema")
            version = catalog.latest_version(subject)
            parsed = catalog.parsed(subject, version)
            named = parsed.get("__named_schemas", {})
            branch = named.get(route.branch)
            data_types: list[Any] = next(
                (f["type"] for f in parsed["fields"] if f["name"] == "data"), []
            )
            members = {m if isinstance(m, str) else m.get("name") for m in data_types}
            if branch is None or route.branch not in members:
                raise ValueError(
                    f"{event_type}: {route.branch} is not a branch of {subject} v{version} data"
                )
            if route.key_field not in {f["name"] for f in branch["fields"]}:
                raise ValueError(f"{event_type}: {route.branch} has no key field {route.key_field}")
            self._named.update(named)
            self._plans[event_type] = _Plan(route, version, branch)

    @property
    def event_types(self) -> list[str]:
        return sorted(self._plans)

    def version(self, event_type: str) -> int:
        return self._plans[event_type].version

    def parse(
        self,
        body: Any,
        *,
        correlation_id: str,
        now_ms: int,
        new_event_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> DomainEvent:
        """The event to publish for the decoded JSON ``body``.

        :param correlation_id: the request's, used when the envelope has none.
        :param now_ms: ``occurredAt`` when the envelope has none.
        :raises InvalidEvent: naming the field (``field``) and the problem.
        """
        if not isinstance(body, dict):
            raise InvalidEvent(f"the body must be a JSON object, got {_json_type(body)}")
        reject_unknown_fields(body, ENVELOPE_FIELDS)
        event_type = body.get("eventType")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidEvent("eventType must be a non-empty string", field="eventType")
        plan = self._plans.get(event_type)
        if plan is None:
            raise InvalidEvent(
                f"unknown eventType {event_type[:64]!r}; accepted: {', '.join(self.event_types)}",
                field="eventType",
            )
        source = body.get("source")
        if not isinstance(source, str) or not source.strip():
            raise InvalidEvent("source must be a non-empty string", field="source")
        if len(source) > _MAX_SOURCE_LENGTH:
            raise InvalidEvent(
                f"source is longer than {_MAX_SOURCE_LENGTH} characters", field="source"
            )
        if not source.isprintable():
            raise InvalidEvent("source must be printable (no control characters)", field="source")
        event_id = _plain_id(body.get("eventId"), "eventId") or new_event_id()
        _check_version(body.get("version"), plan.version)
        occurred_at = _occurred_at(body.get("occurredAt"), now_ms)
        correlation = _plain_id(body.get("correlationId"), "correlationId") or correlation_id
        if "data" not in body:
            raise InvalidEvent("data is required", field="data")
        data = self._value(plan.branch, body["data"], "data")
        record = {
            "eventId": event_id,
            "eventType": event_type,
            # Whatever the caller said it spoke, the record is written with the latest.
            "version": plan.version,
            "occurredAt": occurred_at,
            "correlationId": correlation,
            "source": source,
            "data": data,
        }
        return DomainEvent(plan.route.topic, str(data[plan.route.key_field]), record)

    # A small walk over the branch schema, so errors carry the full path
    # (data.items[0].quantity); fastavro checks each leaf value.

    def _value(self, schema: Any, value: Any, path: str) -> Any:
        if isinstance(schema, str):
            if schema in self._named:
                return self._value(self._named[schema], value, path)
            return _leaf(schema, value, path)
        if isinstance(schema, list):
            return self._union(schema, value, path)
        kind = schema["type"]
        if kind in ("record", "error"):
            return self._record(schema, value, path)
        if kind == "array":
            if not isinstance(value, list):
                raise InvalidEvent(f"{path} must be an array, got {_json_type(value)}", field=path)
            return [self._value(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
        if kind == "map":
            if not isinstance(value, dict):
                raise InvalidEvent(f"{path} must be an object, got {_json_type(value)}", field=path)
            return {k: self._value(schema["values"], v, f"{path}[{k}]") for k, v in value.items()}
        if kind == "enum":
            if value not in schema["symbols"]:
                raise InvalidEvent(
                    f"{path} must be one of {', '.join(schema['symbols'])}", field=path
                )
            return value
        # Primitives written as {"type": "long", "logicalType": ...}, fixed.
        return _leaf(schema, value, path)

    def _record(self, schema: Mapping[str, Any], value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise InvalidEvent(f"{path} must be an object, got {_json_type(value)}", field=path)
        fields = schema["fields"]
        reject_unknown_fields(value, (f["name"] for f in fields), prefix=f"{path}.")
        checked: dict[str, Any] = {}
        for field in fields:
            name = field["name"]
            where = f"{path}.{name}"
            if name not in value:
                if "default" not in field:
                    raise InvalidEvent(f"{where} is required", field=where)
                item = field["default"]
            else:
                item = self._value(field["type"], value[name], where)
            rule = FIELD_RULES.get(name)
            checked[name] = rule(item, where) if rule is not None else item
        return checked

    def _union(self, branches: list[Any], value: Any, path: str) -> Any:
        if value is None:
            if "null" in branches:
                return None
            raise InvalidEvent(f"{path} must not be null", field=path)
        others = [b for b in branches if b != "null"]
        if len(others) == 1:
            return self._value(others[0], value, path)
        first: InvalidEvent | None = None
        for branch in others:
            try:
                return self._value(branch, value, path)
            except InvalidEvent as exc:
                first = first or exc
        assert first is not None
        raise first


def _leaf(schema: Any, value: Any, path: str) -> Any:
    if not avro_validate(value, schema, raise_errors=False):
        kind = schema if isinstance(schema, str) else schema.get("type")
        raise InvalidEvent(
            f"{path} must be {_EXPECTED.get(str(kind), str(kind))}, got {_json_type(value)}",
            field=path,
        )
    return value


_EXPECTED = {
    "string": "a string",
    "int": "an integer (32-bit)",
    "long": "an integer (64-bit)",
    "float": "a number",
    "double": "a number",
    "boolean": "true or false",
    "null": "null",
    "bytes": "bytes (not expressible in JSON)",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction" if not value.is_integer() else "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _plain_id(value: Any, name: str) -> str | None:
    """An optional id that goes into a Kafka header: absent or a plain short token."""
    if value is None:
        return None
    if not isinstance(value, str) or not _PLAIN_ID.fullmatch(value):
        raise InvalidEvent(
            f"{name} must be 1-128 characters of letters, digits and . _ : -", field=name
        )
    return value


def _check_version(value: Any, latest: int) -> None:
    """A caller may say which schema version it wrote against: any known one is fine
    (BACKWARD compatibility means the latest reads it), a newer one is not."""
    if value is None:
        return
    if type(value) is not int or not 1 <= value <= latest:
        raise InvalidEvent(f"version must be an integer from 1 to {latest}", field="version")


def _occurred_at(value: Any, now_ms: int) -> int:
    """ms since the epoch, from epoch millis or an ISO-8601 time with a UTC offset."""
    if value is None:
        return now_ms
    if type(value) is int:
        if not 0 <= value <= _MAX_EPOCH_MS:
            raise InvalidEvent(
                "occurredAt must be milliseconds since the epoch (or an ISO-8601 time)",
                field="occurredAt",
            )
        return value
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None or parsed.utcoffset() is None:
            raise InvalidEvent(
                "occurredAt must be an ISO-8601 time with a UTC offset "
                "(2024-05-01T12:00:00Z) or milliseconds since the epoch",
                field="occurredAt",
            )
        # Integer arithmetic: float seconds would round some millisecond values.
        return (parsed - _EPOCH) // dt.timedelta(milliseconds=1)
    raise InvalidEvent(
        f"occurredAt must be an ISO-8601 string or epoch milliseconds, got {_json_type(value)}",
        field="occurredAt",
    )
