"""A local CRM for ``sluice dev``: where the demo partners' leads are delivered.

A small aiohttp server on a loopback port. It accepts ``POST /leads/<partnerId>``,
answers 200 ``{"ok": true}``, appends each delivery as one JSON line to
``<dir>/<partnerId>.jsonl`` and logs one line per lead, so a developer sees a lead
arrive and can read exactly what the CRM was sent:

    {"receivedAt": "...", "partnerId": "demo-hmac", "headers": {...}, "body": {...}}

``headers`` holds the ones a CRM acts on: ``Idempotency-Key``, ``Content-Type``, the
Standard Webhooks ``webhook-id``/``webhook-timestamp``/``webhook-signature``, and
whether an ``Authorization`` header came, with its scheme (never the credential). It
checks no signature: it stands in for the partners' own CRMs, which do. A body that is
not JSON is kept as text.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = ["LocalCrm", "delivery_line", "running_crm"]

log = logging.getLogger(__name__)

_PARTNER = re.compile(r"[a-z0-9_-]{1,64}")  # the registry's partner id shape
_KEPT_HEADERS = (
    "Idempotency-Key",
    "Content-Type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)
_MAX_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LocalCrm:
    """A running local CRM: deliveries for partner ``p`` go to ``url_for(p)``."""

    url: str
    directory: Path

    def url_for(self, partner_id: str) -> str:
        return f"{self.url}/leads/{partner_id}"

    def file_for(self, partner_id: str) -> Path:
        return self.directory / f"{partner_id}.jsonl"


def delivery_line(partner_id: str, headers: Any, raw: bytes, now: dt.datetime) -> dict[str, Any]:
    """The JSON line one delivery is stored as (see the module docstring)."""
    kept = {name: headers[name] for name in _KEPT_HEADERS if name in headers}
    authorization = headers.get("Authorization")
    kept["Authorization"] = authorization.split(" ", 1)[0] + " (present)" if authorization else None
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return {
        "receivedAt": now.isoformat(timespec="milliseconds"),
        "partnerId": partner_id,
        "headers": kept,
        "body": body,
    }


def _append(path: Path, line: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True) + "\n")


def _app(directory: Path) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        partner_id = request.match_info["partnerId"]
        if not _PARTNER.fullmatch(partner_id):
            return web.json_response({"error": "unknown partner"}, status=404)
        raw = await request.read()
        line = delivery_line(partner_id, request.headers, raw, dt.datetime.now(dt.UTC))
        await asyncio.to_thread(_append, directory / f"{partner_id}.jsonl", line)
        body = line["body"]
        log.info(
            "local CRM received a lead",
            extra={
                "partner_id": partner_id,
                "lead_id": body.get("leadId") if isinstance(body, dict) else None,
                "idempotency_key": line["headers"].get("Idempotency-Key"),
            },
        )
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=_MAX_BODY)
    app.router.add_post("/leads/{partnerId}", receive)
    return app


@asynccontextmanager
async def running_crm(directory: Path, port: int = 0) -> AsyncIterator[LocalCrm]:
    """Serve on ``127.0.0.1:port`` (0: any free port) until the block ends."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    runner = web.AppRunner(_app(directory), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = runner.addresses[0][1]
        crm = LocalCrm(url=f"http://127.0.0.1:{bound}", directory=directory)
        log.info("local CRM listening", extra={"url": crm.url, "directory": str(directory)})
        yield crm
    finally:
        await runner.cleanup()
