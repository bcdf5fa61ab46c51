"""From a received report to Bounced outcomes, without any SMTP: which Delivery, which event.
(ARF feedback reports become Complained outcomes instead: `complaints.py`.)

A report reaches us addressed to one or more bounce addresses (the RCPTs). Each verified bounce
address names a Batch and carries a keyed hash of one Recipient; the report names recipients in
``Final-Recipient`` / ``Original-Recipient`` (or in bounce text). A failed recipient is ours only
when one of the RCPT addresses ``matches()`` it, so a report can only ever mark bounced the
Delivery whose bounce address it was sent to: knowing someone's address is not enough.

When a report's single failed recipient matches no RCPT under the names it gives (an alias that
was expanded downstream, a rewritten address), the other addresses in the message (the returned
original's ``To``, for instance) are tried against the hashes: only the Recipient we sent to can
match, so this finds it without guessing.

The event id is derived from the Batch, the Recipient, the status and the report's Message-ID
(or its bytes when it has none), so an MTA that re-sends the same report after a lost reply
produces the same id, and the bus stores it once.

Pure and bounded (linear in the message, see ADR 0018): the clock comes in, and `read_report`
does all the CPU work on a message so the Component can run it off the event loop in one call.
Addresses of other people (recipients that are not ours) appear in `Verdict.ignored` masked, as
the logs show every recipient.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

from kannon.dsn import BouncedRecipient, DsnReport, parse_message
from kannon.dsn.address import all_addresses, extract_address
from kannon.envelope.bounce import BounceAddress, parse_bounce_address
from kannon.model.event_ids import dsn_event_id
from kannon.model.outcome import Bounced, Outcome
from kannon.runtime.logs import obfuscate
from kannon.smtp_server.complaints import complaints_of

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_NOT_FAILED_KINDS = frozenset({"feedback", "vacation", "delivered", "delayed"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one report amounts to: the events to publish and why anything was left out."""

    outcomes: list[Outcome] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Reading:
    """A received message, read: its parse, what it proves, and its Message-ID (or digest)."""

    report: DsnReport
    verdict: Verdict
    message_id: str
    complaint: str = ""
    """For a feedback report: published, not_abuse or unmapped (the complaints metric)."""


def read_report(raw: bytes, rcpt_tos: Sequence[str], secret: bytes, now: datetime) -> Reading:
    """Everything the SMTPServer computes about one message, in one call for a worker thread."""
    report = parse_message(raw)
    message_id = report_message_id(raw)
    if report.kind == "feedback":
        complaint = complaints_of(report, rcpt_tos, secret, now)
        verdict = Verdict(complaint.outcomes, complaint.ignored)
        return Reading(report, verdict, message_id, complaint.result)
    addresses = [a for a in (parse_bounce_address(r, secret) for r in rcpt_tos) if a is not None]
    return Reading(
        report, bounces_of(report, raw, addresses, secret, now, message_id=message_id), message_id
    )


def report_message_id(raw: bytes) -> str:
    """The report's Message-ID, or a digest of its bytes when it has none (still stable)."""
    # Only the header block goes to the parser: given the body too, it splits it into lines
    # (half a million objects for a megabyte of empty lines).
    end = _HEADER_END.search(raw)
    try:
        head = raw[: end.start()] if end else raw
        headers = BytesHeaderParser(policy=compat32).parsebytes(head, headersonly=True)
        value = str(headers.get("Message-ID", "") or "").strip()
    except Exception:  # a header block bad enough to break compat32: fall back to the bytes
        value = ""
    return value or "sha256:" + hashlib.sha256(raw).hexdigest()


def reply_code(recipient: BouncedRecipient) -> int:
    """The SMTP reply code the report quotes, else the usual one for its status class."""
    if recipient.reply_code.isdigit() and len(recipient.reply_code) == 3:
        return int(recipient.reply_code)
    return 450 if recipient.status.startswith("4") else 550


def is_failure(report: DsnReport, recipient: BouncedRecipient) -> bool:
    return report.kind not in _NOT_FAILED_KINDS and recipient.action == "failed"


def _owner(
    names: Sequence[str], addresses: Sequence[BounceAddress], secret: bytes
) -> tuple[BounceAddress, str] | None:
    for name in names:
        if not name:
            continue
        for address in addresses:
            if address.matches(name, secret):
                return address, name
    return None


def bounces_of(
    report: DsnReport,
    raw: bytes,
    addresses: Sequence[BounceAddress],
    secret: bytes,
    now: datetime,
    *,
    message_id: str | None = None,
) -> Verdict:
    """The Bounced outcomes ``report`` (parsed from ``raw``) proves for ``addresses``.

    ``message_id`` is ``report_message_id(raw)`` when the caller has it already.
    """
    verdict = Verdict()
    failed = [r for r in report.recipients if is_failure(report, r)]
    if not failed:
        verdict.ignored.append(f"no failed recipient (kind {report.kind})")
        return verdict
    message_id = message_id or report_message_id(raw)
    seen: set[tuple[str, str]] = set()
    for recipient in failed:
        owner = _owner((recipient.recipient, recipient.original_recipient), addresses, secret)
        if owner is None and len(failed) == 1:
            owner = _owner(all_addresses(raw.decode("utf-8", "replace")), addresses, secret)
        if owner is None:
            named = recipient.recipient or recipient.original_recipient
            verdict.ignored.append(
                "failed recipient matches no bounce address it was sent to "
                f"({obfuscate(named) if named else 'unnamed'})"
            )
            continue
        address, name = owner
        # Field values may still carry an address type or brackets ("rfc822; <a@b>").
        name = extract_address(name) or name.strip().lower()
        if (address.batch_id, name) in seen:
            continue  # the same recipient listed twice in one report
        seen.add((address.batch_id, name))
        verdict.outcomes.append(
            Outcome(
                batch_id=address.batch_id,
                domain=address.domain,
                recipient=name,
                timestamp=now,
                detail=Bounced(
                    permanent=recipient.status.startswith("5"),
                    code=reply_code(recipient),
                    message=recipient.diagnostic or f"{recipient.status} {recipient.reason}",
                    status=recipient.status,
                    reason=recipient.reason,
                    hard_bounce=recipient.hard_bounce,
                    remote_mta=recipient.remote_mta,
                    from_dsn=True,
                ),
                event_id=dsn_event_id(address.batch_id, name, recipient.status, message_id),
            )
        )
    return verdict
