"""The one way the ingress writes a JSON answer, on every route and for every error.

Compact and key-sorted, so two answers with the same content are the same bytes
whichever route (or the worker's reply) produced them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

__all__ = ["iso_time", "json_bytes", "json_response"]


def json_bytes(body: Any) -> bytes:
    """``body`` as the ingress writes JSON: compact, keys sorted, ASCII only."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("ascii")


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json_bytes(body),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def iso_time(moment: dt.datetime) -> str:
    """A timestamp as every answer writes it: UTC, milliseconds, ``Z``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
