"""End to end in one process: a Recipient that hard-bounces (the MX's 550, or a DSN) or
complains (an ARF report over SMTP to the feedback address) is suppressed by the Stats
Component, and the next Batch to it reports it rejected with "suppressed" and never sends it;
soft bounces and reports about nobody of ours change nothing.

Real Components (`pipeline.py`, `engagement_support.py`) on real PostgreSQL, nats-server, the
aiosmtpd sink found through dnsmasq, and the SMTPServer. Nothing sleeps: tests wait for the
suppression consumers to have handled every event.
"""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

from kannon.bus.subjects import STATS_STREAM, suppression_durable
from tests.e2e.conftest import Launch
from tests.e2e.engagement_support import BOUNCE_HOST, dsn, get_stats, launch_engaged, submit_report
from tests.e2e.pipeline import RCPT_DOMAIN, TENANT, Pipeline
from tests.peers.arf import arf_report
from tests.peers.smtp_sink import SmtpSink
from tests.shared_data import bounce_testdata
from tests.support import stored_events, wait_for

FEEDBACK = f"fbl@{BOUNCE_HOST}"


async def suppressions_settled(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """Wait until the suppression consumers handled every event; the tenant's list."""

    async def idle() -> bool:
        for stat_type in ("bounced", "complained"):
            info = await pipeline.bus.js.consumer_info(STATS_STREAM, suppression_durable(stat_type))
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    await wait_for(idle, what="suppression consumers idle")
    rows = await pipeline.pool.fetch("SELECT * FROM suppressions WHERE domain = $1", TENANT)
    return {row["address"]: dict(row) for row in rows}


async def send_again(pipeline: Pipeline, recipients: list[str]) -> tuple[Any, dict[str, list[Any]]]:
    """A new Batch to `recipients`, settled; the response and each Recipient's stats rows."""
    res = await pipeline.send_html(recipients)
    rows = await pipeline.wait_until_settled(res.message_id, len(recipients))
    by_email: dict[str, list[Any]] = {}
    for row in rows:
        by_email.setdefault(row.email, []).append(row)
    return res, by_email


async def test_a_550_from_the_mx_suppresses_and_the_next_batch_rejects_it(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    pipeline = await launch()
    dead = f"bounce.ada@{RCPT_DOMAIN}"
    blocked = f"policy.bob@{RCPT_DOMAIN}"
    fine = f"carl@{RCPT_DOMAIN}"
    first = await pipeline.send_html([dead, blocked, fine])
    rows = await pipeline.wait_until_settled(first.message_id, 3)
    ended = {r.email: r for r in rows if r.type in ("bounced", "delivered")}
    assert ended[dead].data["bounced"]["hardBounce"] is True
    assert "hardBounce" not in ended[blocked].data["bounced"]  # a blocklist says nothing of bob
    assert ended[fine].type == "delivered"

    listed = await suppressions_settled(pipeline)
    assert list(listed) == [dead]
    entry = listed[dead]
    assert (entry["reason"], entry["event_type"], entry["status"], entry["reply_code"]) == (
        "hard_bounce",
        "bounced",
        "5.1.1",
        550,
    )
    assert entry["message_id"] == first.message_id

    attempts = smtp_sink.stats.rcpt_attempts[dead.lower()]
    # Another spelling of the same mailbox is the same suppressed address.
    shouted = dead.upper()
    res, by_email = await send_again(pipeline, [shouted, blocked, fine])
    assert res.accepted_count == 2
    assert [(r.email, r.reason) for r in res.rejected_recipients] == [(shouted, "suppressed")]
    [rejected] = next(rows for email, rows in by_email.items() if email.lower() == dead)
    assert (rejected.type, rejected.data) == ("rejected", {"rejected": {"reason": "suppressed"}})
    assert smtp_sink.stats.rcpt_attempts[dead.lower()] == attempts  # never sent again
    assert [r.type for r in by_email[blocked]] == ["accepted", "bounced"]
    assert [r.type for r in by_email[fine]] == ["accepted", "delivered"]


async def deliver(pipeline: Pipeline, sink: SmtpSink, rcpt: str) -> Any:
    batch = (await pipeline.send_html([rcpt])).message_id
    await pipeline.wait_until_settled(batch, 1)
    [received] = sink.messages_to(rcpt)
    return received


async def test_a_hard_dsn_suppresses_a_soft_one_does_not(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    engaged = await launch_engaged(launch)
    pipeline = engaged.pipeline
    gone, full = f"rosa@{RCPT_DOMAIN}", f"sam@{RCPT_DOMAIN}"
    reports = {
        gone: ("5.1.1", "smtp; 550 5.1.1 <rosa@example.test>: user unknown"),
        full: ("5.2.2", "smtp; 552 5.2.2 <sam@example.test>: mailbox full"),
    }
    for rcpt, (status, diagnostic) in reports.items():
        received = await deliver(pipeline, smtp_sink, rcpt)
        report = dsn(
            bounce_address=received.mail_from,
            recipient=rcpt,
            returned_headers=received.data.split(b"\r\n\r\n", 1)[0],
            message_id=f"<dsn-{status}@mx.example.test>",
            status=status,
            diagnostic=diagnostic,
        )
        conversation = await submit_report(engaged.smtp.port, received.mail_from, report)
        assert conversation.data[0] == 250
    listed = await suppressions_settled(pipeline)
    assert list(listed) == [gone]
    assert (listed[gone]["reason"], listed[gone]["status"]) == ("hard_bounce", "5.1.1")
    assert "user unknown" in listed[gone]["diagnostic"]

    res, by_email = await send_again(pipeline, [gone, full])
    assert [(r.email, r.reason) for r in res.rejected_recipients] == [(gone, "suppressed")]
    assert [r.type for r in by_email[gone]] == ["rejected"]
    assert [r.type for r in by_email[full]] == ["accepted", "delivered"]


async def send_to_feedback_loop(port: int, report: bytes) -> int:
    def run() -> int:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
            client.ehlo("fbl.isp.example")
            assert client.mail("fbl@feedback.isp.example")[0] == 250
            assert client.rcpt(FEEDBACK)[0] == 250
            return client.data(report)[0]

    return await asyncio.to_thread(run)


async def test_an_arf_report_to_the_feedback_address_is_a_complaint_and_suppresses(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    engaged = await launch_engaged(launch, smtp_feedback_address=FEEDBACK)
    pipeline = engaged.pipeline
    rcpt = f"moe@{RCPT_DOMAIN}"
    received = await deliver(pipeline, smtp_sink, rcpt)
    batch = received.data.split(b"X-Pool-Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    before = await stored_events(pipeline.bus)

    # A report about nobody of ours, as it came from the provider: nothing at all.
    stranger = (bounce_testdata() / "emails" / "arf-21.eml").read_bytes().replace(b"\n", b"\r\n")
    assert await send_to_feedback_loop(engaged.smtp.port, stranger) == 250
    assert await stored_events(pipeline.bus) == before

    # The provider's report about our message (recipient redacted, Message-ID kept).
    report = arf_report(
        "arf-15.eml",
        bounce_address=received.mail_from,
        original_headers=received.data.split(b"\r\n\r\n", 1)[0],
        redact_to=True,
    )
    assert await send_to_feedback_loop(engaged.smtp.port, report) == 250
    assert await stored_events(pipeline.bus) == before + 1  # published before the 250

    listed = await suppressions_settled(pipeline)
    assert list(listed) == [rcpt]
    assert (listed[rcpt]["reason"], listed[rcpt]["status"], listed[rcpt]["message_id"]) == (
        "complaint",
        "abuse",
        batch,
    )

    async def stored() -> bool:
        return any(r.type == "complained" for r in await pipeline.stats(batch))

    await wait_for(stored, what="the complained event in stats")
    rows = await get_stats(pipeline, rcpt)
    assert rows[0].type == "complained"  # the newest first
    assert rows[0].data.complained.feedback_type == "abuse"
    assert rows[0].data.complained.user_agent == "ReturnPathFBL/1.0"
    counted = await pipeline.pool.fetchval(
        "SELECT sum(count) FROM aggregated_stats WHERE domain = $1 AND type = 'complained'", TENANT
    )
    assert counted == 1

    res, by_email = await send_again(pipeline, [rcpt])
    assert (res.accepted_count, [r.reason for r in res.rejected_recipients]) == (0, ["suppressed"])
    assert [r.type for r in by_email[rcpt]] == ["rejected"]
    assert len(smtp_sink.messages_to(rcpt)) == 1
