"""SMTP numbers in bounce text: RFC 3463 enhanced status codes, RFC 5321 reply codes, the SMTP
command a rejection answered, and what each enhanced status code means as a bounce reason.

Everything works on already-decoded text; nothing here knows about MIME.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# An enhanced status code: class 2/4/5, subject 0-7, detail up to three digits. The look-arounds
# keep IP addresses ("192.0.2.5"), dotted versions ("4.16.55.1") and identifiers ("IB5.1.1") out.
_STATUS = r"(?<![\w.])([245])\.([0-7])\.(\d{1,3})(?![\w]|\.\d)"
STATUS_RE: Final = re.compile(_STATUS)
# A reply code immediately followed by a status code: "550 5.1.1", "550-5.7.1", "550-'5.7.1",
# "550 #5.1.0". The status that follows a reply is the remote server's own verdict.
_PAIR_RE: Final = re.compile(r"(?<![\w.])([245][0-5]\d)[ \-]+['\"]?#?" + _STATUS)
# A bare reply code: three digits, not part of an IP address, a date or an identifier.
_REPLY_RE: Final = re.compile(r"(?<![\w.\-/#])([245][0-5]\d)(?=[ \-,:;)\]'\"]|$)", re.MULTILINE)


def normalize_status(text: str) -> str:
    """The first enhanced status code in `text` ("5.1.1 (user unknown)" -> "5.1.1"), else ""."""
    match = STATUS_RE.search(text)
    return ".".join(match.groups()) if match else ""


def status_comment(text: str) -> str:
    """The free text after the code in a Status: field; some MTAs put the explanation there."""
    match = STATUS_RE.search(text)
    if not match:
        return ""
    return text[match.end() :].strip(" \t()")


@dataclass(frozen=True, slots=True)
class Codes:
    """The status and reply codes found in one diagnostic text."""

    status: str
    reply: str


def find_codes(text: str, *, want_success: bool = False) -> Codes:
    """Pick the status and reply code that best explain a diagnostic text.

    Failure codes are preferred over success codes unless `want_success`, and specific codes over
    X.0.0 ones. When a relay wraps the remote answer ("554 4.4.7 Message expired ... <421 4.4.2
    Connection timed out>", "5.1.0 - Unknown address error 550-'5.7.1 ... Access denied'") the
    innermost, i.e. last, reply-plus-status pair is the actual cause, so the last pair wins.
    Without pairs, the first bare status and the first failure reply code are used.
    """
    pairs = list(_PAIR_RE.finditer(text))
    if not want_success:
        # A transcript quotes the successful steps too ("250 2.1.5 Ok", "221 2.0.0 Bye").
        pairs = [p for p in pairs if p.group(1)[0] in "45"] or pairs
    # A relay's own summary ("554 5.0.0 Service unavailable") repeats the remote's specific code
    # as a generic one; the specific code is the better witness.
    pairs = [p for p in pairs if p.group(3) != "0" or p.group(4) != "0"] or pairs
    if pairs:
        last = pairs[-1]
        return Codes(".".join(last.groups()[1:]), last.group(1))
    status_match = STATUS_RE.search(text)
    status = ".".join(status_match.groups()) if status_match else ""
    reply = ""
    for match in _REPLY_RE.finditer(text):
        code = match.group(1)
        if code[0] in "45" or (want_success and code[0] == "2"):
            reply = code
            break
    return Codes(status, reply)


def _specificity(status: str) -> int:
    """2 for a fully specific code, 1 for "X.Y.0" or "X.0.Z", 0 for "X.0.0"."""
    _, subject, detail = status.split(".")
    if subject == "0" and detail == "0":
        return 0
    return 1 if "0" in (subject, detail) else 2


# Status: field values that reporting MTAs use as catch-alls, so a specific code quoted from the
# remote server says more: 4.4.7 (gave up, for whatever reason), 4.7.0 (too many errors), 5.3.x
# (the reporting system's own trouble) and X.5.x (protocol errors, often a relay's wrapper).
_CATCH_ALL_FIELD: Final = re.compile(r"^(?:4\.4\.7|4\.7\.0|5\.3\.\d+|[45]\.5\.[1245])$")


def prefer_status(field: str, quoted: str, reply: str) -> str:
    """Choose between a report's Status: field and the status code quoted in its diagnostic text.

    The Status: field is the reporting MTA's considered verdict, so it wins by default; the
    quoted code wins when it is the more specific of two, when the field is a catch-all, and
    when the two disagree on the class and the remote's reply code sides with the quoted one.
    """
    if not field or not quoted or field == quoted:
        return field or quoted
    if field[0] != quoted[0] and reply[:1] in (field[0], quoted[0]):
        return field if reply[0] == field[0] else quoted
    (field_rank, quoted_rank) = (_specificity(field), _specificity(quoted))
    if field_rank != quoted_rank:
        return field if field_rank > quoted_rank else quoted
    if _CATCH_ALL_FIELD.match(field):
        return quoted
    if field == "5.1.1" and quoted_rank == 2 and not quoted.startswith("5.5."):
        # A mailbox-level code from the remote refines the generic "bad mailbox" mapping.
        return quoted
    return field


# Which SMTP command a rejection answered, as MTAs phrase it. Order does not matter: the last
# mention in a recipient's text wins, because transcripts list commands in the order sent.
_COMMAND_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    (
        "RCPT",
        re.compile(
            r"in (?:reply|response) to RCPT TO|after (?:pipelined )?RCPT TO|after RCPT command"
            r"|RCPT TO response|during RCPT(?: TO)?\b"
            r"|(?:>>>|<<<) ?RCPT TO"
            r"|\[RCPT_TO\]|SMTP:RCPT|like our RCPT TO|does not like recipient"
            r"|(?:server|host) (?:has )?rejected (?:the )?(?:recipient )?address"
            r"|SMTP command\s*\n[\s\-]*RCPT\b",
            re.IGNORECASE,
        ),
    ),
    (
        "MAIL",
        re.compile(
            r"in (?:reply|response) to MAIL FROM|after (?:pipelined )?MAIL FROM"
            r"|(?:>>>|<<<) ?MAIL FROM|during MAIL(?: FROM)?\b"
            r"|\[MAIL_FROM\]|SMTP:MAIL"
            r"|sender was rejected|like our MAIL FROM|SMTP command\s*\n[\s\-]*MAIL\b",
            re.IGNORECASE,
        ),
    ),
    (
        "DATA",
        re.compile(
            r"in (?:reply|response) to (?:the )?(?:end of )?DATA"
            r"|after (?:end of data|(?:pipelined )?DATA)|>>> DATA|during DATA\b"
            r"|our final DATA|failed after I sent the message|\(DATA\)|SMTP:DATA"
            r"|\[(?:BODY|DATA|END_OF_MESSAGE)\]"
            r"|SMTP command\s*\n[\s\-]*DATA\b",
            re.IGNORECASE,
        ),
    ),
    (
        "CONN",
        re.compile(
            r"after initial connection|in reply to (?:the )?initial greeting|SMTP:CONN"
            r"|during greeting wait|refused to talk to me|but greeting failed",
            re.IGNORECASE,
        ),
    ),
    (
        "EHLO",
        re.compile(r"(?:after|in reply to|>>>) [EH]{2}LO\b|my name was rejected", re.IGNORECASE),
    ),
    ("STARTTLS", re.compile(r"after STARTTLS|in reply to STARTTLS", re.IGNORECASE)),
)


# One step of a session transcript (Sendmail, Courier, ...): ">>> RCPT To:<a@b>", "<<< 550 ...".
_TRANSCRIPT_RE: Final = re.compile(r"^\s*(?:>>>\s*(\.|[A-Za-z]+)|<<<\s*([245])\d\d)", re.MULTILINE)
_TRANSCRIPT_COMMANDS: Final = {
    "rcpt": "RCPT",
    "mail": "MAIL",
    "data": "DATA",
    ".": "DATA",
    "ehlo": "EHLO",
    "helo": "EHLO",
    "starttls": "STARTTLS",
}


# The server's answer to DATA when every RCPT of a pipelined transaction was refused (Postfix
# "554 5.5.1 Error: no valid recipients", others alike).
_NO_VALID_RECIPIENTS_RE: Final = re.compile(
    r"^\s*<<<\s*5\d\d\b[^\n]*\bno valid recipients", re.MULTILINE | re.IGNORECASE
)


def _transcript_command(text: str) -> str:
    """The command sent just before the first failure reply of a transcript, else "".

    Transcripts go on after the failure (a rejected RCPT is followed by DATA and its "503 need
    RCPT"), so the last command mentioned is not the one that failed. With PIPELINING (RFC
    2920) a client sends RCPT and DATA together and logs only ">>> DATA" before the replies:
    the refusal of the recipient then shows after DATA, and the server's "no valid recipients"
    answer to DATA says so (ADR 0055).
    """
    sent = ""
    for match in _TRANSCRIPT_RE.finditer(text):
        if match.group(1):
            sent = _TRANSCRIPT_COMMANDS.get(match.group(1).lower(), "")
        elif match.group(2) in ("4", "5") and sent:
            if sent == "DATA" and _NO_VALID_RECIPIENTS_RE.search(text, match.start()):
                return "RCPT"
            return sent
    return ""


def find_command(text: str) -> str:
    """The SMTP command a rejection in `text` answered ("RCPT", "MAIL", "DATA", ...), else ""."""
    from_transcript = _transcript_command(text)
    if from_transcript:
        return from_transcript
    best = ""
    best_at = -1
    for name, pattern in _COMMAND_PATTERNS:
        for match in pattern.finditer(text):
            if match.start() > best_at:
                best, best_at = name, match.start()
    return best


# RFC 3463 (and the codes registered since) read as bounce reasons. Keys are "class.subject.detail";
# a "*" class applies to both 4 and 5. Transient and permanent differ where the meaning does: a
# permanent 5.1.x is about the address, a transient one is not proof of anything.
_STATUS_REASONS: Final[dict[str, str]] = {
    "5.1.0": "userunknown",
    "*.1.1": "userunknown",
    "5.1.2": "hostunknown",
    "5.1.3": "userunknown",
    "*.1.4": "filtered",
    "*.1.6": "hasmoved",
    "*.1.7": "rejected",
    "*.1.8": "rejected",
    "*.1.9": "systemerror",
    "5.1.10": "notaccept",
    "5.2.0": "filtered",
    "5.2.1": "filtered",
    "4.2.1": "blocked",
    "*.2.2": "mailboxfull",
    "*.2.3": "exceedlimit",
    "*.2.4": "filtered",
    "5.3.0": "systemerror",
    "*.3.1": "systemfull",
    "*.3.2": "notaccept",
    "*.3.3": "systemerror",
    "*.3.4": "mesgtoobig",
    "*.3.5": "systemerror",
    "5.4.0": "networkerror",
    "*.4.1": "expired",
    "*.4.2": "networkerror",
    "*.4.3": "systemerror",
    "5.4.4": "hostunknown",
    "4.4.4": "networkerror",
    "*.4.5": "systemfull",
    "*.4.6": "networkerror",
    "*.4.7": "expired",
    "*.4.8": "networkerror",
    "*.5.2": "syntaxerror",
    "*.5.3": "toomanyconn",
    "*.5.4": "systemerror",
    "*.5.5": "systemerror",
    "*.5.6": "syntaxerror",
    "*.6.0": "contenterror",
    "*.6.1": "contenterror",
    "*.6.2": "contenterror",
    "*.6.3": "contenterror",
    "*.6.5": "contenterror",
    "*.6.6": "contenterror",
    "*.6.7": "contenterror",
    "*.6.8": "contenterror",
    "*.6.9": "contenterror",
    "4.7.1": "blocked",
    "4.7.2": "blocked",
    "*.7.13": "suspend",
    "*.7.16": "mesgtoobig",
    "*.7.17": "hasmoved",
    "*.7.18": "hasmoved",
    "*.7.20": "authfailure",
    "*.7.21": "authfailure",
    "*.7.22": "authfailure",
    "*.7.23": "authfailure",
    "*.7.24": "authfailure",
    "*.7.25": "requireptr",
    "*.7.26": "authfailure",
    "5.7.27": "notaccept",
    "*.7.28": "spamdetected",
    "*.7.29": "authfailure",
    "*.7.30": "failedstarttls",
}
# The rest of 5.7.x is "security or policy status" with no finer meaning.
_PERMANENT_SECURITY: Final = re.compile(r"5\.7\.(?:[0-9]|1[0-5]|19)$")


def status_reason(status: str) -> str:
    """The reason an enhanced status code implies on its own, or "" when it is not specific."""
    if not status:
        return ""
    reason = _STATUS_REASONS.get(status) or _STATUS_REASONS.get("*" + status[1:])
    if reason:
        return reason
    if status.startswith("2."):
        return "delivered"
    if _PERMANENT_SECURITY.match(status):
        return "securityerror"
    return ""


def is_generic(status: str) -> bool:
    """True for the "only the class is known" codes (X.0.0) that a better code should replace."""
    return status.endswith(".0.0") or not status
