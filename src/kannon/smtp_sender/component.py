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
   there and republishes it without sending again; one that finds only the claim knows the
   previous try died mid-send and sends again (at most one duplicate, never a lost mail). The
   guard fails open: with the KV store unreachable we would rather risk a duplicate than stop
   delivering;
3. deliver (MX or relay, `delivery.py`; or the demo sender); record the outcome in the guard when
   the message may have reached a server, else release the claim so a redelivery may try again;
4. publish Delivered / Bounced / Errored on `kannon.stats.<type>` (together with the record,
   both acks awaited at once) with the event id of the attempt
   (`model.event_ids.send_outcome_id`): every copy publishes the same id, which JetStream
   de-duplicates and Stats counts once, and which tells the Dispatcher which attempt an error
   answers;
5. ack after the PubAck. When publishing fails the outcome is kept in memory and the message is
   nak'ed (growing delays): its redelivery publishes the remembered outcome instead of sending
   again.

The ack deadline (`nats.sending_ack_wait`) must outlast a whole delivery; every delivery is cut
off at 80% of it so the ack still arrives in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from prometheus_client import Counter, Histogram

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result, SentGuard
from kannon.bus.subjects import SENDING_STREAM, sender_durable, sending_subject
from kannon.config import Settings, require
from kannon.envelope.build import Envelope
from kannon.envelope.ids import parse_email_id
from kannon.model.event_ids import send_guard_key, send_outcome_id
from kannon.model.outcome import Outcome, domain_of_batch
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
from kannon.wire.stats import publish_outcome

log = logging.getLogger("kannon.sender")

OUTCOMES = Counter("kannon_sender_outcomes_total", "Envelopes handled, by outcome", ["type"])
TAKEN_OVER = Counter(
    "kannon_sender_guard_taken_over_total",
    "Envelopes sent again because the previous attempt died mid-send",
)
SKIPPED = Counter(
    "kannon_sender_duplicates_skipped_total", "Redelivered Envelopes not sent a second time"
)
DELIVERY_SECONDS = Histogram(
    "kannon_sender_delivery_seconds",
    "Time to deliver one Envelope (DNS + SMTP)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

# Session cache bounds: see sessions.py for why each exists.
IDLE_TIMEOUT = 10.0
MAX_MESSAGES_PER_CONNECTION = 100
# Outcomes whose publish failed, waiting for their Envelope's redelivery.
UNPUBLISHED_MAX = 10_000
# First delay before an Envelope whose outcome could not be published comes back (it doubles).
PUBLISH_RETRY_DELAY = timedelta(seconds=2)
DEADLINE_SHARE = 0.8
SENDING_MAX_ACK_PENDING = 100_000
# A guard write that failed is tried again this often, the delay doubling from the first:
# 0.25 + 0.5 + 1 + 2 + 4 s, longer than a JetStream cluster's leader election.
GUARD_RECORD_TRIES = 6
GUARD_RECORD_RETRY = 0.25


class Guard(Protocol):
    CLAIMED: bytes

    async def claim(self, key: str) -> bytes | None: ...

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
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.demo = settings.sender.demo_sender
        self.idle_timeout = idle_timeout
        self._now = now
        self._guard = guard
        self._unpublished: OrderedDict[str, Outcome] = OrderedDict()
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
            batch=jobs,
            concurrency=jobs,
            retry_delay=PUBLISH_RETRY_DELAY,
            # Envelopes deferred by delivery shaping wait nak-delayed, and count as pending:
            # at the default (4 · jobs) a few paused destinations would stop all sending.
            max_ack_pending=SENDING_MAX_ACK_PENDING,
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

        remembered = self._unpublished.pop(key, None)
        if remembered is not None:
            return await self._publish(key, remembered)

        if not self.demo:
            state = await self._claim(key)
            if state is not None and state != SentGuard.CLAIMED:
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
                return await self._publish(
                    key,
                    replace(
                        recorded,
                        event_id=send_outcome_id(recorded.type, message.msg_id, message.stream_seq),
                    ),
                )
            if state is not None:
                # CLAIMED: the previous attempt died mid-send (a redelivery comes only after the
                # ack deadline, which outlasts any send). Whether the remote server got it is
                # unknown; sending again risks one duplicate, not sending would lose the mail.
                TAKEN_OVER.inc()
                log.warning(
                    "previous attempt died mid-send; sending again",
                    extra={
                        "kv": {"seq": message.stream_seq, "recipient": obfuscate(job.recipient)}
                    },
                )

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
        if result.kind is Kind.DEFERRED:
            waiting = self._defer(job, message, result)
            if waiting is not None:
                return waiting
            result = SendResult.no_answer(
                f"{result.message}; deferred longer than sender.shaping.max_defer"
            )
        DELIVERY_SECONDS.observe(loop.time() - started)

        detail = detail_for(result, job.should_retry)
        outcome = Outcome(
            batch_id=batch_id,
            domain=domain_of_batch(batch_id),
            recipient=job.recipient,
            timestamp=self._now(),
            detail=detail,
            event_id=send_outcome_id(detail.type, message.msg_id, message.stream_seq),
        )
        OUTCOMES.labels(detail.type).inc()
        self._log(job, message, result, outcome)
        if not self.demo and result.possibly_delivered:
            # Record and publish leave in one socket write and their acks are awaited together
            # (ADR 0048); both are settled before the Envelope is acked, as before.
            _, published = await asyncio.gather(
                self._record(key, outcome), self._publish(key, outcome)
            )
            return published
        return await self._publish(key, outcome)

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

    async def _publish(self, key: str, outcome: Outcome) -> Result:
        try:
            await publish_outcome(self.bus, outcome)
        except Exception as exc:
            log.warning(
                "publishing the outcome failed; the Envelope will come back",
                extra={"kv": {"event_id": outcome.event_id, "error": repr(exc)}},
            )
            self._unpublished[key] = outcome
            while len(self._unpublished) > UNPUBLISHED_MAX:
                self._unpublished.popitem(last=False)
            return Result.nak()  # after the consumer's growing backoff
        return Result.ack()

    async def _claim(self, key: str) -> bytes | None:
        """None when we hold the claim (or the guard is down: fail open), else the stored value."""
        guard = self._guard
        if guard is None:
            guard = self._guard = await self.bus.sent_guard(
                replicas=self.settings.nats.stream_replicas
            )
        try:
            return await guard.claim(key)
        except Exception as exc:
            log.warning(
                "send guard unavailable; sending without it",
                extra={"kv": {"key": key, "error": repr(exc)}},
            )
            return None

    async def _record(self, key: str, outcome: Outcome) -> None:
        """Store the outcome in the guard. Tried again for a few seconds: a guard left at CLAIMED
        makes a redelivery send a second copy, and a NATS cluster electing a new leader (a node
        lost, ADR 0041) times out writes for about that long."""
        if self._guard is None:
            return
        value = wire_stats.encode(outcome)
        delay = GUARD_RECORD_RETRY
        for tries_left in range(GUARD_RECORD_TRIES - 1, -1, -1):
            try:
                await self._guard.record(key, value)
                return
            except Exception as exc:
                if not tries_left:
                    log.warning(
                        "could not record the outcome in the send guard",
                        extra={"kv": {"key": key, "error": repr(exc)}},
                    )
                    return
            await asyncio.sleep(delay)  # the cluster's election, not a test waiting
            delay *= 2

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
        kv = {
            "recipient": obfuscate(job.recipient),
            "seq": message.stream_seq,
            "outcome": outcome.type,
            "code": result.code,
            "remote": result.remote,
            "tls": result.tls,
            "reply": result.message,
        }
        level = logging.INFO if outcome.type == "delivered" else logging.WARNING
        log.log(level, "envelope handled", extra={"kv": kv})
