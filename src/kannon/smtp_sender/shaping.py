"""`Shaper`: the sender's side of delivery shaping (ADR 0037) and adaptive backoff (ADR 0038).

For one Envelope, `SmtpDeliverer` asks in this order:

1. `destination(domain, mx_host)`: which Destination the mail goes to (`model.shaping`), or None
   when nothing is configured for it (and backoff is off): then nothing here is consulted;
2. `admit(destination)`: a `Permit` with the limits in force now (the configured ones lowered
   by the backoff level), or a `Deferral` when the destination is paused or its per-second /
   per-hour count is full for longer than a short wait;
3. `lease(permit)` before each new SMTP connection: a lease id, or None when the destination's
   connections are all taken by this or another sender (the caller then reuses a session that
   came free, or defers). The lease lives as long as the connection (released when it closes,
   renewed by `maintain()`, expiring by itself when its sender dies);
4. `observe(permit, result, connected)`: a 4xx answer or a connection failure steps the
   destination down and pauses it; a delivery counts towards stepping it back up. Each change
   is a log line (destination, limits now, why) and metrics.

All of it lives in the `kannon-shaping` KV bucket (`bus.shared_state`), so every sender replica
sees the same leases, counts and pauses. When that bucket cannot be reached the Envelope is
deferred: shaping is the promise not to overrun a destination, and a short delay breaks no
promise (the Envelope comes back, not counted as an attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from prometheus_client import Counter, Gauge

from kannon.bus.client import Bus
from kannon.bus.shared_state import open_shared_state
from kannon.config import Settings
from kannon.model.shaping import (
    BackoffPolicy,
    Destination,
    DestinationState,
    Limits,
    Rule,
    after_success,
    after_trouble,
    destination_for,
    drop_lease,
    renew_leases,
    take_lease,
    take_message,
)
from kannon.smtp_sender.result import Kind, SendResult

log = logging.getLogger("kannon.sender.shaping")

T = TypeVar("T")

DEFERRED = Counter(
    "kannon_sender_deferred_total",
    "Envelopes sent back to wait for their destination (not counted as attempts)",
    ["reason"],  # paused, rate, connections, unavailable
)
BACKOFF_LEVEL = Gauge(
    "kannon_sender_destination_backoff_level",
    "Backoff steps of a destination in trouble (each halves its limits); gone when restored",
    ["destination"],
)
CONNECTION_LIMIT = Gauge(
    "kannon_sender_destination_connection_limit",
    "Concurrent connections a backed-off destination allows now, across all senders",
    ["destination"],
)
PAUSED_UNTIL = Gauge(
    "kannon_sender_destination_paused_until_seconds",
    "Unix time until which a backed-off destination is paused",
    ["destination"],
)

LEASE_TTL = 30.0
"""Seconds a connection lease lasts unless renewed (`maintain()` renews every few seconds)."""
LEASE_WAIT = 2.0
"""How long a send waits for a free connection before it defers its Envelope."""
RATE_WAIT = 1.0
"""A full per-second window is waited out; anything longer defers the Envelope."""
STATE_CACHE = 1.0
"""Seconds a destination's read state is trusted for a destination without rate limits."""
UNAVAILABLE_DELAY = 5.0


class Store(Protocol):
    async def read(self, key: str) -> bytes | None: ...

    async def change(
        self, key: str, step: Callable[[bytes | None], tuple[bytes | None, T]]
    ) -> T: ...


@dataclass(frozen=True)
class Permit:
    destination: Destination
    limits: Limits
    """The limits in force when the send was admitted (configured, lowered by backoff)."""
    level: int


@dataclass(frozen=True)
class Deferral:
    delay: float
    reason: str
    kind: str


def trouble_of(result: SendResult, connected: bool) -> str | None:
    """Why `result` says the destination is overrun or failing, or None when it does not: a 4xx
    answer, or no answer from a server we tried to reach (DNS failures are ours, not theirs)."""
    if result.kind in (Kind.REFUSED, Kind.SESSION_REFUSED) and 400 <= result.code < 500:
        return f"{result.code} {result.message}"[:200]
    if result.kind is Kind.NO_ANSWER and connected:
        return f"no answer: {result.message}"[:200]
    return None


class Shaper:
    def __init__(
        self,
        rules: tuple[Rule, ...],
        *,
        backoff: BackoffPolicy | None,
        store: Callable[[], Awaitable[Store]],
        unlimited_connections: int,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.rules = rules
        self.backoff = backoff
        self.unlimited_connections = unlimited_connections
        self._open_store = store
        self._store: Store | None = None
        self._clock = clock
        self._rng = rng or random.Random()
        self._me = secrets.token_hex(4)
        self._leases = 0
        self._held: dict[Destination, set[str]] = {}  # our live lease ids
        self._cache: dict[str, tuple[float, DestinationState]] = {}
        self._releases: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> bool:
        return bool(self.rules) or self.backoff is not None

    def destination(self, domain: str, mx_host: str) -> Destination | None:
        found = destination_for(self.rules, domain, mx_host)
        if found is None and self.backoff is not None:
            return Destination(domain, Limits())  # backoff watches every destination
        return found

    async def admit(self, destination: Destination) -> Permit | Deferral:
        rated = destination.limits.per_second or destination.limits.per_hour
        deadline = self._clock() + RATE_WAIT
        while True:
            now = self._clock()
            try:
                if rated:
                    state, wait = await self._change(
                        destination, functools.partial(self._count_message, destination, now)
                    )
                else:
                    state, wait = await self._read(destination), 0.0
            except Exception as exc:
                return self._unavailable(destination, exc)
            if state.paused(now):
                DEFERRED.labels("paused").inc()
                return Deferral(
                    state.paused_until - now + self._rng.uniform(0, 2),
                    f"{destination.name} is paused: {state.reason}",
                    "paused",
                )
            if not wait:
                limits = destination.limits.lowered(state.level, self.unlimited_connections)
                return Permit(destination, limits, state.level)
            if now + wait > deadline:
                DEFERRED.labels("rate").inc()
                return Deferral(
                    wait + self._rng.uniform(0.5, 2),
                    f"{destination.name} is at its {self._limits(destination, state).describe()}",
                    "rate",
                )
            await asyncio.sleep(wait)

    def _count_message(
        self, destination: Destination, now: float, state: DestinationState
    ) -> tuple[DestinationState | None, tuple[DestinationState, float]]:
        if state.paused(now):
            return None, (state, 0.0)
        counted, wait = take_message(state, self._limits(destination, state), now)
        return counted, (counted or state, wait)

    def _limits(self, destination: Destination, state: DestinationState) -> Limits:
        return destination.limits.lowered(state.level, self.unlimited_connections)

    def deferral_for_connections(self, permit: Permit) -> Deferral:
        DEFERRED.labels("connections").inc()
        return Deferral(
            self._rng.uniform(1, 4),
            f"{permit.destination.name} has all its {permit.limits.connections} connections open",
            "connections",
        )

    async def lease(self, permit: Permit) -> str | Deferral | None:
        """A lease id for one more connection ("" when the destination has no connection
        limit), None when all are taken, a Deferral when the bucket cannot be reached."""
        limit = permit.limits.connections
        if not limit:
            return ""
        self._leases += 1
        holder = f"{self._me}.{self._leases}"
        now = self._clock()

        def take(state: DestinationState) -> tuple[DestinationState | None, bool]:
            taken = take_lease(state, holder, limit, now, LEASE_TTL)
            return taken, taken is not None

        try:
            if not await self._change(permit.destination, take):
                return None
        except Exception as exc:
            return self._unavailable(permit.destination, exc)
        self._held.setdefault(permit.destination, set()).add(holder)
        return holder

    def release(self, destination: Destination, holder: str) -> None:
        """Give a connection's lease back (in the background: a connection closes in places
        that cannot wait; should this fail, the lease expires by itself)."""
        if not holder:
            return
        held = self._held.get(destination)
        if held is not None:
            held.discard(holder)
            if not held:
                del self._held[destination]
        task = asyncio.get_running_loop().create_task(self._release(destination, holder))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, destination: Destination, holder: str) -> None:
        try:
            await self._change(destination, lambda s: (drop_lease(s, holder), None))
        except Exception as exc:
            log.info(
                "could not give a connection lease back; it expires by itself",
                extra={"kv": {"destination": destination.name, "error": repr(exc)}},
            )

    async def observe(self, permit: Permit, result: SendResult, *, connected: bool) -> None:
        """Step the destination down after trouble, or count a delivery towards stepping up."""
        policy = self.backoff
        if policy is None:
            return
        destination = permit.destination
        reason = trouble_of(result, connected)
        now = self._clock()
        if reason is None and not (result.kind is Kind.DELIVERED and permit.level > 0):
            return

        def step(
            state: DestinationState,
        ) -> tuple[DestinationState | None, tuple[DestinationState, DestinationState | None]]:
            if reason is not None:
                new = after_trouble(state, policy, now, reason)
            else:
                new = after_success(state, policy)
            return new, (state, new)

        try:
            before, after = await self._change(destination, step)
        except Exception as exc:
            log.warning(
                "could not record the destination's state",
                extra={"kv": {"destination": destination.name, "error": repr(exc)}},
            )
            return
        if after is None or after.level == before.level:
            return
        self._report(destination, after, now)

    def _report(self, destination: Destination, state: DestinationState, now: float) -> None:
        limits = self._limits(destination, state)
        name = destination.name
        kv = {
            "destination": name,
            "level": state.level,
            "limits": limits.describe() if state.level else destination.limits.describe(),
            "reason": state.reason,
        }
        if state.level == 0:
            for gauge in (BACKOFF_LEVEL, CONNECTION_LIMIT, PAUSED_UNTIL):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
            log.info("destination restored to its configured limits", extra={"kv": kv})
            return
        BACKOFF_LEVEL.labels(name).set(state.level)
        CONNECTION_LIMIT.labels(name).set(limits.connections)
        PAUSED_UNTIL.labels(name).set(state.paused_until)
        if state.paused(now):
            kv["paused_seconds"] = round(state.paused_until - now, 1)
            log.warning("destination backing off", extra={"kv": kv})
        else:
            log.info("destination one step closer to its configured limits", extra={"kv": kv})

    async def maintain(self) -> None:
        """Renew the leases of connections still open (called every few seconds)."""
        now = self._clock()
        for destination, holders in list(self._held.items()):
            alive = set(holders)

            def renew(
                state: DestinationState, alive: set[str] = alive
            ) -> tuple[DestinationState | None, None]:
                return renew_leases(state, alive, now, LEASE_TTL), None

            try:
                await self._change(destination, renew)
            except Exception as exc:
                log.warning(
                    "could not renew connection leases",
                    extra={"kv": {"destination": destination.name, "error": repr(exc)}},
                )

    async def close(self) -> None:
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    # -- the bucket ------------------------------------------------------------------------

    async def _bucket(self) -> Store:
        if self._store is None:
            self._store = await self._open_store()
        return self._store

    async def _read(self, destination: Destination) -> DestinationState:
        now = self._clock()
        cached = self._cache.get(destination.key)
        if cached is not None and now - cached[0] < STATE_CACHE:
            return cached[1]
        store = await self._bucket()
        state = DestinationState.decode(await store.read(destination.key))
        self._remember(destination, state, now)
        return state

    async def _change(
        self,
        destination: Destination,
        step: Callable[[DestinationState], tuple[DestinationState | None, T]],
    ) -> T:
        store = await self._bucket()
        written: list[DestinationState] = []

        def on_bytes(raw: bytes | None) -> tuple[bytes | None, T]:
            written.clear()
            current = DestinationState.decode(raw)
            new, answer = step(current)
            written.append(new or current)
            return (new.encode() if new is not None else None), answer

        answer = await store.change(destination.key, on_bytes)
        if written:
            self._remember(destination, written[0], self._clock())
        return answer

    def _remember(self, destination: Destination, state: DestinationState, now: float) -> None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[destination.key] = (now, state)

    def _unavailable(self, destination: Destination, exc: Exception) -> Deferral:
        DEFERRED.labels("unavailable").inc()
        log.warning(
            "shaping state unavailable; deferring",
            extra={"kv": {"destination": destination.name, "error": repr(exc)}},
        )
        self._store = None  # open it again next time (the bucket may have been recreated)
        return Deferral(
            UNAVAILABLE_DELAY + self._rng.uniform(0, 2),
            f"shaping state of {destination.name} unavailable",
            "unavailable",
        )


def make_shaper(settings: Settings, bus: Bus) -> Shaper:
    """The Shaper `sender.shaping` asks for (inactive when it asks for nothing)."""
    shaping = settings.sender.shaping
    backoff = None
    if shaping.backoff:
        backoff = BackoffPolicy(
            pause=shaping.pause.total_seconds(),
            max_pause=shaping.max_pause.total_seconds(),
            restore_after=shaping.restore_after,
        )
    replicas = settings.nats.stream_replicas

    async def store() -> Store:
        return await open_shared_state(bus, replicas=replicas)

    return Shaper(
        shaping.destinations,
        backoff=backoff,
        store=store,
        unlimited_connections=settings.sender.max_jobs,
    )
