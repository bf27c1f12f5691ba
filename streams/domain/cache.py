"""Cache invalidation commands, pure: reading one, and the ones a projection sends.

A ``sluice.cache.InvalidateCommand`` (topic ``commands.cache.invalidate``, keyed by its
``taskId``) names exact keys and prefixed glob patterns. :meth:`Invalidation.from_record`
reads one and checks it again (``schemas.cache``): the topic is open to other producers,
and a bare ``*`` must never reach ``SCAN``. It does not apply the route's per-call
limits: a projection's batch may name more keys than one HTTP call may.

After a projection commits a batch to Postgres it sends :func:`projection_commands`: the
keys its templates (``SLUICE_CACHE_KEYS``, ``base.cache_keys``) give for the batch's
snapshots, deduplicated, in commands of at most :data:`schemas.cache.MAX_KEYS` keys,
without ``replyTo`` (nobody waits). Their ids derive from the batch's first and last
event ids, so a redelivered batch sends the same commands again (dropping a key twice
is harmless).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from base.cache_keys import KeyTemplate
from base.errors import InvalidEvent
from schemas.cache import MAX_KEYS, check_cache_key, check_pattern
from streams.domain.ids import derived_event_id

__all__ = [
    "INVALIDATE_TOPIC",
    "INVALIDATE_TYPE",
    "Invalidation",
    "invalidated_body",
    "projection_commands",
    "template_keys",
]

INVALIDATE_TOPIC: Final = "commands.cache.invalidate"
INVALIDATE_TYPE: Final = "cache.invalidate"


@dataclass(frozen=True, slots=True)
class Invalidation:
    """A checked invalidate command."""

    event_id: str
    task_id: str
    correlation_id: str
    keys: tuple[str, ...]
    patterns: tuple[str, ...]
    reply_to: str | None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Invalidation:
        """:raises InvalidEvent: a key or pattern the route would have refused (bare
        ``*``, no literal prefix, empty, unprintable, too long)."""
        try:
            keys = tuple(dict.fromkeys(check_cache_key(key) for key in record.get("keys") or ()))
            patterns = tuple(dict.fromkeys(check_pattern(p) for p in record.get("patterns") or ()))
        except ValueError as exc:
            raise InvalidEvent(f"cache invalidation refused: {exc}") from None
        return cls(
            event_id=str(record["eventId"]),
            task_id=str(record["taskId"]),
            correlation_id=str(record.get("correlationId") or ""),
            keys=keys,
            patterns=patterns,
            reply_to=record.get("replyTo"),
        )


def invalidated_body(count: int) -> dict[str, int]:
    """The reply's body: how many keys the command removed."""
    return {"invalidated": count}


def template_keys(
    templates: Sequence[KeyTemplate], snapshots: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Every key ``templates`` give for ``snapshots``, first occurrence order, no repeats;
    a key a snapshot cannot fill (a missing value) or that is no valid key is left out."""
    keys: dict[str, None] = {}
    for snapshot in snapshots:
        for template in templates:
            key = template.render(snapshot)
            if key is None:
                continue
            try:
                keys[check_cache_key(key)] = None
            except ValueError:
                continue  # an id too long or unprintable for a key: nothing cached under it
    return list(keys)


def projection_commands(
    keys: Sequence[str],
    *,
    projection: str,
    first_event_id: str,
    last_event_id: str,
    correlation_id: str,
    now_ms: int,
    version: int,
) -> list[dict[str, Any]]:
    """The ``InvalidateCommand`` records dropping ``keys`` (none when there are none)."""
    records = []
    for index, start in enumerate(range(0, len(keys), MAX_KEYS)):
        cause = f"{first_event_id}..{last_event_id}#{index}"
        task_id = derived_event_id(cause, f"{INVALIDATE_TYPE}:{projection}")
        records.append(
            {
                "eventId": task_id,
                "eventType": INVALIDATE_TYPE,
                "version": version,
                "occurredAt": now_ms,
                "correlationId": correlation_id,
                "source": f"project_{projection}",
                "keys": list(keys[start : start + MAX_KEYS]),
                "patterns": [],
                "taskId": task_id,
                "replyTo": None,
            }
        )
    return records
