"""The notification contract shared by the ingress and the worker: the channels.

The send route checks a request against it (the channel, the template, the recipient)
before it publishes anything; the worker renders and sends with the same definitions, so
a request the route accepted is one the worker can render.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Channel"]


class Channel(StrEnum):
    """How a notification reaches its recipient (``channel`` of the send route)."""

    EMAIL = "EMAIL"
    SMS = "SMS"
    PUSH = "PUSH"
