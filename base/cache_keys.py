"""Which cache keys a projection invalidates after it commits (``SLUICE_CACHE_KEYS``).

The setting maps a projection to key templates::

    SLUICE_CACHE_KEYS="orders=order:{orderId},payments:{orderId}"

Several projections are separated by ``;`` (``orders=...;other=...``). A template is
literal text with ``{placeholder}`` fields, each a field of the projection's snapshot
(:data:`PROJECTION_FIELDS`); ``{{`` and ``}}`` are literal braces. Checked when the
settings load (a ``ConfigError`` naming the setting): an unknown projection, an unknown
placeholder, a format spec or conversion (``{orderId:>5}``, ``{orderId!r}``), an
unbalanced brace, a template without a placeholder (it would drop one constant key on
every batch), a non-printable or over-long template, or a projection named twice.

Empty (the default): no projection invalidates anything.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

__all__ = ["PROJECTION_FIELDS", "KeyTemplate", "parse_cache_keys"]

PROJECTION_FIELDS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        # streams/agents/project_orders.py: the order snapshot on orders.lifecycle.
        "orders": frozenset({"orderId", "userId", "paymentIntentId"}),
    }
)
"""The projections that can invalidate, and the placeholders each one fills."""

MAX_TEMPLATE_LENGTH: Final = 256


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """One key template: ``text`` as written, ``parts`` as (literal, field or None)."""

    text: str
    parts: tuple[tuple[str, str | None], ...]

    def render(self, values: Mapping[str, Any]) -> str | None:
        """The key for one snapshot; None when a placeholder's value is missing or empty
        (an order without a user has no ``user:{userId}`` key to drop)."""
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                value = values.get(name)
                if value is None or value == "":
                    return None
                out.append(str(value))
        return "".join(out)


def parse_cache_keys(text: str) -> dict[str, tuple[KeyTemplate, ...]]:
    """``SLUICE_CACHE_KEYS`` as projection → templates.

    :raises ValueError: naming the projection or template and what is wrong.
    """
    parsed: dict[str, tuple[KeyTemplate, ...]] = {}
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        projection, sep, templates = (part.strip() for part in entry.partition("="))
        if not sep or not projection:
            raise ValueError(f"{entry[:64]!r} is not projection=template,template")
        fields = PROJECTION_FIELDS.get(projection)
        if fields is None:
            known = ", ".join(sorted(PROJECTION_FIELDS))
            raise ValueError(f"unknown projection {projection[:64]!r} (known: {known})")
        if projection in parsed:
            raise ValueError(f"projection {projection!r} is named twice")
        found = tuple(
            _template(item.strip(), projection, fields)
            for item in templates.split(",")
            if item.strip()
        )
        if not found:
            raise ValueError(f"projection {projection!r} has no key template")
        parsed[projection] = found
    return parsed


def _template(text: str, projection: str, fields: frozenset[str]) -> KeyTemplate:
    where = f"template {text[:64]!r} of {projection}"
    if len(text) > MAX_TEMPLATE_LENGTH or not text.isprintable():
        raise ValueError(f"{where}: at most {MAX_TEMPLATE_LENGTH} printable characters")
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone { or }
        raise ValueError(f"{where}: {exc}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in pieces:
        if name is None:
            parts.append((literal, None))
            continue
        if name not in fields:
            allowed = ", ".join(sorted(fields))
            raise ValueError(f"{where}: unknown placeholder {{{name}}} (known: {allowed})")
        if spec or conversion:
            raise ValueError(f"{where}: no format spec or conversion in {{{name}}}")
        parts.append((literal, name))
    if not any(name is not None for _, name in parts):
        raise ValueError(f"{where}: needs a placeholder such as {{{min(fields)}}}")
    return KeyTemplate(text, tuple(parts))
