"""Reading a decoded record for a projection: one field at a time, failing by name.

Checks shape only (presence, types). Value rules (amounts not negative, currency lower
case) live in the migrations' CHECK constraints alone and come back from the database as
``PermanentError``, so an operator who relaxes one by migration can replay what it
refused. Pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

from base.errors import PermanentError

__all__ = ["ProjectionInputError", "RecordReader", "str_or_none", "timestamp"]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ProjectionInputError(PermanentError):
    """A record cannot be projected (bad shape, unknown status); retrying cannot help.

    Raised before anything is written: the whole batch is refused, and ``event_id``
    names the offending record so the caller can dead-letter it and resubmit the rest.
    """

    def __init__(self, message: str, *, event_id: str | None, field: str | None) -> None:
        super().__init__(message)
        self.event_id = event_id
        self.field = field


class RecordReader:
    """Reads one decoded record, raising ``ProjectionInputError`` naming the field.

    :raises ProjectionInputError: at construction when ``eventId`` is missing.
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record
        self.event_id: str | None = None
        self.event_id = self.text("eventId")

    def fail(self, name: str, problem: str) -> ProjectionInputError:
        return ProjectionInputError(
            f"event {self.event_id!r}: {name} {problem}", event_id=self.event_id, field=name
        )

    def text(self, name: str) -> str:
        value = self.record.get(name)
        if not isinstance(value, str) or not value:
            raise self.fail(name, "must be a non-empty string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.record.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(name, "must be a string or null")
        return value or None

    def amount(self, name: str) -> int | None:
        # Only the type: value rules (non-negative) are the schema's CHECK constraints.
        value = self.record.get(name)
        if value is None:
            return None
        if type(value) is not int:
            raise self.fail(name, "must be an integer (minor units) or null")
        return value

    def occurred_at(self) -> dt.datetime:
        value = self.record.get("occurredAt")
        try:
            return timestamp(value)
        except (TypeError, ValueError, OverflowError):
            raise self.fail(
                "occurredAt", "must be milliseconds since the epoch or an aware datetime"
            ) from None

    def text_list(self, name: str) -> list[str]:
        values = self.record.get(name)
        if values is None:
            return []
        if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
            raise self.fail(name, "must be a list of strings")
        return list(values)


def timestamp(value: object) -> dt.datetime:
    """Milliseconds since the epoch (how the codec decodes timestamp-millis) or an aware
    datetime, as an aware UTC datetime. Raises ``TypeError``/``ValueError``."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value
    if type(value) is not int:
        raise TypeError(f"not a timestamp: {type(value).__name__}")
    return _EPOCH + dt.timedelta(milliseconds=value)


def str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
