"""Turning raw message bytes into the pieces a bounce parser reads: decoded human-readable text,
the machine-readable report parts (message/delivery-status, message/feedback-report) and the
headers of the returned original message.

Tolerant by design: real bounces have broken boundaries, wrong charsets and truncated bodies, so
every step degrades to "less text" instead of raising.
"""

from __future__ import annotations

import binascii
import contextlib
import email
import email.header
import email.policy
import html
import quopri
import re
from base64 import b64decode
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from typing import Final

# Where the human-readable part of a plain-text bounce ends and the returned message begins.
_ORIGINAL_MARKERS: Final = re.compile(
    r"^\s*(?:"
    r"-+ ?(?:this is a copy of (?:the|your) message|original message|unsent message follows"
    r"|returned message|the header of the original message|original mail|original message follows"
    r"|below this line is a copy|enclosed is a copy|message headers follow|forwarded message)"
    r"|-+ ?original message follows"
    r"|original message follows\.?"
    r"|original message:"
    r"|below is a copy of the original message"
    r"|included is a copy of the message header"
    r"|message headers follow\."
    r"|the original message (?:headers? )?(?:is|are|was) (?:included|attached)"
    r"|-+\s*original (?:message|mail) (?:info|follows)"
    r")",
    re.IGNORECASE | re.MULTILINE,
)
_TAG_RE: Final = re.compile(r"<(?:script|style)\b.*?</(?:script|style)>|<[^>]+>", re.S | re.I)
_BLOCK_TAG_RE: Final = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d)\s*/?>", re.I)
_MAX_PARTS: Final = 200
_MAX_TEXT: Final = 200_000


@dataclass
class Pieces:
    """What a message contains, in the order the parser needs it."""

    message: Message
    texts: list[str] = field(default_factory=list)
    delivery_status: list[str] = field(default_factory=list)
    feedback_reports: list[str] = field(default_factory=list)
    original_headers: list[Message] = field(default_factory=list)
    attached: list[Message] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def body(self) -> str:
        """The first readable part: where MTAs put the human-readable explanation."""
        return self.texts[0] if self.texts else ""


def parse_bytes(raw: bytes) -> Message:
    """Parse without the modern policy: compat32 never raises on malformed headers."""
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def header(msg: Message, name: str) -> str:
    """A header value as text, decoding RFC 2047 words; "" when absent or undecodable."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        parts = email.header.decode_header(str(value))
    except (ValueError, LookupError, binascii.Error):
        return str(value)
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            out.append(_decode(chunk, charset))
        else:
            out.append(chunk)
    return "".join(out).strip()


def header_all(msg: Message, name: str) -> list[str]:
    """Every value of a repeated header, undecoded."""
    return [str(v) for v in (msg.get_all(name) or [])]


def _decode(data: bytes, charset: str | None) -> str:
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1", "replace")


def _payload_bytes(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except (ValueError, TypeError, AssertionError):
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "replace") if isinstance(raw, str) else b""


def part_text(part: Message) -> str:
    """A leaf part's content as text, HTML reduced to its visible words."""
    text = _decode(_payload_bytes(part), part.get_content_charset())
    if part.get_content_type() == "text/html":
        text = html_to_text(text)
    return text[:_MAX_TEXT]


def html_to_text(markup: str) -> str:
    """Visible text of an HTML body, line breaks kept where blocks end."""
    text = _BLOCK_TAG_RE.sub("\n", markup)
    return html.unescape(_TAG_RE.sub("", text))


def _report_text(part: Message) -> str:
    """The raw field text of a message/delivery-status or message/feedback-report part.

    compat32 parses these as a list of header blocks; regenerate the text from them, and decode
    transfer encodings some MTAs apply to the whole part.
    """
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = []
        for sub in payload:
            if isinstance(sub, Message):
                lines = [f"{k}: {v}" for k, v in sub.items()]
                body = sub.get_payload()
                if isinstance(body, str) and body.strip():
                    lines.append(body)
                blocks.append("\n".join(lines))
        text = "\n\n".join(blocks)
    else:
        text = str(payload)
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        with contextlib.suppress(binascii.Error, ValueError):
            text = _decode(b64decode(text, validate=False), part.get_content_charset())
    elif encoding == "quoted-printable":
        text = _decode(quopri.decodestring(text.encode("latin-1", "replace")), None)
    return text


def collect(msg: Message) -> Pieces:
    """Walk the MIME tree once, without descending into returned messages."""
    pieces = Pieces(message=msg)
    budget = [_MAX_PARTS]
    _walk(msg, pieces, budget, depth=0)
    if budget[0] <= 0:
        pieces.notes.append("MIME tree truncated: too many parts")
    return pieces


def _walk(part: Message, pieces: Pieces, budget: list[int], depth: int) -> None:
    budget[0] -= 1
    if budget[0] < 0 or depth > 12:
        return
    ctype = part.get_content_type()
    payload = part.get_payload()
    if ctype in ("message/delivery-status", "message/global-delivery-status"):
        pieces.delivery_status.append(_report_text(part))
    elif ctype == "message/feedback-report":
        pieces.feedback_reports.append(_report_text(part))
    elif ctype in ("message/rfc822", "message/global", "message/rfc822-headers"):
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            pieces.original_headers.append(payload[0])
            pieces.attached.append(payload[0])
        elif isinstance(payload, str):
            pieces.original_headers.append(HeaderParser().parsestr(payload, headersonly=True))
    elif ctype in ("text/rfc822-headers", "text/global-headers"):
        pieces.original_headers.append(HeaderParser().parsestr(part_text(part), headersonly=True))
    elif isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                _walk(sub, pieces, budget, depth + 1)
    elif ctype.startswith("text/") or ctype.startswith("multipart/") or ctype == "message/partial":
        # A multipart whose boundary was lost arrives as one text blob: read it as text.
        if part.get_content_disposition() == "attachment" and pieces.texts:
            return
        text = part_text(part)
        if text.strip():
            pieces.texts.append(text)


def split_original(text: str) -> tuple[str, Message | None]:
    """Cut a plain-text bounce at the marker that introduces the returned message.

    Returns the explanation and, when the marker is followed by a header block, those headers.
    """
    match = _ORIGINAL_MARKERS.search(text)
    if not match:
        return text, None
    head = text[: match.start()]
    rest = text[match.end() :]
    rest = rest.split("\n", 1)[1] if "\n" in rest else ""
    rest = rest.lstrip("\r\n")
    lines: list[str] = []
    for line in rest.splitlines()[:200]:
        stripped = line.strip()
        if not stripped:
            if lines:
                break
            continue
        lines.append(stripped if not line[:1].isspace() else line)
    headers = HeaderParser().parsestr("\n".join(lines) + "\n\n", headersonly=True)
    return head, headers if len(headers) else None
