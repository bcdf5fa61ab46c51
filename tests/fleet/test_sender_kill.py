"""SIGKILL the sender process in the middle of a 1,000-recipient Batch (issue 4), in fleet mode.

The remote MX (the sink) is slow enough that the kill lands mid-batch with `max_jobs`
transactions in flight. A new sender process takes over the same durable consumer. Then every
Delivery must end exactly once: one terminal stats row per recipient (delivered, or bounced for
the `bounce.*` ones), none missing, none with two; the Pool empties; the sending consumer has
nothing pending. The figure the test reports is how many recipients the sink received more than
once: only messages the remote had already taken when the sender died, before it could publish
the outcome, can be sent again, so it is bounded by the transactions in flight (`max_jobs`).

How the in-flight Deliveries recover: their Envelopes come back to the new sender after the
sending ack wait (5 s here); it finds the send guard the dead process claimed without an outcome
(died mid-send) and sends them again, or finds the recorded outcome and republishes it. The
dispatcher's claim timeout stays at its default (10 min), so recovery cannot lean on Reclaim.

Two remotes: one that spends its time before taking the message and then answers 250 at once,
like most MTAs, and one that takes the message first and is slow to answer — the worst case,
where every transaction in DATA at the kill has already been taken.
"""

from __future__ import annotations

import asyncio
import collections
import re
from typing import Any

import asyncpg
import pytest

from kannon.bus.client import Bus
from kannon.bus.subjects import SENDER_DURABLE, SENDING_STREAM
from tests.dispatcher.support import wait_for
from tests.fleet.conftest import StartFleet
from tests.fleet.fleet import COMPONENTS, RCPT_DOMAIN, TERMINAL, add_recipient_dns
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import ReceivedMessage, SmtpSink

RECIPIENTS = 1000
BOUNCES = 12  # `bounce.*`: 550 at RCPT, never received
MAX_JOBS = 10
KILL_AT = 300  # messages received by the sink when the sender is killed
SINK_DELAY = 0.02  # seconds the remote spends per message in DATA (10 jobs: ≤ 500 messages/s)


class SlowSink(SmtpSink):
    """The SMTP sink with a remote's processing time in DATA.

    `commit_first=False`: the delay comes before the message is taken, like an MTA scanning it
    and then queueing it just before its 250 (a connection lost during the delay loses the
    message: aiosmtpd cancels the handler). `commit_first=True`: the message is taken first and
    the 250 is slow: a sender dying meanwhile never learns the remote has it.
    """

    def __init__(self, *, delay: float, commit_first: bool, **options: Any) -> None:
        super().__init__(**options)
        self.delay = delay
        self.commit_first = commit_first
        self.busy = 0
        """Transactions in DATA right now: the sender's sends in flight."""
        self.max_busy = 0

    async def _record(self, message: ReceivedMessage) -> None:
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)
        try:
            if self.commit_first:
                await super()._record(message)
                await asyncio.sleep(self.delay)  # the remote's latency, not the test waiting
            else:
                await asyncio.sleep(self.delay)
                await super()._record(message)
        finally:
            self.busy -= 1


def recipients() -> dict[str, dict[str, str]]:
    emails = [f"user{i:04d}@{RCPT_DOMAIN}" for i in range(RECIPIENTS - BOUNCES)]
    emails += [f"bounce.user{i:02d}@{RCPT_DOMAIN}" for i in range(BOUNCES)]
    return {email: {"name": f"N{i}"} for i, email in enumerate(emails)}


def metric(text: str, name: str) -> float:
    """A counter's value in Prometheus text format (0 when absent)."""
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("commit_first", [False, True], ids=["commit-then-250", "slow-250"])
async def test_sigkill_of_the_sender_mid_batch_ends_every_delivery_exactly_once(
    commit_first: bool,
    start_fleet: StartFleet,
    dns_server: DnsServer,
    database_url: str,
    bus: Bus,
) -> None:
    sink = SlowSink(delay=SINK_DELAY, commit_first=commit_first)
    await sink.start()
    add_recipient_dns(dns_server)
    dns_server.start()
    db = await asyncpg.connect(database_url)
    try:
        fleet = await start_fleet(
            sink_port=sink.port,
            options={
                "--sender-max-jobs": str(MAX_JOBS),
                # The dead sender's unacked Envelopes come back to its successor after this.
                "--nats-sending-ack-wait": "5s",
            },
        )
        await fleet.create_domain()
        auth = await fleet.create_api_key()
        wanted = recipients()
        batch = await fleet.send_html(auth, wanted)

        # Kill the sender once the remote has taken KILL_AT messages, mid-transactions.
        await sink.wait_for_messages(KILL_AT, timeout=90)
        killed = fleet.processes["sender"]
        busy_at_kill, max_busy_before = sink.busy, sink.max_busy
        code = await killed.kill()
        received_at_kill = len(sink.messages)
        assert code == -9
        assert received_at_kill < RECIPIENTS - BOUNCES, "the kill came after the last message"

        successor = await fleet.replace("sender")
        assert successor.pid != killed.pid

        async def pool_empty() -> bool:
            left = await db.fetchval(
                "SELECT count(*) FROM sending_pool_emails WHERE message_id = $1", batch
            )
            return bool(left == 0)

        await wait_for(pool_empty, what="the Pool to empty", timeout=60, interval=0.2)

        async def all_ended() -> bool:
            ended = await db.fetchval(
                "SELECT count(DISTINCT email) FROM stats WHERE message_id = $1 AND type = ANY($2)",
                batch,
                list(TERMINAL),
            )
            return bool(ended == RECIPIENTS)

        await wait_for(all_ended, what="a terminal stats row per recipient", timeout=30)

        async def sending_settled() -> bool:
            info = await bus.js.consumer_info(SENDING_STREAM, SENDER_DURABLE)
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        # Nothing left to (re)deliver: the count of received messages is final.
        await wait_for(sending_settled, what="the sending consumer to drain", timeout=30)

        rows = await db.fetch(
            "SELECT email, type FROM stats WHERE message_id = $1 ORDER BY id", batch
        )
        by_rcpt: dict[str, list[str]] = collections.defaultdict(list)
        for row in rows:
            by_rcpt[row["email"]].append(row["type"])
        assert set(by_rcpt) == set(wanted), "stats of recipients missing or unexpected"
        terminal = {email: [t for t in types if t in TERMINAL] for email, types in by_rcpt.items()}
        ended_twice = {email: types for email, types in terminal.items() if len(types) != 1}
        assert ended_twice == {}, f"{len(ended_twice)} recipients without exactly one end"
        for email, types in by_rcpt.items():
            assert types.count("accepted") == 1, (email, types)
            expected = "bounced" if email.startswith("bounce.") else "delivered"
            assert terminal[email] == [expected], (email, types)

        received = collections.Counter(r.lower() for m in sink.messages for r in m.rcpt_tos)
        should_arrive = {e for e in wanted if not e.startswith("bounce.")}
        assert set(received) == should_arrive, "a delivered recipient never reached the remote"
        duplicates = {email: n for email, n in received.items() if n > 1}
        sender_metrics = await successor.metrics()
        taken_over = metric(sender_metrics, "kannon_sender_guard_taken_over_total")
        republished = metric(sender_metrics, "kannon_sender_duplicates_skipped_total")
        reclaimed = metric(
            await fleet.processes["dispatcher"].metrics(), "kannon_dispatcher_reclaimed_total"
        )
        print(
            f"\nsender SIGKILL ({'slow 250' if commit_first else 'commit then 250'}): "
            f"{received_at_kill} messages received at the kill, {busy_at_kill} in DATA "
            f"(most at once before: {max_busy_before}, after: {sink.max_busy}); in the end "
            f"{len(sink.messages)} messages for {len(should_arrive)} recipients; "
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

        codes = await fleet.stop()
        assert codes == dict.fromkeys(COMPONENTS, 0), fleet.report()
        assert fleet.error_lines() == []
    finally:
        await db.close()
        await sink.stop()
