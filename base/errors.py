"""The one error taxonomy every Sluice package roots its exceptions in.

How the pipeline reacts is decided by the class, never by the message:

- ``InvalidEvent`` / ``PermanentError``: the record goes to ``dlq`` at once.
- ``TransientError``: the record goes to the next ``retry.<delay>`` topic.
- ``Backpressure``: processing pauses instead of failing.
"""

from __future__ import annotations

__all__ = [
    "Backpressure",
    "ConfigError",
    "InvalidEvent",
    "PermanentError",
    "SluiceError",
    "TransientError",
]


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""


class ConfigError(SluiceError):
    """A required setting is missing or malformed; the process stops with this message."""


class InvalidEvent(SluiceError):
    """The input is the sender's fault (bad shape, bad value); never retried."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PermanentError(SluiceError):
    """A side effect failed in a way retrying cannot fix (a 4xx other than 429, say)."""


class TransientError(SluiceError):
    """A side effect failed in a way that may pass on retry (timeout, 5xx, 429)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Backpressure(SluiceError):
    """A downstream is saturated: pause for ``delay`` seconds and resubmit."""

    def __init__(self, message: str, *, delay: float) -> None:
        super().__init__(message)
        self.delay = delay
