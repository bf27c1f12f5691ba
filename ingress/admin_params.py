"""Parameters of the admin API (``/v1/admin/...``): query strings and body fields, each
refused with 400 naming it (``InvalidEvent.field``) when it is unknown or malformed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, Final

from multidict import MultiMapping

from base.errors import InvalidEvent

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "check_query",
    "parse_limit",
    "parse_range",
    "parse_time",
    "short_text",
]

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
_MAX_TEXT: Final = 256
_EXAMPLE: Final = "2026-11-30T08:00:00Z"


def check_query(query: MultiMapping[str], allowed: Iterable[str]) -> None:
    """400 naming the first unknown parameter (typos), or a repeated one."""
    unknown = sorted(set(query.keys()) - set(allowed))
    if unknown:
        raise InvalidEvent(f"unknown parameter(s): {', '.join(unknown)}", field=unknown[0])
    for name in query:
        if len(query.getall(name)) > 1:
            raise InvalidEvent(f"{name} given more than once", field=name)


def short_text(value: Any, name: str) -> str:
    """A non-empty printable string of at most 256 characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidEvent(f"{name} must be a non-empty string", field=name)
    if len(value) > _MAX_TEXT or not value.isprintable():
        raise InvalidEvent(f"{name} must be printable, at most {_MAX_TEXT} characters", field=name)
    return value


def parse_limit(value: str | None) -> int:
    """``limit``: 1 to :data:`MAX_LIMIT`, default :data:`DEFAULT_LIMIT`."""
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidEvent(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    return int(value)


def parse_time(value: Any, name: str) -> dt.datetime:
    """An ISO 8601 time with its UTC offset (``2026-11-30T08:00:00Z``); a time without
    one is refused rather than guessed."""
    bad = InvalidEvent(f"{name} must be an ISO 8601 time such as {_EXAMPLE}", field=name)
    if not isinstance(value, str) or len(value) > 64:
        raise bad
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise bad from None
    if moment.tzinfo is None:
        raise InvalidEvent(f"{name} needs a UTC offset (Z or +hh:mm)", field=name)
    return moment


def parse_range(
    since: Any, until: Any, *, required: bool = False
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``since``/``until`` (each optional unless ``required``); ``until`` after ``since``."""
    if required and since is None:
        raise InvalidEvent("since is required (or eventIds)", field="since")
    if required and until is None:
        raise InvalidEvent("until is required with since", field="until")
    start = parse_time(since, "since") if since is not None else None
    end = parse_time(until, "until") if until is not None else None
    if start is not None and end is not None and end <= start:
        raise InvalidEvent("until must be after since", field="until")
    return start, end
