"""Which synchronous 5xx replies of a recipient's MX are hard bounces (ADR 0029): an
address-level verdict whose code and words agree, never a policy, content, reputation or
mailbox-state refusal, nor a reply whose words say nothing of their own."""

from __future__ import annotations

import pytest

from kannon.dsn.reply import classify_reply

HARD = [
    # Postfix, Exim, Gmail, Exchange Online, Yahoo-style "no such user" at RCPT.
    (
        550,
        "5.1.1 <ada@example.org>: Recipient address rejected: User unknown in virtual"
        " mailbox table",
        "RCPT",
    ),
    (
        550,
        "5.1.1 The email account that you tried to reach does not exist. Please try"
        " double-checking the recipient's email address for typos or unnecessary spaces.",
        "RCPT",
    ),
    (550, "5.1.1 RESOLVER.ADR.RecipNotFound; not found", "RCPT"),
    (
        554,
        "delivery error: dd This user doesn't have a yahoo.com account (ada@yahoo.com) [0]",
        "RCPT",
    ),
    (550, "No such user here", "RCPT"),
    (551, "5.1.6 User has moved; please try <ada@new.example>", "RCPT"),
    (550, "5.1.2 Host unknown: example.invalid", "RCPT"),
    # A null MX (RFC 7505), found locally: the domain takes no mail at all.
    (550, "5.1.10 nomail.test accepts no mail (null MX, RFC 7505)", ""),
    # After DATA only an address code outweighs the suspicion of a content filter.
    (550, "5.1.1 User unknown", "DATA"),
]

SOFT = [
    # Policy, content and reputation refusals say nothing about the address.
    (550, "5.7.1 Message rejected as spam by Content Filtering", "DATA"),
    (
        554,
        "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        "RCPT",
    ),
    (
        550,
        "5.7.1 Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
        "DATA",
    ),
    (550, "5.7.26 This message does not have authentication information", "DATA"),
    (552, "5.2.2 Mailbox full", "RCPT"),
    (550, "5.2.1 The email account that you tried to reach is disabled", "RCPT"),
    (552, "5.3.4 Message size exceeds fixed maximum message size", "DATA"),
    # Words that name another cause beside "user unknown".
    (550, "5.1.1 user unknown, message rejected as spam", "RCPT"),
    # No words of the server's own: a bare code, RFC 5321's stock text.
    (550, "5.1.1", "RCPT"),
    (550, "5.1.1 Requested action not taken: mailbox unavailable", "RCPT"),
    (550, "Requested action not taken: mailbox unavailable (S3150)", "RCPT"),
    # Refused at MAIL FROM: the sender was the problem.
    (550, "5.1.0 Sender rejected", "MAIL"),
    (553, "5.1.8 Domain of sender address does not exist", "MAIL"),
    # Not a permanent refusal at all.
    (450, "4.1.1 <ada@example.org>: Recipient address rejected: User unknown", "RCPT"),
    (550, "4.2.2 Mailbox over quota, try again later", "RCPT"),
    # The demo sender's bounce.
    (512, "error sending email", ""),
]


@pytest.mark.parametrize(("code", "text", "command"), HARD)
def test_address_level_refusals_are_hard(code: int, text: str, command: str) -> None:
    verdict = classify_reply(code, text, command=command)
    assert verdict.hard_bounce, verdict
    assert verdict.confident
    assert verdict.reason in ("userunknown", "hostunknown", "hasmoved", "notaccept")
    assert verdict.status.startswith("5.")


@pytest.mark.parametrize(("code", "text", "command"), SOFT)
def test_other_refusals_never_are(code: int, text: str, command: str) -> None:
    verdict = classify_reply(code, text, command=command)
    assert not verdict.hard_bounce, verdict


def test_the_status_is_the_reply_code_s_or_its_class() -> None:
    assert classify_reply(550, "5.1.1 User unknown", command="RCPT").status == "5.1.1"
    assert classify_reply(550, "No such user here", command="RCPT").status == "5.0.0"
    assert classify_reply(451, "try later", command="RCPT").status == "4.0.0"


def test_an_unknown_command_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown SMTP command"):
        classify_reply(550, "5.1.1 User unknown", command="EHLO")
