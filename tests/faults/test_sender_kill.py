"""SIGKILL the sender process in the middle of a 1,000-recipient Batch, in fleet mode.

The remote MX (the sink) is slow enough that the kill lands mid-batch with `max_jobs`
transactions in flight. A new sender process takes over the same durable consumer. Then every
Delivery must end exactly once: one terminal stats row per recipient (delivered, or bounced for
the `bounce.*` ones), none missing, none with two; the Pool empties; the sending consumer has
nothing pending. The figure the test reports is how many recipients the sink received more than
once: only messages the remote had already taken when the sender died, before it could publish
the outcome, can be sent again, so it is bounded by the transactions in flight (`max_jobs`).

How the in-flight Deliveries recover: their Envelopes come back to the new sender after the
sending ack wait (5 s here); it finds the send guard the dead process claimed without an outcome,
waits until the claim is `sender.claim_lifetime` old (10 s here, ADR 0049) and sends them again,
or finds the recorded outcome and republishes it. The
dispatcher's claim timeout is at its maximum (5 min), so recovery cannot lean on Reclaim.

Two remotes: one that spends its time before taking the message and then answers 250 at once,
like most MTAs, and one that takes the message first and is slow to answer — the worst case,
where every transaction in DATA at the kill has already been taken.
"""

from __future__ import annotations

import pytest

from kannon.bus.client import Bus
from kannon.config import COMPONENTS
from tests.faults.support import (
    dispatcher_reclaims,
    metric,
    send_batch,
    settle,
    slow_remote,
    verdict,
)
from tests.fleet.conftest import StartFleet
from tests.peers.dns import DnsServer

RECIPIENTS = 1000
BOUNCES = 12  # `bounce.*`: 550 at RCPT, never received
MAX_JOBS = 10
KILL_AT = 300  # messages received by the sink when the sender is killed
SINK_DELAY = 0.02  # seconds the remote spends per message in DATA (10 jobs: ≤ 500 messages/s)


@pytest.mark.parametrize("commit_first", [False, True], ids=["commit-then-250", "slow-250"])
async def test_sigkill_of_the_sender_mid_batch_ends_every_delivery_exactly_once(
    commit_first: bool,
    start_fleet: StartFleet,
    dns_server: DnsServer,
    database_url: str,
    bus: Bus,
) -> None:
    sink, db = await slow_remote(
        dns_server, database_url, delay=SINK_DELAY, commit_first=commit_first
    )
    try:
        fleet = await start_fleet(
            sink_port=sink.port,
            options={
                "--sender-max-jobs": str(MAX_JOBS),
                # The dead sender's unacked Envelopes come back to its successor after this.
                "--nats-sending-ack-wait": "5s",
                # Its claims are taken for a dead sender's this long after they were made (ADR
                # 0049). The derived default (the ack wait + ~68 s of guard retries) would hold
                # them past `settle`'s timeout; 10 s still outlasts any handling here (a delivery
                # is cut off at 4 s, and no election slows the guard's record).
                "--sender-claim-lifetime": "10s",
                "--dispatcher-claim-timeout": "5m",
            },
        )
        _, wanted, batch = await send_batch(fleet, RECIPIENTS, BOUNCES)

        # Kill the sender once the remote has taken KILL_AT messages, mid-transactions.
        await sink.wait_for_messages(KILL_AT, timeout=90)
        killed = fleet.processes["sender"]
        busy_at_kill, max_busy_before = sink.in_data, sink.max_busy
        code = await killed.kill()
        received_at_kill = len(sink.messages)
        assert code == -9
        assert received_at_kill < RECIPIENTS - BOUNCES, "the kill came after the last message"

        successor = await fleet.replace("sender")
        assert successor.pid != killed.pid

        await settle(db, bus, batch, RECIPIENTS, timeout=60)
        result = await verdict(db, batch, wanted, sink)
        duplicates = result.duplicates
        should_arrive = len([e for e in wanted if not e.startswith("bounce.")])
        sender_metrics = await successor.metrics()
        taken_over = metric(sender_metrics, "kannon_sender_guard_taken_over_total")
        republished = metric(sender_metrics, "kannon_sender_duplicates_skipped_total")
        reclaimed = await dispatcher_reclaims(fleet)
        print(
            f"\nsender SIGKILL ({'slow 250' if commit_first else 'commit then 250'}): "
            f"{received_at_kill} messages received at the kill, {busy_at_kill} in DATA "
            f"(most at once before: {max_busy_before}, after: {sink.max_busy}); in the end "
            f"{len(sink.messages)} messages for {should_arrive} recipients; "
            f"DUPLICATES (recipients received more than once): {len(duplicates)} "
            f"(max_jobs {MAX_JOBS}); claims the dead sender left: {taken_over + republished:.0f} "
            f"({taken_over:.0f} sent again, {republished:.0f} outcomes republished); "
            f"dispatcher reclaims: {reclaimed:.0f}"
        )
        # sender.max_jobs bounds the transactions in flight, hence what a kill can duplicate.
        # (Seen failing with 11: nats.py's fetch(n) can return more than n messages, as it hands
        # back its whole pending queue, and Bus.consume starts a handler for each.)
        assert sink.max_busy <= MAX_JOBS, f"{sink.max_busy} sends at once, max_jobs {MAX_JOBS}"
        assert len(duplicates) <= MAX_JOBS, duplicates
        assert all(n == 2 for n in duplicates.values()), duplicates
        assert reclaimed == 0  # nothing was left for Reclaim: recovery came from the guard

        codes = await fleet.stop()
        assert codes == dict.fromkeys(COMPONENTS, 0), fleet.report()
        assert fleet.error_lines() == []
    finally:
        await db.close()
        await sink.stop()
