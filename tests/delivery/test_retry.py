"""Retry schedule: exponential backoff with jitter, a cap, and expiry."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailcarrier.delivery.retry import JITTER, is_expired, next_attempt_delay

DEFAULTS = {"initial": 60.0, "factor": 2.0, "cap": 3600.0}

attempts_st = st.integers(min_value=1, max_value=10_000)
initial_st = st.floats(min_value=0.001, max_value=1e5)
factor_st = st.floats(min_value=1.0, max_value=100.0)
cap_st = st.floats(min_value=0.001, max_value=1e7)
seed_st = st.integers(min_value=0, max_value=2**32)


def delay(attempts: int, seed: int = 0, **overrides: float) -> float:
    params = {**DEFAULTS, **overrides}
    return next_attempt_delay(attempts, rng=random.Random(seed), **params)


@given(attempts_st, initial_st, factor_st, cap_st, seed_st)
def test_delay_stays_within_jitter_of_the_capped_base(
    attempts: int, initial: float, factor: float, cap: float, seed: int
) -> None:
    try:
        base = min(initial * factor ** (attempts - 1), cap)
    except OverflowError:
        base = cap
    got = delay(attempts, seed, initial=initial, factor=factor, cap=cap)
    assert base * (1 - JITTER) * (1 - 1e-9) <= got <= base * (1 + JITTER) * (1 + 1e-9)


@given(attempts_st, initial_st, factor_st, cap_st, seed_st)
def test_delay_never_exceeds_the_cap(
    attempts: int, initial: float, factor: float, cap: float, seed: int
) -> None:
    assert 0 < delay(attempts, seed, initial=initial, factor=factor, cap=cap) <= cap


@given(initial_st, factor_st, cap_st, seed_st)
def test_delay_never_shrinks_with_more_attempts_for_the_same_draw(
    initial: float, factor: float, cap: float, seed: int
) -> None:
    # With the same random draw the delay is monotone in the attempts, so
    # every quantile of the distribution (the median too) is monotone.
    delays = [
        delay(attempts, seed, initial=initial, factor=factor, cap=cap)
        for attempts in range(1, 40)
    ]
    assert delays == sorted(delays)


def test_median_delays_follow_the_default_schedule() -> None:
    expected = [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    rng = random.Random(7)
    medians: list[float] = []
    for attempts, base in enumerate(expected, start=1):
        samples = [
            next_attempt_delay(attempts, rng=rng, **DEFAULTS) for _ in range(2001)
        ]
        median = statistics.median(samples)
        medians.append(median)
        if base < DEFAULTS["cap"]:
            assert median == pytest.approx(base, rel=0.03)
        else:
            # Half the jitter band lies above the cap and is clipped to it.
            assert median == pytest.approx(DEFAULTS["cap"], rel=0.01)
        assert min(samples) >= base * 0.8 - 1e-9
        assert max(samples) <= min(base * 1.2, DEFAULTS["cap"]) + 1e-9
    assert medians == sorted(medians)


def test_delays_are_spread_by_jitter() -> None:
    rng = random.Random(1)
    samples = {next_attempt_delay(2, rng=rng, **DEFAULTS) for _ in range(100)}
    assert len(samples) > 90
    assert min(samples) < 110 and max(samples) > 130


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert delay(10**6) <= DEFAULTS["cap"]


def test_same_seed_gives_same_delay() -> None:
    assert delay(3, seed=42) == delay(3, seed=42)


@pytest.mark.parametrize("attempts", [0, -1])
def test_attempts_below_one_are_refused(attempts: int) -> None:
    with pytest.raises(ValueError, match="attempts"):
        delay(attempts)


@pytest.mark.parametrize(
    "params",
    [
        {"initial": 0.0},
        {"cap": 0.0},
        {"factor": 0.5},
    ],
)
def test_nonsense_schedules_are_refused(params: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        delay(1, 0, **params)


def test_message_expires_when_its_lifetime_is_used_up() -> None:
    assert not is_expired(1000.0, 1000.0 + 86399.9, 86400.0)
    assert is_expired(1000.0, 1000.0 + 86400.0, 86400.0)
    assert is_expired(1000.0, 1000.0 + 90000.0, 86400.0)


@given(
    st.floats(min_value=0, max_value=2e9),
    st.floats(min_value=0, max_value=1e7),
    st.floats(min_value=1, max_value=1e7),
)
def test_expiry_matches_age_against_lifetime(
    created: float, age: float, lifetime: float
) -> None:
    assert is_expired(created, created + age, lifetime) == (
        (created + age) - created >= lifetime
    )
