"""End to end in one process: SendHTML through gRPC → Validator → Dispatcher → SMTPSender → the
SMTP peer found through DNS, outcomes back through the Dispatcher's consumers into Stats.

Each test starts the real Components (see `pipeline.py`) on real PostgreSQL, nats-server, an
aiosmtpd sink and dnsmasq. Time never passes by sleeping: backoff is configured to a microsecond,
or the Dispatcher's clock is moved to each retry by the test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kannon.db.tracking_keys import verification_keys
from kannon.envelope.bounce import parse_bounce_address
from kannon.envelope.ids import make_email_id
from kannon.envelope.tokens import verify_click, verify_open
from tests.e2e.conftest import Launch
from tests.e2e.pipeline import (
    IDN_DOMAIN,
    NULL_MX_DOMAIN,
    RCPT_DOMAIN,
    SECRET,
    SENDER_ALIAS,
    SENDER_EMAIL,
    TENANT,
    ShiftedClock,
)
from tests.peers.fixtures import SinkFactory
from tests.peers.smtp_sink import SmtpSink
from tests.support import parse_message

# Retries due a microsecond after the failure: "backoff zero" through the real config keys.
NO_BACKOFF = {
    "dispatcher_backoff_base": "1us",
    "dispatcher_backoff_min": "1us",
    "dispatcher_backoff_max": "1us",
}
# Retries due a minute after the failure, the same minute every time, on a clock the test moves.
MINUTE_BACKOFF: dict[str, Any] = {
    "jitter": lambda: 1.0,
    "dispatcher_backoff_base": "1m",
    "dispatcher_backoff_min": "1m",
    "dispatcher_backoff_max": "1m",
}


def types_by_email(rows: list[Any]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for row in rows:
        result.setdefault(row.email, []).append(row.type)
    return result


async def test_one_batch_to_three_recipients_arrives_rendered_signed_and_tracked(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    pipeline = await launch()
    recipients = {
        f"ann@{RCPT_DOMAIN}": {"name": "Ann", "code": "A-1"},
        f"bob@{RCPT_DOMAIN}": {"name": "Bob & Co", "code": "B-2"},
        f"cy@{RCPT_DOMAIN}": {"name": "Cy", "code": "C-3"},
    }
    html = (
        "<html><body><p>Hi {{ name }}, your code is {{code}}.</p>"
        '<a href="https://shop.example.org/deal?id=7">deal</a></body></html>'
    )
    res = await pipeline.send_html(recipients, subject="Hello {{ name }}", html=html)
    batch = res.message_id
    rows = await pipeline.wait_until_settled(batch, 3)

    assert types_by_email(rows) == {rcpt: ["accepted", "delivered"] for rcpt in recipients}
    assert len(smtp_sink.messages) == 3
    keys = await verification_keys(pipeline.pool, datetime.now(UTC))
    secret = SECRET.encode()
    for rcpt, fields in recipients.items():
        [received] = smtp_sink.messages_to(rcpt)
        assert received.rcpt_tos == (rcpt,)
        assert received.helo == "sender.kannon.test"
        # MAIL FROM: the bounce address decodes back to this Batch and this Recipient.
        bounce = parse_bounce_address(received.mail_from, secret)
        assert bounce is not None
        assert bounce.batch_id == batch
        assert bounce.matches(rcpt, secret)
        assert not any(bounce.matches(other, secret) for other in recipients if other != rcpt)
        assert received.mail_from.endswith(f"@{TENANT}")
        # DKIM, with the key published in DNS.
        assert pipeline.dkim_verify(received.data)
        message = parse_message(received.data)
        assert message["From"] == f"{SENDER_ALIAS} <{SENDER_EMAIL}>"
        assert message["To"] == rcpt
        assert message["Subject"] == f"Hello {fields['name']}"
        assert message["Message-ID"] == make_email_id(batch, rcpt)
        assert message["X-Pool-Message-ID"] == batch
        body = message.get_content()
        escaped = fields["name"].replace("&", "&amp;")
        assert f"<p>Hi {escaped}, your code is {fields['code']}.</p>" in body
        # The link and the pixel go through the tracker, with tokens for this Recipient.
        base = f"https://track.{TENANT}"
        click_token = body.split(f'href="{base}/c/', 1)[1].split('"', 1)[0]
        open_token = body.split(f'src="{base}/o/', 1)[1].split('"', 1)[0]
        click = verify_click(click_token, keys, datetime.now(UTC))
        assert click is not None
        assert (click.url, click.batch_id, click.recipient) == (
            "https://shop.example.org/deal?id=7",
            batch,
            rcpt,
        )
        opened = verify_open(open_token, keys, datetime.now(UTC))
        assert opened is not None and opened.recipient == rcpt
        assert "https://shop.example.org" not in body.replace(click_token, "")
    # A tampered message fails the same DKIM check.
    tampered = smtp_sink.messages[0].data.replace(b"Subject: Hello", b"Subject: Jello", 1)
    assert not pipeline.dkim_verify(tampered)


async def test_a_5xx_reply_bounces_after_one_attempt(launch: Launch, smtp_sink: SmtpSink) -> None:
    pipeline = await launch(**NO_BACKOFF)
    rcpt = f"bounce.dave@{RCPT_DOMAIN}"
    batch = (await pipeline.send_html([rcpt])).message_id
    rows = await pipeline.wait_until_settled(batch, 1)
    assert [r.type for r in rows] == ["accepted", "bounced"]
    bounced = rows[1].data["bounced"]
    assert (bounced["permanent"], bounced["code"]) == (True, 550)
    assert "5.1.1" in bounced["msg"]
    assert smtp_sink.attempts(rcpt) == 1
    assert smtp_sink.messages == []


async def test_4xx_twice_then_250_is_delivered_on_the_third_attempt(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    pipeline = await launch(**NO_BACKOFF)
    rcpt = f"transient.x2.erin@{RCPT_DOMAIN}"
    batch = (await pipeline.send_html([rcpt])).message_id
    rows = await pipeline.wait_until_settled(batch, 1)
    assert [r.type for r in rows] == ["accepted", "error", "error", "delivered"]
    assert [r.data["error"]["code"] for r in rows if r.type == "error"] == [451, 451]
    assert smtp_sink.attempts(rcpt) == 3
    [received] = smtp_sink.messages_to(rcpt)
    # The third Envelope was built afresh for the third attempt, and still signs.
    assert pipeline.dkim_verify(received.data)


async def test_a_server_that_never_answers_ends_failed_when_the_window_is_spent(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    clock = ShiftedClock()
    pipeline = await launch(clock=clock, dispatcher_retry_window="150s", **MINUTE_BACKOFF)
    rcpt = f"never.fred@{RCPT_DOMAIN}"
    batch = (await pipeline.send_html([rcpt])).message_id
    # Attempts at +0 and +1 min are retried; the one at +2 min leaves no room in 150 s.
    assert await pipeline.drive_retries(clock, batch, rcpt) == 2
    rows = await pipeline.wait_until_settled(batch, 1)
    assert [r.type for r in rows] == ["accepted", "error", "error", "error", "failed"]
    assert all(r.data["error"].get("code", 0) == 0 for r in rows if r.type == "error")
    reason = rows[-1].data["failed"]["reason"]
    assert reason.startswith("retry budget exhausted while sending: ")
    assert smtp_sink.attempts(rcpt) == 3
    assert smtp_sink.messages == []


async def test_a_null_mx_domain_bounces_550_without_a_connection(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    pipeline = await launch()
    batch = (await pipeline.send_html([f"gina@{NULL_MX_DOMAIN}"])).message_id
    rows = await pipeline.wait_until_settled(batch, 1)
    assert [r.type for r in rows] == ["accepted", "bounced"]
    assert rows[1].data["bounced"]["code"] == 550
    assert rows[1].data["bounced"]["permanent"] is True
    assert smtp_sink.connections == 0


async def test_a_relay_configuration_delivers_through_the_relay_with_auth(
    launch: Launch, smtp_sink: SmtpSink, smtp_sink_factory: SinkFactory
) -> None:
    relay = await smtp_sink_factory(users={"kannon": "s3cret"}, auth_require_tls=False)
    pipeline = await launch(
        sender_relay_host="127.0.0.1",
        sender_relay_port=str(relay.port),
        sender_relay_username="kannon",
        sender_relay_password="s3cret",
        sender_relay_tls="none",
    )
    # No DNS record anywhere for this domain: only the relay can deliver it.
    rcpt = "hank@unlisted.invalid"
    batch = (await pipeline.send_html({rcpt: {"name": "Hank"}})).message_id
    rows = await pipeline.wait_until_settled(batch, 1)
    assert [r.type for r in rows] == ["accepted", "delivered"]
    [received] = relay.messages
    assert received.rcpt_tos == (rcpt,)
    assert received.auth_user == "kannon"
    assert pipeline.dkim_verify(received.data)
    assert smtp_sink.connections == 0  # the MX sink saw nothing


async def test_a_build_failure_reschedules_and_finally_fails_never_strands(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    clock = ShiftedClock()
    pipeline = await launch(clock=clock, dispatcher_retry_window="5m", **MINUTE_BACKOFF)
    # Due in an hour, so the template is certainly gone before the first dispatch.
    due = datetime.now(UTC) + timedelta(hours=1)
    rcpt = f"ivy@{RCPT_DOMAIN}"
    res = await pipeline.send_html({rcpt: {"name": "Ivy"}}, scheduled_time=due)
    deleted = await pipeline.pool.execute(
        "DELETE FROM templates WHERE template_id = $1", res.template_id
    )
    assert deleted == "DELETE 1"
    clock.jump_to(due)
    # +0, +1, +2, +3 min are retried; at +4 min the next try would fall outside 5 min.
    assert await pipeline.drive_retries(clock, res.message_id, rcpt) == 4
    rows = await pipeline.wait_until_settled(res.message_id, 1)
    assert [r.type for r in rows] == ["accepted", "failed"]
    assert rows[1].data["failed"]["reason"] == (
        f"retry budget exhausted while dispatching: template {res.template_id} no longer exists"
    )
    assert await pipeline.pool.fetchval("SELECT count(*) FROM sending_pool_emails") == 0
    assert smtp_sink.connections == 0


async def test_invalid_addresses_are_rejected_and_mixed_case_and_idn_ones_delivered(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    pipeline = await launch()
    invalid = {
        f"jösé@{RCPT_DOMAIN}": "non-ASCII",  # unicode local part
        f'"john"@{RCPT_DOMAIN}': "quoted",  # quoted local part
        "kim@localhost": "top-level domain",  # missing TLD
        f"lee@{RCPT_DOMAIN} garbage": "whitespace",  # trailing garbage
        f"lee@{RCPT_DOMAIN}>": "not a valid host name label",  # trailing garbage, no space
    }
    valid = ["Mixed.Case@Example.TEST", f"idn@{IDN_DOMAIN}"]
    batch = (await pipeline.send_html([*invalid, *valid])).message_id
    rows = await pipeline.wait_until_settled(batch, len(invalid) + len(valid))

    by_email = types_by_email(rows)
    for rcpt, reason in invalid.items():
        assert by_email[rcpt] == ["rejected"], rcpt
        [row] = [r for r in rows if r.email == rcpt]
        assert reason in row.data["rejected"]["reason"], (rcpt, row.data)
    # Intake stores the canonical spelling (ADR 0020): domain lower case, IDN as A-label (so
    # no SMTPUTF8 is needed); the local part keeps its case, as RFC 5321 requires. Outcomes,
    # RCPT and the To header all use it.
    rcpt_to = {valid[0]: "Mixed.Case@example.test", valid[1]: "idn@xn--bcher-kva.test"}
    for rcpt in valid:
        assert by_email[rcpt_to[rcpt]] == ["accepted", "delivered"], rcpt
        [received] = smtp_sink.messages_to(rcpt_to[rcpt])
        assert received.rcpt_tos == (rcpt_to[rcpt],)
        assert parse_message(received.data)["To"] == rcpt_to[rcpt]
        assert pipeline.dkim_verify(received.data)
    assert len(smtp_sink.messages) == len(valid)


async def test_a_lone_mail_does_not_wait_for_the_poll_intervals(
    launch: Launch, smtp_sink: SmtpSink
) -> None:
    """The Validator and the Dispatcher are woken by PostgreSQL notifications (ADR 0041): with
    idle intervals of a minute, a send still reaches the remote MX in well under one."""
    pipeline = await launch(validator_idle_interval="60s", dispatcher_idle_interval="60s")
    # Both pollers are idle now, each in its 60 s wait.
    for i in range(3):
        rcpt = f"woken{i}@{RCPT_DOMAIN}"
        await pipeline.send_html({rcpt: {"name": "W"}})
        # 20 s on a loaded machine, far below the 60 s (twice) an idle poll would take.
        await smtp_sink.wait_for_messages(i + 1, timeout=20)
        assert smtp_sink.messages[-1].rcpt_tos == (rcpt,)
