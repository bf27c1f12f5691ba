"""Dedupe by provider event id (DESIGN §5): the pure decision behind the dedupe agent.

The agent keeps a table ``dedupe key -> first-processed time (ms)`` (RocksDB-backed in
the worker; any ``Mapping[str, int]`` here) and, per raw webhook:

1. ``decision = decide(table, dedupe_key(provider, providerEventId), now_ms, window, replay)``
2. if ``decision.remember_ms is not None``: ``table[key] = decision.remember_ms``
3. if ``decision.process``: pass the record on; else acknowledge and drop it.

and periodically deletes ``expired_keys(table, now_ms, window)``.

A webhook can have two keys (:func:`dedupe_keys`): its provider event id, and, when
the ingress keyed the record by what its signed body is (Razorpay, whose event id
header is unsigned), that content id too; :func:`decide_all` decides over both, so a
captured body replayed under a fresh event id is a duplicate. The record key is what
puts the replay in the original's partition, where its table entry lives. These functions read
the mapping and never write it; the agent carries the decision out. Times come from the
injected clock, never from here.

This table is the first line against repeats; Postgres unique constraints and
deterministic derived ids are the second, so a record processed twice (a crash between
steps 2 and 3, say) does no harm.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "DEFAULT_WINDOW_MS",
    "DedupeDecision",
    "DedupeReason",
    "Remembered",
    "decide",
    "decide_all",
    "dedupe_key",
    "dedupe_keys",
    "expired_keys",
    "remembered_entry",
]

DEFAULT_WINDOW_MS: Final = 30 * 24 * 60 * 60 * 1000
"""30 days. Longer than every window in which a provider sends the same event again on
its own: Stripe retries for up to 3 days, Razorpay for 24 hours, and Stripe lets a
merchant resend an event from the dashboard for 30 days. It also equals the retention of
the raw webhook topics, so anything still replayable from Kafka is still remembered."""

DedupeReason = Literal["first", "duplicate", "replay", "expired", "redelivery"]

# A table value: first-seen epoch ms, with the ``topic[partition]@offset`` of the record
# that set it (a bare int from before positions were stored is still understood).
Remembered = int | list[int | str] | tuple[int, str]


@dataclass(frozen=True, slots=True)
class DedupeDecision:
    """What to do with one webhook.

    :param process: pass the record on to normalisation.
    :param reason: ``first`` (never seen), ``duplicate`` (seen within the window;
        dropped), ``expired`` (seen, but longer ago than the window: treated as new),
        ``replay`` (an operator replay: processed whatever the table says),
        ``redelivery`` (the record that set the entry, read again after a crash).
    :param remember_ms: the time to store for the key, or ``None`` to leave the table as
        it is.
    """

    process: bool
    reason: DedupeReason
    remember_ms: int | None


def dedupe_key(provider: str, provider_event_id: str) -> str:
    """The table key of a provider event: ``"<provider>:<provider event id>"``
    (``stripe:evt_...``). Provider event ids are only unique per provider.

    :raises ValueError: ``provider`` is empty or contains ``:`` (keys would be
        ambiguous), or ``provider_event_id`` is empty. Both come from a decoded raw
        record, where they are never empty, so this is a programming error.
    """
    if not provider or ":" in provider:
        raise ValueError(f"provider must be a non-empty name without ':', got {provider!r}")
    if not provider_event_id:
        raise ValueError("provider_event_id must not be empty")
    return f"{provider}:{provider_event_id}"


def dedupe_keys(provider: str, provider_event_id: str, record_key: str | None) -> tuple[str, ...]:
    """Every table key of a webhook: :func:`dedupe_key` of its event id, then, when the
    record is keyed by something else (the ingress's content id of a provider whose
    event id is unsigned), ``"<provider>/content:<record key>"``.

    The ``/`` keeps the two kinds apart: an event id key always reads
    ``"<provider>:..."``, so no event id a sender picks can pose as a content key.
    """
    keys: tuple[str, ...] = (dedupe_key(provider, provider_event_id),)
    if record_key and record_key != provider_event_id:
        keys += (f"{provider}/content:{record_key}",)
    return keys


def decide_all(
    seen: Mapping[str, Remembered],
    keys: Sequence[str],
    now_ms: int,
    window_ms: int,
    replay: bool,
    *,
    position: str | None = None,
) -> tuple[DedupeDecision, tuple[str, ...]]:
    """:func:`decide` over all of a webhook's ``keys``: the decision, and the keys to
    store ``decision.remember_ms`` under.

    A redelivery by any key is a redelivery (the keys are written together). Otherwise
    a replay is processed and remembers the keys that are absent or expired; anything
    else is a duplicate as soon as one key is live, and new (``first``, or ``expired``
    if any key was) when none is, remembering every key.
    """
    decisions = [decide(seen, key, now_ms, window_ms, replay, position=position) for key in keys]
    if any(d.reason == "redelivery" for d in decisions):
        return DedupeDecision(process=True, reason="redelivery", remember_ms=None), ()
    fresh = tuple(key for key, d in zip(keys, decisions, strict=True) if d.remember_ms is not None)
    if replay:
        return DedupeDecision(True, "replay", now_ms if fresh else None), fresh
    if not all(d.process for d in decisions):
        return DedupeDecision(process=False, reason="duplicate", remember_ms=None), ()
    reason: DedupeReason = "expired" if any(d.reason == "expired" for d in decisions) else "first"
    return DedupeDecision(process=True, reason=reason, remember_ms=now_ms), tuple(keys)


def decide(
    seen: Mapping[str, Remembered],
    key: str,
    now_ms: int,
    window_ms: int,
    replay: bool,
    *,
    position: str | None = None,
) -> DedupeDecision:
    """Whether to process the webhook with dedupe key ``key`` at ``now_ms``.

    A key remembered at ``t`` is a duplicate while ``now_ms - t < window_ms``; from
    ``now_ms - t >= window_ms`` on it is expired (the same boundary as
    :func:`expired_keys`, so a key is never both purgeable and still deduplicating).
    A remembered time in the future (the clock went back) counts as within the window:
    dropping a repeat is safer than double-processing.

    A replay is always processed. It records ``now_ms`` only when the key is absent or
    expired (so a provider retry arriving after the replay is still dropped); a live
    entry keeps its time, so replays neither extend nor restart the provider's window,
    and replaying a batch costs no table writes.

    ``position`` (``topic[partition]@offset`` of the record in hand) guards against a
    crash: the table's local store can hold an entry written after the last committed
    offset while the events it guarded were still in the producer's buffer. When the
    remembered entry was written by this very record, reading it again is a redelivery
    after a crash, not a duplicate, so it is processed again (its derived events have
    deterministic ids, so downstream still applies them once).

    Pure: reads ``seen[key]`` only.

    :raises ValueError: ``window_ms`` is not positive (a configuration error).
    """
    if window_ms <= 0:
        raise ValueError(f"dedupe window must be positive, got {window_ms} ms")
    entry = seen.get(key)
    remembered, remembered_at = _unpack(entry)
    if position is not None and remembered_at == position:
        return DedupeDecision(process=True, reason="redelivery", remember_ms=None)
    live = remembered is not None and now_ms - remembered < window_ms
    if replay:
        return DedupeDecision(process=True, reason="replay", remember_ms=None if live else now_ms)
    if remembered is None:
        return DedupeDecision(process=True, reason="first", remember_ms=now_ms)
    if live:
        return DedupeDecision(process=False, reason="duplicate", remember_ms=None)
    return DedupeDecision(process=True, reason="expired", remember_ms=now_ms)


def expired_keys(
    seen: Mapping[str, Remembered] | Iterable[tuple[str, Remembered]],
    now_ms: int,
    window_ms: int,
) -> list[str]:
    """Keys remembered at least ``window_ms`` before ``now_ms``, in the given order: the
    ones the periodic purge deletes. ``seen`` is a mapping or (key, entry) pairs. Pure;
    the caller deletes them.

    :raises ValueError: ``window_ms`` is not positive.
    """
    if window_ms <= 0:
        raise ValueError(f"dedupe window must be positive, got {window_ms} ms")
    cutoff = now_ms - window_ms
    expired = []
    pairs = seen.items() if isinstance(seen, Mapping) else seen
    for key, entry in pairs:
        remembered, _ = _unpack(entry)
        if remembered is not None and remembered <= cutoff:
            expired.append(key)
    return expired


def remembered_entry(remember_ms: int, position: str | None) -> Remembered:
    """What the table stores for a key: the time, and the record that set it."""
    return remember_ms if position is None else [remember_ms, position]


def _unpack(entry: Remembered | None) -> tuple[int | None, str | None]:
    if entry is None:
        return None, None
    if isinstance(entry, int):
        return entry, None
    return int(entry[0]), str(entry[1])
