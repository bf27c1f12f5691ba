"""What faust has no public API for: the entries one partition of a table holds locally."""

from __future__ import annotations

from typing import Any

__all__ = ["partition_items"]


def partition_items(table: Any, partition: int) -> dict[str, Any]:
    """Key → decoded value of every entry of ``table`` in ``partition`` on this worker.

    Used by sweeps (expired dedupe ids, orphaned payments), which must run while an event
    of that partition is in hand: faust writes a table change to the changelog partition
    of the current event.
    """
    store = table.data
    db = getattr(store, "_dbs", {}).get(partition)
    if db is None:
        return {}
    # The partition's RocksDB also holds faust's own bookkeeping (its committed-offset
    # marker), which is not a table entry and not JSON.
    internal = getattr(store, "offset_key", b"__faust\0offset__")
    return {
        store._decode_key(raw_key): store._decode_value(raw_value)
        for raw_key, raw_value in db.items()
        if raw_key != internal
    }
