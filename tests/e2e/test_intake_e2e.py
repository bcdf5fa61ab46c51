"""Intake rules of issue 14 through the whole pipeline on real servers: one mailbox written three
ways is one mail; an Envelope the intake bound accepts near the bus limit is published on the real
nats-server (1 MiB, its default, as `nats.max_payload`) and delivered; one over it never enters."""

from __future__ import annotations

import grpc

from tests.e2e.conftest import Launch
from tests.e2e.pipeline import RCPT_DOMAIN
from tests.peers.smtp_sink import SmtpSink
from tests.support import parse_message


async def test_three_spellings_of_one_mailbox_get_one_mail(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    pipeline = await launch()
    upper = RCPT_DOMAIN.upper()
    spellings = {
        f"Ada@{upper}": {"name": "first"},
        f"Ada@{RCPT_DOMAIN}.": {"name": "second"},
        f"Ada\u200b@{RCPT_DOMAIN}": {"name": "third"},
    }
    res = await pipeline.send_html(spellings, subject="Hi {{ name }}")
    assert (res.accepted_count, res.rejected_count) == (1, 0)
    rows = await pipeline.wait_until_settled(res.message_id, 1)
    assert [(r.email, r.type) for r in rows] == [
        (f"Ada@{RCPT_DOMAIN}", "accepted"),
        (f"Ada@{RCPT_DOMAIN}", "delivered"),
    ]
    [received] = smtp_sink.messages
    assert received.rcpt_tos == (f"Ada@{RCPT_DOMAIN}",)
    message = parse_message(received.data)
    assert message["Subject"] == "Hi first"


async def test_an_envelope_near_the_bus_limit_travels_and_one_over_it_is_refused(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    pipeline = await launch()
    assert pipeline.settings.nats.max_payload == 1024 * 1024
    assert pipeline.bus.nc.max_payload == 1024 * 1024  # the test session's nats-server agrees
    # ~930 KB once quoted-printable: accepted by the bound, and really published and delivered.
    html = "<html><body><p>" + "x" * 880_000 + "</p></body></html>"
    rcpt = f"big@{RCPT_DOMAIN}"
    res = await pipeline.send_html([rcpt], subject="Big", html=html)
    assert res.accepted_count == 1
    rows = await pipeline.wait_until_settled(res.message_id, 1)
    assert [r.type for r in rows] == ["accepted", "delivered"]
    [received] = smtp_sink.messages_to(rcpt)
    assert 900_000 < len(received.data) < 1024 * 1024
    assert pipeline.dkim_verify(received.data)

    try:
        await pipeline.send_html([rcpt], subject="Too big", html=html + "y" * 150_000)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "nats.max_payload" in (exc.details() or "")
    else:
        raise AssertionError("a Batch over the bus limit was accepted")
    assert await pipeline.pool.fetchval("SELECT count(*) FROM messages") == 1
