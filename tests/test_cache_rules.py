"""Cache invalidation rules, pure: keys and patterns (``schemas.cache``), the route's
request checks (``ingress.cache_api``), key templates (``base.cache_keys``,
``SLUICE_CACHE_KEYS``) and the commands a projection sends (``streams.domain.cache``)."""

from __future__ import annotations

from typing import Any

import pytest

from base.cache_keys import parse_cache_keys
from base.errors import ConfigError, InvalidEvent
from base.settings import load_settings
from ingress.cache_api import parse_invalidate
from schemas.cache import MAX_KEYS, MAX_PATTERNS, check_pattern, literal_prefix
from streams.domain.cache import Invalidation, projection_commands, template_keys

# --- patterns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("listing:*", "listing:"),
        ("user:?:x", "user:"),
        ("abc[de]*", "abc"),
        ("abc\\*", "abc"),
        ("exact:key", "exact:key"),
        ("*", ""),
    ],
)
def test_the_literal_prefix_ends_at_the_first_glob_character(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix


@pytest.mark.parametrize("pattern", ["listing:*", "abc*", "user:1?", "ord[0-9]*", "exact:key"])
def test_patterns_with_a_literal_prefix_pass(pattern: str) -> None:
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern", ["*", "*foo", "?", "[a]*", "ab*", "a?c", "\\*abc", "", "ab\x00c*", "x" * 513]
)
def test_patterns_without_a_literal_prefix_or_malformed_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        check_pattern(pattern)


def test_a_refused_pattern_is_named() -> None:
    with pytest.raises(ValueError, match=r"'\*foo'"):
        check_pattern("*foo")


# --- the route's request -----------------------------------------------------------------


def test_a_request_with_keys_and_patterns_drops_repeats() -> None:
    request = parse_invalidate({"keys": ["a", "b", "a"], "patterns": ["listing:*"]})
    assert request.keys == ("a", "b")
    assert request.patterns == ("listing:*",)
    assert parse_invalidate({"patterns": ["user:*"]}).keys == ()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "keys"),
        ({"keys": [], "patterns": []}, "keys"),
        ({"keys": "a"}, "keys"),
        ({"keys": {"a": 1}}, "keys"),
        ({"keys": [""]}, "keys[0]"),
        ({"keys": ["ok", 3]}, "keys[1]"),
        ({"keys": ["bad\nkey"]}, "keys[0]"),
        ({"keys": ["k" * 513]}, "keys[0]"),
        ({"keys": [f"k{i}" for i in range(MAX_KEYS + 1)]}, "keys"),
        ({"patterns": "listing:*"}, "patterns"),
        ({"patterns": ["*"]}, "patterns[0]"),
        ({"patterns": ["listing:*", "*foo"]}, "patterns[1]"),
        ({"patterns": [f"p{i:03}:*" for i in range(MAX_PATTERNS + 1)]}, "patterns"),
        ({"keys": ["a"], "pattern": ["listing:*"]}, "pattern"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_invalidate(body)
    assert caught.value.field == field


def test_the_limits_themselves_are_accepted() -> None:
    request = parse_invalidate(
        {
            "keys": [f"k{i}" for i in range(MAX_KEYS)],
            "patterns": [f"p{i:03}:*" for i in range(MAX_PATTERNS)],
        }
    )
    assert (len(request.keys), len(request.patterns)) == (MAX_KEYS, MAX_PATTERNS)


def test_a_body_must_be_an_object() -> None:
    with pytest.raises(InvalidEvent, match="object"):
        parse_invalidate(["keys"])


# --- key templates (SLUICE_CACHE_KEYS) -----------------------------------------------------


def test_templates_render_per_snapshot() -> None:
    templates = parse_cache_keys("orders=order:{orderId},payments:{orderId},user:{userId}:orders")
    [order, payments, user] = templates["orders"]
    snapshot = {"orderId": "o1", "userId": "u9"}
    assert [order.render(snapshot), payments.render(snapshot), user.render(snapshot)] == [
        "order:o1",
        "payments:o1",
        "user:u9:orders",
    ]
    assert user.render({"orderId": "o1", "userId": None}) is None
    assert parse_cache_keys("orders=o:{{x}}:{orderId}")["orders"][0].render(snapshot) == "o:{x}:o1"


@pytest.mark.parametrize("text", ["", "  ", ";"])
def test_no_templates(text: str) -> None:
    assert parse_cache_keys(text) == {}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("listings=listing:{id}", "unknown projection 'listings'"),
        ("orders=order:{order_id}", "unknown placeholder {order_id}"),
        ("orders=order:{}", "unknown placeholder"),
        ("orders=order:{orderId:>5}", "format spec"),
        ("orders=order:{orderId!r}", "format spec or conversion"),
        ("orders=order:{orderId", "template"),
        ("orders=order:}{orderId}", "template"),
        ("orders=order:all", "needs a placeholder"),
        ("orders=", "no key template"),
        ("order:{orderId}", "projection=template"),
        ("orders=a:{orderId};orders=b:{orderId}", "named twice"),
        ("orders=a\t{orderId}", "printable"),
    ],
)
def test_bad_templates_are_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("{", r"\{").replace("}", r"\}")):
        parse_cache_keys(text)


def test_bad_templates_stop_the_process_at_start_up() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
    with pytest.raises(ConfigError, match=r"SLUICE_CACHE_KEYS.*unknown placeholder"):
        load_settings({**env, "SLUICE_CACHE_KEYS": "orders=order:{nope}"})
    with pytest.raises(ConfigError, match=r"SLUICE_CACHE_KEYS.*unknown projection"):
        load_settings({**env, "SLUICE_CACHE_KEYS": "carts=cart:{orderId}"})
    settings = load_settings({**env, "SLUICE_CACHE_KEYS": "orders=order:{orderId}"})
    assert settings.cache_keys == "orders=order:{orderId}"
    assert load_settings(env).cache_keys == ""


# --- commands (streams.domain.cache) -------------------------------------------------------


def test_template_keys_are_deduplicated_and_skip_missing_values() -> None:
    templates = parse_cache_keys("orders=order:{orderId},user:{userId}")["orders"]
    snapshots = [
        {"orderId": "o1", "userId": "u1"},
        {"orderId": "o2", "userId": "u1"},
        {"orderId": "o3"},
        {"orderId": "o\n4"},  # not a valid key: nothing is cached under it
    ]
    assert template_keys(templates, snapshots) == ["order:o1", "user:u1", "order:o2", "order:o3"]


def test_projection_commands_are_chunked_and_stable() -> None:
    keys = [f"order:{i}" for i in range(MAX_KEYS + 5)]
    common = {
        "projection": "orders",
        "first_event_id": "e1",
        "last_event_id": "e9",
        "correlation_id": "c",
        "now_ms": 1,
        "version": 1,
    }
    records = projection_commands(keys, **common)  # type: ignore[arg-type]
    assert [len(r["keys"]) for r in records] == [MAX_KEYS, 5]
    assert all(r["replyTo"] is None and r["patterns"] == [] for r in records)
    assert all(r["taskId"] == r["eventId"] for r in records)
    assert len({r["taskId"] for r in records}) == 2
    again = projection_commands(keys, **common)  # type: ignore[arg-type]
    assert [r["taskId"] for r in again] == [r["taskId"] for r in records]
    assert projection_commands([], **common) == []  # type: ignore[arg-type]


def test_a_command_with_a_bare_star_is_invalid_at_the_agent() -> None:
    record = {
        "eventId": "e",
        "taskId": "t",
        "correlationId": "c",
        "keys": ["a", "a"],
        "patterns": ["listing:*"],
        "replyTo": "replies",
    }
    command = Invalidation.from_record(record)
    assert (command.keys, command.patterns, command.reply_to) == (("a",), ("listing:*",), "replies")
    with pytest.raises(InvalidEvent, match="pattern"):
        Invalidation.from_record({**record, "patterns": ["*"]})
