"""From a received ARF feedback report (RFC 5965) to Complained outcomes, without any SMTP.

A complaint must name one of our messages, and only a verified bounce address proves that
(ADR 0028). The report reaches us at the bounce address of the complained-about message (its
MAIL FROM, where providers send reports back) or at `smtp.feedback_address` (a provider's
feedback loop registration). Either way:

* the **bounce addresses** considered are the RCPTs that are ours and the addresses the report
  gives for the original's MAIL FROM (`Original-Mail-From`, the returned message's
  `Return-Path`), each kept only when its HMAC tag verifies (`parse_bounce_address`): it names a
  Batch and a keyed hash of one Recipient;
* the **Recipient** is the one a candidate name matches under that hash: the Recipient the
  returned message's Message-ID embeds (`<b64url(rcpt)/batch>`, our own format), then the
  report's `Original-Rcpt-To`, the returned `To`, and the recipients the parser found. Providers
  redact the recipient often; the Message-ID usually survives.

A report is a complaint only with `Feedback-Type: abuse` (the "this is spam" button): `fraud`,
`virus`, `auth-failure` (DMARC failure reports), `not-spam` and `other` say nothing about the
Recipient's wishes and are ignored. A report that maps to no Delivery is ignored too, with the
reason: nothing is guessed, so nobody can have an address suppressed by mailing us a report.

The event id is `complained.<Batch>.<digest of the Recipient>`: a Delivery is complained about
once, however many copies of the report arrive (at both addresses, or retried).

Pure: the clock comes in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kannon.dsn import DsnReport, Feedback
from kannon.dsn.address import extract_address
from kannon.envelope.bounce import BounceAddress, parse_bounce_address
from kannon.envelope.ids import parse_email_id
from kannon.model.address import canonical_recipient
from kannon.model.event_ids import delivery_event_id
from kannon.model.outcome import Complained, Outcome

COMPLAINT_TYPE = "abuse"


@dataclass(frozen=True, slots=True)
class ComplaintVerdict:
    outcomes: list[Outcome] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    """Why nothing (or not everything) came of the report, for the log."""
    result: str = "published"
    """For the metric: published, not_abuse, unmapped."""


def _bounce_addresses(
    rcpt_tos: Sequence[str], feedback: Feedback, secret: bytes
) -> list[BounceAddress]:
    found: dict[tuple[str, str], BounceAddress] = {}
    for candidate in (*rcpt_tos, *feedback.original_mail_from, *feedback.return_paths):
        address = parse_bounce_address(candidate, secret)
        if address is not None:
            found.setdefault((address.batch_id, address.recipient_hash), address)
    return list(found.values())


def _recipient_names(report: DsnReport, feedback: Feedback) -> list[str]:
    """Candidate Recipients, most telling first."""
    names: list[str] = []
    for message_id in feedback.message_ids:
        parsed = parse_email_id(message_id)
        if parsed is not None:
            names.append(parsed[0])
    for value in (*feedback.original_rcpt_to, *feedback.original_to):
        address = extract_address(value)
        if address:
            names.append(address)
    names.extend(r.recipient for r in report.recipients if r.recipient)
    return list(dict.fromkeys(names))


def complaints_of(
    report: DsnReport, rcpt_tos: Sequence[str], secret: bytes, now: datetime
) -> ComplaintVerdict:
    """The Complained outcomes a feedback report proves (see the module docstring)."""
    feedback = report.feedback or Feedback()
    if feedback.feedback_type != COMPLAINT_TYPE:
        kind = feedback.feedback_type or "missing"
        return ComplaintVerdict(
            ignored=[f"feedback type {kind!r} is not a complaint"], result="not_abuse"
        )
    addresses = _bounce_addresses(rcpt_tos, feedback, secret)
    if not addresses:
        return ComplaintVerdict(
            ignored=["the report names no bounce address of ours (MAIL FROM of the original)"],
            result="unmapped",
        )
    names = _recipient_names(report, feedback)
    outcomes: list[Outcome] = []
    for address in addresses:
        name = next((n for n in names if address.matches(n, secret)), None)
        if name is None:
            continue
        recipient = canonical_recipient(name.strip())
        outcomes.append(
            Outcome(
                batch_id=address.batch_id,
                domain=address.domain,
                recipient=recipient,
                timestamp=now,
                detail=Complained(
                    feedback_type=feedback.feedback_type,
                    user_agent=feedback.user_agent,
                    source_ip=feedback.source_ip,
                    arrival_date=feedback.arrival_date,
                ),
                event_id=delivery_event_id(Complained.type, address.batch_id, recipient.lower()),
            )
        )
    if not outcomes:
        return ComplaintVerdict(
            ignored=["no recipient the report names matches its bounce address"],
            result="unmapped",
        )
    return ComplaintVerdict(outcomes=outcomes)
