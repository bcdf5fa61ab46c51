"""The retry budget: when a Delivery whose attempt failed temporarily is tried again, if ever.

Backoff is exponential, `base · 2^attempts` clamped to `[min, max]`, then multiplied by a jitter
factor the caller draws from `[JITTER_MIN, JITTER_MAX]` (so retries of a Batch that failed together
do not hit the remote server together, and so this module reads no randomness). The budget is a
window measured from the Delivery's original scheduled time: an attempt that would fall outside
it is not scheduled, and the Delivery ends (Bounced if a server last answered, else Failed).

Unlike the original (ADR 0005), the next attempt is measured from `now`, not from the original
time: anchoring on the original time makes every retry after the delay saturates at `max` due
immediately, which would turn the last hours of the window into a hot loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

JITTER_MIN = 0.8
JITTER_MAX = 1.2

_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff and budget of temporary failures.

    Build it from settings: `RetryPolicy(window=d.retry_window, base=d.backoff_base,
    min=d.backoff_min, max=d.backoff_max)` with `d = settings.dispatcher`.
    """

    window: timedelta
    base: timedelta
    min: timedelta
    max: timedelta

    def __post_init__(self) -> None:
        if self.window <= timedelta(0) or self.base <= timedelta(0):
            raise ValueError("retry window and backoff base must be positive")
        if self.min < timedelta(0) or self.min > self.max:
            raise ValueError("backoff min must be between 0 and backoff max")

    def delay(self, attempts: int, jitter: float) -> timedelta:
        """Delay before the retry that follows `attempts` earlier reschedules (0 → first retry).

        `base · 2^attempts` clamped to `[min, max]`, times `jitter` (in `[0.8, 1.2]`).
        """
        if attempts < 0:
            raise ValueError(f"attempts must not be negative, got {attempts}")
        if not JITTER_MIN <= jitter <= JITTER_MAX:
            raise ValueError(f"jitter must be in [{JITTER_MIN}, {JITTER_MAX}], got {jitter}")
        # Integer microseconds: timedelta arithmetic overflows long before the clamp would apply.
        base_us, max_us = self.base // _US, self.max // _US
        # Past max's bit length, base (≥ 1 µs) · 2^attempts exceeds max: skip the huge shift.
        too_big = attempts > max_us.bit_length()
        raw_us = max_us if too_big else min(base_us << attempts, max_us)
        clamped = max(timedelta(microseconds=raw_us), self.min)
        return clamped * jitter

    def deadline(self, original: datetime) -> datetime:
        """No attempt is scheduled at or after this instant."""
        return original + self.window

    def next_attempt(
        self, original: datetime, attempts_done: int, now: datetime, jitter: float
    ) -> datetime | None:
        """When to retry a Delivery whose attempt just failed temporarily; None = budget spent.

        `original` is the Delivery's original_scheduled_time, `attempts_done` its
        send_attempts_cnt as the Pool row carries it when the failure is handled (the number of
        earlier reschedules, 0 after the first attempt; `reschedule()` then adds one).
        """
        at = now + self.delay(attempts_done, jitter)
        if at >= self.deadline(original):
            return None
        return at

    def should_retry(self, original: datetime, attempts_done: int, now: datetime) -> bool:
        """Whether a temporary failure of the attempt being made now can still be retried.

        Uses the smallest jitter, so it says True whenever some jitter would fit a retry in the
        window; whoever handles the failure still decides with `next_attempt`.
        """
        return self.next_attempt(original, attempts_done, now, JITTER_MIN) is not None
