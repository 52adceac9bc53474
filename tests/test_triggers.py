"""Tokens, Idempotency-Key, delivery dedupe and hourly caps: pure functions of time."""

from __future__ import annotations

from hypothesis import given, strategies as st

from bgcore.triggers import (DEDUPE_WINDOW_S, IDEMPOTENCY_WINDOW_S, Conflict, DeliveryDedupe, HourlyCap,
                             IdempotencyKeys, New, Pending, Replay, hash_token, new_token, token_matches)

DAY = 86400


def test_tokens_are_stored_hashed_and_compared_whole():
    token = new_token()
    assert token.startswith("bgr_") and len(token) > 40 and new_token() != token
    stored = hash_token(token)
    assert token not in stored and stored.startswith("sha256:")
    assert token_matches(token, stored)
    assert not token_matches(token + "x", stored) and not token_matches(token[:-1], stored)
    assert not token_matches(None, stored) and not token_matches(token, None) and not token_matches("", stored)
    rotated = hash_token(new_token())
    assert not token_matches(token, rotated)


def test_the_same_delivery_fifty_times_counts_once():
    dedupe = DeliveryDedupe()
    firsts = [dedupe.first_seen("d-1", 1000.0 + i) for i in range(50)]
    assert firsts == [True] + [False] * 49 and len(dedupe) == 1


def test_a_delivery_id_is_forgotten_after_seven_days():
    dedupe = DeliveryDedupe()
    assert dedupe.first_seen("d-1", 0.0)
    assert not dedupe.first_seen("d-1", DEDUPE_WINDOW_S - 1)
    assert dedupe.prune(DEDUPE_WINDOW_S) == ["d-1"] and "d-1" not in dedupe
    assert dedupe.first_seen("d-1", DEDUPE_WINDOW_S + 1)


def test_dedupe_reloads_from_the_store():
    dedupe = DeliveryDedupe()
    dedupe.load("a", 10.0)
    dedupe.load("b", 20.0)
    assert not dedupe.first_seen("a", 30.0) and dedupe.first_seen("c", 30.0)
    assert dedupe.prune(10.0 + DEDUPE_WINDOW_S) == ["a"]


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.floats(0, 3 * DEDUPE_WINDOW_S)), max_size=60))
def test_dedupe_starts_each_id_once_per_window(offers):
    dedupe = DeliveryDedupe()
    started: dict[str, list[float]] = {}
    for delivery_id, at in sorted(offers, key=lambda o: o[1]):
        if dedupe.first_seen(delivery_id, at):
            started.setdefault(delivery_id, []).append(at)
    for times in started.values():
        assert all(b - a >= DEDUPE_WINDOW_S for a, b in zip(times, times[1:]))


def test_the_hourly_cap():
    cap = HourlyCap()
    assert all(cap.take("r", 20, 100.0 + i) is None for i in range(20))
    assert cap.take("r", 20, 200.0) == 100.0 + 3600 - 200.0   # when the oldest leaves the window
    assert cap.count("r", 200.0) == 20
    assert cap.take("other", 20, 200.0) is None                # per routine
    assert cap.take("r", 20, 3700.0) is None                   # the first one has left


@given(st.lists(st.floats(0, 4 * 3600), max_size=80), st.integers(1, 10))
def test_never_more_than_the_limit_in_any_hour(times, limit):
    cap = HourlyCap()
    taken = [t for t in sorted(times) if cap.take("r", limit, t) is None]
    for i, start in enumerate(taken):
        assert sum(1 for t in taken[i:] if t < start + 3600) <= limit


def test_retry_after_is_exact():
    cap = HourlyCap()
    cap.record("r", 0.0)
    cap.record("r", 10.0)
    assert cap.retry_after("r", 2, 20.0) == 3580.0
    assert cap.retry_after("r", 3, 20.0) is None


def test_idempotency_keys():
    keys = IdempotencyKeys()
    assert keys.begin("r", "k1", "body-a", 0.0) == New()
    assert keys.begin("r", "k1", "body-a", 1.0) == Pending()
    keys.finish("r", "k1", {"run_id": "x"})
    assert keys.begin("r", "k1", "body-a", 2.0) == Replay({"run_id": "x"})
    assert keys.begin("r", "k1", "body-b", 2.0) == Conflict()
    assert keys.begin("other", "k1", "body-b", 2.0) == New()             # keys are per routine
    assert keys.begin("r", "k1", "body-b", IDEMPOTENCY_WINDOW_S + 1) == New()  # a day later it is free


def test_an_abandoned_key_is_free_again():
    keys = IdempotencyKeys()
    assert keys.begin("r", "k", "d", 0.0) == New()
    keys.abandon("r", "k")
    assert keys.begin("r", "k", "other", 1.0) == New()


def test_idempotency_keys_reload():
    keys = IdempotencyKeys()
    keys.load("r", "k", "d", {"run_id": "y"}, 100.0)
    assert keys.begin("r", "k", "d", 200.0) == Replay({"run_id": "y"})
    assert keys.prune(100.0 + DAY) == [("r", "k")]
