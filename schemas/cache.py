"""What a cache invalidation may name: exact keys and prefixed glob patterns.

Shared by the route that takes invalidations (``ingress/cache_api.py``, 400 naming the
field) and the agent that runs them (``streams/agents/invalidate_cache.py``, which checks
patterns again: a command may come from another producer, and a bare ``*`` would scan
and drop the whole database).

A pattern is a Redis glob (``SCAN MATCH``). It must start with a literal prefix of at
least :data:`MIN_PATTERN_PREFIX` characters before its first glob character (``*``,
``?``, ``[``, or the escape ``\\``): ``listing:*`` is fine, ``*``, ``*foo`` and ``ab*``
are refused. The prefix is what keeps an invalidation to one family of keys; it does not
make ``SCAN`` cheaper (Redis still walks the whole keyspace, ``COUNT`` keys a call).

Limits per call: at most :data:`MAX_KEYS` keys and :data:`MAX_PATTERNS` patterns, each
1 to :data:`MAX_KEY_LENGTH` printable characters.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "GLOB_CHARACTERS",
    "MAX_KEYS",
    "MAX_KEY_LENGTH",
    "MAX_PATTERNS",
    "MIN_PATTERN_PREFIX",
    "check_cache_key",
    "check_pattern",
    "literal_prefix",
]

MAX_KEYS: Final = 1000
"""Keys one call may name (one request, one command: a few ``UNLINK`` batches)."""
MAX_PATTERNS: Final = 20
"""Patterns one call may name (each costs a full ``SCAN`` of the keyspace)."""
MAX_KEY_LENGTH: Final = 512
"""Characters in a key or a pattern."""
MIN_PATTERN_PREFIX: Final = 3
"""Literal characters a pattern needs before its first glob character."""
GLOB_CHARACTERS: Final = frozenset("*?[\\")
"""What starts the non-literal part of a Redis glob (``\\`` escapes the next one)."""


def literal_prefix(pattern: str) -> str:
    """The part of ``pattern`` before its first glob character (all of it if none)."""
    for index, char in enumerate(pattern):
        if char in GLOB_CHARACTERS:
            return pattern[:index]
    return pattern


def check_cache_key(value: object, what: str = "key") -> str:
    """``value`` as a cache key: a non-empty string of at most :data:`MAX_KEY_LENGTH`
    printable characters.

    :raises ValueError: saying why, starting with ``what``.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_KEY_LENGTH} characters")
    if not value.isprintable():
        raise ValueError(f"{what} must be printable (no control characters)")
    return value


def check_pattern(value: object) -> str:
    """``value`` as an invalidation pattern: a cache key (:func:`check_cache_key`) whose
    literal prefix is at least :data:`MIN_PATTERN_PREFIX` characters.

    :raises ValueError: naming the pattern and why.
    """
    pattern = check_cache_key(value, "pattern")
    if len(literal_prefix(pattern)) < MIN_PATTERN_PREFIX:
        raise ValueError(
            f"pattern {pattern[:64]!r} needs a literal prefix of at least "
            f"{MIN_PATTERN_PREFIX} characters before any of * ? [ \\"
        )
    return pattern
