"""RFC 3464 delivery-status fields: splitting a message/delivery-status body (or the same fields
pasted into plain text) into per-recipient records.

Real reports bend the RFC: blank lines go missing between recipients, Original-Recipient comes
after Final-Recipient, fields are repeated or indented. The grouping below follows the recipient
fields themselves instead of trusting the blank lines alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from kannon.dsn.address import extract_address

_FIELD_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9\-]{1,40})\s*:\s?(.*)$")
_RECIPIENT_FIELDS: Final = frozenset({"final-recipient", "original-recipient"})
# A field block only counts as delivery status when it carries at least one of these.
_PER_RECIPIENT: Final = frozenset({"action", "status", "diagnostic-code", "remote-mta"})


@dataclass
class DsnRecord:
    """One recipient's fields from a delivery-status report."""

    final_recipient: str = ""
    original_recipient: str = ""
    action: str = ""
    status: str = ""
    diagnostic: str = ""
    diagnostic_type: str = ""
    remote_mta: str = ""

    @property
    def recipient(self) -> str:
        return self.final_recipient or self.original_recipient


def _fields(text: str) -> list[tuple[str, str] | None]:
    """(name, value) per field with continuation lines unfolded; None marks a blank line."""
    out: list[tuple[str, str] | None] = []
    for line in text.splitlines():
        if not line.strip():
            out.append(None)
            continue
        match = _FIELD_RE.match(line)
        if match and not line[:1].isspace():
            out.append((match.group(1).lower(), match.group(2).strip()))
            continue
        if line[:1].isspace() and out and out[-1] is not None:
            # A folded continuation: indented text after a field belongs to that field.
            stripped = line.strip()
            indented = _FIELD_RE.match(stripped)
            if indented and indented.group(1).lower() in _RECIPIENT_FIELDS | _PER_RECIPIENT:
                out.append((indented.group(1).lower(), indented.group(2).strip()))
                continue
            name, value = out[-1]
            out[-1] = (name, f"{value} {stripped}".strip())
            continue
        out.append(None)
    return out


def parse_records(text: str) -> list[DsnRecord]:
    """Per-recipient records in report order; empty when `text` holds no delivery status."""
    groups: list[list[tuple[str, str]]] = [[]]
    for item in _fields(text):
        current = groups[-1]
        if item is None:
            if current:
                groups.append([])
            continue
        name, _ = item
        if _starts_new_recipient(current, name):
            groups.append([])
        groups[-1].append(item)

    records = []
    for group in groups:
        names = {n for n, _ in group}
        if not names & _RECIPIENT_FIELDS or not names & _PER_RECIPIENT:
            continue
        record = DsnRecord()
        for name, value in group:
            _apply(record, name, value)
        if record.recipient:
            records.append(record)
    return records


def _starts_new_recipient(group: list[tuple[str, str]], name: str) -> bool:
    """Whether field `name` must belong to the next recipient rather than to `group`.

    Used when a report omits the blank line between recipients: a repeated field, or an
    Original-Recipient after the current recipient's other fields, opens the next record.
    """
    names = [n for n, _ in group]
    if not set(names) & _RECIPIENT_FIELDS:
        return False
    if name in names and (name in _RECIPIENT_FIELDS or name in _PER_RECIPIENT):
        return True
    if name == "original-recipient" and "final-recipient" in names:
        after_final = names[names.index("final-recipient") + 1 :]
        return bool(set(after_final) & _PER_RECIPIENT)
    return False


def _apply(record: DsnRecord, name: str, value: str) -> None:
    if name == "final-recipient" and not record.final_recipient:
        raw = _strip_type(value)[1]
        record.final_recipient = extract_address(raw) or raw.strip("<> ").lower()
    elif name == "original-recipient" and not record.original_recipient:
        record.original_recipient = extract_address(_strip_type(value)[1])
    elif name == "action" and not record.action:
        record.action = value.split(maxsplit=1)[0].lower() if value.strip() else ""
    elif name == "status" and not record.status:
        record.status = value
    elif name == "diagnostic-code" and not record.diagnostic:
        record.diagnostic_type, record.diagnostic = _strip_type(value)
    elif name == "remote-mta" and not record.remote_mta:
        # "Remote-MTA: DNS; " (Sendmail, when no host was reached) names a type and no host.
        record.remote_mta = next(iter(_strip_type(value)[1].split()), "")


def _strip_type(value: str) -> tuple[str, str]:
    """Split "smtp; 550 ..." into ("smtp", "550 ..."); values without a type keep all text."""
    head, sep, tail = value.partition(";")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9\-]{0,30}", head.strip()):
        return head.strip().lower(), tail.strip()
    return "", value.strip()


def looks_like_status_fields(text: str) -> bool:
    """Whether plain text contains pasted RFC 3464 per-recipient fields."""
    # [ \t]*, not \s*: \s* crosses line ends and went quadratic on runs of blank lines.
    return bool(
        re.search(r"^[ \t]*(?:final|original)-recipient[ \t]*:", text, re.I | re.M)
        and re.search(r"^[ \t]*(?:action|status)[ \t]*:", text, re.I | re.M)
    )
