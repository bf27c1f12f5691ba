"""Dedupe decisions by provider event id (streams.domain.dedupe, DESIGN §5).

Unit tier: the table is a plain dict, as the agent's RocksDB table looks to the domain.
"""

from __future__ import annotations

import pytest

from streams.domain.dedupe import (
    DEFAULT_WINDOW_MS,
    DedupeDecision,
    Remembered,
    decide,
    decide_all,
    dedupe_key,
    dedupe_keys,
    expired_keys,
)

HOUR_MS = 60 * 60 * 1000
DAY_MS = 24 * HOUR_MS
WINDOW = 10_000
NOW = 1_735_689_600_000
KEY = "stripe:evt_1"


def apply(seen: dict[str, int], decision: DedupeDecision, key: str) -> None:
    """What the agent does with a decision."""
    if decision.remember_ms is not None:
        seen[key] = decision.remember_ms


def test_default_window_outlasts_every_provider_resend() -> None:
    assert DEFAULT_WINDOW_MS == 30 * DAY_MS
    assert DEFAULT_WINDOW_MS > 3 * DAY_MS  # Stripe's automatic retries
    assert DEFAULT_WINDOW_MS > 1 * DAY_MS  # Razorpay's retries
    assert DEFAULT_WINDOW_MS >= 30 * DAY_MS  # Stripe's manual resend


def test_dedupe_key_is_provider_scoped() -> None:
    assert dedupe_key("stripe", "evt_1") == "stripe:evt_1"
    assert dedupe_key("razorpay", "evt_1") != dedupe_key("stripe", "evt_1")
    # Event ids may contain ':' themselves; only the provider may not.
    assert dedupe_key("razorpay", "a:b") == "razorpay:a:b"


@pytest.mark.parametrize(("provider", "event_id"), [("", "evt_1"), ("a:b", "c"), ("stripe", "")])
def test_dedupe_key_rejects_ambiguous_parts(provider: str, event_id: str) -> None:
    with pytest.raises(ValueError, match="must"):
        dedupe_key(provider, event_id)


def test_first_sighting_is_processed_and_remembered() -> None:
    assert decide({}, KEY, NOW, WINDOW, replay=False) == DedupeDecision(True, "first", NOW)


def test_repeat_within_the_window_is_skipped() -> None:
    seen = {KEY: NOW}
    assert decide(seen, KEY, NOW, WINDOW, replay=False) == DedupeDecision(False, "duplicate", None)
    assert decide(seen, KEY, NOW + WINDOW - 1, WINDOW, replay=False).reason == "duplicate"


def test_window_boundary_is_exclusive() -> None:
    # Remembered at t: a duplicate until t + window - 1, expired from t + window on.
    seen = {KEY: NOW}
    assert decide(seen, KEY, NOW + WINDOW, WINDOW, replay=False) == DedupeDecision(
        True, "expired", NOW + WINDOW
    )
    assert expired_keys(seen, NOW + WINDOW - 1, WINDOW) == []
    assert expired_keys(seen, NOW + WINDOW, WINDOW) == [KEY]


def test_decide_and_purge_agree_on_the_boundary() -> None:
    seen = {KEY: NOW}
    for now in range(NOW + WINDOW - 3, NOW + WINDOW + 3):
        purgeable = KEY in expired_keys(seen, now, WINDOW)
        assert purgeable == (decide(seen, KEY, now, WINDOW, replay=False).reason == "expired")


def test_other_keys_are_independent() -> None:
    seen = {"stripe:evt_other": NOW}
    assert decide(seen, KEY, NOW, WINDOW, replay=False).reason == "first"


def test_clock_going_back_still_deduplicates() -> None:
    seen = {KEY: NOW}
    assert decide(seen, KEY, NOW - HOUR_MS, WINDOW, replay=False).reason == "duplicate"
    assert expired_keys(seen, NOW - HOUR_MS, WINDOW) == []


def test_replay_of_a_live_key_is_processed_without_touching_the_table() -> None:
    seen = {KEY: NOW}
    assert decide(seen, KEY, NOW + 5, WINDOW, replay=True) == DedupeDecision(True, "replay", None)


@pytest.mark.parametrize("seen", [{}, {KEY: NOW - WINDOW}], ids=["unseen", "expired"])
def test_replay_of_an_absent_or_expired_key_is_remembered(seen: dict[str, int]) -> None:
    # So that the provider's own retry of the same event after the replay is dropped.
    assert decide(seen, KEY, NOW, WINDOW, replay=True) == DedupeDecision(True, "replay", NOW)


def test_a_sequence_of_deliveries() -> None:
    seen: dict[str, int] = {}
    timeline = [
        (NOW, False, "first"),
        (NOW + 1, False, "duplicate"),  # provider retry
        (NOW + 2, True, "replay"),  # operator replay: processed again
        (NOW + 3, False, "duplicate"),  # the window still counts from the first
        (NOW + WINDOW, False, "expired"),  # a resend after the window
        (NOW + WINDOW + 1, False, "duplicate"),
    ]
    for now, replay, reason in timeline:
        decision = decide(seen, KEY, now, WINDOW, replay=replay)
        assert decision.reason == reason, now
        assert decision.process == (reason != "duplicate")
        apply(seen, decision, KEY)
    assert seen == {KEY: NOW + WINDOW}


def test_expired_keys_lists_only_old_entries_in_table_order() -> None:
    seen = {"a": NOW - 2 * WINDOW, "b": NOW, "c": NOW - WINDOW, "d": NOW - WINDOW + 1}
    assert expired_keys(seen, NOW, WINDOW) == ["a", "c"]
    assert seen == {"a": NOW - 2 * WINDOW, "b": NOW, "c": NOW - WINDOW, "d": NOW - WINDOW + 1}


def test_expired_keys_of_an_empty_table() -> None:
    assert expired_keys({}, NOW, WINDOW) == []


@pytest.mark.parametrize("window", [0, -1])
def test_non_positive_window_is_a_configuration_error(window: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        decide({}, KEY, NOW, window, replay=False)
    with pytest.raises(ValueError, match="positive"):
        expired_keys({}, NOW, window)


def test_decide_does_not_write_the_table() -> None:
    seen: dict[str, int] = {}
    decide(seen, KEY, NOW, WINDOW, replay=False)
    decide(seen, KEY, NOW, WINDOW, replay=True)
    assert seen == {}


def test_the_record_that_set_an_entry_is_processed_again_after_a_crash() -> None:
    from streams.domain.dedupe import remembered_entry

    seen = {"stripe:evt_1": remembered_entry(1_000, "webhooks.stripe[0]@7")}
    again = decide(seen, "stripe:evt_1", 2_000, 10_000, False, position="webhooks.stripe[0]@7")
    other = decide(seen, "stripe:evt_1", 2_000, 10_000, False, position="webhooks.stripe[0]@8")
    assert (again.process, again.reason, again.remember_ms) == (True, "redelivery", None)
    assert (other.process, other.reason) == (False, "duplicate")


def test_expiry_reads_entries_with_positions() -> None:
    from streams.domain.dedupe import expired_keys, remembered_entry

    seen = {"a": remembered_entry(1_000, "t[0]@1"), "b": 9_000}
    assert expired_keys(seen, 11_000, 10_000) == ["a"]


# -- several keys per webhook: the event id, and what the signed content is ---------------


def test_a_record_keyed_by_its_event_id_has_one_dedupe_key() -> None:
    assert dedupe_keys("stripe", "evt_1", "evt_1") == ("stripe:evt_1",)
    assert dedupe_keys("razorpay", "evt_1", None) == ("razorpay:evt_1",)


def test_a_record_keyed_by_its_signed_content_has_a_second_key() -> None:
    keys = dedupe_keys("razorpay", "evt_1", "payment.captured@1:payment=pay_1")
    assert keys == ("razorpay:evt_1", "razorpay/content:payment.captured@1:payment=pay_1")


def test_no_event_id_can_pose_as_a_content_key() -> None:
    """The event id header is unsigned: whatever it says must never produce a key that
    blocks another event's content."""
    content = dedupe_keys("razorpay", "evt_1", "x")[1]
    assert content not in dedupe_keys("razorpay", "content:x", None)
    assert content not in dedupe_keys("razorpay", "/content:x", None)


def _all(
    seen: dict[str, int], keys: tuple[str, ...], now: int = NOW, replay: bool = False
) -> tuple[DedupeDecision, tuple[str, ...]]:
    return decide_all(seen, keys, now, WINDOW, replay)


KEYS = ("razorpay:evt_1", "razorpay/content:c1")


def test_all_keys_new_is_first_and_every_key_is_remembered() -> None:
    decision, remember = _all({}, KEYS)
    assert decision == DedupeDecision(True, "first", NOW)
    assert remember == KEYS


def test_any_key_live_is_a_duplicate() -> None:
    """A signed body replayed under a fresh event id: only the content key is known."""
    decision, remember = _all({"razorpay/content:c1": NOW - 1}, ("razorpay:evt_2", KEYS[1]))
    assert decision == DedupeDecision(False, "duplicate", None)
    assert remember == ()
    decision, _ = _all({"razorpay:evt_1": NOW - 1}, ("razorpay:evt_1", "razorpay/content:c2"))
    assert decision.reason == "duplicate"


def test_expired_keys_count_as_new() -> None:
    seen = {KEYS[0]: NOW - WINDOW}
    decision, remember = _all(seen, KEYS)
    assert (decision.process, decision.reason, remember) == (True, "expired", KEYS)


def test_a_replay_remembers_only_what_is_not_live() -> None:
    seen = {KEYS[0]: NOW - 1}
    decision, remember = _all(seen, KEYS, replay=True)
    assert (decision.process, decision.reason, decision.remember_ms) == (True, "replay", NOW)
    assert remember == (KEYS[1],)


def test_the_record_that_set_the_keys_is_processed_again_after_a_crash() -> None:
    seen: dict[str, Remembered] = {key: [NOW - 5, "webhooks.razorpay[0]@7"] for key in KEYS}
    decision, remember = decide_all(
        seen, KEYS, NOW, WINDOW, False, position="webhooks.razorpay[0]@7"
    )
    assert (decision.process, decision.reason, remember) == (True, "redelivery", ())
