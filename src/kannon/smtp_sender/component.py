"""`SmtpSender`, the `sender` Component: Envelope in from its IP pool's subject (`sender.pool`:
`kannon.sending` for the default pool, `kannon.sending.pool.<name>` for another, ADR 0039),
outcome event out. A node connects from `sender.source_address` and says `sender.hostname`.

Per Envelope (one JetStream message):

1. decode `EmailToSend`; an undecodable payload or an email id that is not ours is terminated
   (it will never get better) and logged;
2. claim the send guard of the Envelope's attempt (`model.event_ids.send_guard_key`: its
   `Nats-Msg-Id` `<email id>.<attempt>`) in the `kannon-sent-envelopes` KV bucket. Any copy of
   the same attempt — redelivered because the ack got lost or the process died after sending,
   or published again by a Dispatcher that reclaimed its claim — finds the outcome recorded
   there and republishes it without sending again. One that finds only the claim judges it by
   its age (the KV entry's server timestamp, `claim_lifetime`): younger, its handling may still
   be running in another sender replica, so the copy is nak'ed until the claim would be that old
   (`kannon_sender_claims_waited_total`) and then finds the outcome — or, the claim now older,
   knows the previous try died mid-send and sends again (at most one duplicate, never a lost
   mail). A claim that fails is tried again for ~8 s (a NATS leader election), then the guard fails
   open: with the KV store unreachable we would rather risk a duplicate than stop delivering;
3. deliver (MX or relay, `delivery.py`; or the demo sender); record the outcome in the guard when
   the message may have reached a server, else release the claim so a redelivery may try again;
4. publish Delivered / Bounced / Errored on `kannon.stats.<type>` (together with the record,
   both acks awaited at once) with the event id of the attempt
   (`model.event_ids.send_outcome_id`): every copy publishes the same id, which JetStream
   de-duplicates and Stats counts once, and which tells the Dispatcher which attempt an error
   answers;
5. ack after the PubAck. An outcome not yet published, or not yet recorded, stays in memory
   (unsettled): the message is nak'ed (growing delays) and its redelivery publishes the
   remembered outcome instead of sending again; a missing record is retried in the background.

One handling per attempt per process (ADR 0049): while a handler works, progress acks keep
JetStream from redelivering the Envelope (`ConsumerSpec.keep_alive`), and a copy that arrives
anyway while this process handles the attempt waits for that handling and republishes its outcome
(`kannon_sender_copies_waited_total`) — so the guard's CLAIMED, read here, means a handling
elsewhere: another sender replica on the pool, still running if the claim is younger than
`claim_lifetime`, or a process (this one before a restart) that died mid-send.

`sender.max_jobs` bounds the sending jobs: step 2 and 3, the claim and the SMTP transaction
(ADR 0060). The sender holds `IN_HAND_PER_JOB` times as many Envelopes, so fetching the next ones
and settling outcomes (step 4 and 5) never keep a job waiting.

The ack deadline (`nats.sending_ack_wait`) must outlast a whole delivery; every delivery is cut
off at 80% of it so the ack still arrives in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from prometheus_client import Counter, Histogram

from kannon.bus.client import BUS_TIMEOUT, Bus, BusMessage, Claimed, ConsumerSpec, Result
from kannon.bus.subjects import SENDING_STREAM, sender_durable, sending_subject
from kannon.config import Settings, require
from kannon.envelope.build import Envelope
from kannon.envelope.ids import parse_email_id
from kannon.model.event_ids import send_guard_key, send_outcome_id
from kannon.model.outcome import Outcome, domain_of_batch
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life
from kannon.runtime.logs import obfuscate
from kannon.smtp_sender.delivery import Deliverer, Relay, SmtpDeliverer
from kannon.smtp_sender.demo import DemoDeliverer
from kannon.smtp_sender.mta_sts import MtaSts
from kannon.smtp_sender.mx import MxResolver
from kannon.smtp_sender.result import Kind, SendResult, detail_for
from kannon.smtp_sender.sessions import SessionCache
from kannon.smtp_sender.shaping import make_shaper
from kannon.wire import envelope
from kannon.wire import stats as wire_stats

log = logging.getLogger("kannon.sender")

OUTCOMES = Counter("kannon_sender_outcomes_total", "Envelopes handled, by outcome", ["type"])
TAKEN_OVER = Counter(
    "kannon_sender_guard_taken_over_total",
    "Envelopes sent again because the previous attempt died mid-send",
)
SKIPPED = Counter(
    "kannon_sender_duplicates_skipped_total", "Redelivered Envelopes not sent a second time"
)
COPIES_WAITED = Counter(
    "kannon_sender_copies_waited_total",
    "Copies of an attempt that arrived while this process was handling it, and waited for that "
    "handling instead of sending",
)
CLAIMS_WAITED = Counter(
    "kannon_sender_claims_waited_total",
    "Copies of an attempt that found its guard claimed by a handling that may still be running "
    "(the claim younger than its lifetime) and were sent back to wait instead of sending",
)
DELIVERY_SECONDS = Histogram(
    "kannon_sender_delivery_seconds",
    "Time to deliver one Envelope (DNS + SMTP)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

# Session cache bounds: see sessions.py for why each exists.
IDLE_TIMEOUT = 10.0
MAX_MESSAGES_PER_CONNECTION = 100
# Outcomes not yet both published and recorded in the guard (ADR 0049), kept for a copy of
# their attempt to settle; the oldest are forgotten beyond this many.
UNSETTLED_MAX = 10_000
# First delay before an Envelope whose outcome could not be published comes back (it doubles).
PUBLISH_RETRY_DELAY = timedelta(seconds=2)
DEADLINE_SHARE = 0.8
# Envelopes a sender holds per sending job (ADR 0060): one in the job, the others being
# claimed-for, settled or fetched, so the jobs never wait for NATS round trips.
IN_HAND_PER_JOB = 4
SENDING_MAX_ACK_PENDING = 100_000
# A guard claim or write that failed is tried again this often, the delay doubling from the
# first: 0.25 + 0.5 + 1 + 2 + 4 s, longer than a JetStream cluster's leader election.
GUARD_TRIES = 6
GUARD_RETRY = 0.25
# A copy sent back to wait for a claim's outcome comes back this long after the claim would be
# too old to be a live handling's (never sooner than this after now).
CLAIM_WAIT_MARGIN = timedelta(seconds=1)


def claim_lifetime(ack_wait: timedelta) -> timedelta:
    """How long after its claim a live handling may still not have recorded its outcome nor
    released the claim (ADR 0049): its delivery, cut off at `DEADLINE_SHARE` of the sending
    consumer's ack deadline (the whole deadline is counted: the rest is margin for the clocks of
    the sender and the NATS server), then the record's tries (`GUARD_TRIES` requests of up to
    `BUS_TIMEOUT` each and the doubling delays between them). About 6 minutes at the default
    `nats.sending_ack_wait` of 5 minutes. A claim older than this belongs to a handling that
    died (or is cut off from NATS, and so cannot ack either): its Envelope is sent again.
    `sender.claim_lifetime` replaces it when set."""
    delays = GUARD_RETRY * (2 ** (GUARD_TRIES - 1) - 1)
    return ack_wait + timedelta(seconds=GUARD_TRIES * BUS_TIMEOUT + delays)


T = TypeVar("T")


async def _retrying(operation: Callable[[], Awaitable[T]], *, tries: int = GUARD_TRIES) -> T:
    """`operation()`, tried up to `tries` times with doubling delays; the last failure raises."""
    delay = GUARD_RETRY
    for tries_left in range(tries - 1, -1, -1):
        try:
            return await operation()
        except Exception:
            if not tries_left:
                raise
        await asyncio.sleep(delay)  # the cluster's election, not a test waiting
        delay *= 2
    raise AssertionError("unreachable: tries must be at least 1")


@dataclass
class _Unsettled:
    """An outcome this process produced whose publish or guard record has not succeeded yet."""

    outcome: Outcome
    recorded: bool
    published: bool


class Guard(Protocol):
    async def claim(self, key: str) -> Claimed | bytes | None: ...

    async def record(self, key: str, value: bytes) -> None: ...

    async def release(self, key: str) -> None: ...


class SmtpSender:
    name = "sender"

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        *,
        deliverer: Deliverer | None = None,
        guard: Guard | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.demo = settings.sender.demo_sender
        self.idle_timeout = idle_timeout
        self._now = now
        self.claim_lifetime = settings.sender.claim_lifetime or claim_lifetime(
            settings.nats.sending_ack_wait
        )
        self._guard = guard
        # Attempts being handled in this process now, each with the outcome its handling will
        # end with (None: none), for copies of the attempt to wait on (ADR 0049).
        self._handling: dict[str, asyncio.Future[Outcome | None]] = {}
        self._unsettled: OrderedDict[str, _Unsettled] = OrderedDict()
        self._jobs = asyncio.Semaphore(settings.sender.max_jobs)
        # `OUTCOMES` by type, looked up once (`labels()` takes a lock and builds a key).
        self._outcome_counters: dict[str, Counter] = {}
        self.deliverer = deliverer or self._make_deliverer(settings, bus, idle_timeout)

    @staticmethod
    def _make_deliverer(settings: Settings, bus: Bus, idle_timeout: float) -> Deliverer:
        sender = settings.sender
        if sender.demo_sender:
            return DemoDeliverer()
        hostname: str = require(settings, "sender.hostname", needed_by="sender")
        relay = None
        if sender.relay.host:
            relay = Relay(
                host=sender.relay.host,
                port=sender.relay.port,
                username=sender.relay.username,
                password=sender.relay.password,
                tls=sender.relay.tls,
            )
        connect_timeout = sender.connect_timeout.total_seconds()
        resolver = MxResolver(sender.dns_servers, timeout=connect_timeout)
        mta_sts = None
        if sender.mta_sts.enabled and relay is None:  # the relay chooses its own way on
            mta_sts = MtaSts(
                resolver,
                ca_file=sender.mta_sts.ca_file,
                port=sender.mta_sts.policy_port,
                timeout=connect_timeout,
            )
        return SmtpDeliverer(
            hostname=hostname,
            port=sender.smtp_port,
            resolver=resolver,
            sessions=SessionCache(
                idle_timeout=idle_timeout,
                max_idle=sender.max_jobs * 2,
                max_messages=MAX_MESSAGES_PER_CONNECTION,
            ),
            connect_timeout=connect_timeout,
            command_timeout=sender.command_timeout.total_seconds(),
            deadline=settings.nats.sending_ack_wait.total_seconds() * DEADLINE_SHARE,
            relay=relay,
            mta_sts=mta_sts,
            shaper=make_shaper(settings, bus),
            source_address=sender.source_address,
        )

    def consumer_spec(self) -> ConsumerSpec:
        jobs = self.settings.sender.max_jobs
        pool = self.settings.sender.pool
        return ConsumerSpec(
            durable=sender_durable(pool),
            stream=SENDING_STREAM,
            subject=sending_subject(pool),
            ack_wait=self.settings.nats.sending_ack_wait,
            max_deliver=self.settings.nats.max_deliver,
            # `IN_HAND_PER_JOB` Envelopes in hand per job, so a job that ends starts the next
            # Envelope at once instead of waiting for a fetch (ADR 0060).
            batch=jobs * IN_HAND_PER_JOB,
            concurrency=jobs * IN_HAND_PER_JOB,
            retry_delay=PUBLISH_RETRY_DELAY,
            # Envelopes deferred by delivery shaping wait nak-delayed, and count as pending:
            # at the default (4 · jobs) a few paused destinations would stop all sending.
            max_ack_pending=SENDING_MAX_ACK_PENDING,
            # An Envelope is not redelivered while its handler still works on it, even when the
            # guard write or the outcome publish waits through a leader election (ADR 0049).
            keep_alive=True,
        )

    async def run(self, life: Life) -> None:
        if not self.demo and self._guard is None:
            self._guard = await self.bus.sent_guard(replicas=self.settings.nats.stream_replicas)
        maintenance = asyncio.create_task(self._maintain(life))
        try:
            await self.bus.consume(
                self.consumer_spec(), self.handle, life.stopping, on_ready=life.ready
            )
        finally:
            # consume() returns once in-flight sends finished; only idle sessions remain.
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            await self.deliverer.close()

    async def _maintain(self, life: Life) -> None:
        while not await life.sleep(self.idle_timeout / 2):
            try:
                await self.deliverer.maintain()
            except Exception:
                log.exception("closing idle SMTP sessions failed")
            try:
                await self._settle_records()
            except Exception:
                log.exception("recording unsettled outcomes failed")

    async def handle(self, message: BusMessage) -> Result:
        """Deliver one Envelope and publish its outcome; the Result says ack/nak/term."""
        try:
            job = envelope.decode(message.data)
        except envelope.UndecodableEnvelope as exc:
            log.error(
                "dropping undecodable Envelope",
                extra={"kv": {"seq": message.stream_seq, "error": str(exc)}},
            )
            return Result.term()
        parsed = parse_email_id(job.email_id)
        if parsed is None:
            log.error(
                "dropping Envelope with an email id that is not ours",
                extra={"kv": {"seq": message.stream_seq, "recipient": obfuscate(job.recipient)}},
            )
            return Result.term()
        _, batch_id = parsed
        key = send_guard_key(message.msg_id, message.stream_seq, job.email_id)

        # One handling per attempt in this process (ADR 0049): a copy of an attempt that is
        # being handled here right now (JetStream redelivered it, or a Dispatcher published it
        # again) waits for that handling and republishes its outcome; it never sends.
        while (first := self._handling.get(key)) is not None:
            COPIES_WAITED.inc()
            log.info(
                "a copy of an Envelope being handled here; waiting for that handling",
                extra={
                    "kv": {
                        "seq": message.stream_seq,
                        "recipient": obfuscate(job.recipient),
                        "delivered_count": message.num_delivered,
                    }
                },
            )
            known = await asyncio.shield(first)
            if known is not None:
                return await self._settle(key, known, record=False)
            # That handling ended without an outcome (deferred, released, crashed): this copy
            # is a new try, as it would have been had it come later.
        handling: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._handling[key] = handling
        outcome: Outcome | None = None
        try:
            result, outcome = await self._handle_attempt(message, job, batch_id, key)
            return result
        finally:
            del self._handling[key]
            handling.set_result(outcome)

    async def _handle_attempt(
        self, message: BusMessage, job: Envelope, batch_id: str, key: str
    ) -> tuple[Result, Outcome | None]:
        """Handle the only copy of an attempt in this process: (the Result, the outcome if there
        is one, for copies that waited)."""
        remembered = self._unsettled.get(key)
        if remembered is not None:
            # Handled here before, its outcome not yet settled: settle it, never send again.
            return await self._settle(key, remembered.outcome, record=False), remembered.outcome

        # A sending job is the claim and the SMTP transaction (ADR 0060): at most
        # `sender.max_jobs` at once. Settling the outcome (publish, record, ack) and fetching the
        # next Envelopes happen outside the job, so a job never waits on them.
        async with self._jobs:
            settled = await self._check_claim(message, job, key)
            if settled is not None:
                return settled
            result = await self._send(job, key)
        if result.kind is Kind.DEFERRED:
            waiting = self._defer(job, message, result)
            if waiting is not None:
                return waiting, None
            result = SendResult.no_answer(
                f"{result.message}; deferred longer than sender.shaping.max_defer"
            )

        detail = detail_for(result, job.should_retry)
        outcome = Outcome(
            batch_id=batch_id,
            domain=domain_of_batch(batch_id),
            recipient=job.recipient,
            timestamp=self._now(),
            detail=detail,
            event_id=send_outcome_id(detail.type, message.msg_id, message.stream_seq),
        )
        counter = self._outcome_counters.get(detail.type)
        if counter is None:
            counter = self._outcome_counters[detail.type] = OUTCOMES.labels(detail.type)
        counter.inc()
        self._log(job, message, result, outcome)
        # A possibly delivered Envelope's outcome goes into the guard too (a released claim has
        # nothing to record).
        record = not self.demo and result.possibly_delivered
        return await self._settle(key, outcome, record=record), outcome

    async def _check_claim(
        self, message: BusMessage, job: Envelope, key: str
    ) -> tuple[Result, Outcome | None] | None:
        """Claim the attempt's send guard; the settled (Result, outcome) when this copy must not
        send (claimed by a live handling elsewhere, or sent before), None to send."""
        if not self.demo:
            state = await self._claim(key)
            if isinstance(state, Claimed):
                wait = self._claim_wait(state)
                if wait is not None:
                    # Claimed a moment ago, by a handling that may still be sending in another
                    # sender replica (JetStream redelivered during an election, progress acks
                    # lost; ADR 0049): sending now would likely duplicate. Come back when the
                    # claim is too old for that; the outcome is recorded by then, or the
                    # handling died. A nak with a delay never counts towards `max_deliver`.
                    CLAIMS_WAITED.inc()
                    log.info(
                        "Envelope claimed by another handling that may still be running; "
                        "waiting for its outcome",
                        extra={
                            "kv": {
                                "seq": message.stream_seq,
                                "recipient": obfuscate(job.recipient),
                                "delivered_count": message.num_delivered,
                                "claimed": state.since.isoformat() if state.since else None,
                                "delay": round(wait, 1),
                            }
                        },
                    )
                    return Result.nak(wait), None
                # CLAIMED, not by a handling in this process (that one would be in
                # `_handling` or `_unsettled`), and longer ago than any live handling holds a
                # claim: the previous attempt died mid-send (ADR 0049). Whether the remote
                # server got it is unknown; sending again risks one duplicate, not sending
                # would lose the mail.
                TAKEN_OVER.inc()
                log.warning(
                    "previous attempt died mid-send; sending again",
                    extra={
                        "kv": {"seq": message.stream_seq, "recipient": obfuscate(job.recipient)}
                    },
                )
            elif state is not None:
                # Sent before, and the outcome recorded: republish it (same event id), no resend.
                SKIPPED.inc()
                log.info(
                    "Envelope already handed over; republishing its outcome, not sending twice",
                    extra={
                        "kv": {
                            "seq": message.stream_seq,
                            "recipient": obfuscate(job.recipient),
                            "delivered_count": message.num_delivered,
                        }
                    },
                )
                recorded = wire_stats.decode(state)
                outcome = replace(
                    recorded,
                    event_id=send_outcome_id(recorded.type, message.msg_id, message.stream_seq),
                )
                return await self._settle(key, outcome, record=False), outcome

        return None

    async def _send(self, job: Envelope, key: str) -> SendResult:
        """Deliver `job`; release its claim when the message cannot have reached a server."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await self.deliverer.deliver(job)
        except BaseException:
            # A bug or a shutdown mid-send: let a redelivery try again unless we know better.
            await self._release(key)
            raise
        if not self.demo and not result.possibly_delivered:
            await self._release(key)
        if result.kind is not Kind.DEFERRED:
            DELIVERY_SECONDS.observe(loop.time() - started)
        return result

    def _defer(self, job: Envelope, message: BusMessage, result: SendResult) -> Result | None:
        """Send the Envelope back to wait for its destination (not an attempt: no outcome is
        published); None once it has waited longer than `sender.shaping.max_defer`, when the
        wait becomes a failed attempt and the Dispatcher's retry budget decides (ADR 0038)."""
        published = message.published
        if published is not None and (
            self._now() - published > self.settings.sender.shaping.max_defer
        ):
            return None
        log.debug(
            "Envelope deferred",
            extra={
                "kv": {
                    "recipient": obfuscate(job.recipient),
                    "seq": message.stream_seq,
                    "delay": round(result.delay, 1),
                    "why": result.message,
                }
            },
        )
        return Result.nak(result.delay)

    async def _settle(self, key: str, outcome: Outcome, *, record: bool) -> Result:
        """Publish `outcome` and, when `record` (or a record of it is still owed), store it in
        the guard; ack once it is published. What could not be done yet is kept in memory
        (`_unsettled`): a copy of the attempt settles it from there and never sends again, and
        `_maintain` retries a missing record."""
        owed = self._unsettled.pop(key, None)
        record = self._guard is not None and (record or (owed is not None and not owed.recorded))
        # One encoding for the event and the guard: they store the same bytes.
        payload = wire_stats.encode(outcome)
        if record:
            # Record and publish leave in one socket write and their acks are awaited together
            # (ADR 0048); both are settled before the Envelope is acked. The record runs in a
            # task of its own, the publish in this one (ADR 0057: one task, not gather's two).
            recording = asyncio.ensure_future(self._record(key, payload))
            try:
                published = await self._publish(outcome, payload)
            except BaseException:
                recording.cancel()
                raise
            recorded = await recording
        else:
            recorded, published = True, await self._publish(outcome, payload)
        if not (recorded and published):
            self._unsettled[key] = _Unsettled(outcome, recorded=recorded, published=published)
            while len(self._unsettled) > UNSETTLED_MAX:
                self._unsettled.popitem(last=False)
        if not published:
            return Result.nak()  # after the consumer's growing backoff
        return Result.ack()

    async def _publish(self, outcome: Outcome, payload: bytes) -> bool:
        """`wire.stats.publish_outcome` with the payload encoded already."""
        try:
            await self.bus.publish_stat(outcome.type, payload, outcome.event_id)
        except Exception as exc:
            log.warning(
                "publishing the outcome failed; the Envelope will come back",
                extra={"kv": {"event_id": outcome.event_id, "error": repr(exc)}},
            )
            return False
        return True

    async def _settle_records(self) -> None:
        """Try once more to record each outcome that was published but not yet stored in the
        guard (its Envelope was acked). Stops at the first failure: the guard is still down."""
        loop = asyncio.get_running_loop()
        owed = [(k, u.outcome) for k, u in self._unsettled.items() if not u.recorded]
        for key, outcome in owed:
            if key in self._handling or key not in self._unsettled:
                continue  # a copy is settling it right now
            handling: asyncio.Future[Outcome | None] = loop.create_future()
            self._handling[key] = handling
            try:
                recorded = await self._record(key, wire_stats.encode(outcome), tries=1)
            finally:
                del self._handling[key]
                handling.set_result(outcome)
            if not recorded:
                return
            entry = self._unsettled.get(key)
            if entry is not None:
                entry.recorded = True
                if entry.published:
                    del self._unsettled[key]

    def _claim_wait(self, claim: Claimed) -> float | None:
        """Seconds before a copy that found `claim` should look again; None when the claim is
        too old to be a live handling's (or its age is unknown: at-least-once beats a lost
        mail), and the copy sends."""
        if claim.since is None:
            return None
        left = claim.since + self.claim_lifetime - self._now()
        if left <= timedelta(0):
            return None
        return (left + CLAIM_WAIT_MARGIN).total_seconds()

    async def _claim(self, key: str) -> Claimed | bytes | None:
        """None when we hold the claim (or the guard is down: fail open), else the stored value.
        Tried again for a few seconds first: failing open during a NATS cluster's leader election
        (ADR 0041, 0049) would send a copy whose first handling elsewhere may have finished."""
        guard = self._guard
        if guard is None:
            guard = self._guard = await self.bus.sent_guard(
                replicas=self.settings.nats.stream_replicas
            )
        try:
            return await _retrying(lambda: guard.claim(key))
        except Exception as exc:
            log.warning(
                "send guard unavailable; sending without it",
                extra={"kv": {"key": key, "error": repr(exc)}},
            )
            return None

    async def _record(self, key: str, value: bytes, *, tries: int = GUARD_TRIES) -> bool:
        """Store the encoded outcome `value` in the guard; False when it could not be stored.
        Tried again for a few seconds: a NATS cluster electing a new leader (a node lost, ADR
        0041) times out writes for about that long, and a guard left at CLAIMED would make
        another process's copy of the attempt send it again."""
        guard = self._guard
        if guard is None:
            return True
        try:
            await _retrying(lambda: guard.record(key, value), tries=tries)
        except Exception as exc:
            log.warning(
                "could not record the outcome in the send guard yet",
                extra={"kv": {"key": key, "error": repr(exc)}},
            )
            return False
        return True

    async def _release(self, key: str) -> None:
        if self._guard is None:
            return
        try:
            await self._guard.release(key)
        except Exception as exc:
            log.warning(
                "could not release the send guard", extra={"kv": {"key": key, "error": repr(exc)}}
            )

    @staticmethod
    def _log(job: Envelope, message: BusMessage, result: SendResult, outcome: Outcome) -> None:
        level = logging.INFO if outcome.type == "delivered" else logging.WARNING
        if not log.isEnabledFor(level):
            return
        kv = {
            "recipient": obfuscate(job.recipient),
            "seq": message.stream_seq,
            "outcome": outcome.type,
            "code": result.code,
            "remote": result.remote,
            "tls": result.tls,
            "reply": result.message,
        }
        log.log(level, "envelope handled", extra={"kv": kv})
