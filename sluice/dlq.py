"""``sluice dlq list|replay``: inspect dead letters and send them back to their topic.

Reading and replaying live in :mod:`connectors.dead_letters` (shared with the admin API
and the dashboard); this module prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from connectors.dead_letters import DLQ_TOPIC, dead_letters, list_lines, replay

__all__ = ["DLQ_TOPIC", "dead_letters", "list_lines", "print_dead_letters", "replay"]


def print_dead_letters(
    lines: Iterable[dict[str, Any]],
    out: TextIO,
    *,
    topic: str = DLQ_TOPIC,
    err: TextIO | None = None,
) -> int:
    """Write each summary as a JSON line on ``out``; returns how many.

    An empty DLQ says so on ``err`` (stderr), so a person sees an answer while ``out``
    stays pure JSON lines for scripts.
    """
    count = 0
    for line in lines:
        out.write(json.dumps(line) + "\n")
        out.flush()
        count += 1
    if count == 0:
        print(f"no dead letters on {topic}", file=err if err is not None else sys.stderr)
    return count
