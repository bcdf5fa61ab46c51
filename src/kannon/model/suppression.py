"""The suppression list: the Recipient addresses a Domain no longer sends to, and why.

A **Suppression** is one address of one Domain with a reason:

* ``hard_bounce``: a confident hard bounce (the address is dead: a 5xx such as "550 5.1.1 User
  unknown" from the MX, or a DSN saying so; ADR 0023, ADR 0029);
* ``complaint``: the Recipient reported a message as spam (an ARF feedback report, ADR 0028);
* ``unsubscribe``: the Recipient unsubscribed (one-click, Kannon's `/u/` endpoint, ADR 0034);
* ``manual``: an operator or the Domain's own integration added it (API, CLI, import);
* ``soft_bounce_limit``: the operator's rule `suppression.soft_bounce_limit` (N soft bounces of
  the address within `suppression.soft_bounce_window`) was reached. Off by default.

Which outcome events suppress is one table, :data:`REASON_BY_TYPE` (outcome type → reason); a
Bounced event suppresses only when it is a confident hard bounce (`hard_bounce`), every other
listed type always does.

Addresses are kept in the canonical Recipient spelling (ADR 0020: domain lower-cased and
IDNA-encoded, invisible characters removed) and matched case-insensitively by
:func:`suppression_key`, the way intake deduplicates Recipients: ``Ada@x`` and ``ada@x`` are one
mailbox to every large provider, and mailing a suppressed address is the worse mistake.

A Suppression may expire (`expires_at`); an expired one no longer suppresses and is deleted by
the Stats Component's cleanup.

Pure: no I/O; `now` comes in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final, NamedTuple

from kannon.model.address import InvalidAddress, canonical_recipient, parse_address
from kannon.model.errors import InvalidArgument
from kannon.model.outcome import Bounced, Complained, Outcome, Unsubscribed

HARD_BOUNCE = "hard_bounce"
COMPLAINT = "complaint"
UNSUBSCRIBE = "unsubscribe"
MANUAL = "manual"
SOFT_BOUNCE_LIMIT = "soft_bounce_limit"
REASONS: Final = (HARD_BOUNCE, COMPLAINT, UNSUBSCRIBE, MANUAL, SOFT_BOUNCE_LIMIT)

#: Outcome type → the reason its events suppress the Recipient with. One line per type: the
#: Stats Component consumes exactly these subjects for the suppression list.
REASON_BY_TYPE: Final[Mapping[str, str]] = MappingProxyType(
    {
        Bounced.type: HARD_BOUNCE,
        Complained.type: COMPLAINT,
        Unsubscribed.type: UNSUBSCRIBE,
    }
)

MAX_DIAGNOSTIC = 2000  # suppressions.diagnostic


@dataclass(frozen=True)
class Suppression:
    domain: str
    address: str
    """Canonical spelling (see the module docstring)."""
    reason: str
    created_at: datetime
    expires_at: datetime | None = None
    event_type: str = ""
    """Outcome type of the event that caused it ("" for manual ones)."""
    event_at: datetime | None = None
    status: str = ""
    """RFC 3463 status of a bounce ("5.1.1"), or the complaint's Feedback-Type."""
    reply_code: int = 0
    diagnostic: str = ""
    """The bounce's diagnostic text, the complaint's reporter, or a manual entry's note."""
    message_id: str = ""
    """The Batch whose event caused it."""
    event_id: str = ""

    def active_at(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


def suppression_key(address: str) -> str:
    """What suppressions are matched on: the canonical spelling, lower-cased."""
    return canonical_recipient(address.strip()).lower()


def canonical_address(value: str, field: str = "address") -> str:
    """The canonical spelling of an address an operator gives; InvalidArgument naming `field`
    when it is not a mailbox Kannon could ever send to."""
    text = value.strip()
    if not text:
        raise InvalidArgument(f"{field}: required")
    address = canonical_recipient(text)
    try:
        parse_address(address)
    except InvalidAddress as exc:
        raise InvalidArgument(f"{field}: {value!r} is not a valid email address ({exc})") from None
    return address


def check_reason(value: str, field: str = "reason", *, allow_empty: bool = False) -> str:
    text = value.strip().lower()
    if not text and allow_empty:
        return ""
    if text not in REASONS:
        raise InvalidArgument(f"{field}: {value!r} is not one of {', '.join(REASONS)}")
    return text


def check_expiry(expires_at: datetime | None, now: datetime, field: str = "expires_at") -> None:
    if expires_at is not None and expires_at <= now:
        raise InvalidArgument(f"{field}: must be in the future")


def check_note(note: str) -> None:
    if "\x00" in note:
        raise InvalidArgument("note: contains a NUL character")
    if len(note) > MAX_DIAGNOSTIC:
        raise InvalidArgument(f"note: longer than {MAX_DIAGNOSTIC} characters")


def manual(
    domain: str,
    address: str,
    now: datetime,
    *,
    expires_at: datetime | None = None,
    note: str = "",
    field: str = "address",
) -> Suppression:
    """A Suppression added by hand (API Add/Import, `kannon suppression add/import`)."""
    check_expiry(expires_at, now)
    check_note(note)
    return Suppression(
        domain=domain,
        address=canonical_address(address, field),
        reason=MANUAL,
        created_at=now,
        expires_at=expires_at,
        diagnostic=note,
    )


class Refused(NamedTuple):
    """An entry of an import that is not a valid address: its position (from 0), as given, and
    why."""

    position: int
    address: str
    reason: str


def manual_imports(
    domain: str,
    addresses: Sequence[str],
    now: datetime,
    *,
    expires_at: datetime | None,
    note: str,
    field: str = "addresses[{index}]",
) -> tuple[list[Suppression], list[Refused]]:
    """The Suppressions of an import (API ImportSuppressions, `kannon suppression import`), and
    the entries refused; each address is checked under `field` (formatted with its `index`)."""
    items: list[Suppression] = []
    refused: list[Refused] = []
    for index, address in enumerate(addresses):
        try:
            items.append(
                manual(
                    domain,
                    address,
                    now,
                    expires_at=expires_at,
                    note=note,
                    field=field.format(index=index),
                )
            )
        except InvalidArgument as exc:
            refused.append(Refused(index, address, str(exc)))
    return items, refused


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a remote server's diagnostic may.
    return text.replace("\x00", "")[:MAX_DIAGNOSTIC]


def suppression_for(outcome: Outcome, now: datetime) -> Suppression | None:
    """The Suppression an outcome event causes, or None (a soft bounce, an unlisted type)."""
    reason = REASON_BY_TYPE.get(outcome.type)
    if reason is None or not outcome.recipient.strip():
        return None
    detail = outcome.detail
    status, reply_code, diagnostic = "", 0, ""
    if isinstance(detail, Bounced):
        if not detail.hard_bounce:
            return None
        status, reply_code, diagnostic = detail.status, max(detail.code, 0), detail.message
    elif isinstance(detail, Complained):
        status, diagnostic = detail.feedback_type, detail.user_agent
    return _from_event(outcome, reason, now, (status, reply_code, diagnostic))


def is_soft_bounce(outcome: Outcome) -> bool:
    """A Bounced event that does not prove the address dead (see `soft_bounce_limit`)."""
    return isinstance(outcome.detail, Bounced) and not outcome.detail.hard_bounce


def soft_bounce_suppression(outcome: Outcome, now: datetime) -> Suppression:
    """The Suppression of an address whose soft bounces reached the operator's limit; the
    event named is the bounce that reached it."""
    detail = outcome.detail
    assert isinstance(detail, Bounced)
    return _from_event(
        outcome, SOFT_BOUNCE_LIMIT, now, (detail.status, max(detail.code, 0), detail.message)
    )


def _from_event(
    outcome: Outcome, reason: str, now: datetime, cause: tuple[str, int, str]
) -> Suppression:
    """`cause`: the event's status, reply code and diagnostic text."""
    status, reply_code, diagnostic = cause
    return Suppression(
        domain=outcome.domain,
        address=canonical_recipient(outcome.recipient.strip()),
        reason=reason,
        created_at=now,
        event_type=outcome.type,
        event_at=outcome.timestamp,
        status=_clean(status)[:32],
        reply_code=reply_code,
        diagnostic=_clean(diagnostic),
        message_id=outcome.batch_id,
        event_id=outcome.event_id,
    )
