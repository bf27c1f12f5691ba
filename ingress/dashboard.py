"""The on-call dashboard on the internal listener (admin scope): ``GET /admin`` (the page),
``GET /admin/data`` (the JSON it refreshes from), ``POST /admin/login`` (the token into a
cookie) and ``POST /admin/replay`` (one dead letter back to its origin topic).

Sources, each read on every request and each allowed to be down on its own: the worker's
consumer group offsets against the high watermarks (throughput and lag per agent), the
``dlq`` topic (dead letters, newest first) and Postgres (webhooks, orders, leads,
notifications). A source that fails is reported in ``sources`` with ``ok: false`` and
the page shows a 503 notice for it; the page and ``/admin/data`` still answer 200.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from base.clock import Clock
from base.errors import InvalidEvent, TransientError
from connectors.dead_letters import dead_letters, replay, summary
from connectors.group_lag import PartitionLag, group_lag
from connectors.operations_reader import OperationsReader
from ingress.auth import DASHBOARD_COOKIE, DASHBOARD_CSRF_KEY, LOGIN_FIELD
from ingress.dashboard_page import dashboard_page
from ingress.domain_events import check_identifier, parse_json, reject_unknown_fields
from ingress.outcomes import NotFound
from ingress.requests import read_json_body
from ingress.responses import json_response
from schemas.agents import AGENT_READS, agents_reading
from schemas.codec import Codec

__all__ = ["LATEST_DEAD_LETTERS", "Dashboard", "add_dashboard_routes", "funnel"]

log = logging.getLogger(__name__)

LATEST_DEAD_LETTERS: Final = 50
"""How many dead letters the page lists (the newest); the total is shown beside it."""
_PAID: Final = ("PAID", "PARTIALLY_REFUNDED", "REFUNDED")


def funnel(order_statuses: Mapping[str, int]) -> dict[str, int]:
    """The order funnel from the counts by status: every order was created; ``pending``
    awaits payment; ``paid`` reached PAID (refunded ones included: they were paid);
    ``failed`` is PAYMENT_FAILED."""
    return {
        "created": sum(order_statuses.values()),
        "pending": order_statuses.get("PENDING_PAYMENT", 0),
        "paid": sum(order_statuses.get(status, 0) for status in _PAID),
        "failed": order_statuses.get("PAYMENT_FAILED", 0),
    }


def agent_rows(partitions: Sequence[PartitionLag]) -> list[dict[str, Any]]:
    """Per agent: the topics it reads that the group has committed on, ``consumed`` (the
    committed offsets summed: records processed since each partition began, so the page
    turns two readings into records per second) and ``lag`` (records not processed yet).
    A topic two agents read counts for both: one group, one committed offset."""
    rows: dict[str, dict[str, Any]] = {
        agent: {"agent": agent, "topics": [], "consumed": 0, "lag": 0} for agent in AGENT_READS
    }
    for part in partitions:
        for agent in agents_reading(part.topic):
            row = rows.setdefault(agent, {"agent": agent, "topics": [], "consumed": 0, "lag": 0})
            if part.topic not in row["topics"]:
                row["topics"].append(part.topic)
            row["consumed"] += part.committed
            row["lag"] += part.lag
    return sorted(rows.values(), key=lambda row: str(row["agent"]))


class Dashboard:
    """Reads every source for one answer of ``/admin/data``.

    :param reader: the Postgres reader, or ``None`` without ``DATABASE_URL``.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group: str,
        codec: Codec,
        clock: Clock,
        reader: OperationsReader | None,
    ) -> None:
        self.group = group
        self._bootstrap = bootstrap_servers
        self._codec = codec
        self._clock = clock
        self._reader = reader

    async def data(self) -> dict[str, Any]:
        """Everything the page shows, each source read concurrently."""
        lag, letters, postgres = await asyncio.gather(
            self._safely(asyncio.to_thread(group_lag, self._bootstrap, self.group)),
            self._safely(asyncio.to_thread(self._dead_letters)),
            self._safely(self._postgres()),
        )
        sources = {
            "kafka": _source(lag if isinstance(lag, str) else None),
            "dlq": _source(letters if isinstance(letters, str) else None),
            "postgres": _source(postgres if isinstance(postgres, str) else None),
        }
        data: dict[str, Any] = {
            "generatedAt": dt.datetime.fromtimestamp(self._clock.time(), dt.UTC).isoformat(),
            "group": self.group,
            "sources": sources,
            "agents": agent_rows(lag) if isinstance(lag, list) else [],
            "deadLetters": letters if isinstance(letters, dict) else None,
        }
        if isinstance(postgres, dict):
            data |= postgres
            data["funnel"] = funnel(postgres["orders"])
        return data

    async def replay(self, event_id: str) -> dict[str, Any]:
        """Re-produce the dead letter ``event_id`` to its origin topic (``sluice dlq
        replay --event-id``). :raises NotFound: no such dead letter on ``dlq``."""
        letters = await asyncio.to_thread(
            lambda: [
                d for d in dead_letters(self._bootstrap, self._codec) if d["eventId"] == event_id
            ]
        )
        if not letters:
            raise NotFound(f"no dead letter {event_id} on dlq")
        replayed = await asyncio.to_thread(
            replay, self._bootstrap, self._codec, event_ids={event_id}
        )
        return {"replayed": replayed, "topics": sorted({str(d["originTopic"]) for d in letters})}

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()

    def _dead_letters(self) -> dict[str, Any]:
        letters = list(dead_letters(self._bootstrap, self._codec))
        letters.sort(key=lambda d: (d["failedAt"], d["eventId"]), reverse=True)
        latest = []
        for record in letters[:LATEST_DEAD_LETTERS]:
            line = summary(record)
            line.pop("valueBase64", None)  # the page shows the reason, not the payload
            latest.append(line)
        return {"total": len(letters), "latest": latest}

    async def _postgres(self) -> dict[str, Any]:
        if self._reader is None:
            raise TransientError("DATABASE_URL is not set")
        return (await self._reader.snapshot()).as_json()

    @staticmethod
    async def _safely(work: Any) -> Any:
        """The result of ``work``, or a short reason (a string) when its source is down."""
        try:
            return await work
        except TransientError as exc:
            log.warning("dashboard source unavailable", extra={"error": str(exc)})
            return str(exc) or type(exc).__name__


def _source(failure: str | None) -> dict[str, Any]:
    return {"ok": True} if failure is None else {"ok": False, "detail": failure}


DASHBOARD_KEY = web.AppKey("dashboard", Dashboard)


async def _page(request: web.Request) -> web.Response:
    dashboard = request.app[DASHBOARD_KEY]
    return dashboard_page(
        await dashboard.data(), csrf=request[DASHBOARD_CSRF_KEY], group=dashboard.group
    )


async def _data(request: web.Request) -> web.Response:
    return json_response(await request.app[DASHBOARD_KEY].data())


def _login_handler(max_body_bytes: int) -> Any:
    async def handle(request: web.Request) -> web.Response:
        """The middleware has checked the form's token; keep it in the cookie and go to
        the page. Only the login form's body is accepted: any other body is read within
        the limits (413, 415) and answered 400 naming the field it lacks."""
        if request.content_type == "application/x-www-form-urlencoded":
            token = (await request.post()).get(LOGIN_FIELD)
        else:
            await read_json_body(request, max_body_bytes)
            token = None
        if not isinstance(token, str) or not token:
            raise InvalidEvent(
                f"post the login form with its field {LOGIN_FIELD}", field=LOGIN_FIELD
            )
        # Returned, not raised: the outcome middleware answers raised HTTP exceptions as
        # JSON errors.
        response = web.Response(status=303, headers={"Location": "/admin"})
        response.set_cookie(
            DASHBOARD_COOKIE,
            token,
            path="/admin",
            httponly=True,
            samesite="Strict",
            secure=request.secure,  # HTTPS (mTLS) listeners: never sent back in the clear
        )
        return response

    return handle


def _replay_handler(max_body_bytes: int) -> Any:
    async def handle(request: web.Request) -> web.Response:
        body = parse_json(await read_json_body(request, max_body_bytes))
        if not isinstance(body, dict):
            raise InvalidEvent("the body must be a JSON object", field="eventId")
        reject_unknown_fields(body, {"eventId"})
        if "eventId" not in body:
            raise InvalidEvent("eventId is required", field="eventId")
        event_id = check_identifier(body["eventId"], "eventId")
        return json_response(await request.app[DASHBOARD_KEY].replay(event_id))

    return handle


def add_dashboard_routes(
    app: web.Application, dashboard: Dashboard, *, max_body_bytes: int
) -> None:
    """Register the dashboard's routes on the internal ``app`` and close its reader with it."""
    app[DASHBOARD_KEY] = dashboard
    app.router.add_get("/admin", _page, name="admin.dashboard")
    app.router.add_get("/admin/data", _data, name="admin.dashboard.data")
    app.router.add_post(
        "/admin/login", _login_handler(max_body_bytes), name="admin.dashboard.login"
    )
    app.router.add_post(
        "/admin/replay", _replay_handler(max_body_bytes), name="admin.dashboard.replay"
    )

    async def stop(_app: web.Application) -> None:
        await dashboard.close()

    app.on_cleanup.append(stop)
