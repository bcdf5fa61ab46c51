"""Turning raw message bytes into the pieces a bounce parser reads: decoded human-readable text,
the machine-readable report parts (message/delivery-status, message/feedback-report) and the
headers of the returned original message.

Tolerant by design: real bounces have broken boundaries, wrong charsets and truncated bodies, so
every step degrades to "less text" instead of raising.

Bounded by design: anyone who ever received mail from us can send a report to a valid bounce
address, so every step here takes time linear in its input, and the input is capped: the first
`_MAX_MESSAGE` bytes of a message are parsed, and each part yields at most `_MAX_TEXT` characters
of text for the classifier. No regular expression here can rescan the rest of the text from each
position (see ADR 0018).
"""

from __future__ import annotations

import binascii
import contextlib
import email
import email.errors
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
    # [ \t]*, not \s*: \s* would cross line ends, so every line of a run of blank lines would
    # rescan all the following ones (quadratic time).
    r"^[ \t]*(?:"
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
# Where markup starts: a tag (1: "/" when closing, 2: its name), a comment (3), or a declaration,
# processing instruction or bogus end tag ("<!", "<?", "</" + non-letter) that ends at ">".
# A "<" followed by anything else is text, as in a browser ("a < b").
_MARKUP: Final = re.compile(r"<(?:(/?)([A-Za-z][A-Za-z0-9]*)|(!--)|[!?/])")
_RAW_TEXT_END: Final = {
    "script": re.compile(r"</script", re.I),
    "style": re.compile(r"</style", re.I),
}
# Tags after which the text continues on a new line (so line-based layouts still read it).
_LINE_BREAK_TAGS: Final = frozenset({"br"})
_BLOCK_END_TAGS: Final = frozenset({"p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6"})
# Character references with bounded digits and names: html.unescape alone raises on "&#" followed
# by more than 4,300 digits (Python's int() limit); longer runs stay text after the first ones.
_CHARREF: Final = re.compile(
    r"&(?:#[0-9]{1,10};?|#[xX][0-9A-Fa-f]{1,8};?|[A-Za-z][A-Za-z0-9]{1,31};?)"
)
_MAX_PARTS: Final = 200
# Bytes of a message that are parsed. What a report says comes first (the explanation, the
# delivery status, the returned message's headers); the largest of the 310 real reports in the
# test corpus is 72 KB. The stdlib's email parser needs up to ~3 s per MB for some shapes (one
# Message object per blank-line-separated block in a delivery-status part).
_MAX_MESSAGE: Final = 256 * 1024
# Runs of blank lines, kept as one: they carry no meaning in a report, and in a delivery-status
# part each one would become a Message object of its own.
_BLANK_LINES: Final = re.compile(rb"(?:\r?\n){3,}")
# Text of one part, as the parser reads it (the corpus's largest is 6 KB). The classifier reads
# it line by line with dozens of patterns: the cap bounds that to a fraction of a second.
_MAX_TEXT: Final = 64 * 1024


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


class MessageTruncated(email.errors.MessageDefect):
    """The message was longer than `_MAX_MESSAGE`; only its beginning was parsed."""


def parse_bytes(raw: bytes) -> Message:
    """Parse the message's first `_MAX_MESSAGE` bytes.

    Without the modern policy: compat32 never raises on malformed headers.
    """
    truncated = len(raw) > _MAX_MESSAGE
    if truncated:
        raw = raw[:_MAX_MESSAGE]
    msg = email.message_from_bytes(_BLANK_LINES.sub(b"\r\n\r\n", raw), policy=email.policy.compat32)
    if truncated:
        msg.defects.append(MessageTruncated(f"only the first {_MAX_MESSAGE} bytes were read"))
    return msg


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
    """Visible text of an HTML body, line breaks kept where blocks end.

    One pass from left to right: every search starts where the previous one ended and nothing
    is scanned twice, so the time is linear in the markup whatever it holds. (The stdlib's
    html.parser is not: on Python 3.11.7 unclosed "<script" tags take minutes per MiB.)
    A tag, comment or script left open at the end hides the rest, as it would in a browser.
    """
    out: list[str] = []
    pos = 0
    while True:
        start = _MARKUP.search(markup, pos)
        if start is None:
            out.append(markup[pos:])
            break
        out.append(markup[pos : start.start()])
        if start.group(3):  # <!-- comment -->
            end = markup.find("-->", start.end())
            if end < 0:
                break
            pos = end + 3
            continue
        end = markup.find(">", start.end())
        if end < 0:
            break
        pos = end + 1
        closing, name = bool(start.group(1)), (start.group(2) or "").lower()
        if name in _RAW_TEXT_END and not closing:
            # Script and style content is not text; it runs to the matching end tag.
            close = _RAW_TEXT_END[name].search(markup, pos)
            if close is None:
                break
            end = markup.find(">", close.end())
            if end < 0:
                break
            pos = end + 1
        elif (name in _LINE_BREAK_TAGS and not closing) or (closing and name in _BLOCK_END_TAGS):
            out.append("\n")
    return _CHARREF.sub(_unescape, "".join(out))


def _unescape(match: re.Match[str]) -> str:
    return html.unescape(match.group(0))


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
    return text[:_MAX_TEXT]


def collect(msg: Message) -> Pieces:
    """Walk the MIME tree once, without descending into returned messages."""
    pieces = Pieces(message=msg)
    if any(isinstance(defect, MessageTruncated) for defect in msg.defects):
        pieces.notes.append(f"message truncated: only its first {_MAX_MESSAGE} bytes were read")
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
