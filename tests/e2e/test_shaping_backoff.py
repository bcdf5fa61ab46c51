"""Adaptive backoff end to end (ADR 0038): a destination that answers 421 for a while is slowed
and paused, its Deliveries wait without spending attempts, and once it recovers every Recipient
is delivered exactly once and the destination's limits come back.

The pipeline runs in this process (see `pipeline.py`); the SMTP peer greets every connection with
421 while `busy` is set. The Dispatcher's retry backoff is a microsecond, so only the shaping
pause holds the Deliveries back.
"""

from __future__ import annotations

import nats.js.errors
from prometheus_client import REGISTRY

from kannon.bus.subjects import SHAPING_BUCKET
from kannon.model.shaping import DestinationState
from tests.e2e.conftest import Launch
from tests.e2e.pipeline import RCPT_DOMAIN, Pipeline
from tests.peers.smtp_sink import SmtpSink
from tests.support import wait_for

SHAPING = {
    "sender_shaping_destinations": f"{RCPT_DOMAIN}: connections=4 per_second=20",
    "sender_shaping_backoff": "true",
    "sender_shaping_pause": "500ms",
    "sender_shaping_max_pause": "1s",
    "sender_shaping_restore_after": "2",
    "dispatcher_backoff_base": "1us",
    "dispatcher_backoff_min": "1us",
    "dispatcher_backoff_max": "1us",
}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def destination_state(pipeline: Pipeline) -> DestinationState:
    """What every sender sees of the destination (fresh until a sender first wrote it)."""
    try:
        kv = await pipeline.bus.js.key_value(SHAPING_BUCKET)
        entry = await kv.get(f"domain.{RCPT_DOMAIN}")
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return DestinationState()
    return DestinationState.decode(entry.value)


async def test_a_destination_answering_421_is_slowed_paused_and_later_delivered_exactly_once(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    smtp_sink.busy = True
    deferred_before = sample("kannon_sender_deferred_total", reason="paused")
    pipeline = await launch(**SHAPING)
    recipients = [f"r{i}@{RCPT_DOMAIN}" for i in range(10)]
    batch = (await pipeline.send_html(recipients)).message_id

    lowest: list[float] = []

    async def backed_off_twice() -> bool:
        limit = sample("kannon_sender_destination_connection_limit", destination=RCPT_DOMAIN)
        if limit:
            lowest.append(limit)
        return (await destination_state(pipeline)).level >= 2

    await wait_for(backed_off_twice, what="two backoff steps", timeout=60)
    # The rate dropped: 4 connections halved per step, 20 messages/s likewise.
    assert min(lowest) <= 2
    assert sample("kannon_sender_destination_backoff_level", destination=RCPT_DOMAIN) >= 1
    paused_at = await destination_state(pipeline)
    assert paused_at.reason.startswith("421")

    async def some_deferred() -> bool:
        return sample("kannon_sender_deferred_total", reason="paused") > deferred_before

    await wait_for(some_deferred, what="Envelopes deferred by the pause", timeout=30)

    smtp_sink.busy = False
    rows = await pipeline.wait_until_settled(batch, len(recipients))

    for rcpt in recipients:
        assert len(smtp_sink.messages_to(rcpt)) == 1, rcpt
        assert [r.type for r in rows if r.email == rcpt and r.type != "error"] == [
            "accepted",
            "delivered",
        ], rcpt
    # Only connections that reached the peer were attempts: each 421 is one Errored event; the
    # Envelopes the pause held back cost the Recipients nothing.
    errors = [r for r in rows if r.type == "error"]
    assert len(errors) == smtp_sink.stats.busy_refusals

    async def restored() -> bool:
        return (await destination_state(pipeline)).level < paused_at.level

    await wait_for(restored, what="a step back up after sustained success", timeout=30)
