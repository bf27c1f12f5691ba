"""The one error taxonomy every Sluice package roots its exceptions in.

How the pipeline reacts is decided by the class, never by the message:

- ``InvalidEvent`` / ``PermanentError``: the record goes to ``dlq`` at once.
- ``TransientError``: the record goes to the next ``retry.<delay>`` topic.
- ``Held`` (a ``TransientError``): the effect is switched off for now; the record waits
  on the longest delay topic and its attempt is not counted.

Anything else is a bug: the worker stops, and the record is consumed again after the
restart (``streams/app.py``). There is no backpressure error: a saturated downstream
answers 429/5xx, which is transient (docs/decisions.md, "Worker failure rules").
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "Held",
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
    """A side effect failed in a way retrying cannot fix (a 4xx other than 429, say).

    :param alert: dead-letter it with an ``alerts`` record too: a refusal someone must
        look at (a partner CRM refusing a lead), not just bad input.
    :param expected: a refusal the data explains (a user with no contact for the
        channel, a recipient over the per-user cap, a mail server refusing an address):
        dead-lettered like any other, but not counted by the dead-letter guard. The guard
        stops the worker when most records fail, because that is what a broken deploy
        looks like; a shop whose users never gave an email address is not one, and must
        not stop every other agent (docs/decisions.md, "Expected refusals").
    """

    def __init__(self, message: str, *, alert: bool = False, expected: bool = False) -> None:
        super().__init__(message)
        self.alert = alert
        self.expected = expected


class TransientError(SluiceError):
    """A side effect failed in a way that may pass on retry (timeout, 5xx, 429)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Held(TransientError):
    """The side effect is switched off for now (a partner's delivery disabled): the
    record waits on the longest delay topic and comes back, without using up an attempt,
    until it is switched back on. Never dead-lettered for being held."""
