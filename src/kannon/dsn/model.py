"""Result types of the bounce parser: one `DsnReport` per inbound message, one `BouncedRecipient`
per recipient it reports on, and the reason vocabulary (sisimai's taxonomy) they use.

Pure data: nothing here reads or parses anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

Kind = Literal["bounce", "feedback", "vacation", "delivered", "delayed", "unknown"]

#: Every reason string the classifier can produce. Non-bounce kinds reuse the last three.
REASONS: Final[frozenset[str]] = frozenset(
    {
        "authfailure",
        "badreputation",
        "blocked",
        "contenterror",
        "exceedlimit",
        "expired",
        "failedstarttls",
        "filtered",
        "hasmoved",
        "hostunknown",
        "mailboxfull",
        "mailererror",
        "mesgtoobig",
        "networkerror",
        "norelaying",
        "notaccept",
        "notcompliantrfc",
        "onhold",
        "policyviolation",
        "rejected",
        "requireptr",
        "securityerror",
        "spamdetected",
        "speeding",
        "suspend",
        "syntaxerror",
        "systemerror",
        "systemfull",
        "toomanyconn",
        "undefined",
        "userunknown",
        "virusdetected",
        "feedback",
        "vacation",
        "delivered",
    }
)

#: Reasons that mean the address itself is dead whatever the status class says.
DEAD_ADDRESS_REASONS: Final[frozenset[str]] = frozenset({"userunknown", "hostunknown", "hasmoved"})


def is_hard_bounce(reason: str, status: str) -> bool:
    """True when retrying the address is pointless, so the sender should suppress it.

    A missing mailbox, a missing domain and a moved mailbox are facts about the address. A domain
    that publishes "I accept no mail" (null MX, RFC 7505) is as dead as a missing one, but only when
    the report says so permanently: a transient "no MX" is usually a DNS hiccup. Everything else
    (full mailbox, policy, reputation, ...) is about this message or this sender, not the address.
    """
    if reason in DEAD_ADDRESS_REASONS:
        return True
    return reason == "notaccept" and status.startswith("5")


@dataclass(frozen=True, slots=True)
class BouncedRecipient:
    """What one report says about one recipient.

    `status` is an RFC 3463 enhanced status code; when the report carried none, only its class is
    known and the code is "5.0.0"/"4.0.0" (RFC 3463's "other undefined status"). Non-bounce entries
    (feedback, vacation) carry an empty status.

    `confident` says the reason rests on evidence that agrees with itself: the words of the
    diagnostic name it and no code contradicts them (and, for a dead address, the report states
    the failure is permanent; see `taxonomy.is_confident`). `hard_bounce` is the verdict to act
    on, e.g. by suppressing the address: `is_hard_bounce(reason, status)` and `confident`, and
    never for a delay warning (action "delayed"), where the MTA has not given up yet. A dead
    address reason without confidence is reported as such, with `hard_bounce` false.
    """

    recipient: str
    original_recipient: str = ""
    action: str = ""
    status: str = ""
    reply_code: str = ""
    diagnostic: str = ""
    remote_mta: str = ""
    reason: str = "undefined"
    hard_bounce: bool = False
    permanent: bool = False
    confident: bool = False


@dataclass(frozen=True, slots=True)
class Feedback:
    """What an ARF feedback report (RFC 5965) says about the message it complains about.

    The report's own fields (Feedback-Type lower-cased, User-Agent, Source-IP, Arrival-Date,
    Original-Mail-From, Original-Rcpt-To) and, from the returned original message or its
    headers, its Return-Path, Message-ID and To values, raw as found (in report order, without
    repeats). Nothing here is verified: the receiver decides what maps to one of its messages.
    """

    feedback_type: str = ""
    user_agent: str = ""
    source_ip: str = ""
    arrival_date: str = ""
    original_mail_from: tuple[str, ...] = ()
    original_rcpt_to: tuple[str, ...] = ()
    return_paths: tuple[str, ...] = ()
    message_ids: tuple[str, ...] = ()
    original_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DsnReport:
    """The parse of one inbound message. `notes` explain fallbacks taken, for operators.
    `feedback` is set for an ARF feedback report (kind "feedback")."""

    kind: Kind
    recipients: list[BouncedRecipient] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    feedback: Feedback | None = None
