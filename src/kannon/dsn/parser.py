"""`parse_message`: raw inbound message in, `DsnReport` out.

Order of evidence, most to least trustworthy: an Amazon SES JSON event, an ARF feedback report,
RFC 3464 delivery-status fields (in their own MIME part, or pasted into text), then the
human-readable text of a non-standard bounce, then auto-reply markers. For each bounced recipient
the status is the Status: field or the code the diagnostic text quotes from the remote server,
whichever `codes.prefer_status` finds more telling, and the reason comes from `taxonomy.classify`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from email.message import Message
from typing import Final

from kannon.dsn.address import all_addresses, extract_address, is_plausible_recipient
from kannon.dsn.codes import (
    find_codes,
    find_command,
    normalize_status,
    prefer_status,
    status_comment,
)
from kannon.dsn.layouts import TextHit, TextScan, scan
from kannon.dsn.mime import collect, header, parse_bytes, split_original
from kannon.dsn.model import BouncedRecipient, DsnReport, Kind, is_hard_bounce
from kannon.dsn.rfc3464 import DsnRecord, looks_like_status_fields, parse_records
from kannon.dsn.special import (
    SES_SUBTYPE_REASONS,
    autoreply_recipient,
    feedback_of,
    feedback_recipients,
    looks_like_autoreply,
    looks_like_bounce,
    ses_kind,
    ses_notification,
    ses_records,
)
from kannon.dsn.taxonomy import (
    Evidence,
    Verdict,
    classify,
    is_confident,
    matches,
    normalize_text,
)

_SUCCESS_ACTIONS: Final = frozenset({"delivered", "relayed", "expanded"})
_DELAY_SUBJECT: Final = re.compile(r"\(delay\)|delayed|^warning:", re.IGNORECASE)
_DELAY_BODY: Final = re.compile(
    r"has been delayed|has not yet been delivered|warning message only|temporary failure report"
    r"|delivery attempts will continue|is delayed for more than",
    re.IGNORECASE,
)
_BODY_BOUNCE: Final = re.compile(
    r"could not be delivered|was not delivered|wasn'?t delivered|undeliver|delivery (?:has )?failed"
    r"|permanent(?:ly)? (?:error|failure|fatal)|failed permanently|returned to sender"
    r"|unable to deliver|failed to deliver|did not reach|transcript of session|delivery failure"
    r"|loop alert|duplicated message-id|no valid recipients|error delivering",
    re.IGNORECASE,
)
# A report saying in words that it has given up for good (Exim, qmail, Gmail, OpenSMTPD, ...).
_STATED_PERMANENT: Final = re.compile(
    r"permanent (?:error|failure|fatal error)|failed permanently|permanently failed"
    r"|i'?ve given up|i have given up|will not be retried|no further attempts",
    re.IGNORECASE,
)
_STATED_TEMPORARY: Final = re.compile(
    r"temporar(?:y|ily)|try (?:again )?later|transient (?:error|failure)", re.IGNORECASE
)
_ARF_FIELDS: Final = re.compile(r"^Feedback-Type:\s*[a-z\-]+\s*$", re.IGNORECASE | re.MULTILINE)
_ARF_AGENT: Final = re.compile(r"^(?:User-Agent|Version):", re.IGNORECASE | re.MULTILINE)
_SENDER_CONTEXT: Final = re.compile(
    r"(?:mail from|envelope-from|sender address|from:)\s*:?\s*<?([^\s<>]+@[^\s<>]+?)>?[\s;,)]",
    re.IGNORECASE,
)
_REMOTE_HOST: Final = re.compile(
    r"(?:host|server|remote system:?\s*dns;)\s+([A-Za-z0-9][A-Za-z0-9.\-]*\.[A-Za-z]{2,})\s*[\[(]",
    re.IGNORECASE,
)


def parse_message(raw: bytes) -> DsnReport:
    """Parse one inbound message. Never raises: unreadable input gives kind "unknown"."""
    try:
        return _parse(raw)
    except Exception as exc:  # The contract is total: a bad message must not stop the inbox.
        return DsnReport(kind="unknown", notes=[f"unparseable message ({type(exc).__name__})"])


def _parse(raw: bytes) -> DsnReport:
    if not isinstance(raw, bytes | bytearray) or not bytes(raw).strip():
        return DsnReport(kind="unknown", notes=["empty input"])
    return _parse_message(parse_bytes(bytes(raw)), forwarded=False)


def _parse_message(msg: Message, *, forwarded: bool) -> DsnReport:
    pieces = collect(msg)
    notes = list(pieces.notes)
    if not len(msg) and not pieces.texts:
        return DsnReport(kind="unknown", notes=[*notes, "no headers and no readable text"])

    ses = ses_notification(pieces.body)
    if ses is not None:
        return _from_ses(ses, notes)

    report_type = str(msg.get_param("report-type", "") or "").lower()
    if pieces.feedback_reports or report_type == "feedback-report" or _pasted_arf(pieces.texts):
        reports = pieces.feedback_reports or [t for t in pieces.texts if _ARF_FIELDS.search(t)]
        recipients = feedback_recipients(reports, pieces.original_headers)
        feedback = feedback_of(reports, pieces.original_headers)
        return DsnReport(kind="feedback", recipients=recipients, notes=notes, feedback=feedback)

    body, inline_original = split_original(pieces.body)
    originals = [*pieces.original_headers, *([inline_original] if inline_original else [])]
    exclude = _sender_addresses(msg, originals, body)
    text_scan = scan(body, exclude)

    records = [r for part in pieces.delivery_status for r in parse_records(part)]
    if not records:
        for text in pieces.texts:
            if looks_like_status_fields(text):
                records = parse_records(split_original(text)[0]) or parse_records(text)
                if records:
                    notes.append("delivery-status fields read from plain text")
                    break
    if records:
        recipients = [_from_record(r, text_scan, len(records)) for r in records]
        return DsnReport(kind=_kind(recipients), recipients=recipients, notes=notes)
    if not forwarded:
        # A bounce forwarded as an attachment (by a user or a mailbox rule) carries the real
        # delivery report one level down.
        for attached in pieces.attached:
            if collect(attached).delivery_status:
                inner = _parse_message(attached, forwarded=True)
                if inner.recipients:
                    notes.append("delivery report read from an attached message")
                    return DsnReport(inner.kind, inner.recipients, [*notes, *inner.notes])

    if looks_like_bounce(msg) or (
        not looks_like_autoreply(msg) and _BODY_BOUNCE.search(body) is not None
    ):
        recipients = _from_text(
            msg, body, text_scan=text_scan, originals=originals, exclude=exclude, notes=notes
        )
        if recipients:
            return DsnReport(kind=_kind(recipients), recipients=recipients, notes=notes)
        notes.append("looks like a bounce but names no recipient")
    if looks_like_autoreply(msg):
        return DsnReport(kind="vacation", recipients=[autoreply_recipient(msg)], notes=notes)
    return DsnReport(kind="unknown", notes=[*notes, "not a delivery report"])


def _pasted_arf(texts: list[str]) -> bool:
    """ARF fields pasted into a text part, as some older feedback loops send them."""
    return any(_ARF_FIELDS.search(t) and _ARF_AGENT.search(t) for t in texts[:3])


def _kind(recipients: list[BouncedRecipient]) -> Kind:
    actions = {r.action for r in recipients}
    if actions and actions <= _SUCCESS_ACTIONS:
        return "delivered"
    if actions == {"delayed"}:
        return "delayed"
    return "bounce"


def _sender_addresses(msg: Message, originals: list[Message], body: str) -> frozenset[str]:
    """Addresses that belong to the sender side; bounces quote them but never bounce them."""
    found: set[str] = set()
    for name in ("From", "To", "Reply-To", "Sender", "Return-Path", "Errors-To"):
        found.update(all_addresses(header(msg, name)))
    for original in originals:
        for name in ("From", "Sender", "Return-Path", "Reply-To", "Errors-To"):
            found.update(all_addresses(header(original, name)))
    for match in _SENDER_CONTEXT.finditer(body):
        found.update(all_addresses(match.group(1)))
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class _Status:
    status: str
    reply: str
    #: True/False when a code the report states gives the class, None when only the action does.
    coded_permanent: bool | None


def _codes_and_status(diagnostic: str, field_status: str, action: str, success: bool) -> _Status:
    """Status and reply code for one recipient.

    The Status: field and the code quoted from the remote server are weighed by
    `codes.prefer_status`. With no code at all only the class is known: from the reply code,
    else from the action.
    """
    codes = find_codes(diagnostic, want_success=success)
    status = prefer_status(field_status, codes.status, codes.reply)
    if success and not status.startswith("2"):
        status = "2.0.0"
    if not status:
        if codes.reply[:1] in ("4", "5"):
            status = f"{codes.reply[0]}.0.0"
        elif action == "delayed" or _STATED_TEMPORARY.search(diagnostic):
            # No code, but the words call the condition passing: an MTA that gave up on a
            # "temporarily suspended" delivery failed on a transient cause, not a permanent one.
            status = "4.0.0"
        else:
            status = "5.0.0"
    stated = [c for c in (field_status, codes.status, codes.reply) if c]
    coded_permanent = None
    if stated:
        # Permanent only when no stated code is transient: "450 4.1.1 ... said: 550 5.1.1" is
        # the reporting MTA keeping its options open.
        coded_permanent = status.startswith("5") and not any(c.startswith("4") for c in stated)
    return _Status(status, codes.reply, coded_permanent)


def _is_permanent(found: _Status, action: str, report_text: str) -> bool:
    """Whether the report states the failure is permanent (see `Evidence.permanent`)."""
    if found.coded_permanent is not None:
        return found.coded_permanent
    return action == "failed" and _STATED_PERMANENT.search(report_text) is not None


def _verdict(ev: Evidence, context: str) -> tuple[Verdict, Evidence]:
    """Classify; when nothing specific was found, read the surrounding text too. Returns the
    verdict and the evidence it rests on."""
    verdict = classify(ev)
    if verdict.basis == "fallback" and context.strip():
        wider_ev = replace(
            ev, text=f"{ev.text}\n{context}", command=ev.command or find_command(context)
        )
        wider = classify(wider_ev)
        if wider.basis != "fallback" or (wider.reason, verdict.reason) == ("onhold", "undefined"):
            return wider, wider_ev
    return verdict, ev


def _build(
    recipient: str,
    *,
    original: str,
    action: str,
    status: str,
    reply: str,
    diagnostic: str,
    remote_mta: str,
    reason: str,
    confident: bool,
) -> BouncedRecipient:
    return BouncedRecipient(
        recipient=recipient,
        original_recipient=original if original != recipient else "",
        action=action,
        status=status,
        reply_code=reply,
        diagnostic=" ".join(diagnostic.split())[:2000],
        remote_mta=remote_mta,
        reason=reason,
        confident=confident,
        # A delay warning is not a verdict: the MTA is still trying, so nothing is suppressed yet.
        # An address is called dead only on evidence that agrees with itself (ADR 0023).
        hard_bounce=action != "delayed" and confident and is_hard_bounce(reason, status),
        permanent=status.startswith("5"),
    )


def _from_record(record: DsnRecord, text_scan: TextScan, count: int) -> BouncedRecipient:
    address = record.recipient
    if not is_plausible_recipient(address):
        address = record.original_recipient
        if not address and len(text_scan.hits) == 1:
            address = text_scan.hits[0].address
    hit = text_scan.find(address)
    if hit is None and count == 1 and len(text_scan.hits) == 1:
        hit = text_scan.hits[0]
    hit_text = hit.text if hit else ""
    diagnostic = record.diagnostic or hit_text
    field_status = normalize_status(record.status)
    action = record.action or "failed"
    success = action in _SUCCESS_ACTIONS or field_status.startswith("2")
    found = _codes_and_status(diagnostic, field_status, action, success)
    command = find_command(f"{diagnostic}\n{hit_text}\n{record.status}")
    summary = f"{hit_text}\n{text_scan.preamble}"
    evidence = Evidence(
        text=f"{diagnostic}\n{status_comment(record.status)}",
        status=found.status,
        reply_code=found.reply,
        command=command,
        action=action,
        diagnostic_type=record.diagnostic_type,
        permanent=_is_permanent(found, action, summary),
        coded=found.coded_permanent is not None,
    )
    verdict, evidence = _verdict(evidence, summary)
    if verdict.reason in ("filtered", "onhold") and matches(
        "userunknown_definitive", normalize_text(summary)
    ):
        # The reporting MTA's own summary says the address does not exist; it saw the dialogue
        # the terse Diagnostic-Code leaves out.
        verdict = Verdict("userunknown", "text")
        evidence = replace(evidence, text=summary, command="")
    return _build(
        address,
        original=record.original_recipient,
        action=action,
        status=found.status,
        reply=found.reply,
        diagnostic=diagnostic,
        remote_mta=record.remote_mta or _remote_host(hit_text),
        reason=verdict.reason,
        confident=is_confident(verdict.reason, evidence),
    )


def _from_text(
    msg: Message,
    body: str,
    *,
    text_scan: TextScan,
    originals: list[Message],
    exclude: frozenset[str],
    notes: list[str],
) -> list[BouncedRecipient]:
    hits = list(text_scan.hits)
    failed = [a for v in msg.get_all("X-Failed-Recipients") or [] for a in all_addresses(str(v))]
    if failed:
        # The header is authoritative about who failed; the text only explains why.
        named = [h for h in hits if h.address in failed]
        hits = named + [TextHit(a) for a in failed if a not in {h.address for h in named}]
    if not hits:
        candidates = [a for a in all_addresses(body) if a not in exclude]
        if not candidates:
            for original in originals:
                candidates += [a for a in all_addresses(header(original, "To")) if a not in exclude]
        if candidates:
            notes.append("recipient guessed from the text: no line names it as failed")
            hits = [TextHit(candidates[0])]
    delayed = bool(_DELAY_SUBJECT.search(header(msg, "Subject")) or _DELAY_BODY.search(body))
    action = "delayed" if delayed else "failed"
    out = []
    preamble_codes = find_codes(text_scan.preamble)
    for hit in hits:
        text = hit.text or (body if len(hits) == 1 else "")
        own = find_codes(text)
        if not (own.status or own.reply) and (preamble_codes.status or preamble_codes.reply):
            # Layouts that state the error before listing the recipients (MailMarshal, Notes).
            text = f"{text}\n{text_scan.preamble}"
        found = _codes_and_status(text, "", action, success=False)
        evidence = Evidence(
            text=text,
            status=found.status,
            reply_code=found.reply,
            command=find_command(text),
            action=action,
            permanent=_is_permanent(found, action, body),
            coded=found.coded_permanent is not None,
        )
        verdict, evidence = _verdict(evidence, text_scan.preamble)
        out.append(
            _build(
                hit.address,
                original="",
                action=action,
                status=found.status,
                reply=found.reply,
                diagnostic=text,
                remote_mta=_remote_host(text),
                reason=verdict.reason,
                confident=is_confident(verdict.reason, evidence),
            )
        )
    return out


def _remote_host(text: str) -> str:
    match = _REMOTE_HOST.search(text)
    return match.group(1).lower() if match else ""


def _from_ses(obj: dict[str, object], notes: list[str]) -> DsnReport:
    kind = ses_kind(obj)
    records = ses_records(obj)
    if kind == "Complaint":
        recipients = [
            BouncedRecipient(recipient=extract_address(r["recipient"]), reason="feedback")
            for r in records
        ] or [BouncedRecipient(recipient="", reason="feedback")]
        return DsnReport(kind="feedback", recipients=recipients, notes=notes)
    out = []
    for rec in records:
        action = rec.get("action", "failed").lower()
        success = kind == "Delivery"
        field_status = normalize_status(rec.get("status", ""))
        if not field_status and rec.get("transient"):
            field_status = "4.0.0"
        found = _codes_and_status(rec.get("diagnostic", ""), field_status, action, success)
        diagnostic = rec.get("diagnostic", "")
        evidence = Evidence(
            text=diagnostic,
            status=found.status,
            reply_code=found.reply,
            command=find_command(diagnostic),
            action=action,
            diagnostic_type="smtp",
            # SES states permanence in bounceType when the remote's reply does not.
            permanent=found.coded_permanent
            if found.coded_permanent is not None
            else bool(rec.get("permanent")),
            coded=found.coded_permanent is not None,
        )
        if success:
            reason = "delivered"
        else:
            verdict = classify(evidence)
            reason = verdict.reason
            if verdict.basis == "fallback":
                # SES's sub-type alone is one witness: it names a reason, nothing corroborates it.
                reason = SES_SUBTYPE_REASONS.get(rec.get("subtype", ""), reason)
        out.append(
            _build(
                extract_address(rec.get("recipient", "")),
                original="",
                action=action,
                status=found.status,
                reply=found.reply or rec.get("reply", ""),
                diagnostic=diagnostic,
                remote_mta=rec.get("remote_mta", ""),
                reason=reason,
                confident=is_confident(reason, evidence),
            )
        )
    return DsnReport(kind=_kind(out) if out else "unknown", recipients=out, notes=notes)
