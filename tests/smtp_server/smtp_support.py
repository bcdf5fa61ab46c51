"""Helpers for the SMTPServer tests: report messages as real MTAs write them, a built Delivery
whose bounce address they go to, and readers of the events on the real bus."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kannon.envelope import (
    BatchSpec,
    DkimSigner,
    RecipientPart,
    TrackingKey,
    build_envelope,
    make_batch_id,
)
from kannon.ids import new_token
from kannon.smtp_server.component import SmtpServer
from tests.peers.arf import ARF_SAMPLES, arf_report

__all__ = ["ARF_SAMPLES", "arf_from_sample"]

SECRET = "bounce-secret-for-the-smtp-tests-0123456789"
DOMAIN = "k.example.com"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

# start_smtp(**SmtpSettings overrides) -> a running SmtpServer on 127.0.0.1
StartSmtp = Callable[..., Awaitable[SmtpServer]]


@dataclass(frozen=True)
class Sent:
    """One Delivery as the SMTPSender sent it."""

    batch_id: str
    recipient: str
    bounce_address: str  # the MAIL FROM, where reports come back to
    headers: bytes  # the message's header block, as returned in reports


def sent_message(signer: DkimSigner, recipient: str, batch_id: str | None = None) -> Sent:
    batch_id = batch_id or make_batch_id(new_token(), DOMAIN)
    envelope = build_envelope(
        BatchSpec(
            batch_id=batch_id,
            domain=DOMAIN,
            sender_email=f"news@{DOMAIN}",
            sender_alias="News",
            subject="Your order",
            html="<p>Thanks</p>",
            tracker_base_url=None,
            tracking_key=TrackingKey("key_unused", b"u" * 32),
            token_expires_at=NOW + timedelta(days=1),
            bounce_secret=SECRET.encode(),
            now=NOW,
        ),
        RecipientPart(recipient=recipient),
        signer,
    )
    headers = envelope.body.split(b"\r\n\r\n", 1)[0]
    return Sent(batch_id, recipient, envelope.return_path, headers)


def postfix_dsn(
    sent: Sent,
    *,
    records: list[dict[str, str]] | None = None,
    message_id: str = "<20250601120001.4F2A1C0123@mx.example.org>",
) -> bytes:
    """A Postfix-style multipart/report DSN for ``sent`` (one record per dict of DSN fields)."""
    if records is None:
        records = [
            {
                "Final-Recipient": f"rfc822; {sent.recipient}",
                "Original-Recipient": f"rfc822;{sent.recipient}",
                "Action": "failed",
                "Status": "5.1.1",
                "Remote-MTA": "dns; mx.example.org",
                "Diagnostic-Code": f"smtp; 550 5.1.1 <{sent.recipient}>: Recipient address "
                "rejected: User unknown in virtual mailbox table",
            }
        ]
    boundary = "4F2A1C0123.1748779261/mail.example.org"
    blocks = "\r\n".join("".join(f"{k}: {v}\r\n" for k, v in record.items()) for record in records)
    text = "\r\n".join(
        f"<{r['Final-Recipient'].split(';')[-1].strip()}>: host mx.example.org[192.0.2.25] "
        f"said: {r.get('Diagnostic-Code', '').partition(';')[2].strip()} (in reply to RCPT TO "
        "command)"
        for r in records
    )
    head = (
        "Return-Path: <>\r\n"
        "Date: Sun,  1 Jun 2025 12:00:01 +0000 (UTC)\r\n"
        "From: MAILER-DAEMON@mail.example.org (Mail Delivery System)\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"To: {sent.bounce_address}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f'\tboundary="{boundary}"\r\n'
        f"Message-Id: {message_id}\r\n"
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "This is the mail system at host mail.example.org.\r\n"
        "\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. It's attached below.\r\n"
        "\r\n"
        "                   The mail system\r\n"
        "\r\n"
        f"{text}\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mail.example.org\r\n"
        "X-Postfix-Queue-ID: 4F2A1C0123\r\n"
        f"X-Postfix-Sender: rfc822; {sent.bounce_address}\r\n"
        "Arrival-Date: Sun,  1 Jun 2025 12:00:00 +0000 (UTC)\r\n"
        "\r\n"
        f"{blocks}"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
    )
    return head.encode() + sent.headers + f"\r\n\r\n--{boundary}--\r\n".encode()


# --- ARF feedback reports ----------------------------------------------------------------------


def arf_from_sample(sample: str, sent: Sent, **options: Any) -> bytes:
    """A real ARF report from shared/testdata about ``sent`` (see `tests.peers.arf`)."""
    return arf_report(
        sample, bounce_address=sent.bounce_address, original_headers=sent.headers, **options
    )
