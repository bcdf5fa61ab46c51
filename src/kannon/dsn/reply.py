"""The verdict on one SMTP reply that refused a message during the transaction (the SMTPSender's
synchronous rejections), in the same terms as a DSN's: status, reason, confident, hard bounce.

The rule (ADR 0029): a refusal is a hard bounce — the address itself is dead, so it may be
suppressed — only when

* the reply is 5xx and its enhanced status code, if it gives one, is of class 5 too (a "550 4.2.2"
  keeps its options open);
* the classifier's reason is a dead-address one (`userunknown`, `hostunknown`, `hasmoved`,
  `notaccept`: 5.1.1 bad mailbox, 5.1.2 bad system, 5.1.6 moved, 5.1.10 null MX, or words
  saying so), and
* the verdict is confident (`taxonomy.is_confident`, ADR 0023): the words name that reason and
  no code contradicts them, it did not answer MAIL (the sender was refused), nor DATA unless an
  address code (5.1.x) says so, and nothing names another cause (spam, policy, blocklists,
  full mailbox, "try again later", ...).

RFC 5321's stock reply texts ("Requested action not taken: mailbox unavailable", "mailbox name
not allowed") are no words of the server's own: the same text answers policy refusals (Outlook.com
blocks IPs with it), so it is left out of the evidence, as a DSN's bare code would be.

So "550 5.1.1 <a@b>: Recipient address rejected: User unknown" at RCPT is hard, while "550 5.7.1
Message rejected as spam", "554 5.7.1 Service unavailable; client host blocked", "552 5.2.2
Mailbox full", "550 Requested action not taken: mailbox unavailable" and a bare "550 5.1.1" with
no words are not: they are bounces, but reported as soft, and never suppress.

Pure: text in, verdict out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from kannon.dsn.codes import find_codes
from kannon.dsn.model import is_hard_bounce
from kannon.dsn.taxonomy import Evidence, classify, is_confident

# The SMTP commands a transaction refusal can answer (as the SMTPSender names them).
COMMANDS = frozenset({"MAIL", "RCPT", "DATA", ""})
# RFC 5321 §4.2.3's example texts of 550 and 553, which servers send for any refusal.
_STOCK_TEXT: Final = re.compile(
    r"(?:requested action not taken:?\s*)?(?:mailbox (?:unavailable|name not allowed))"
    r"|requested action not taken",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ReplyVerdict:
    status: str
    """The RFC 3463 code the reply gave, else its class ("5.0.0", "4.0.0")."""
    reason: str
    """A reason of `kannon.dsn.REASONS` (sisimai's taxonomy)."""
    confident: bool
    hard_bounce: bool


def classify_reply(code: int, text: str, *, command: str = "") -> ReplyVerdict:
    """Classify the reply `code text` that refused a message at `command` (MAIL, RCPT, DATA,
    or "" when no server was asked, e.g. a null MX)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown SMTP command {command!r}")
    codes = find_codes(f"{code} {text}")
    reply_class = str(code)[:1] if 400 <= code < 600 else ""
    status = codes.status or (f"{reply_class}.0.0" if reply_class else "")
    permanent = reply_class == "5" and status.startswith("5")
    evidence = Evidence(
        text=_STOCK_TEXT.sub(" ", text),
        status=status,
        reply_code=str(code) if reply_class else "",
        command=command,
        action="failed",
        permanent=permanent,
        coded=True,
    )
    verdict = classify(evidence)
    confident = is_confident(verdict.reason, evidence)
    return ReplyVerdict(
        status=status,
        reason=verdict.reason,
        confident=confident,
        hard_bounce=permanent and confident and is_hard_bounce(verdict.reason, status),
    )
