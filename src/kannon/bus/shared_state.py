"""Small values shared by every replica of a Component, changed with compare-and-set on a
JetStream KV bucket: the delivery shaping state of each Destination (`kannon-shaping`,
ADR 0037).

`change(key, step)` reads the value, lets `step` compute the next one and writes it only if
nobody wrote in between (the KV revision), trying again on a conflict: replicas never overwrite
each other's leases or counts. What the values mean is the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import nats.js.errors
from nats.js.kv import KeyValue

from kannon.bus.client import Bus
from kannon.bus.subjects import SHAPING_BUCKET

T = TypeVar("T")

# Many replicas changing one hot key: a conflict means someone else just got through; the next
# read sees their value. More rounds than this and the caller treats it as unavailable.
MAX_ROUNDS = 20


class Contended(Exception):
    """The value kept changing under us for MAX_ROUNDS rounds."""


class SharedState:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def read(self, key: str) -> bytes | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return bytes(entry.value or b"") or None

    async def change(self, key: str, step: Callable[[bytes | None], tuple[bytes | None, T]]) -> T:
        """Apply `step` (current value → (new value or None to leave it, answer)) atomically;
        returns the answer of the round that was written (or that wrote nothing)."""
        for _ in range(MAX_ROUNDS):
            try:
                entry = await self.kv.get(key)
                current, revision = bytes(entry.value or b"") or None, entry.revision
            except nats.js.errors.KeyNotFoundError:
                current, revision = None, None
            new, answer = step(current)
            if new is None:
                return answer
            try:
                if revision is None:
                    await self.kv.create(key, new)
                else:
                    await self.kv.update(key, new, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return answer
        raise Contended(f"{key} changed {MAX_ROUNDS} times while we tried to change it")


async def open_shared_state(
    bus: Bus, *, keep: timedelta = timedelta(days=1), replicas: int = 1
) -> SharedState:
    """The shaping bucket, created on first use. A value nobody wrote for `keep` disappears (a
    destination not sent to for a day starts afresh)."""
    kv = await bus.key_value(
        SHAPING_BUCKET,
        ttl=keep,
        replicas=replicas,
        description="Delivery shaping: leases, message counts and backoff per destination",
    )
    return SharedState(kv)
