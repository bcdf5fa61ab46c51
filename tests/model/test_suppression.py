"""The suppression list's rules, pure: which events suppress, with which reason, how addresses
are spelt and matched, what manual entries must satisfy, and how intake refuses suppressed
Recipients."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kannon.model.batch import (
    REJECT_SUPPRESSED,
    BatchPlan,
    RecipientIn,
    Rejection,
    SendRequest,
    apply_suppressions,
    plan_batch,
)
from kannon.model.errors import InvalidArgument
from kannon.model.outcome import (
    Accepted,
    Bounced,
    Clicked,
    Complained,
    Delivered,
    Detail,
    Errored,
    Failed,
    Opened,
    Outcome,
    Rejected,
)
from kannon.model.suppression import (
    COMPLAINT,
    HARD_BOUNCE,
    MANUAL,
    REASON_BY_TYPE,
    SOFT_BOUNCE_LIMIT,
    UNSUBSCRIBE,
    canonical_address,
    check_reason,
    is_soft_bounce,
    manual,
    soft_bounce_suppression,
    suppression_for,
    suppression_key,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BATCH = "msg_abc123@news.example.com"
DOMAIN = "news.example.com"
HARD = Bounced(
    permanent=True,
    code=550,
    message="5.1.1 <Ada@Example.ORG>: Recipient address rejected: User unknown",
    status="5.1.1",
    reason="userunknown",
    hard_bounce=True,
)


def event(detail: Detail, recipient: str = "Ada@Example.ORG") -> Outcome:
    return Outcome(
        batch_id=BATCH,
        domain=DOMAIN,
        recipient=recipient,
        timestamp=NOW - timedelta(minutes=1),
        detail=detail,
        event_id=f"{detail.type}.1",
    )


def test_the_suppressing_types_are_bounced_complained_and_unsubscribed() -> None:
    assert dict(REASON_BY_TYPE) == {
        "bounced": HARD_BOUNCE,
        "complained": COMPLAINT,
        "unsubscribed": UNSUBSCRIBE,
    }


def test_a_confident_hard_bounce_suppresses_with_its_cause() -> None:
    suppression = suppression_for(event(HARD), NOW)
    assert suppression is not None
    assert suppression.reason == HARD_BOUNCE
    # Canonical: the domain part lower-cased, the local part as sent.
    assert suppression.address == "Ada@example.org"
    assert suppression.domain == DOMAIN
    assert (suppression.event_type, suppression.event_at) == ("bounced", NOW - timedelta(minutes=1))
    assert (suppression.status, suppression.reply_code) == ("5.1.1", 550)
    assert "User unknown" in suppression.diagnostic
    assert (suppression.message_id, suppression.event_id) == (BATCH, "bounced.1")
    assert suppression.created_at == NOW and suppression.expires_at is None


@pytest.mark.parametrize(
    "detail",
    [
        # Uncertain dead address (ADR 0023): reported, never acted on.
        Bounced(True, 550, "5.1.1", status="5.1.1", reason="userunknown", hard_bounce=False),
        Bounced(True, 552, "5.2.2 Mailbox full", status="5.2.2", reason="mailboxfull"),
        Bounced(True, 554, "5.7.1 spam", status="5.7.1", reason="spamdetected"),
        Bounced(False, 451, "4.7.1 later", status="4.7.1", reason="blocked"),
        Accepted(),
        Rejected("invalid address: the address has no @"),
        Delivered(),
        Errored(451, "greylisted"),
        Failed("retry budget spent"),
        Opened("Mozilla", "192.0.2.1"),
        Clicked("Mozilla", "192.0.2.1", "https://example.com"),
    ],
    ids=lambda d: f"{d.type}-{getattr(d, 'reason', '')}",
)
def test_nothing_else_suppresses(detail: Detail) -> None:
    assert suppression_for(event(detail), NOW) is None


def test_every_complaint_suppresses() -> None:
    complaint = Complained("abuse", "Yahoo!-Mail-Feedback/2.0", "192.0.2.9", "Sun, 1 Jun 2025")
    suppression = suppression_for(event(complaint), NOW)
    assert suppression is not None
    assert suppression.reason == COMPLAINT
    assert (suppression.status, suppression.diagnostic) == ("abuse", "Yahoo!-Mail-Feedback/2.0")


def test_an_event_without_recipient_suppresses_nothing() -> None:
    assert suppression_for(event(HARD, recipient="  "), NOW) is None


def test_soft_bounces_are_told_apart_and_suppress_only_through_the_limit() -> None:
    soft = Bounced(True, 552, "5.2.2 Mailbox full", status="5.2.2", reason="mailboxfull")
    assert is_soft_bounce(event(soft))
    assert not is_soft_bounce(event(HARD))
    assert not is_soft_bounce(event(Delivered()))
    suppression = soft_bounce_suppression(event(soft), NOW)
    assert suppression.reason == SOFT_BOUNCE_LIMIT
    assert (suppression.status, suppression.reply_code) == ("5.2.2", 552)


def test_a_nul_in_a_remote_diagnostic_does_not_reach_the_database() -> None:
    dirty = Bounced(True, 550, "5.1.1 user\x00 unknown", "5.1.1", "userunknown", True)
    suppression = suppression_for(event(dirty), NOW)
    assert suppression is not None and "\x00" not in suppression.diagnostic


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("Ada@Example.ORG", "ada@example.org"),
        (" ada@example.org. ", "ada@example.org"),
        ("ada\u200b@example.org", "ada@example.org"),
        ("ada@Bücher.de", "ada@xn--bcher-kva.de"),
    ],
)
def test_addresses_match_in_their_canonical_spelling_case_insensitively(
    given: str, key: str
) -> None:
    assert suppression_key(given) == key


def test_a_manual_entry_is_checked_and_canonical() -> None:
    entry = manual(DOMAIN, " Bob@Example.ORG ", NOW, note="asked by phone")
    assert (entry.address, entry.reason, entry.diagnostic) == (
        "Bob@example.org",
        MANUAL,
        "asked by phone",
    )
    assert canonical_address("bob@bücher.de") == "bob@xn--bcher-kva.de"
    with pytest.raises(InvalidArgument, match=r"^address: 'not-an-address' is not a valid"):
        manual(DOMAIN, "not-an-address", NOW)
    with pytest.raises(InvalidArgument, match=r"^addresses\[3\]: required"):
        manual(DOMAIN, " ", NOW, field="addresses[3]")
    with pytest.raises(InvalidArgument, match=r"^expires_at: must be in the future"):
        manual(DOMAIN, "bob@example.org", NOW, expires_at=NOW)
    with pytest.raises(InvalidArgument, match=r"^note: contains a NUL"):
        manual(DOMAIN, "bob@example.org", NOW, note="a\x00b")


def test_reasons_are_a_closed_list() -> None:
    assert check_reason(" Complaint ") == COMPLAINT
    assert check_reason("", allow_empty=True) == ""
    with pytest.raises(InvalidArgument, match=r"^reason: 'spam' is not one of hard_bounce, "):
        check_reason("spam")


def _plan(recipients: list[str]) -> tuple[SendRequest, BatchPlan]:
    request = SendRequest(
        sender_email=f"news@{DOMAIN}",
        sender_alias="News",
        subject="Hi",
        recipients=[RecipientIn(r, {"n": r}) for r in recipients],
    )
    plan = plan_batch(
        request,
        tenant=DOMAIN,
        batch_id=BATCH,
        template_id="tpl",
        now=NOW,
        max_recipients=100,
    )
    return request, plan


def test_intake_refuses_suppressed_recipients_under_the_spelling_given() -> None:
    request, plan = _plan(["ADA@Example.org", "bob@example.org", "x" * 300 + "@e.org", "cy@e.org"])
    refused = apply_suppressions(plan, request.recipients, {"ada@example.org", "cy@e.org"})
    assert [d.email for d in refused.deliveries] == ["bob@example.org"]
    assert [d.email for d in refused.suppressed] == ["ADA@example.org", "cy@e.org"]
    assert refused.suppressed[0].fields == {"n": "ADA@Example.org"}
    assert refused.rejected == [
        Rejection("x" * 300 + "@e.org", "too_long"),
        Rejection("ADA@Example.org", REJECT_SUPPRESSED),
        Rejection("cy@e.org", REJECT_SUPPRESSED),
    ]


def test_a_batch_of_suppressed_recipients_only_has_nothing_to_send() -> None:
    request, plan = _plan(["ada@example.org"])
    refused = apply_suppressions(plan, request.recipients, {"ada@example.org"})
    assert refused.deliveries == [] and len(refused.suppressed) == 1


def test_without_suppressed_recipients_the_plan_is_unchanged() -> None:
    request, plan = _plan(["ada@example.org"])
    assert apply_suppressions(plan, request.recipients, set()) is plan
    assert apply_suppressions(plan, request.recipients, {"other@example.org"}) is plan
