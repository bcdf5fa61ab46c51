"""RetryPolicy: backoff table, clamping, jitter bounds and the retry-budget edge."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from kannon.model.retry import JITTER_MAX, JITTER_MIN, RetryPolicy

M = timedelta(minutes=1)
H = timedelta(hours=1)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

# The defaults of dispatcher.* in the configuration.
DEFAULT = RetryPolicy(window=24 * H, base=2 * M, min=5 * M, max=6 * H)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        (0, 5 * M),  # base 2m is below min
        (1, 5 * M),  # 4m is below min
        (2, 8 * M),
        (3, 16 * M),
        (4, 32 * M),
        (5, 64 * M),
        (6, 128 * M),
        (7, 256 * M),
        (8, 6 * H),  # 512m is clamped to max
        (9, 6 * H),
        (61, 6 * H),
        (62, 6 * H),  # past the exponent guard
        (10_000, 6 * H),
    ],
)
def test_delay_is_exponential_and_clamped(attempts: int, expected: timedelta) -> None:
    assert DEFAULT.delay(attempts, 1.0) == expected


@pytest.mark.parametrize(
    ("attempts", "jitter", "expected"),
    [
        (0, JITTER_MIN, 4 * M),
        (0, JITTER_MAX, 6 * M),
        (2, 0.8, timedelta(minutes=6, seconds=24)),
        (2, 1.2, timedelta(minutes=9, seconds=36)),
        (9, 1.2, timedelta(hours=7, minutes=12)),  # jitter applies after the clamp
    ],
)
def test_jitter_multiplies_the_clamped_delay(
    attempts: int, jitter: float, expected: timedelta
) -> None:
    assert DEFAULT.delay(attempts, jitter) == expected


@pytest.mark.parametrize("jitter", [0.79, 1.21, 0.0, -1.0, float("nan")])
def test_jitter_outside_bounds_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        DEFAULT.delay(0, jitter)


def test_negative_attempts_are_refused() -> None:
    with pytest.raises(ValueError, match="attempts"):
        DEFAULT.delay(-1, 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": timedelta(0), "base": M, "min": M, "max": H},
        {"window": H, "base": timedelta(0), "min": M, "max": H},
        {"window": H, "base": M, "min": 2 * H, "max": H},
        {"window": H, "base": M, "min": -M, "max": H},
    ],
)
def test_inconsistent_policies_are_refused(kwargs: dict[str, timedelta]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    ("attempts_done", "now", "jitter", "expected"),
    [
        # First failure right at the original time: retry 5 minutes later.
        (0, T0, 1.0, T0 + 5 * M),
        # Measured from now, not from the original time.
        (3, T0 + 2 * H, 1.0, T0 + 2 * H + 16 * M),
        (3, T0 + 2 * H, 0.8, T0 + 2 * H + timedelta(minutes=12, seconds=48)),
        # Saturated delay still spaces attempts by max.
        (9, T0 + 10 * H, 1.0, T0 + 16 * H),
        # Just inside the window.
        (9, T0 + 18 * H - timedelta(microseconds=1), 1.0, T0 + 24 * H - timedelta(microseconds=1)),
        # Landing exactly on the deadline is outside the budget.
        (9, T0 + 18 * H, 1.0, None),
        (9, T0 + 20 * H, 1.0, None),
        # Jitter can decide the edge.
        (9, T0 + 19 * H, 0.8, T0 + 19 * H + timedelta(hours=4, minutes=48)),
        (9, T0 + 19 * H, 1.0, None),
        # Already past the window.
        (0, T0 + 25 * H, 1.0, None),
    ],
)
def test_next_attempt_within_the_budget(
    attempts_done: int, now: datetime, jitter: float, expected: datetime | None
) -> None:
    assert DEFAULT.next_attempt(T0, attempts_done, now, jitter) == expected


def test_a_delivery_that_keeps_failing_is_retried_a_bounded_number_of_times() -> None:
    # Simulate the Dispatcher: fail immediately at every attempt, with no jitter.
    now, attempts = T0, 0
    times = []
    while (at := DEFAULT.next_attempt(T0, attempts, now, 1.0)) is not None:
        times.append(at)
        now, attempts = at, attempts + 1
    assert attempts == 10
    assert times[-1] < T0 + 24 * H
    assert all(later > earlier for earlier, later in itertools.pairwise(times))
    # The next one would have fallen outside the window.
    assert times[-1] + DEFAULT.delay(attempts, 1.0) >= T0 + 24 * H


def test_should_retry_uses_the_most_lenient_jitter() -> None:
    assert DEFAULT.should_retry(T0, 9, T0 + 19 * H)  # fits with jitter 0.8 only
    assert not DEFAULT.should_retry(T0, 9, T0 + 20 * H)
    assert DEFAULT.deadline(T0) == T0 + 24 * H
