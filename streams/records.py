"""The one shape a consumed record has inside the worker, whatever delivered it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Inbound", "header_value"]


@dataclass(frozen=True)
class Inbound:
    """A Kafka record as consumed: where it came from, and its bytes untouched."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def position(self) -> str:
        """``topic[partition]@offset``, the form every log line uses."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    @classmethod
    def from_faust(cls, event: Any) -> Inbound:
        """Build from a faust ``Event`` whose topic uses the raw serializers."""
        message = event.message
        raw_headers = message.headers or ()
        pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=_as_bytes(message.key),
            value=_as_bytes(message.value) or b"",
            headers=tuple((str(name), _as_bytes(value) or b"") for name, value in pairs),
        )


def header_value(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """The last value of header ``name`` as text, or None."""
    for header, value in reversed(headers):
        if header == name:
            return value.decode("utf-8", "replace")
    return None


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"expected raw bytes from the topic, got {type(value).__name__}")
