"""The runtime configuration keys: which keys exist, their types, bounds and defaults.

Runtime configuration (DESIGN §3 ``/internal/v1/config``, §4 ``config.runtime``) changes a
running system without a restart: the ingress writes a ``RuntimeConfigEntry`` per change
to the compacted ``config.runtime`` topic, and every process follows the topic
(``connectors/runtime_config.py``). This module is the one list of keys both sides agree
on, pure (no Kafka, no web): the ingress validates a write against it, the followers
parse what they read with it, and the code that obeys a key reads it through
:class:`RuntimeValues`.

Keys (:func:`declared_keys`; defaults come from the process's settings and partner
registry, so a key never set behaves exactly as the settings say):

- ``partners.<id>.enabled`` (bool): the partner is switched on. False: its new leads are
  refused at the door (403 ``partner disabled``) and the worker holds its deliveries.
  Default: the registry's ``enabled``.
- ``partners.<id>.delivery.enabled`` (bool): its leads are delivered; false holds them
  (still accepted). Default: the registry's ``delivery.enabled``.
- ``dedupe.window`` (duration): the webhook dedupe window; at least 1 minute, at most
  ``SLUICE_POSTGRES_RETENTION`` (the Postgres rows back the window up).
- ``retry.delays`` (list of durations): the retry schedule; each delay must be one with
  a catalog retry topic (``schemas.catalog.RETRY_DELAYS``, or one of the process's own
  ``SLUICE_RETRY_DELAYS``), strictly increasing. Applied at the worker's next start only
  (:attr:`KeySpec.live` is false): the delay topics a worker reads are fixed when it
  starts.
- Rate limits (int, requests per second, 0: no limit; ``ingress/ratelimit.py``), each a
  token bucket in Redis shared by every ingress process, holding rate x
  ``SLUICE_RATE_LIMIT_BURST`` tokens. Defaults: ``SLUICE_RATE_LIMITS``, by the name after
  ``ratelimit.`` (an unknown name there is a ``ConfigError``).

  - ``ratelimit.<route>`` for every route name in :data:`RATE_LIMITED_ROUTES`, per
    subject: on ``webhook.stripe`` / ``webhook.razorpay`` the provider as a whole, on
    ``webhook.partner.leads`` each partner, on an internal or admin route each token
    (by name);
  - ``ratelimit.<route>.source`` for every route in :data:`PUBLIC_ROUTES`: each source
    address (the TCP peer);
  - ``ratelimit.partners.<id>``: that partner's own rate on the leads route; 0: the
    route's ``ratelimit.webhook.partner.leads``.
- ``notifications.user_cap`` (int, 1 to 10,000): the per-user notification cap.
- ``feature.<name>`` (bool): each flag ``SLUICE_FEATURE_FLAGS`` declares.

Values. The HTTP API takes and shows JSON values: an int, ``true``/``false``, a duration
as text (``"30s"``, ``"5m"``) or a number of seconds, a list of durations as a JSON array
(or comma-separated text), a string. The topic's ``value`` field holds the canonical JSON
text of the value (:meth:`KeySpec.to_text`), so every reader parses it the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from base.durations import check_retry_schedule, parse_duration
from base.errors import ConfigError
from base.partners import PartnerRegistry
from base.settings import MAX_RATE, Settings
from schemas.catalog import RETRY_DELAYS

__all__ = [
    "DEDUPE_WINDOW",
    "NOTIFY_USER_CAP",
    "PUBLIC_ROUTES",
    "RATE_LIMITED_ROUTES",
    "RETRY_DELAYS_KEY",
    "BadValue",
    "KeyKind",
    "KeySpec",
    "RuntimeKeys",
    "RuntimeValues",
    "StaticValues",
    "declared_keys",
    "feature_key",
    "format_duration",
    "partner_delivery_key",
    "partner_enabled_key",
    "ratelimit_key",
    "ratelimit_partner_key",
    "ratelimit_source_key",
]

DEDUPE_WINDOW: Final = "dedupe.window"
RETRY_DELAYS_KEY: Final = "retry.delays"
NOTIFY_USER_CAP: Final = "notifications.user_cap"

PUBLIC_ROUTES: Final = ("webhook.stripe", "webhook.razorpay", "webhook.partner.leads")
"""The public listener's routes: limited per source address too."""

RATE_LIMITED_ROUTES: Final = (
    *PUBLIC_ROUTES,
    "internal.events",
    "internal.payments.intents",
    "internal.payments.checkout-sessions",
    "internal.payments.refunds",
    "internal.payments.status",
    "internal.leads.deliver",
    "internal.leads.status",
    "internal.notifications.send",
    "internal.notifications.status",
    "internal.search.index",
    "internal.search.query",
    "internal.cache.invalidate",
    "internal.config.get",
    "internal.config.set",
    "admin.webhooks.logs",
    "admin.webhooks.replay",
    "admin.dlq.list",
    "admin.dlq.show",
    "admin.dlq.replay",
    "admin.dashboard",
    "admin.dashboard.data",
    "admin.dashboard.login",
    "admin.dashboard.replay",
)
"""Every public, internal and admin API route name (``ingress/app.py``'s ``name=``), each with a
``ratelimit.<route>`` key. Listed here, not read from the ingress, because the worker
may not import the ingress; ``tests/test_runtime_config.py`` checks the two agree."""

_MAX_USER_CAP: Final = 10_000
_MIN_DEDUPE_S: Final = 60.0
_MAX_STRING: Final = 1024
_UNITS: Final = (("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


class BadValue(ValueError):
    """A value does not fit its key (type or bounds); the message says how, for a 400."""


class KeyKind(StrEnum):
    INT = "int"
    BOOL = "bool"
    DURATION = "duration"
    DURATIONS = "durations"
    STRING = "string"


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it exactly: ``30d``, ``5m``, ``250ms``.

    :raises BadValue: not a whole number of milliseconds.
    """
    millis = seconds * 1000
    if not math.isfinite(millis) or abs(millis - round(millis)) > 1e-6:
        raise BadValue(f"{seconds!r}s is not a whole number of milliseconds")
    whole = round(millis)
    for unit, size in _UNITS:
        if whole % size == 0:
            return f"{whole // size}{unit}"
    raise AssertionError("unreachable: 1 ms divides every whole number of milliseconds")


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One declared key.

    :param name: the key (also the record key on ``config.runtime``).
    :param kind: its type.
    :param default: the value while the key was never set (from settings), in its
        canonical form (int, bool, float seconds, tuple of float seconds, str).
    :param minimum: / :param maximum: inclusive bounds of an int, a duration (seconds)
        or each delay of a list; ``None``: unbounded that way.
    :param allowed: for a list of durations, the only delays accepted (each has a delay
        topic); empty: any.
    :param live: applied by running processes within seconds; false: at their next start.
    :param doc: what the key does, shown by ``GET /internal/v1/config``.
    """

    name: str
    kind: KeyKind
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    allowed: frozenset[float] = field(default_factory=frozenset)
    live: bool = True

    def parse(self, value: Any) -> Any:
        """``value`` (decoded JSON) as this key's canonical value.

        :raises BadValue: naming the problem (wrong type, out of bounds, not a delay
            with a retry topic, ...).
        """
        if self.kind is KeyKind.BOOL:
            if not isinstance(value, bool):
                raise BadValue(f"{self.name} takes true or false")
            return value
        if self.kind is KeyKind.INT:
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadValue(f"{self.name} takes an integer")
            self._check_bounds(value, str(value))
            return value
        if self.kind is KeyKind.DURATION:
            seconds = self._seconds(value)
            self._check_bounds(seconds, format_duration(seconds))
            return seconds
        if self.kind is KeyKind.DURATIONS:
            return self._schedule(value)
        if not isinstance(value, str):
            raise BadValue(f"{self.name} takes a string")
        if len(value) > _MAX_STRING or not value.isprintable():
            raise BadValue(f"{self.name} takes printable text of at most {_MAX_STRING} characters")
        return value

    def to_json(self, value: Any) -> Any:
        """The canonical ``value`` as the API shows it (durations as text like ``30s``)."""
        if self.kind is KeyKind.DURATION:
            return format_duration(value)
        if self.kind is KeyKind.DURATIONS:
            return [format_duration(delay) for delay in value]
        return value

    def to_text(self, value: Any) -> str:
        """The canonical ``value`` as the ``value`` field of a ``RuntimeConfigEntry``."""
        return json.dumps(self.to_json(value), separators=(",", ":"))

    def from_text(self, text: str) -> Any:
        """The canonical value a ``RuntimeConfigEntry``'s ``value`` holds.

        :raises BadValue: not JSON, or not a value of this key.
        """
        try:
            decoded = json.loads(text)
        except ValueError:
            raise BadValue(f"{self.name}: stored value is not JSON") from None
        return self.parse(decoded)

    def _seconds(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise BadValue(f"{self.name} takes a duration like 30s, 5m or 30d, or seconds")
        try:
            seconds = parse_duration(value) if isinstance(value, str) else float(value)
        except ValueError as exc:
            raise BadValue(f"{self.name}: {exc}") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise BadValue(f"{self.name} takes a duration of 0 or more")
        format_duration(seconds)  # whole milliseconds, or BadValue
        return seconds

    def _schedule(self, value: Any) -> tuple[float, ...]:
        parts = value.split(",") if isinstance(value, str) else value
        if not isinstance(parts, list | tuple):
            raise BadValue(f"{self.name} takes a list of durations, shortest first")
        delays = tuple(self._seconds(part) for part in parts)
        try:
            check_retry_schedule(delays)
        except ValueError as exc:
            raise BadValue(f"{self.name}: {exc}") from None
        for delay in delays:
            if self.allowed and delay not in self.allowed:
                known = ", ".join(format_duration(d) for d in sorted(self.allowed))
                raise BadValue(
                    f"{self.name}: {format_duration(delay)} has no catalog retry topic "
                    f"(delays with one: {known})"
                )
        return delays

    def _check_bounds(self, number: float, shown: str) -> None:
        if self.minimum is not None and number < self.minimum:
            raise BadValue(f"{self.name} must be at least {self._bound(self.minimum)}, got {shown}")
        if self.maximum is not None and number > self.maximum:
            raise BadValue(f"{self.name} must be at most {self._bound(self.maximum)}, got {shown}")

    def _bound(self, number: float) -> str:
        return format_duration(number) if self.kind is KeyKind.DURATION else f"{number:g}"


class RuntimeKeys(Mapping[str, KeySpec]):
    """The declared keys, by name (iterated in name order)."""

    def __init__(self, specs: Iterable[KeySpec]) -> None:
        self._specs = {spec.name: spec for spec in sorted(specs, key=lambda s: s.name)}

    def __getitem__(self, name: str) -> KeySpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


class RuntimeValues(Protocol):
    """The current value of each key as one process sees it (a follower of the topic,
    or :class:`StaticValues`): what the code that obeys a key reads, on every use."""

    def value(self, key: str) -> Any:
        """The current canonical value of declared key ``key`` (its default if never set).

        :raises KeyError: ``key`` is not declared.
        """
        ...


class StaticValues:
    """Every key at its default: a process (or a test) without a follower."""

    def __init__(self, keys: RuntimeKeys) -> None:
        self._keys = keys

    def value(self, key: str) -> Any:
        return self._keys[key].default


def partner_enabled_key(partner_id: str) -> str:
    return f"partners.{partner_id}.enabled"


def partner_delivery_key(partner_id: str) -> str:
    return f"partners.{partner_id}.delivery.enabled"


def ratelimit_key(route: str) -> str:
    return f"ratelimit.{route}"


def ratelimit_source_key(route: str) -> str:
    return f"ratelimit.{route}.source"


def ratelimit_partner_key(partner_id: str) -> str:
    return f"ratelimit.partners.{partner_id}"


def feature_key(name: str) -> str:
    return f"feature.{name}"


def declared_keys(settings: Settings, partners: PartnerRegistry) -> RuntimeKeys:
    """Every key this deployment declares, defaults taken from ``settings`` and
    ``partners`` (the ingress and the worker build the same list from the same settings)."""
    own = settings.retry_delays or ()
    schedule = settings.retry_delays or tuple(seconds for _, seconds in RETRY_DELAYS)
    specs: list[KeySpec] = [
        KeySpec(
            DEDUPE_WINDOW,
            KeyKind.DURATION,
            settings.dedupe_window_s,
            "webhook dedupe window (SLUICE_DEDUPE_WINDOW)",
            minimum=_MIN_DEDUPE_S,
            maximum=settings.postgres_retention_s,
        ),
        KeySpec(
            RETRY_DELAYS_KEY,
            KeyKind.DURATIONS,
            tuple(schedule),
            "retry schedule (SLUICE_RETRY_DELAYS); applied at the worker's next start",
            minimum=None,
            allowed=frozenset({*(seconds for _, seconds in RETRY_DELAYS), *own}),
            live=False,
        ),
        KeySpec(
            NOTIFY_USER_CAP,
            KeyKind.INT,
            settings.notify_user_cap,
            "notifications to one recipient per SLUICE_NOTIFY_USER_WINDOW (SLUICE_NOTIFY_USER_CAP)",
            minimum=1,
            maximum=_MAX_USER_CAP,
        ),
    ]
    for partner in sorted(partners, key=lambda p: p.id):
        partner_id = partner.id
        specs.append(
            KeySpec(
                partner_enabled_key(partner_id),
                KeyKind.BOOL,
                partner.enabled,
                "partner switched on: leads accepted and delivered",
            )
        )
        specs.append(
            KeySpec(
                partner_delivery_key(partner_id),
                KeyKind.BOOL,
                partner.delivery.enabled,
                "the partner's leads are delivered (false: held)",
            )
        )
    specs += _rate_limit_keys(settings, partners)
    for name, enabled in settings.feature_flags:
        specs.append(
            KeySpec(feature_key(name), KeyKind.BOOL, enabled, "feature flag (SLUICE_FEATURE_FLAGS)")
        )
    return RuntimeKeys(specs)


def _rate_limit_keys(settings: Settings, partners: PartnerRegistry) -> list[KeySpec]:
    """The ``ratelimit.*`` keys, defaults from ``SLUICE_RATE_LIMITS``.

    :raises ConfigError: ``SLUICE_RATE_LIMITS`` names a limit that is not declared.
    """
    docs: dict[str, str] = {}
    for route in RATE_LIMITED_ROUTES:
        subject = {
            "webhook.stripe": "for Stripe as a whole",
            "webhook.razorpay": "for Razorpay as a whole",
            "webhook.partner.leads": "per partner (unless ratelimit.partners.<id> is set)",
        }.get(route, "per token")
        docs[ratelimit_key(route)] = f"requests per second on {route} {subject} (0: no limit)"
    for route in PUBLIC_ROUTES:
        docs[ratelimit_source_key(route)] = (
            f"requests per second on {route} per source address (0: no limit)"
        )
    for partner in sorted(partners, key=lambda p: p.id):
        docs[ratelimit_partner_key(partner.id)] = (
            f"requests per second of partner {partner.id} on webhook.partner.leads"
            " (0: ratelimit.webhook.partner.leads)"
        )
    defaults = dict(settings.rate_limits)
    for name in defaults:
        if f"ratelimit.{name}" not in docs:
            raise ConfigError(
                f"malformed setting SLUICE_RATE_LIMITS: unknown limit {name} (a route"
                " name, <public route>.source, or partners.<id> of a registered partner)"
            )
    return [
        KeySpec(
            key,
            KeyKind.INT,
            defaults.get(key.removeprefix("ratelimit."), 0),
            doc,
            minimum=0,
            maximum=MAX_RATE,
        )
        for key, doc in docs.items()
    ]
