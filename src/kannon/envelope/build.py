"""Building one Envelope: from a Delivery's data to the signed RFC 5322 bytes the SMTPSender sends.

Owns the order of operations and the header set (DESIGN §3 "Envelope", spec §4.4):

1. render the Recipient's fields into the HTML (escaped) and the Subject (raw);
2. rewrite links and add the open pixel (when a tracker base URL is configured);
3. headers From, To (or ``headers_to``), Cc (``headers_cc``, header only: Cc addresses are not
   sent to), Subject, Date, Message-ID (the email id), MIME-Version, Content-Type,
   X-Pool-Message-ID (the Batch id), X-Mailer;
4. MIME body (see ``mime``), then the DKIM-Signature prepended.

Everything that varies (clock, MIME boundary seed, keys, secrets) comes in through
``EnvelopeSpec``, so the same spec always builds the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kannon.envelope import mime
from kannon.envelope.bounce import make_bounce_address
from kannon.envelope.dkim import DkimSigner
from kannon.envelope.ids import make_email_id
from kannon.envelope.render import render_html, render_text
from kannon.envelope.tokens import TrackingKey
from kannon.envelope.tracking import apply_tracking, tracker_base

MAILER = "Kannon"


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeSpec:
    """Everything needed to build one Delivery's Envelope. ``tracker_base_url=None`` disables
    open/click tracking; it may contain ``{domain}`` (e.g. ``https://stats.{domain}``)."""

    batch_id: str
    domain: str
    sender_email: str
    sender_alias: str
    subject: str
    html: str
    recipient: str
    dkim: DkimSigner
    tracker_base_url: str | None
    tracking_key: TrackingKey
    token_expires_at: datetime
    bounce_secret: bytes = field(repr=False)
    now: datetime
    fields: Mapping[str, str] = field(default_factory=dict)
    attachments: Sequence[tuple[str, bytes]] = ()
    headers_to: Sequence[str] = ()
    headers_cc: Sequence[str] = ()
    should_retry: bool = True
    boundary_seed: bytes = b""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A built, signed message and its SMTP envelope (what goes on ``kannon.sending``)."""

    email_id: str
    sender: str  # the From address
    recipient: str  # SMTP RCPT TO: the Delivery's Recipient, whatever To/Cc say
    return_path: str  # SMTP MAIL FROM: the signed bounce address
    body: bytes
    should_retry: bool


def build_headers(spec: EnvelopeSpec, subject: str, email_id: str) -> list[mime.Header]:
    """The message headers before the MIME ones (From ... MIME-Version), validated."""
    headers = [
        mime.mailbox("From", spec.sender_alias, spec.sender_email),
        mime.address_list("To", spec.headers_to or (spec.recipient,)),
    ]
    if spec.headers_cc:
        headers.append(mime.address_list("Cc", spec.headers_cc))
    headers += [
        mime.unstructured("Subject", subject),
        mime.date_header(spec.now),
        mime.simple("Message-ID", email_id),
        ("MIME-Version", " 1.0"),
    ]
    return headers


@dataclass(frozen=True, slots=True)
class UnsignedMessage:
    """A composed message before DKIM: header fields in order and the MIME body."""

    email_id: str
    return_path: str
    headers: list[mime.Header]
    body: bytes


def compose_message(spec: EnvelopeSpec) -> UnsignedMessage:
    """Render, track and serialise ``spec`` into headers and body, without signing.

    Raises ValueError for header values with CR/LF/NUL (including ones introduced by a field
    value in the Subject), a malformed Batch id, or naive datetimes.
    """
    # Checked before any work: these reach the SMTP envelope, not only headers.
    mime.check_header_value("recipient", spec.recipient)
    mime.check_header_value("batch id", spec.batch_id)
    subject = render_text(spec.subject, spec.fields)
    html = render_html(spec.html, spec.fields)
    if spec.tracker_base_url:
        html = apply_tracking(
            html,
            base_url=tracker_base(spec.tracker_base_url, spec.domain),
            key=spec.tracking_key,
            batch_id=spec.batch_id,
            recipient=spec.recipient,
            expires_at=spec.token_expires_at,
        )
    email_id = make_email_id(spec.batch_id, spec.recipient)
    return_path = make_bounce_address(spec.batch_id, spec.recipient, spec.bounce_secret)
    headers = build_headers(spec, subject, email_id)
    mime_headers, body = mime.mime_body(html, spec.attachments, spec.boundary_seed)
    headers += mime_headers
    headers += [mime.simple("X-Pool-Message-ID", spec.batch_id), ("X-Mailer", " " + MAILER)]
    return UnsignedMessage(email_id=email_id, return_path=return_path, headers=headers, body=body)


def build_envelope(spec: EnvelopeSpec) -> Envelope:
    """Build and DKIM-sign the Envelope described by ``spec`` (ValueError as compose_message)."""
    msg = compose_message(spec)
    signature = spec.dkim.sign(msg.headers, msg.body, spec.now)
    return Envelope(
        email_id=msg.email_id,
        sender=spec.sender_email,
        recipient=spec.recipient,
        return_path=msg.return_path,
        body=mime.serialise_headers([signature, *msg.headers]) + b"\r\n" + msg.body,
        should_retry=spec.should_retry,
    )
