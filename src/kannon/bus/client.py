"""The NATS connection with its JetStream context: streams, publishing, consuming, KV guard.

Publishing always goes through JetStream and waits for the PubAck, with a `Nats-Msg-Id` so a
retried publish inside the stream's duplicate window is stored once. Consumers are durable pull
consumers with explicit acks; `consume()` is the loop every Component uses, one handler call per
message; `consume_batches()` is its variant that hands a handler every message of one fetch at
once (the webhooks intake, ADR 0052). Both settle each message the same way, after its handler.

No message is ever dropped silently (ADR 0026). The server redelivers without limit; a handler
that fails is retried after a delay that doubles per delivery up to `ConsumerSpec.max_retry_delay`,
for as long as its failure is transient (database or bus unreachable: an outage of any length).
A message that cannot be handled — the handler says so with `Result.term()`, or it kept failing
for another reason `max_deliver` times — is copied to the dead-letter stream
(`kannon.deadletter.<durable>`) with a log line and a metric, and only then terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX as DEFAULT_JS_PREFIX
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from prometheus_client import Counter

from kannon.bus.subjects import (
    DEAD_LETTER_STREAM,
    SENT_GUARD_BUCKET,
    STATS_STREAM,
    STATS_SUBJECTS,
    STREAMS,
    StreamSpec,
    dead_letter_subject,
    stats_subject,
)
from kannon.config import NatsSettings

log = logging.getLogger("kannon.bus")

PUBLISHED = Counter("kannon_bus_published_total", "Messages published with a PubAck", ["subject"])
HANDLED = Counter(
    "kannon_bus_handled_total", "Messages handled by consumers", ["durable", "result"]
)
DEAD_LETTERS = Counter(
    "kannon_bus_dead_letters_total",
    "Messages no handler could handle, copied to the dead-letter stream",
    ["durable", "reason"],  # refused (the handler terminated it), failing (kept failing)
)
HANDLER_FAILURES = Counter(
    "kannon_bus_handler_failures_total",
    "Handler failures; the message is retried after a growing delay",
    ["durable", "kind"],  # transient (database or bus unreachable), error
)

FLUSHES = Counter(
    "kannon_bus_flushes_total", "Socket writes of queued NATS commands (each may carry many)"
)

DUPLICATE_WINDOW = timedelta(minutes=10)
ERROR_HEADER_MAX = 500
JITTER = 0.2
BUS_TIMEOUT = 10.0
"""Seconds a JetStream request (a publish's PubAck, a KV read or write) waits for its answer."""
FETCH_WAIT = 0.5
"""Seconds a consumer's fetch waits for a message when none is there."""


def is_bus_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means NATS (or the network) is unreachable right now, not a bad message."""
    return isinstance(
        exc,
        nats.errors.ConnectionClosedError
        | nats.errors.NoServersError
        | nats.errors.TimeoutError
        | nats.errors.StaleConnectionError
        | nats.errors.OutboundBufferLimitError
        | nats.js.errors.ServiceUnavailableError
        | nats.js.errors.NoStreamResponseError
        | TimeoutError
        | ConnectionError
        | OSError,
    )


def is_too_large(exc: BaseException) -> bool:
    """Whether a publish failed because the message exceeds the server's max_payload: trying
    again cannot help."""
    return isinstance(exc, nats.errors.MaxPayloadError)


def server_urls(url: str) -> list[str]:
    """The servers of `nats_url`: one URL, or several comma-separated (the nodes of a cluster;
    the client also learns the others from the one it reaches, ADR 0041)."""
    return [part.strip() for part in url.split(",") if part.strip()]


class Verdict(enum.Enum):
    ACK = "ack"
    NAK = "nak"
    TERM = "term"


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    delay: float | None = None

    @classmethod
    def ack(cls) -> Result:
        return cls(Verdict.ACK)

    @classmethod
    def nak(cls, delay: float | None = None) -> Result:
        """Redeliver after `delay` seconds; None: after the consumer's growing backoff."""
        return cls(Verdict.NAK, delay)

    @classmethod
    def term(cls) -> Result:
        return cls(Verdict.TERM)


@dataclass(frozen=True)
class BusMessage:
    """What a handler sees of a consumed message."""

    subject: str
    data: bytes
    msg_id: str | None
    num_delivered: int
    stream_seq: int
    published: datetime | None = None
    """When the message was stored in the stream (the same for every redelivery)."""


@dataclass(frozen=True)
class ConsumerSpec:
    durable: str
    stream: str
    subject: str
    ack_wait: timedelta = timedelta(seconds=30)
    max_deliver: int = 100
    """Deliveries after which a message whose handler keeps failing with a non-transient error
    goes to the dead-letter stream. Transient failures are retried without limit."""
    batch: int = 50
    concurrency: int = 1
    retry_delay: timedelta = timedelta(seconds=5)
    """Delay before a failed message comes back the first time; it doubles per delivery."""
    max_retry_delay: timedelta = timedelta(minutes=1)
    max_ack_pending: int | None = None
    """Messages handed out and not yet acked, nak-delayed ones included, beyond which the server
    hands out no more; None: `max(1000, 4 · concurrency)`."""
    transient: Callable[[BaseException], bool] = lambda exc: False
    """Which handler failures, besides the bus's own (`is_bus_unavailable`), mean "not now" (an
    outage) rather than "not this message", e.g. the database being unreachable."""
    keep_alive: bool = False
    """While a handler runs, tell the server every `ack_wait / 3` that the message is still being
    worked on (a progress ack, `+WPI`), so it is not redelivered to someone else meanwhile, however
    long the handler waits on the bus itself (a JetStream leader election, ADR 0049)."""
    linger: timedelta = timedelta(0)
    """`consume_batches()` only: how long a fetch waits for a batch to fill before it hands
    over what came. Events that trickle in (a few hundred a second) would otherwise go one or
    two per handler call, a database statement apiece (ADR 0058). Zero: take what is there."""

    def backoff(self, num_delivered: int, jitter: float = 0.0) -> float:
        """Seconds before delivery `num_delivered + 1`: retry_delay · 2^(n-1), capped, ±jitter."""
        exponent = min(max(num_delivered - 1, 0), 30)
        delay = min(
            self.retry_delay.total_seconds() * (1 << exponent), self.max_retry_delay.total_seconds()
        )
        return max(0.0, delay * (1 + jitter))


def outcome_consumer(
    durable: str,
    nats_settings: NatsSettings,
    concurrency: int,
    transient: Callable[[BaseException], bool],
    *,
    subject: str = STATS_SUBJECTS,
    batch: int | None = None,
) -> ConsumerSpec:
    """A durable consumer of outcome events (`STATS_STREAM`; `subject` one of
    `kannon.stats.<type>`, default all) with the `nats.ack_wait` and `nats.max_deliver`
    settings: `concurrency` handlers at once, fetching `batch` messages at a time (default: as
    many)."""
    return ConsumerSpec(
        durable=durable,
        stream=STATS_STREAM,
        subject=subject,
        ack_wait=nats_settings.ack_wait,
        max_deliver=nats_settings.max_deliver,
        concurrency=concurrency,
        batch=concurrency if batch is None else batch,
        transient=transient,
    )


Handler = Callable[[BusMessage], Awaitable[Result]]
BatchHandler = Callable[[Sequence[BusMessage]], Awaitable[Sequence[Result | Exception]]]
"""Takes the messages of one fetch; returns one Result per message, in order, or the exception
that failed that message alone (settled as if its handler had raised it)."""
_Work = TypeVar("_Work")
"""What a consumer loop hands its handler at once: one message, or a batch of them."""


@dataclass(frozen=True)
class ConsumerState:
    """One durable consumer's backlog, as JetStream reports it."""

    stream: str
    durable: str
    pending: int
    """Messages not yet delivered to it."""
    ack_pending: int
    """Delivered, not yet acknowledged."""
    redelivered: int
    """Delivered more than once and still unacknowledged."""


class _CoalescingClient(NatsClient):
    """nats-py's client with a flusher that coalesces more (ADR 0054).

    nats-py queues every command and wakes its flusher task, which writes what is pending and
    waits for the transport to drain: one socket write per loop iteration in which anything was
    sent. A Component's handlers resume one after another over a few iterations (an SMTP reply,
    then the publish, then the ack), so this flusher waits one more iteration before writing and
    takes every flush request queued meanwhile: fewer, larger writes, for one loop iteration of
    latency. It is nats-py's `_flusher` (2.16) otherwise, errors handled the same way.
    """

    async def _flusher(self) -> None:
        while True:
            queue, transport = self._flush_queue, self._transport
            if not self.is_connected or self.is_connecting or queue is None or transport is None:
                break
            futures = [await queue.get()]
            try:
                await asyncio.sleep(0)
                if self._transport is not transport or not self.is_connected:
                    break  # reconnecting: the pending commands go out on the new connection
                while not queue.empty():
                    futures.append(queue.get_nowait())
                if self._pending_data_size > 0:
                    transport.writelines(self._pending[:])
                    self._pending = []
                    self._pending_data_size = 0
                    FLUSHES.inc()
                    await transport.drain()  # type: ignore[no-untyped-call]
            except OSError as exc:
                await self._error_cb(exc)
                await self._process_op_err(exc)
                break
            except (asyncio.CancelledError, RuntimeError, AttributeError):
                # RuntimeError: the event loop is closed (as nats-py's own flusher).
                break
            finally:
                for future in futures:
                    # A future may have been cancelled by its waiter (nats-py issue 624).
                    if not future.done():
                        future.set_result(None)


class Bus:
    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=BUS_TIMEOUT)

    @classmethod
    async def connect(cls, url: str, *, name: str = "kannon") -> Bus:
        async def on_error(exc: Exception) -> None:
            log.warning("nats connection error", extra={"kv": {"error": repr(exc)}})

        nc = _CoalescingClient()
        await nc.connect(
            server_urls(url),
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=on_error,
            connect_timeout=5,
            allow_reconnect=True,
        )
        return cls(nc)

    async def ensure_streams(self, *, replicas: int = 1, attempts: int = 5) -> None:
        """Create or update Kannon's streams; retried because JetStream may still be starting."""
        delay = 1.0
        for attempt in range(1, attempts + 1):
            try:
                for spec in STREAMS:
                    await self._ensure_stream(spec, replicas)
                return
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                if attempt == attempts:
                    raise
                log.warning(
                    "stream set-up failed, retrying",
                    extra={"kv": {"attempt": attempt, "error": repr(exc)}},
                )
                await asyncio.sleep(delay)
                delay *= 2

    async def _ensure_stream(self, spec: StreamSpec, replicas: int) -> None:
        config = StreamConfig(
            name=spec.name,
            description=spec.description,
            subjects=list(spec.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=timedelta(hours=spec.max_age_hours).total_seconds(),
            duplicate_window=DUPLICATE_WINDOW.total_seconds(),
            num_replicas=replicas,
        )
        try:
            await self.js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)
        else:
            await self.js.update_stream(config)

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        """Publish and wait for the stream to store it; returns the stream sequence."""
        ack = await self.js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
        PUBLISHED.labels(subject).inc()
        return int(ack.seq)

    async def publish_stat(self, stat_type: str, payload: bytes, msg_id: str) -> int:
        """Publish an outcome event on `kannon.stats.<type>` (`subjects.stats_subject`)."""
        return await self.publish(stats_subject(stat_type), payload, msg_id)

    async def first_seq(self, stream: str) -> int:
        """The sequence of the oldest message `stream` still holds (older ones aged out)."""
        info = await self.js.stream_info(stream)
        return int(info.state.first_seq)

    async def ack_floor(self, stream: str, durable: str) -> int:
        """The stream sequence up to which `durable` has acknowledged (or terminated) every
        message it was given; 0 when the consumer does not exist yet."""
        try:
            info = await self.js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            return 0
        floor = info.ack_floor
        return int(floor.stream_seq or 0) if floor is not None else 0

    async def consumers_idle(self, stream: str, durables: Sequence[str]) -> bool:
        """True when none of `durables` has a message waiting or unacknowledged (a consumer
        that does not exist yet has nothing of its own pending either)."""
        for durable in durables:
            try:
                info = await self.js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                continue
            if (info.num_pending or 0) or (info.num_ack_pending or 0):
                return False
        return True

    async def consumer_states(self, streams: Sequence[str]) -> list[ConsumerState]:
        """Every durable consumer of `streams` with its waiting, unacknowledged and redelivered
        message counts (a stream that does not exist yet has none)."""
        states: list[ConsumerState] = []
        for stream in streams:
            try:
                infos = await self.js.consumers_info(stream)
            except nats.js.errors.NotFoundError:
                continue
            for info in infos:
                states.append(
                    ConsumerState(
                        stream=stream,
                        durable=str(info.config.durable_name or info.name),
                        pending=int(info.num_pending or 0),
                        ack_pending=int(info.num_ack_pending or 0),
                        redelivered=int(info.num_redelivered or 0),
                    )
                )
        return sorted(states, key=lambda s: (s.stream, s.durable))

    async def check(self) -> None:
        if not self.nc.is_connected:
            raise RuntimeError(f"not connected (status {self.nc._status})")
        await self.js.account_info()

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.drain(), 10)
        if not self.nc.is_closed:
            await self.nc.close()

    async def key_value(
        self, bucket: str, *, ttl: timedelta, replicas: int, description: str
    ) -> KeyValue:
        """The KV bucket `bucket`, created on first use (file storage; a value nobody wrote for
        `ttl` disappears). An existing bucket is used as it is."""
        try:
            return await self.js.key_value(bucket)
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
            return await self.js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    ttl=ttl.total_seconds(),
                    storage=StorageType.FILE,
                    replicas=replicas,
                    description=description,
                )
            )

    async def sent_guard(self, ttl: timedelta = timedelta(hours=1), replicas: int = 1) -> SentGuard:
        kv = await self.key_value(
            SENT_GUARD_BUCKET,
            ttl=ttl,
            replicas=replicas,
            description="Envelopes already handed to a remote MX",
        )
        return SentGuard(kv, self.js)

    async def consume(
        self,
        spec: ConsumerSpec,
        handler: Handler,
        stopping: asyncio.Event,
        *,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Durable pull-consume `spec.subject` until `stopping` is set, then drain in-flight work.

        Up to `spec.concurrency` handlers run at once. A handler's Result decides ack/nak/term
        (term: to the dead-letter stream first); an exception is logged and the message comes
        back after the spec's growing backoff (see the module docstring). With `spec.keep_alive`
        the message's ack deadline is pushed back while its handler runs.
        """
        await self._ensure_consumer(spec, spec.concurrency)
        # Our own pull requests rather than nats-py's `fetch`, which waits for each message of
        # a batch with its own task, timer and uuid4 (ADR 0052, 0058).
        puller = await _Puller.start(self.nc, spec)

        async def fetch(free: int) -> list[Msg]:
            return await puller.fetch(free, timeout=FETCH_WAIT)

        await self._pull(
            spec,
            stopping,
            on_ready,
            # One slot per message: a fetch asks for as many as there are free slots, up to
            # `spec.batch`.
            slots_per_fetch=spec.batch,
            fetch=fetch,
            handle=lambda msg: self._handle(spec, handler, msg),
            # Gives back the messages that arrived and were not taken.
            close=puller.stop,
        )

    async def _ensure_consumer(self, spec: ConsumerSpec, in_hand: int) -> None:
        """Create or update the durable consumer; `in_hand` is how many messages the loop may
        hold at once (the default `max_ack_pending` leaves room for four times as many)."""
        config = ConsumerConfig(
            name=spec.durable,
            durable_name=spec.durable,
            filter_subject=spec.subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=spec.ack_wait.total_seconds(),
            # Unlimited: the server would drop a message silently at its limit. Ours is applied
            # in `_settle`, which dead-letters instead (transient failures never count).
            max_deliver=-1,
            max_ack_pending=spec.max_ack_pending or max(1000, in_hand * 4),
        )
        await self.js.add_consumer(spec.stream, config)

    async def consume_batches(
        self,
        spec: ConsumerSpec,
        handler: BatchHandler,
        stopping: asyncio.Event,
        *,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """`consume()` for handlers that take a whole fetch at once: up to `spec.batch`
        messages per call, up to `spec.concurrency` calls at once. One handler call, and its
        one round trip to wherever it writes, for the batch instead of one per message (ADR
        0052).

        Each message is then settled as by `consume()`, by its own Result; a handler that raises
        fails every message of its batch (each naked with its backoff, or dead-lettered after
        `max_deliver`). Nothing is acked before the handler returned.
        """
        await self._ensure_consumer(spec, spec.concurrency * spec.batch)
        puller = await _Puller.start(self.nc, spec)

        linger = spec.linger.total_seconds()

        async def fetch(_: int) -> list[list[Msg]]:
            msgs = await puller.fetch(spec.batch, timeout=FETCH_WAIT, linger=linger)
            return [msgs] if msgs else []

        await self._pull(
            spec,
            stopping,
            on_ready,
            # One slot per batch: a fetch takes up to `spec.batch` messages for one handler call.
            slots_per_fetch=1,
            fetch=fetch,
            handle=lambda msgs: self._handle_batch(spec, handler, msgs),
            # Gives back the messages that arrived and were not taken.
            close=puller.stop,
        )

    async def _pull(
        self,
        spec: ConsumerSpec,
        stopping: asyncio.Event,
        on_ready: Callable[[], None] | None,
        *,
        slots_per_fetch: int,
        fetch: Callable[[int], Awaitable[Sequence[_Work]]],
        handle: Callable[[_Work], Awaitable[None]],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        """The consumer loop of `consume()` and `consume_batches()`: `spec.concurrency` slots,
        one per unit of work in flight (a message, or a batch). Each round waits for a free
        slot, takes up to `slots_per_fetch` free ones, asks `fetch` for as many units and runs
        `handle` on each, giving its slot back when it is done. Once `stopping` is set nothing
        more is fetched; the work in flight is awaited, then `close` releases the subscription.
        """
        slots = asyncio.Semaphore(max(1, spec.concurrency))
        in_flight: set[asyncio.Task[None]] = set()

        async def run(work: _Work) -> None:
            try:
                await handle(work)
            finally:
                slots.release()

        if on_ready is not None:
            on_ready()
        try:
            while not stopping.is_set():
                await slots.acquire()
                if stopping.is_set():
                    # We may have waited for a free slot across the stop: fetch nothing more.
                    slots.release()
                    break
                free = 1
                while free < slots_per_fetch and not slots.locked():
                    await slots.acquire()
                    free += 1
                try:
                    works = await fetch(free)
                except TimeoutError:
                    works = []
                except nats.errors.Error as exc:
                    log.warning(
                        "fetch failed", extra={"kv": {"durable": spec.durable, "error": repr(exc)}}
                    )
                    works = []
                    await asyncio.sleep(0.5)
                for _ in range(free - len(works)):
                    slots.release()
                for i, work in enumerate(works):
                    if i >= free:
                        # nats-py's fetch(n) may hand back more than n (its whole buffer): each
                        # extra waits for a slot, so `concurrency` stays a hard limit.
                        await slots.acquire()
                    task = asyncio.create_task(run(work))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            with contextlib.suppress(Exception):
                await close()

    async def _handle_batch(
        self,
        spec: ConsumerSpec,
        handler: BatchHandler,
        msgs: Sequence[Msg],
    ) -> None:
        messages = [_message(msg) for msg in msgs]
        outcomes: Sequence[Result | Exception]
        try:
            outcomes = await handler(messages)
            if len(outcomes) != len(messages):
                raise RuntimeError(
                    f"batch handler returned {len(outcomes)} results for {len(messages)}"
                )
        except Exception as exc:
            outcomes = [exc] * len(messages)
        settled: dict[Verdict, int] = {}
        for msg, message, outcome in zip(msgs, messages, outcomes, strict=True):
            verdict = await self._settle(spec, msg, message, outcome)
            settled[verdict] = settled.get(verdict, 0) + 1
        for verdict, count in settled.items():
            _handled(spec.durable, verdict).inc(count)

    async def _handle(self, spec: ConsumerSpec, handler: Handler, msg: Msg) -> None:
        keeper = asyncio.create_task(_keep_alive(spec, msg)) if spec.keep_alive else None
        try:
            message = _message(msg)
            outcome: Result | Exception
            try:
                outcome = await handler(message)
            except Exception as exc:
                outcome = exc
            verdict = await self._settle(spec, msg, message, outcome, keeper)
            _handled(spec.durable, verdict).inc()
        finally:
            if keeper is not None:
                keeper.cancel()

    async def _settle(
        self,
        spec: ConsumerSpec,
        msg: Msg,
        message: BusMessage,
        outcome: Result | Exception,
        keeper: asyncio.Task[None] | None = None,
    ) -> Verdict:
        """Ack, nak or terminate `msg` after its handler returned `outcome` (or raised it);
        what was done (the caller counts it in HANDLED). `keeper`, the message's progress acks
        (ConsumerSpec.keep_alive), stops before the verdict is sent."""
        if isinstance(outcome, Exception):
            error = self._after_failure(spec, message, outcome)
            result = (
                Result.nak()
                if error is None
                else await self._dead_letter(spec, message, "failing", error)
            )
        elif outcome.verdict is Verdict.TERM:
            result = await self._dead_letter(
                spec, message, "refused", "the handler cannot handle it"
            )
        else:
            result = outcome
        if result.verdict is Verdict.NAK and result.delay is None:
            result = Result.nak(spec.backoff(message.num_delivered, _jitter()))
        if keeper is not None:
            # No progress ack may follow the verdict (a late +WPI after a nak would reset the
            # delay it asked for): one already written precedes it on the connection.
            keeper.cancel()
        try:
            if result.verdict is Verdict.ACK:
                await msg.ack()
            elif result.verdict is Verdict.TERM:
                await msg.term()
            else:
                await msg.nak(delay=result.delay)
        except nats.errors.Error as exc:
            log.warning("ack failed", extra={"kv": {"durable": spec.durable, "error": repr(exc)}})
        return result.verdict

    @staticmethod
    def _after_failure(spec: ConsumerSpec, message: BusMessage, exc: Exception) -> str | None:
        """A handler raised: None to retry later, or — a non-transient failure for the
        `max_deliver`th time — the error to dead-letter the message with."""
        transient = is_bus_unavailable(exc) or spec.transient(exc)
        HANDLER_FAILURES.labels(spec.durable, "transient" if transient else "error").inc()
        kv = {
            "durable": spec.durable,
            "subject": message.subject,
            "seq": message.stream_seq,
            "delivered": message.num_delivered,
        }
        if transient:
            # One line per outage, not per message: the flood filter folds repeats (ADR 0026).
            log.warning("handler failed; will retry", extra={"kv": {**kv, "error": _one_line(exc)}})
            return None
        if message.num_delivered >= spec.max_deliver:
            return _one_line(exc)
        log.error("handler failed; will retry", exc_info=exc, extra={"kv": kv})
        return None

    async def _dead_letter(
        self, spec: ConsumerSpec, message: BusMessage, reason: str, error: str
    ) -> Result:
        """Copy `message` to the dead-letter stream, then terminate it; should the copy fail,
        keep the message (it comes back later) rather than lose it."""
        headers = {
            "Nats-Msg-Id": f"dl.{spec.stream}.{message.stream_seq}.{spec.durable}",
            "Kannon-Stream": spec.stream,
            "Kannon-Subject": message.subject,
            "Kannon-Seq": str(message.stream_seq),
            "Kannon-Durable": spec.durable,
            "Kannon-Deliveries": str(message.num_delivered),
            "Kannon-Reason": reason,
            "Kannon-Error": error[:ERROR_HEADER_MAX],
        }
        if message.msg_id:
            headers["Kannon-Msg-Id"] = message.msg_id
        try:
            await self.js.publish(dead_letter_subject(spec.durable), message.data, headers=headers)
        except Exception as exc:
            log.warning(
                "could not dead-letter a message; keeping it",
                extra={"kv": {"durable": spec.durable, "error": _one_line(exc)}},
            )
            return Result.nak(spec.backoff(message.num_delivered, _jitter()))
        DEAD_LETTERS.labels(spec.durable, reason).inc()
        log.error(
            "message dead-lettered",
            extra={
                "kv": {
                    "durable": spec.durable,
                    "subject": message.subject,
                    "seq": message.stream_seq,
                    "delivered": message.num_delivered,
                    "reason": reason,
                    "error": error,
                    "dead_letter_stream": DEAD_LETTER_STREAM,
                }
            },
        )
        return Result.term()


async def _keep_alive(spec: ConsumerSpec, msg: Msg) -> None:
    """Send progress acks for `msg` every third of its ack deadline until cancelled. One that
    cannot be sent (the bus is reconnecting or electing a leader) is skipped: the next one, a
    third of the deadline later, still arrives in time once the bus answers again."""
    interval = spec.ack_wait.total_seconds() / 3
    while True:
        await asyncio.sleep(interval)  # a timer, paced by the ack deadline
        try:
            await msg.in_progress()
        except Exception as exc:
            log.debug(
                "progress ack failed",
                extra={"kv": {"durable": spec.durable, "error": _one_line(exc)}},
            )


_END_OF_PULL = ("404", "408")
"""The statuses that end a pull request in the ordinary way: no messages, request expired."""


class _Puller:
    """Pulls batches from a durable pull consumer over a plain subscription with a callback.

    nats-py's `fetch` waits for every message of a batch with its own task, timer and uuid4
    (`Subscription.next_msg`): a tenth of the webhooks worker's CPU (ADR 0052). Here messages
    land in a list as they arrive and a fetch takes them all at once. The pull requests are
    JetStream's own (`CONSUMER.MSG.NEXT` with `batch`, `no_wait`, `expires`). Anything that
    arrives late (after its fetch gave up waiting) stays in the list for the next fetch."""

    def __init__(self, nc: NatsClient, spec: ConsumerSpec) -> None:
        self._nc = nc
        self._next = f"{DEFAULT_JS_PREFIX}.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        self._durable = spec.durable
        self._inbox = nc.new_inbox()
        self._arrived: list[Msg] = []
        self._signal = asyncio.Event()
        self._sub: Subscription | None = None

    @classmethod
    async def start(cls, nc: NatsClient, spec: ConsumerSpec) -> _Puller:
        puller = cls(nc, spec)
        puller._sub = await nc.subscribe(puller._inbox, cb=puller._on_message)
        return puller

    async def _on_message(self, msg: Msg) -> None:
        self._arrived.append(msg)
        self._signal.set()

    def _take(self, limit: int) -> tuple[list[Msg], bool]:
        """Messages that arrived (at most `limit`), and whether a status came among them (the
        end of a request: no more messages, or the request expired)."""
        msgs: list[Msg] = []
        ended = False
        taken = 0
        for msg in self._arrived:
            if len(msgs) >= limit:
                break
            taken += 1
            status = JetStreamContext.is_status_msg(msg)
            if status:
                ended = True
                if status not in _END_OF_PULL:
                    # e.g. 409: the consumer was deleted or has too many pulls waiting.
                    log.warning(
                        "pull request refused",
                        extra={
                            "kv": {
                                "durable": self._durable,
                                "status": status,
                                "description": (msg.headers or {}).get("Description", ""),
                            }
                        },
                    )
            else:
                msgs.append(msg)
        del self._arrived[:taken]
        if not self._arrived:
            self._signal.clear()
        return msgs, ended

    async def _request(self, batch: int, **options: object) -> None:
        body = json.dumps({"batch": batch, **options}).encode()
        await self._nc.publish(self._next, body, reply=self._inbox)

    async def _wait(self, until: float) -> bool:
        """Wait for something to arrive until the loop time `until`; False once it passed."""
        remaining = until - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining):
                await self._signal.wait()
        except TimeoutError:
            return False
        return True

    async def fetch(self, batch: int, timeout: float, linger: float = 0.0) -> list[Msg]:
        """Up to `batch` messages (at least one unless `timeout` seconds passed without any).
        With `linger`, what comes within `linger` seconds, up to `batch`."""
        msgs, _ = self._take(batch)
        if msgs and (not linger or len(msgs) >= batch):
            return msgs
        loop = asyncio.get_running_loop()
        # With `linger`, the server's status ends the wait (at the latest `timeout` after it).
        until = loop.time() + linger + timeout
        if linger:
            # One request held `linger` seconds: the server hands out what comes meanwhile, up to
            # `batch`, and ends it with a status when it expires (none when the batch filled).
            await self._request(batch - len(msgs), expires=int(linger * 1e9))
        else:
            # What is there now, at once: the server ends the request with a status when it
            # runs out before `batch`.
            await self._request(batch, no_wait=True)
        ended = False
        while len(msgs) < batch and not ended:
            more, ended = self._take(batch - len(msgs))
            msgs += more
            if len(msgs) < batch and not ended and not await self._wait(until):
                break
        if msgs:
            return msgs
        # Nothing waiting: a request for one message, held by the server until one comes or it
        # expires. One, so that no request is left open to deliver after this fetch returned:
        # the next fetch takes the rest of a burst with `no_wait`.
        await self._request(1, expires=int(timeout * 1e9))
        while not msgs:
            more, ended = self._take(1)
            msgs += more
            if msgs or ended or not await self._wait(until + timeout):
                break
        return msgs

    async def stop(self) -> None:
        """Unsubscribe, and give back what arrived and was not taken (rather than let it wait
        out `ack_wait`)."""
        if self._sub is not None:
            await self._sub.unsubscribe()
        for msg in self._arrived:
            if not JetStreamContext.is_status_msg(msg):
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak()
        self._arrived.clear()


_ACK_V1_TOKENS = 9
"""`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`: the
reply subject of a JetStream message from a server without domains (ours)."""


def _message(msg: Msg) -> BusMessage:
    """The handler's view of `msg`. The delivery count, stream sequence and time are read from
    the reply subject directly in its ordinary form: nats-py's `Msg.metadata` builds two
    dataclasses per message for them. Any other form goes through `Msg.metadata`."""
    reply = msg.reply
    tokens = reply.split(".") if reply else []
    headers = msg.headers
    msg_id = headers.get("Nats-Msg-Id") if headers else None
    if len(tokens) == _ACK_V1_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
        return BusMessage(
            msg.subject,
            msg.data,
            msg_id,
            int(tokens[4]) or 1,
            int(tokens[5]),
            datetime.fromtimestamp(int(tokens[7]) / 1e9, UTC),
        )
    meta = msg.metadata
    return BusMessage(
        subject=msg.subject,
        data=msg.data,
        msg_id=msg_id,
        num_delivered=meta.num_delivered or 1,
        stream_seq=meta.sequence.stream if meta.sequence else 0,
        published=meta.timestamp,
    )


@functools.cache
def _handled(durable: str, verdict: Verdict) -> Counter:
    """`HANDLED`'s child for (durable, verdict), looked up once: `labels()` costs a lock and a
    dictionary lookup of the label tuple per call."""
    return HANDLED.labels(durable, verdict.value)


def _jitter() -> float:
    return random.uniform(-JITTER, JITTER)  # spreads retries after an outage; not a secret


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


@dataclass(frozen=True)
class Claimed:
    """What `SentGuard.claim` finds when another handling holds the key and has recorded no
    outcome yet: a send under way, or one that died mid-send (ADR 0049 tells them apart by age)."""

    since: datetime | None
    """When the server stored the claim (its own clock, UTC); None when it did not say."""


class SentGuard:
    """Remembers which Envelopes were handed to a remote MX, and what came of it, so that a
    redelivered Envelope is not sent twice.

    A key holds `CLAIMED` while a send is under way, then the encoded outcome once a remote server
    may have the message. A redelivery that finds an outcome republishes it instead of sending;
    one that finds `CLAIMED` learns when the claim was stored (`Claimed.since`, the server's
    timestamp of the KV entry) and judges by its age whether its handling may still be running
    — then it waits — or died mid-send — then it sends again (ADR 0049). The stored value is the
    same `CLAIMED` as before, so senders of either version read each other's claims.
    """

    CLAIMED = b"sending"

    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self.kv = kv
        self.js = js

    async def claim(self, key: str) -> Claimed | bytes | None:
        """None when this caller now holds `key`; `Claimed` when another handling holds it
        without an outcome; otherwise the outcome recorded there."""
        for _ in range(3):
            try:
                await self.kv.create(key, self.CLAIMED)
            except nats.js.errors.KeyWrongLastSequenceError:
                found = await self._entry(key)
                if found is None:
                    continue  # released between our create and get: try to take it again
                value, stored = found
                return Claimed(stored) if value == self.CLAIMED else value
            return None
        return Claimed(None)

    async def _entry(self, key: str) -> tuple[bytes, datetime | None] | None:
        """The value under `key` and when the server stored it; None when there is none. Read
        through the stream's leader (not a direct get, which a lagging replica may answer): the
        KV API's `get` drops the entry's timestamp."""
        try:
            msg = await self.js.get_msg(
                f"KV_{SENT_GUARD_BUCKET}", subject=f"$KV.{SENT_GUARD_BUCKET}.{key}", direct=False
            )
        except nats.js.errors.NotFoundError:
            return None
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return bytes(msg.data or b""), msg.time

    async def record(self, key: str, value: bytes) -> None:
        """Store what a send produced, for a redelivery to republish."""
        await self.kv.put(key, value)

    async def release(self, key: str) -> None:
        """Forget a claim whose send did not reach a remote server, so a retry may send."""
        with contextlib.suppress(nats.js.errors.Error):
            await self.kv.delete(key)
