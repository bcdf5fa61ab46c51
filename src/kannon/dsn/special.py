"""Reports that are not classic bounces: ARF feedback (RFC 5965), auto-replies (RFC 3834 and the
vendor variants), and Amazon SES notifications delivered as JSON in a mail body.
"""

from __future__ import annotations

import json
import re
from email.message import Message
from typing import Any, Final

from kannon.dsn.address import all_addresses, extract_address
from kannon.dsn.codes import find_codes
from kannon.dsn.mime import header
from kannon.dsn.model import BouncedRecipient, Feedback

_AUTO_SUBJECT: Final = re.compile(
    r"^\s*(?:auto(?:matic|matische|matisch|matisk|matique)?[ \-_]?"
    r"(?:reply|response|responder|answer|antwort|antwoord|svar|r[ée]ponse)|autoreply|auto:"
    r"|out of (?:the )?office|ooo\b|away from (?:the )?office|vacation|on leave|on holiday"
    r"|abwesenheit|abwesend|r[ée]ponse automatique|absence|respuesta autom[aá]tica"
    r"|risposta automatica|automatisch antwoord|autosvar|自動応答|不在)",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT: Final = re.compile(
    r"undeliver|returned mail|return(?:ed)? to sender|delivery (?:status notification|failure"
    r"|failed|problem|report|notification|has failed)|failure notice|mail delivery failed"
    r"|non[- ]?delivery|could not be delivered|mail system error|delivery failure|failed delivery"
    r"|message delivery has failed|warning: message .* delayed|undelivered mail|returned mail"
    r"|mail failure|delivery status|error sending|postmaster notify",
    re.IGNORECASE,
)
_DAEMON_SENDER: Final = re.compile(
    r"mailer-daemon|post_?master|mail delivery (?:system|subsystem)|mail ?deliver|mmsc ndr"
    r"|^<?>?$",
    re.IGNORECASE,
)


def looks_like_bounce(msg: Message) -> bool:
    """Header-level signs that a message reports a delivery failure."""
    if msg.get("X-Failed-Recipients"):
        return True
    ctype = msg.get_content_type()
    if ctype == "multipart/report":
        return True
    sender = header(msg, "From")
    if _DAEMON_SENDER.search(sender):
        return True
    return bool(_BOUNCE_SUBJECT.search(header(msg, "Subject")))


def looks_like_autoreply(msg: Message) -> bool:
    """RFC 3834 Auto-Submitted: auto-replied, vendor vacation headers, or an auto-reply subject."""
    auto = header(msg, "Auto-Submitted").lower()
    if auto.startswith("auto-replied"):
        return True
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Vacation"):
        if msg.get(name):
            return True
    if header(msg, "X-Apple-Action").upper() == "VACATION":
        return True
    precedence = header(msg, "Precedence").lower()
    if precedence in ("auto_reply", "auto-reply"):
        return True
    return bool(_AUTO_SUBJECT.search(header(msg, "Subject")))


def autoreply_recipient(msg: Message) -> BouncedRecipient:
    """The auto-replying mailbox is the one that answered: the reply's From."""
    address = extract_address(header(msg, "From"))
    return BouncedRecipient(recipient=address, reason="vacation")


def feedback_recipients(reports: list[str], originals: list[Message]) -> list[BouncedRecipient]:
    """One entry per complained-about recipient of an ARF report.

    Original-Rcpt-To names them (RFC 6692); without it the returned message's To: is the best
    guess, and a fully redacted report still yields one entry so the complaint is not lost.
    """
    addresses: list[str] = []
    for report in reports:
        for line in report.splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() in ("original-rcpt-to", "removal-recipient"):
                address = extract_address(value)
                if address and address not in addresses:
                    addresses.append(address)
    if not addresses:
        for original in originals:
            for address in all_addresses(header(original, "To")):
                if address not in addresses:
                    addresses.append(address)
    if not addresses:
        addresses = [""]
    return [BouncedRecipient(recipient=a, reason="feedback") for a in addresses]


# Report fields read into `Feedback`; values are capped (a report is attacker-controlled).
_FIELD_MAX: Final = 512
_LIST_MAX: Final = 20


def _report_fields(reports: list[str]) -> dict[str, list[str]]:
    """Field name (lower-case) -> values, over every report part, unfolded."""
    fields: dict[str, list[str]] = {}
    for report in reports:
        name = ""
        for line in report.splitlines():
            if line[:1] in (" ", "\t") and name:
                values = fields[name]
                values[-1] = (values[-1] + " " + line.strip())[:_FIELD_MAX]
                continue
            key, colon, value = line.partition(":")
            if not colon or not key.strip() or " " in key.strip():
                name = ""
                continue
            name = key.strip().lower()
            fields.setdefault(name, []).append(value.strip()[:_FIELD_MAX])
    return fields


def _distinct(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))[:_LIST_MAX]


def feedback_of(reports: list[str], originals: list[Message]) -> Feedback:
    """The fields of ARF report parts and the identifying headers of the returned message."""
    fields = _report_fields(reports)

    def first(name: str) -> str:
        return next((v for v in fields.get(name, []) if v), "")

    def headers(name: str) -> list[str]:
        return [" ".join(header(o, name).split())[:_FIELD_MAX] for o in originals]

    return Feedback(
        feedback_type=first("feedback-type").lower(),
        user_agent=first("user-agent"),
        source_ip=first("source-ip"),
        arrival_date=first("arrival-date") or first("received-date"),
        original_mail_from=_distinct(fields.get("original-mail-from", [])),
        original_rcpt_to=_distinct(fields.get("original-rcpt-to", [])),
        return_paths=_distinct(headers("Return-Path")),
        message_ids=_distinct(headers("Message-ID")),
        original_to=_distinct(headers("To")),
    )


# Some MTAs break lines longer than 998 octets with "!" + CRLF + space, corrupting JSON bodies.
_WRAP_RE: Final = re.compile(r"!\r?\n ")


def ses_notification(text: str) -> dict[str, Any] | None:
    """The Amazon SES event object in a mail body (raw, or wrapped in an SNS envelope)."""
    if '"notificationType"' not in text and '"eventType"' not in text and '"Type"' not in text:
        return None
    text = _WRAP_RE.sub("", text)
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if obj.get("Type") == "Notification" and isinstance(obj.get("Message"), str):
        try:
            inner = json.loads(obj["Message"])
        except ValueError:
            return None
        obj = inner if isinstance(inner, dict) else obj
    kind = obj.get("notificationType") or obj.get("eventType")
    return obj if kind in ("Bounce", "Complaint", "Delivery") else None


def ses_kind(obj: dict[str, Any]) -> str:
    """The SES event type: "Bounce", "Complaint" or "Delivery"."""
    return str(obj.get("notificationType") or obj.get("eventType") or "")


# SES's own bounce sub-types, used when the event carries no diagnostic text to classify.
SES_SUBTYPE_REASONS: Final[dict[str, str]] = {
    "NoEmail": "userunknown",
    "Suppressed": "userunknown",
    "OnAccountSuppressionList": "userunknown",
    "MailboxFull": "mailboxfull",
    "MessageTooLarge": "mesgtoobig",
    "ContentRejected": "contenterror",
    "AttachmentRejected": "contenterror",
}


def ses_records(obj: dict[str, Any]) -> list[dict[str, str]]:
    """Per-recipient fields of an SES event as DSN-like strings."""
    kind = ses_kind(obj)
    out: list[dict[str, str]] = []
    if kind == "Bounce":
        bounce = obj.get("bounce") or {}
        bounce_type = str(bounce.get("bounceType", "")).lower()
        for item in bounce.get("bouncedRecipients") or []:
            if not isinstance(item, dict):
                continue
            out.append(
                {
                    "recipient": str(item.get("emailAddress", "")),
                    "action": str(item.get("action", "failed") or "failed"),
                    "status": str(item.get("status", "") or ""),
                    "diagnostic": str(item.get("diagnosticCode", "") or ""),
                    "remote_mta": str(bounce.get("remoteMtaIp", "") or ""),
                    "transient": "yes" if bounce_type == "transient" else "",
                    "permanent": "yes" if bounce_type == "permanent" else "",
                    "subtype": str(bounce.get("bounceSubType", "") or ""),
                }
            )
    elif kind == "Complaint":
        complaint = obj.get("complaint") or {}
        for item in complaint.get("complainedRecipients") or []:
            if isinstance(item, dict):
                out.append({"recipient": str(item.get("emailAddress", ""))})
    elif kind == "Delivery":
        delivery = obj.get("delivery") or {}
        response = str(delivery.get("smtpResponse", "") or "")
        codes = find_codes(response, want_success=True)
        for address in delivery.get("recipients") or []:
            out.append(
                {
                    "recipient": str(address),
                    "action": "delivered",
                    "status": codes.status or "2.0.0",
                    "reply": codes.reply,
                    "diagnostic": response,
                    "remote_mta": str(delivery.get("remoteMtaIp", "") or ""),
                }
            )
    return out
