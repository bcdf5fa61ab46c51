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

Everything that varies (clock, MIME boundary seed, keys, secrets) comes in through one
``BatchSpec`` per Batch and one ``RecipientPart`` per Delivery, so the same two always build the
same bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kannon.envelope import mime, unsubscribe
from kannon.envelope.body import compile_html
from kannon.envelope.bounce import make_bounce_address
from kannon.envelope.dkim import DkimSigner, sign_all
from kannon.envelope.ids import make_email_id
from kannon.envelope.render import render_html, render_text
from kannon.envelope.tokens import BatchTokens, TrackingKey
from kannon.envelope.tracking import apply_tracking, tracker_base
from kannon.model.tracking import DEFAULT_CEILING, TrackingPolicy, token_identity

MAILER = "Kannon"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSpec:
    """What every Envelope of one Batch shares, decided once per dispatch. Plain, picklable data
    (the Dispatcher's build workers receive it). ``tracker_base_url=None`` disables open/click
    tracking and Kannon's own unsubscribe URL; it may contain ``{domain}`` (e.g.
    ``https://stats.{domain}``)."""

    batch_id: str
    domain: str
    sender_email: str
    sender_alias: str
    subject: str
    html: str
    tracker_base_url: str | None
    tracking_key: TrackingKey
    token_expires_at: datetime
    bounce_secret: bytes = field(repr=False)
    now: datetime
    attachments: Sequence[tuple[str, bytes]] = ()
    headers_to: Sequence[str] = ()
    headers_cc: Sequence[str] = ()
    unsubscribe_url_template: str | None = None
    builtin_unsubscribe: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientPart:
    """One Delivery's own part of its Envelope. ``pseudonym`` (32 hex digits) is needed when a
    channel is ``pseudonymous``."""

    recipient: str
    fields: Mapping[str, str] = field(default_factory=dict)
    should_retry: bool = True
    boundary_seed: bytes = b""
    tracking: TrackingPolicy = DEFAULT_CEILING
    pseudonym: str = ""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A built, signed message and its SMTP envelope: what goes on ``kannon.sending``
    (``wire.envelope`` encodes it as ``EmailToSend``) and what the SMTPSender sends."""

    email_id: str
    """``<base64url(recipient)/batch_id>``, also the Message-ID header."""
    sender: str
    """The header From address (``EmailToSend.from``); informative, SMTP uses ``return_path``."""
    recipient: str
    """SMTP RCPT TO: the Delivery's Recipient, whatever To/Cc say."""
    return_path: str
    """SMTP MAIL FROM: the signed bounce address."""
    body: bytes
    """The whole RFC 5322 message, headers and DKIM signatures included."""
    should_retry: bool
    """False on the last attempt the retry budget allows: a 4xx then ends as Bounced."""


def build_headers(
    batch: BatchSpec,
    recipient: str,
    subject: str,
    email_id: str,
    unsubscribe_url: str | None = None,
) -> list[mime.Header]:
    """The message headers before the MIME ones (From ... MIME-Version), validated."""
    headers = [
        mime.mailbox("From", batch.sender_alias, batch.sender_email),
        mime.address_list("To", batch.headers_to or (recipient,)),
    ]
    if batch.headers_cc:
        headers.append(mime.address_list("Cc", batch.headers_cc))
    headers += [
        mime.unstructured("Subject", subject),
        mime.date_header(batch.now),
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


def compose_message(batch: BatchSpec, part: RecipientPart) -> UnsignedMessage:
    """Render, track and serialise one Recipient's message, without signing.

    Raises ValueError for header values with CR/LF/NUL (including ones introduced by a field
    value in the Subject), a malformed Batch id, or naive datetimes.
    """
    # Checked before any work: these reach the SMTP envelope, not only headers.
    mime.check_header_value("recipient", part.recipient)
    mime.check_header_value("batch id", batch.batch_id)
    subject = render_text(batch.subject, part.fields)
    base = tracker_base(batch.tracker_base_url, batch.domain) if batch.tracker_base_url else None
    html = render_body(batch, part, base)
    email_id = make_email_id(batch.batch_id, part.recipient)
    return_path = make_bounce_address(batch.batch_id, part.recipient, batch.bounce_secret)
    unsubscribe = unsubscribe_url(batch, part, base)
    headers = build_headers(batch, part.recipient, subject, email_id, unsubscribe)
    mime_headers, body = mime.mime_body(html, batch.attachments, part.boundary_seed)
    headers += mime_headers
    headers += [mime.simple("X-Pool-Message-ID", batch.batch_id), ("X-Mailer", " " + MAILER)]
    return UnsignedMessage(email_id=email_id, return_path=return_path, headers=headers, body=body)


# Token minters a process keeps, one per (key, Batch, expiry): see BatchTokens.
_TOKEN_CACHE = 8


@functools.lru_cache(maxsize=_TOKEN_CACHE)
def batch_tokens(key: TrackingKey, batch_id: str, expires_at: datetime) -> BatchTokens:
    """The token minter of one Batch, shared by its Deliveries."""
    return BatchTokens(key, batch_id, expires_at)


def render_body(batch: BatchSpec, part: RecipientPart, base: str | None) -> str:
    """The Recipient's HTML: fields rendered, links and the open pixel as its Tracking Policy
    says (``base``: the resolved tracker base URL, None without a tracker).

    From the Batch's compiled document (``body.compile_html``) when it has one and the
    Recipient's values allow it, else by the reference path (``reference_body``): same text.
    """
    policy = part.tracking
    tracked = bool(base) and (policy.opens.tracks or policy.links.tracks)
    link_identity = open_identity = None
    if tracked:
        link_identity = token_identity(policy.links, part.recipient, batch.domain, part.pseudonym)
        open_identity = token_identity(policy.opens, part.recipient, batch.domain, part.pseudonym)
    plan = compile_html(batch.html)
    if plan is not None:
        track: Callable[[str], str] | None = None
        pixel: Callable[[], str] | None = None
        if tracked:
            tokens = batch_tokens(batch.tracking_key, batch.batch_id, batch.token_expires_at)
            if policy.links.tracks:
                signed: dict[str, str] = {}
                who = link_identity or part.recipient
                links = policy.links

                def track(url: str) -> str:
                    link = signed.get(url)
                    if link is None:
                        link = signed[url] = f"{base}/c/{tokens.click(who, url, links)}"
                    return link

            if policy.opens.tracks:
                opener = open_identity or part.recipient
                opens = policy.opens

                def pixel() -> str:
                    return f"{base}/o/{tokens.open(opener, opens)}"

        html = plan.render(part.fields, track, pixel)
        if html is not None:
            return html
    return reference_body(batch, part, base if tracked else None, link_identity, open_identity)


def reference_body(
    batch: BatchSpec,
    part: RecipientPart,
    base: str | None,
    link_identity: str | None,
    open_identity: str | None,
) -> str:
    """``render_body`` the straightforward way: render the whole document, then track it."""
    html = render_html(batch.html, part.fields)
    if base:
        policy = part.tracking
        html = apply_tracking(
            html,
            base_url=base,
            key=batch.tracking_key,
            batch_id=batch.batch_id,
            recipient=part.recipient,
            expires_at=batch.token_expires_at,
            links=policy.links,
            opens=policy.opens,
            link_identity=link_identity,
            open_identity=open_identity,
        )
    return html


def unsubscribe_url(batch: BatchSpec, part: RecipientPart, tracker: str | None) -> str | None:
    """The Recipient's one-click unsubscribe URL: the Batch's template, else Kannon's own
    endpoint when the Domain enables it (and a tracker serves it), else none."""
    if batch.unsubscribe_url_template is not None:
        return unsubscribe.render_url(batch.unsubscribe_url_template, part.fields, part.recipient)
    if batch.builtin_unsubscribe and tracker:
        token = batch_tokens(
            batch.tracking_key, batch.batch_id, batch.token_expires_at
        ).unsubscribe(part.recipient)
        return unsubscribe.builtin_url(tracker, token)
    return None


def build_envelope(
    batch: BatchSpec, part: RecipientPart, dkim: DkimSigner | Sequence[DkimSigner]
) -> Envelope:
    """Build the Envelope of one Recipient of ``batch`` and DKIM-sign it with ``dkim`` (one
    signer, or every key the Domain signs with). ValueError as compose_message."""
    msg = compose_message(batch, part)
    signers = [dkim] if isinstance(dkim, DkimSigner) else list(dkim)
    if not signers:
        raise ValueError("no DKIM key to sign with")
    signatures = sign_all(signers, msg.headers, msg.body, batch.now)
    return Envelope(
        email_id=msg.email_id,
        sender=batch.sender_email,
        recipient=part.recipient,
        return_path=msg.return_path,
        body=mime.serialise_headers([*signatures, *msg.headers]) + b"\r\n" + msg.body,
        should_retry=part.should_retry,
    )
