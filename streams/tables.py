"""What faust has no public API for: the entries one partition of a table holds locally."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["partition_entries", "partition_items"]


def partition_items(table: Any, partition: int) -> dict[str, Any]:
    """Key → decoded value of every entry of ``table`` in ``partition`` on this worker.

    Used by sweeps (expired dedupe ids, orphaned payments), which must run while an event
    of that partition is in hand: faust writes a table change to the changelog partition
    of the current event.
    """
    return {key: value for _, key, value in partition_entries(table, partition)}


def partition_entries(
    table: Any, partition: int, *, after: bytes | None = None
) -> Iterator[tuple[bytes, str, Any]]:
    """(stored key, key, decoded value) of ``table``'s entries in ``partition``, lazily,
    in RocksDB's key order, starting after the stored key ``after`` when given.

    Lazy so a sweep over a large partition holds one entry at a time, not the partition.
    """
    store = table.data
    db = getattr(store, "_dbs", {}).get(partition)
    if db is None:
        return
    # The partition's RocksDB also holds faust's own bookkeeping (its committed-offset
    # marker), which is not a table entry and not JSON.
    internal = getattr(store, "offset_key", b"__faust\0offset__")
    for raw_key, raw_value in db.items(from_key=after) if after is not None else db.items():
        if raw_key in (internal, after):
            continue
        yield raw_key, store._decode_key(raw_key), store._decode_value(raw_value)
