"""Reading the human-readable part of a bounce: which recipients it names and which lines explain
each one.

Non-standard bounces (Exim, qmail, Sendmail transcripts, Exchange 2003, Lotus Notes, Gmail's old
notices, Yahoo, OpenSMTPD, ...) share one shape: a line that names a recipient, followed by the
lines that explain it. So instead of one parser per MTA this module recognises the handful of ways
a line can name a recipient ("<addr>:", "addr ... reason", "550 5.1.1 <addr>... User unknown",
"Recipient address: addr", "RCPT TO:<addr>", ...) and gives each recipient the lines up to the
next such line. Text before the first recipient line is kept as a shared preamble, because some
layouts (Lotus Notes, ezweb) state the reason before the address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from kannon.dsn.address import ADDRESS, is_plausible_recipient, normalize

_A: Final = rf"[<\"'\[]?(?P<addr>{ADDRESS})[>\"'\]]?"
_BULLET: Final = r"(?:[*\-\u2022>]++\s*)?"
# "550 5.1.1 <addr>... User unknown": a Sendmail summary line, complete on its own.
_CODE_HEAD: Final = re.compile(
    r"^\s*(?:[<>]{3}\s*)?[245]\d\d[ \-]+(?:#?[245]\.\d\.\d+\s+)?"
    rf"{_A}\s*(?:\.\.\.|:|,)\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
# "addr: reason" / "<addr>... reason"
_REST_HEAD: Final = re.compile(
    rf"^\s*{_BULLET}{_A}\s*(?:\.\.\.|:)\s*(?P<rest>\S.*)$", re.IGNORECASE
)
# The address alone on its line ("  addr", "<addr>:", "\"addr\":", "* addr", ">>> addr <addr>")
_ALONE_HEAD: Final = re.compile(rf"^\s*{_BULLET}{_A}\s*:?\s*(?:<{ADDRESS}>)?\s*$", re.IGNORECASE)
# The address followed by a date, a parenthesised or bracketed note, or an error label.
_TAIL_HEAD: Final = re.compile(
    rf"^\s*{_BULLET}{_A}\s+(?P<rest>(?:on\s|\(|\[|invalid address|error\b).*)$", re.IGNORECASE
)
# A label that introduces a failed recipient anywhere on the line.
_LABEL_HEAD: Final = re.compile(
    r"(?:recipient(?:\s+address)?|final-recipient|original-recipient|failed recipients?"
    r"|unknown (?:user|recipient)|invalid final delivery userid|could not be delivered to"
    r"|unable to deliver (?:message |mail )?to|error delivering (?:your )?mail to|rcpt to"
    r"|(?:not|n't) (?:be )?delivered to|failed to deliver to|undeliverable to"
    r"|returned permanent errors"
    r"|delivery to)"
    rf"\s*:?\s*(?:rfc822;\s*)?{_A}(?P<rest>.*)$",
    re.IGNORECASE,
)
_SECTION_RE: Final = re.compile(r"^\s*(?:\.\.\.\s*)?while talking to\b", re.IGNORECASE)
# Preamble lines every bounce carries; they say that delivery failed, never why.
_BOILERPLATE_RE: Final = re.compile(
    r"delivery status notification|automatically generated|created automatically|mail delivery"
    r"|following (?:address|recipient)|could not be delivered|failed permanently|this is the"
    r"|permanent error|do not reply|sorry|mail system|postmaster|failure reasons|hi[.!]"
    r"|original message was received|^\s*from \S+|with id \S+|technical details|undeliver"
    r"|has been delayed|not yet been delivered|report relates to|header fields|your message"
    r"|(?:message-id|date|from|to|subject):",
    re.IGNORECASE,
)
_WORD_RE: Final = re.compile(r"\w{2,}")
_NO_VALID_RECIPIENTS_RE: Final = re.compile(r"<<<\s*5\d\d\b.*\bno valid recipients", re.IGNORECASE)


@dataclass
class TextHit:
    """A recipient named in the text and the lines that explain it."""

    address: str
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines).strip()


@dataclass
class TextScan:
    """Recipients in order of first mention, plus the text before the first one."""

    hits: list[TextHit]
    preamble: str

    def find(self, address: str) -> TextHit | None:
        for hit in self.hits:
            if hit.address == address:
                return hit
        return None


def _head(line: str) -> tuple[str, bool] | None:
    """(address, self-contained) when `line` names a recipient."""
    match = _CODE_HEAD.match(line)
    if match:
        return match.group("addr"), True
    for pattern in (_ALONE_HEAD, _REST_HEAD, _TAIL_HEAD):
        match = pattern.match(line)
        if match:
            return match.group("addr"), False
    match = _LABEL_HEAD.search(line)
    if match:
        return match.group("addr"), False
    return None


def scan(text: str, exclude: frozenset[str]) -> TextScan:
    """Split bounce text into per-recipient explanations. `exclude` holds the sender's addresses,
    which bounces quote ("MAIL FROM:<...>", "Domain of sender address ...") but never bounce."""
    hits: dict[str, TextHit] = {}
    order: list[str] = []
    preamble: list[str] = []
    current: TextHit | None = None
    last: TextHit | None = None
    pending: list[str] = []
    for line in text.splitlines():
        head = _head(line)
        address = normalize(head[0]) if head else ""
        if head and address not in exclude and is_plausible_recipient(address):
            # A summary line for the recipient whose block is open ("Remote host said:" then
            # "550 5.1.1 <addr>... User unknown") continues that block instead of closing it.
            self_contained = head[1] and (current is None or current.address != address)
            hit = hits.get(address)
            if hit is None:
                hit = hits[address] = TextHit(address)
                order.append(address)
            # Transcript lines seen since the previous summary line (">>> RCPT To:", "<<< 550")
            # explain this recipient.
            hit.lines.extend(pending)
            pending = []
            hit.lines.append(line.strip())
            current = None if self_contained else hit
            last = hit
            continue
        if _SECTION_RE.match(line) and order:
            # A Sendmail transcript section per remote host: what follows belongs to the next
            # recipient it names, not to the one before.
            _close_session(last, pending)
            current = None
            pending = [line.strip()]
        elif current is not None:
            current.lines.append(line.strip())
        elif order:
            pending.append(line.strip())
        else:
            preamble.append(line.strip())
    _close_session(last, pending)
    kept = [line for line in preamble if not _BOILERPLATE_RE.search(line) and _WORD_RE.search(line)]
    return TextScan([hits[a] for a in order], "\n".join(kept).strip())


def _close_session(last: TextHit | None, pending: list[str]) -> None:
    """Give the server's "no valid recipients" answer to DATA to the recipient named last.

    After a pipelined refusal Sendmail logs its own summary line for the recipient and then
    that answer, which tells that the refusal answered RCPT, not DATA (ADR 0055); without this
    it belonged to no one. Other trailing lines stay unassigned, as before.
    """
    if last is not None and any(_NO_VALID_RECIPIENTS_RE.match(line) for line in pending):
        last.lines.extend(line for line in pending if _NO_VALID_RECIPIENTS_RE.match(line))
