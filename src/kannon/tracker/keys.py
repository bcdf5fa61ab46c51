"""The Tracker's in-memory copy of the token verification keys.

A hit must not cost a database query, so every unexpired key is loaded at start and reloaded on
a timer. A token signed with a key minted after the last load (the Dispatcher rotates keys before
they expire) names a kid the cache has never seen: that triggers one reload right away, but at
most once per ``miss_interval``, so a flood of forged kids cannot turn into a flood of queries.
Concurrent hits with the same new kid share the one reload instead of being refused meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime, timedelta

from prometheus_client import Counter

from kannon.envelope.tokens import Claim, verify_token
from kannon.runtime.clock import utc_now

log = logging.getLogger("kannon.tracker")

KEY_LOADS = Counter(
    "kannon_tracker_key_loads_total",
    "Loads of the tracking-token verification keys, by trigger and result",
    ["trigger", "result"],
)

KeyLoader = Callable[[datetime], Awaitable[Mapping[str, bytes]]]


class _KidProbe(Mapping[str, bytes]):
    """The key set, remembering which kid the verifier asked for.

    Lets a failed verification tell "unknown kid" from "bad token" without this module knowing
    the token layout: whatever the format, the verifier must look the kid up in the key set.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = keys
        self.asked: str | None = None

    def __getitem__(self, kid: str) -> bytes:
        self.asked = kid
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class KeyCache:
    """Verification keys by kid, and token verification against them."""

    def __init__(
        self,
        load: KeyLoader,
        *,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        miss_interval: timedelta = timedelta(seconds=5),
        miss_wait: timedelta = timedelta(seconds=3),
    ) -> None:
        self._load = load
        self._clock = clock
        self._monotonic = monotonic
        self._miss_interval = miss_interval.total_seconds()
        self._miss_wait = miss_wait.total_seconds()
        self._keys: Mapping[str, bytes] = {}
        self._last_miss_load: float | None = None
        self._miss_load: asyncio.Task[None] | None = None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def load(self, trigger: str = "timer") -> None:
        """Replace the cache with the database's unexpired keys; raises when that fails."""
        try:
            keys = dict(await self._load(self._clock()))
        except Exception:
            KEY_LOADS.labels(trigger, "error").inc()
            raise
        KEY_LOADS.labels(trigger, "ok").inc()
        self._keys = keys

    async def verify(self, token: str) -> Claim | None:
        """The claim of a valid token; reloads the keys (rate-limited) for an unknown kid."""
        keys = self._keys
        claim = verify_token(token, keys, self._clock())
        if claim is not None:
            return claim
        probe = _KidProbe(keys)
        verify_token(token, probe, self._clock())
        if probe.asked is None or probe.asked in keys:
            return None  # malformed, forged or expired: a reload would not change that
        if not await self._reload_for_unknown_kid():
            return None
        return verify_token(token, self._keys, self._clock())

    async def _reload_for_unknown_kid(self) -> bool:
        if self._miss_load is None:
            now = self._monotonic()
            if (
                self._last_miss_load is not None
                and now - self._last_miss_load < self._miss_interval
            ):
                return False
            self._last_miss_load = now
            self._miss_load = asyncio.create_task(self._logged_load("unknown-kid"))
            self._miss_load.add_done_callback(self._miss_load_done)
        # Shielded: one requester going away (or timing out) must not cancel the load the others
        # wait for. Bounded: a hit never hangs on a slow database; it gets a 404 instead.
        try:
            await asyncio.wait_for(asyncio.shield(self._miss_load), self._miss_wait)
        except TimeoutError:
            return False
        return True

    def _miss_load_done(self, _task: asyncio.Task[None]) -> None:
        self._miss_load = None

    async def _logged_load(self, trigger: str) -> None:
        try:
            await self.load(trigger)
        except Exception as exc:
            # Keep serving with the keys we have: the next timer load may succeed.
            log.warning(
                "loading tracking keys failed",
                extra={"kv": {"trigger": trigger, "error": repr(exc)}},
            )

    async def refresh_forever(self, interval: timedelta, stopping: asyncio.Event) -> None:
        """Reload every ``interval`` until ``stopping`` is set; failures keep the old keys."""
        while True:
            try:
                await asyncio.wait_for(stopping.wait(), interval.total_seconds())
            except TimeoutError:
                await self._logged_load("timer")
            else:
                return
