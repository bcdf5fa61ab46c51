"""Building one Envelope: from a Delivery's data to the signed RFC 5322 bytes the SMTPSender sends.

Owns the order of operations and the header set (ADR 0007):

1. render the Recipient's fields into the HTML (escaped) and the Subject (raw);
2. rewrite links and add the open pixel (when a tracker base URL is configured), each channel as
   the Delivery's frozen Tracking Policy says (``off``: untouched);
3. headers From, To (or ``headers_to``), Cc (``headers_cc``, header only: Cc addresses are not
   sent to), Subject, Date, Message-ID (the email id), List-Unsubscribe and
   List-Unsubscribe-Post (RFC 8058, when the Batch has a URL template or the Domain serves
   unsubscribes itself), MIME-Version, Content-Type, X-Pool-Message-ID (the Batch id), X-Mailer;
4. MIME body (see ``mime``), then one DKIM-Signature per signing key prepended, RSA first.

Everything that varies (clock, MIME boundary seed, keys, secrets) comes in through
``EnvelopeSpec``, so the same spec always builds the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kannon.envelope import mime, unsubscribe
from kannon.envelope.bounce import make_bounce_address
from kannon.envelope.dkim import DkimSigner, sign_all
from kannon.envelope.ids import make_email_id
from kannon.envelope.render import render_html, render_text
from kannon.envelope.tokens import TrackingKey, sign_unsubscribe
from kannon.envelope.tracking import apply_tracking, tracker_base
from kannon.model.tracking import DEFAULT_CEILING, TrackingPolicy, token_identity

MAILER = "Kannon"


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeSpec:
    """Everything needed to build one Delivery's Envelope. ``tracker_base_url=None`` disables
    open/click tracking and Kannon's own unsubscribe URL; it may contain ``{domain}`` (e.g.
    ``https://stats.{domain}``). ``dkim`` is one signer or all the Domain signs with.
    ``pseudonym`` (32 hex digits) is needed when a channel is ``pseudonymous``."""

    batch_id: str
    domain: str
    sender_email: str
    sender_alias: str
    subject: str
    html: str
    recipient: str
    dkim: DkimSigner | Sequence[DkimSigner]
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
    tracking: TrackingPolicy = DEFAULT_CEILING
    pseudonym: str = ""
    unsubscribe_url_template: str | None = None
    builtin_unsubscribe: bool = False


@dataclass(frozen=True, slots=True)
class Envelope:
    """A built, signed message and its SMTP envelope (what goes on ``kannon.sending``)."""

    email_id: str
    sender: str  # the From address
    recipient: str  # SMTP RCPT TO: the Delivery's Recipient, whatever To/Cc say
    return_path: str  # SMTP MAIL FROM: the signed bounce address
    body: bytes
    should_retry: bool


def build_headers(
    spec: EnvelopeSpec, subject: str, email_id: str, unsubscribe_url: str | None = None
) -> list[mime.Header]:
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
    ]
    if unsubscribe_url is not None:
        headers += unsubscribe.headers(unsubscribe_url)
    headers.append(("MIME-Version", " 1.0"))
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
    base = tracker_base(spec.tracker_base_url, spec.domain) if spec.tracker_base_url else None
    policy = spec.tracking
    if base and (policy.opens.tracks or policy.links.tracks):
        html = apply_tracking(
            html,
            base_url=base,
            key=spec.tracking_key,
            batch_id=spec.batch_id,
            recipient=spec.recipient,
            expires_at=spec.token_expires_at,
            links=policy.links,
            opens=policy.opens,
            link_identity=token_identity(policy.links, spec.recipient, spec.domain, spec.pseudonym),
            open_identity=token_identity(policy.opens, spec.recipient, spec.domain, spec.pseudonym),
        )
    email_id = make_email_id(spec.batch_id, spec.recipient)
    return_path = make_bounce_address(spec.batch_id, spec.recipient, spec.bounce_secret)
    headers = build_headers(spec, subject, email_id, unsubscribe_url(spec, base))
    mime_headers, body = mime.mime_body(html, spec.attachments, spec.boundary_seed)
    headers += mime_headers
    headers += [mime.simple("X-Pool-Message-ID", spec.batch_id), ("X-Mailer", " " + MAILER)]
    return UnsignedMessage(email_id=email_id, return_path=return_path, headers=headers, body=body)


def unsubscribe_url(spec: EnvelopeSpec, tracker: str | None) -> str | None:
    """The Recipient's one-click unsubscribe URL: the Batch's template, else Kannon's own
    endpoint when the Domain enables it (and a tracker serves it), else none."""
    if spec.unsubscribe_url_template is not None:
        return unsubscribe.render_url(spec.unsubscribe_url_template, spec.fields, spec.recipient)
    if spec.builtin_unsubscribe and tracker:
        token = sign_unsubscribe(
            spec.tracking_key, spec.batch_id, spec.recipient, spec.token_expires_at
        )
        return unsubscribe.builtin_url(tracker, token)
    return None


def build_envelope(spec: EnvelopeSpec) -> Envelope:
    """Build and DKIM-sign the Envelope described by ``spec`` (ValueError as compose_message)."""
    msg = compose_message(spec)
    signers = [spec.dkim] if isinstance(spec.dkim, DkimSigner) else list(spec.dkim)
    if not signers:
        raise ValueError("no DKIM key to sign with")
    signatures = sign_all(signers, msg.headers, msg.body, spec.now)
    return Envelope(
        email_id=msg.email_id,
        sender=spec.sender_email,
        recipient=spec.recipient,
        return_path=msg.return_path,
        body=mime.serialise_headers([*signatures, *msg.headers]) + b"\r\n" + msg.body,
        should_retry=spec.should_retry,
    )
