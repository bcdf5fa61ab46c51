"""An upper bound on the size of a Batch's largest Envelope, computed at intake without building it.

The bus carries messages up to the NATS server's ``max_payload`` (1 MiB by default). An Envelope
over it can never be published, so the API refuses such a Batch instead of accepting work that
would only be retried until the retry budget is spent. Building every Envelope at intake would
cost a millisecond per Recipient; this bound costs a pass over the template once and, per
Recipient, a look at the values of the fields the template uses.

The bound follows :mod:`kannon.envelope.build` step by step, never below what it produces:

* HTML: the template's quoted-printable size, plus per Recipient each field value as many times as
  the template uses it (HTML-escaped for ``{{ x }}``, raw for ``{{{ x }}}``), counted at the
  worst quoted-printable expansion (3 bytes per byte, soft line breaks, a few bytes per insertion).
  Placeholder text that rendering removes is still counted.
* Tracking: per tracked link a redirect URL ``<tracker base>/c/<token>``, whose token is the
  base64url of the claims (kind, expiry, key id, Batch id, Recipient, URL) plus a MAC — so a link
  grows by the base URL, the claims and a third of its own length; the open pixel is added once.
  Links come from the template, and from ``{{{ raw }}}`` values (at most one per ``<a`` in them).
* Attachments: exact base64 with CRLF line breaks, plus each part's headers at their largest
  (filenames RFC 2231-encoded).
* Headers: From, To/Cc, the Subject rendered with the Recipient's fields and RFC 2047-encoded,
  Date, Message-ID, the fixed MIME headers, X-Pool-Message-ID, List-Unsubscribe(-Post) (the
  Batch's URL template with every value percent-encoded, or Kannon's own ``/u/<token>``), and up
  to four DKIM-Signatures (RSA and Ed25519, old and new key during a rotation) for RSA keys up
  to 4096 bits.
* Tracking identities: a stand-in identity (``<32 hex>@track.<domain>``) may be longer than the
  address it stands for; tokens are counted with the longer of the two.
* Framing: the ``EmailToSend`` protobuf fields around the body and the NATS message headers
  (``Nats-Msg-Id``), which count against ``max_payload`` too.

Pure: all inputs are passed in.
"""

from __future__ import annotations

import html as _html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kannon.envelope import mime
from kannon.envelope.render import placeholder_counts, placeholder_names
from kannon.envelope.tracking import tracked_hrefs, tracker_base

# Bytes a quoted-printable encoder may write per input byte (=XX), and its line overhead:
# a soft break "=\r\n" at the latest after 73 encoded characters.
_QP_FACTOR = 3 * 76 / 73
# Per insertion into encoded text: a line split, a "From " escape, trailing-space escapes.
_QP_SLACK = 8
_LINE_FACTOR = 76 / 73
# Token claims besides key id, Batch id, Recipient and URL: kind 1, expiry 8, three length
# prefixes 1 + 2 + 2, MAC 16.
_TOKEN_FIXED = 30
# <img src="..." width="1" height="1" alt="" style="display:none"/> without its URL.
_PIXEL_TAG = 64
# Header fields whose values Kannon generates (Date, MIME-Version, Content-Type, CTE, X-Mailer,
# the Message-ID and X-Pool-Message-ID names), with folding: a generous constant.
_FIXED_HEADERS = 512
# DKIM-Signature: b= of a 4096-bit key is 684 base64 characters; bh=, d=, s=, h= with From
# oversigned, t=, tags and folding stay well under the rest.
_DKIM_HEADER = 1400
# Signatures on one message: RSA and Ed25519, each twice while a rotation's grace period runs.
MAX_DKIM_SIGNATURES = 4
# "List-Unsubscribe: <" ... ">" and "List-Unsubscribe-Post: List-Unsubscribe=One-Click", folded.
_UNSUBSCRIBE_HEADERS = 96
# "<32 hex>@track." in front of the Domain: the longest tracking identity besides the address.
_STAND_IN = 32 + 7
# Per MIME part: delimiter line and the headers of the HTML part or an attachment (without name).
_PART_OVERHEAD = 256
# Filenames are cut to 200 characters, at most 4 UTF-8 bytes each, percent-encoded (3 bytes per
# byte) plus RFC 2231 continuation overhead, written twice (name= and filename=).
_MAX_FILENAME_BYTES = 200 * 4
# EmailToSend: tags, length prefixes and should_retry. NATS headers: the version line, the
# Nats-Msg-Id name and separators, and the attempt number after the email id.
_PROTOBUF_FRAMING = 64
_NATS_HEADERS = 64
# Bounce address: a local part of at most 64 octets, "@" and the Domain.
_BOUNCE_LOCAL = 64


@dataclass(frozen=True, slots=True)
class EnvelopeEstimate:
    """The largest Envelope of a Batch: its size bound and the Recipient it belongs to."""

    size: int
    recipient: str
    html: int  # the quoted-printable HTML part within `size`
    attachments: int  # the encoded attachment parts within `size`


def base64_size(length: int) -> int:
    """Exact size of :func:`kannon.envelope.mime.base64_body` for ``length`` input bytes."""
    chars = 4 * ((length + 2) // 3)
    return chars + 2 * ((chars + 75) // 76)


def encoded_words_size(text_bytes: int) -> int:
    """Bound on :func:`kannon.envelope.mime.encode_words` (or plain folding) of that many bytes:
    words of at least 39 bytes (42 minus a split character), each ``=?utf-8?b?...?=`` of at most
    68 characters, folded with CRLF and a space."""
    words = text_bytes // 39 + 1
    return words * (68 + 3)


def _utf8(text: str) -> int:
    return len(text.encode("utf-8")) if not text.isascii() else len(text)


def _escaped(value: str) -> int:
    return _utf8(_html.escape(value, quote=True))


def _links_in(value: str) -> int:
    return value.lower().count("<a")


def _six_per_char(value: str) -> int:
    return 6 * len(value)


def _four_per_char(value: str) -> int:
    return 4 * len(value)


def _half_per_char(value: str) -> int:
    return len(value) // 2


def _addresses(addresses: Sequence[str]) -> int:
    return sum(_utf8(a) + 4 for a in addresses) + 8


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a template contributes, computed once per Batch."""

    html_qp: int
    html_fields: dict[str, tuple[int, int]]
    href_fields: dict[str, tuple[int, int]]
    links: int
    href_bytes: int
    subject_bytes: int
    subject_fields: dict[str, tuple[int, int]]


def _shape(html: str, subject: str) -> _Shape:
    hrefs = tracked_hrefs(html)
    href_fields: dict[str, tuple[int, int]] = {}
    for url in hrefs:
        for name, (escaped, raw) in placeholder_counts(url).items():
            old = href_fields.get(name, (0, 0))
            href_fields[name] = (old[0] + escaped, old[1] + raw)
    return _Shape(
        html_qp=len(mime.quoted_printable(html)),
        html_fields=placeholder_counts(html),
        href_fields=href_fields,
        links=len(hrefs),
        href_bytes=sum(_utf8(url) for url in hrefs),
        subject_bytes=_utf8(subject),
        subject_fields=placeholder_counts(subject),
    )


def estimate_largest_envelope(
    *,
    html: str,
    subject: str,
    domain: str,
    batch_id: str,
    sender_email: str,
    sender_alias: str,
    recipients: Sequence[tuple[str, Mapping[str, str]]],
    attachments: Mapping[str, int],
    headers_to: Sequence[str],
    headers_cc: Sequence[str],
    tracker_base_url: str | None,
    tracking_kid_bytes: int,
    limit: int | None = None,
    unsubscribe_url_template: str | None = None,
    builtin_unsubscribe: bool = False,
) -> EnvelopeEstimate | None:
    """Bound the Envelope of every Recipient (email, fields) and return the largest; None when
    there are no Recipients. ``attachments`` maps filenames to their decoded sizes.

    With a ``limit``, a coarser bound that is already within it is returned as is (it is still
    an upper bound); the exact bound is computed only when needed to decide against the limit.
    """
    shape = _shape(html, subject)
    batch = _utf8(batch_id)
    if tracker_base_url:
        base = _utf8(_html.escape(tracker_base(tracker_base_url, domain), quote=True))
    else:
        base = None

    attachment_parts = 0
    if attachments:
        attachment_parts = _PART_OVERHEAD + 64  # the HTML part's headers and the closing line
        for filename, length in attachments.items():
            name_bytes = min(_utf8(filename), _MAX_FILENAME_BYTES)
            attachment_parts += _PART_OVERHEAD + 2 * (4 * name_bytes + 64) + base64_size(length)

    unsubscribe_fields = (
        placeholder_names(unsubscribe_url_template) if unsubscribe_url_template else set()
    )
    fixed = (
        MAX_DKIM_SIGNATURES * _DKIM_HEADER
        + _FIXED_HEADERS
        + 8
        + encoded_words_size(_utf8(sender_alias))
        + _utf8(sender_email)
        + 2 * batch  # Message-ID, X-Pool-Message-ID
        + (_addresses(headers_cc) if headers_cc else 0)
        + attachment_parts
        + _PROTOBUF_FRAMING
        + _NATS_HEADERS
        + _utf8(sender_email)  # EmailToSend.from
        + _BOUNCE_LOCAL
        + 1
        + _utf8(domain)  # EmailToSend.return_path
        + batch  # EmailToSend.email_id's Batch part
    )
    to_header = _addresses(headers_to) if headers_to else 0

    def bound(
        email: str,
        fields: Mapping[str, str],
        escaped_bytes: Callable[[str], int],
        raw_bytes: Callable[[str], int],
        links_in: Callable[[str], int],
    ) -> tuple[int, int]:
        """(Envelope bound, HTML part bound) of one Recipient, values measured as given."""
        rcpt = _utf8(email)
        identity = max(rcpt, _STAND_IN + _utf8(domain))
        rendered_growth = 0  # bytes field values add to the HTML (before encoding)
        insertions = 0
        raw_links = 0
        raw_link_bytes = 0
        for name, (escaped, raw) in shape.html_fields.items():
            value = fields.get(name)
            if value is None:
                continue  # the placeholder stays as written: already in the template
            if escaped:
                rendered_growth += escaped * escaped_bytes(value)
            if raw:
                value_bytes = raw_bytes(value)
                rendered_growth += raw * value_bytes
                links_in_value = links_in(value)
                raw_links += raw * links_in_value
                raw_link_bytes += raw * value_bytes if links_in_value else 0
            insertions += escaped + raw
        html_qp = shape.html_qp + int(rendered_growth * _QP_FACTOR) + insertions * _QP_SLACK
        if base is not None:
            href_bytes = shape.href_bytes + raw_link_bytes
            for name, (escaped, raw) in shape.href_fields.items():
                value = fields.get(name)
                if value is not None:
                    href_bytes += escaped * escaped_bytes(value) + raw * raw_bytes(value)
            claims = _TOKEN_FIXED + tracking_kid_bytes + batch + identity
            links = shape.links + raw_links
            # Per link: base + "/c/" + base64url(claims + url) replaces the url.
            per_link = base + 3 + (4 * claims) // 3 + 4
            added = links * per_link + (href_bytes + 2) // 3
            added += _PIXEL_TAG + base + 3 + (4 * claims) // 3 + 4
            html_qp += int(added * _LINE_FACTOR) + (links + 1) * _QP_SLACK
        unsubscribe = 0
        if unsubscribe_url_template is not None:
            # Every value percent-encoded: 3 characters per UTF-8 byte.
            unsubscribe = _UNSUBSCRIBE_HEADERS + _utf8(unsubscribe_url_template)
            for name in unsubscribe_fields:
                value = fields.get(name)
                if name == "email" and (value is None or len(value) < len(email)):
                    value = email  # the address fills it when no field does (or, bounding, may)
                if value is not None:
                    unsubscribe += 3 * unsubscribe_url_template.count(name) * raw_bytes(value)
        elif builtin_unsubscribe and base is not None:
            claims = _TOKEN_FIXED + tracking_kid_bytes + batch + rcpt
            unsubscribe = _UNSUBSCRIBE_HEADERS + base + 3 + (4 * claims) // 3 + 4
        subject_bytes = shape.subject_bytes
        for name, (escaped, raw) in shape.subject_fields.items():
            value = fields.get(name)
            if value is not None:
                subject_bytes += (escaped + raw) * raw_bytes(value)
        size = (
            fixed
            + unsubscribe
            + html_qp
            + encoded_words_size(subject_bytes)
            + (to_header or rcpt + 8)
            + 2 * ((4 * rcpt) // 3 + 4)  # the email id in Message-ID and EmailToSend.email_id
            + (4 * rcpt) // 3
            + 4
            + batch
            + 2  # the email id again in Nats-Msg-Id
            + rcpt  # EmailToSend.to
        )
        return size, html_qp

    def largest() -> EnvelopeEstimate | None:
        best: EnvelopeEstimate | None = None
        for email, fields in recipients:
            size, html_qp = bound(email, fields, _escaped, _utf8, _links_in)
            if best is None or size > best.size:
                best = EnvelopeEstimate(size, email, html_qp, attachment_parts)
        return best

    if not recipients:
        return None
    if limit is not None:
        # First a bound for all at once: the longest address with, for each field, its longest
        # value, measured by string length alone (a character is at most 4 UTF-8 bytes, at most
        # 6 once HTML-escaped, and "<a" takes two). It is above every Recipient's bound and costs
        # a few C-level passes; only when it is over `limit` is each Recipient measured exactly.
        names = {
            *shape.html_fields,
            *shape.href_fields,
            *shape.subject_fields,
            *unsubscribe_fields,
        }
        longest = {
            name: "x" * max(len(fields.get(name) or "") for _, fields in recipients)
            for name in names
        }
        email = max((email for email, _ in recipients), key=_utf8)
        size, html_qp = bound(email, longest, _six_per_char, _four_per_char, _half_per_char)
        if size <= limit:
            return EnvelopeEstimate(size, email, html_qp, attachment_parts)
    return largest()
