"""Focused tests of kannon.dsn on small hand-written reports: RFC 3464 actions, multi-recipient
reports, codes found only in diagnostic text, ARF, auto-replies, SES JSON, and the classifier's
precedence rules."""

from __future__ import annotations

import json

import pytest

from kannon.dsn import BouncedRecipient, is_hard_bounce, parse_message
from kannon.dsn.codes import find_codes, find_command, prefer_status, status_reason
from kannon.dsn.taxonomy import Evidence, classify


def fields(recipient: str, action: str, status: str, diagnostic: str) -> str:
    """One recipient's field block: Final-Recipient, Action, Status and an SMTP Diagnostic-Code."""
    return (
        f"Final-Recipient: rfc822; {recipient}\nAction: {action}\nStatus: {status}\n"
        f"Diagnostic-Code: smtp; {diagnostic}\n"
    )


def dsn(*recipients: str, text: str = "Delivery report follows.") -> bytes:
    """A multipart/report delivery-status message with one field block per recipient."""
    blocks = "\n\n".join(r.strip("\n") for r in recipients)
    return f"""From: Mail Delivery System <MAILER-DAEMON@mta.example.net>
To: sender@example.com
Subject: Delivery Status Notification
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain

{text}

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mta.example.net

{blocks}

--BOUNDARY
Content-Type: text/rfc822-headers

From: sender@example.com
To: someone@example.org
Subject: hello

--BOUNDARY--
""".encode()


FAILED_USER = """
Final-Recipient: rfc822; nobody@example.org
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown
"""


def test_failed_recipient_with_diagnostic_code() -> None:
    report = parse_message(dsn(FAILED_USER))
    assert report.kind == "bounce"
    assert report.recipients == [
        BouncedRecipient(
            recipient="nobody@example.org",
            action="failed",
            status="5.1.1",
            reply_code="550",
            diagnostic="550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown",
            remote_mta="mx.example.org",
            reason="userunknown",
            hard_bounce=True,
            permanent=True,
            confident=True,
        )
    ]


def test_delayed_report_is_not_a_bounce() -> None:
    report = parse_message(
        dsn(
            fields(
                "slow@example.org",
                "delayed",
                "4.4.1",
                "connect to mx.example.org[192.0.2.1]:25: Connection timed out",
            ),
            text="This is a warning message only; delivery will be retried.",
        )
    )
    assert report.kind == "delayed"
    (recipient,) = report.recipients
    assert (recipient.action, recipient.status, recipient.reason) == ("delayed", "4.4.1", "expired")
    assert not recipient.hard_bounce
    assert not recipient.permanent


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded"])
def test_success_report_is_not_a_bounce(action: str) -> None:
    report = parse_message(
        dsn(fields("happy@example.org", action, "2.0.0", "250 2.0.0 OK queued as 12345"))
    )
    assert report.kind == "delivered"
    (recipient,) = report.recipients
    assert (recipient.reason, recipient.status, recipient.hard_bounce) == (
        "delivered",
        "2.0.0",
        False,
    )


def test_multi_recipient_report_keeps_order_and_reasons() -> None:
    report = parse_message(
        dsn(
            FAILED_USER,
            fields("full@example.org", "failed", "5.2.2", "552 5.2.2 Mailbox full"),
            """
Original-Recipient: rfc822; alias@example.net
Final-Recipient: rfc822; later@example.org
Action: delayed
Status: 4.7.0
Diagnostic-Code: smtp; 421 4.7.0 Try again later, closing connection
""",
        )
    )
    assert report.kind == "bounce"
    got = [(r.recipient, r.action, r.reason, r.hard_bounce) for r in report.recipients]
    assert got == [
        ("nobody@example.org", "failed", "userunknown", True),
        ("full@example.org", "failed", "mailboxfull", False),
        ("later@example.org", "delayed", "securityerror", False),
    ]
    assert report.recipients[2].original_recipient == "alias@example.net"


def test_records_without_blank_lines_between_recipients() -> None:
    # Some MTAs run the per-recipient groups together; repeated fields must still split them.
    packed = (
        "Final-Recipient: rfc822; one@example.org\nAction: failed\nStatus: 5.1.1\n"
        "Final-Recipient: rfc822; two@example.org\nAction: failed\nStatus: 5.2.2\n"
    )
    report = parse_message(dsn(packed))
    assert [(r.recipient, r.reason) for r in report.recipients] == [
        ("one@example.org", "userunknown"),
        ("two@example.org", "mailboxfull"),
    ]


def test_missing_status_field_takes_code_from_diagnostic_text() -> None:
    report = parse_message(
        dsn(
            """
Final-Recipient: rfc822; gone@example.org
Action: failed
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist.
 550 5.1.1 Please try double-checking the recipient's email address
"""
        )
    )
    (recipient,) = report.recipients
    assert (recipient.status, recipient.reply_code, recipient.reason) == (
        "5.1.1",
        "550",
        "userunknown",
    )


def test_specific_code_in_diagnostic_beats_generic_status_field() -> None:
    report = parse_message(
        dsn(
            fields(
                "spam@example.org",
                "failed",
                "5.0.0",
                "554 5.7.1 Message rejected: spam detected by content filter",
            )
        )
    )
    (recipient,) = report.recipients
    assert (recipient.status, recipient.reason) == ("5.7.1", "spamdetected")


def test_arf_feedback_report() -> None:
    raw = b"""From: fbl@isp.example
To: abuse@example.com
Subject: complaint
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="B"

--B
Content-Type: text/plain

This is an abuse report.

--B
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: test/1.0
Version: 1
Original-Rcpt-To: <angry@isp.example>

--B
Content-Type: message/rfc822

From: news@example.com
To: angry@isp.example
Subject: offer

buy
--B--
"""
    report = parse_message(raw)
    assert report.kind == "feedback"
    assert [(r.recipient, r.reason, r.status, r.hard_bounce) for r in report.recipients] == [
        ("angry@isp.example", "feedback", "", False)
    ]


def test_auto_reply_is_vacation() -> None:
    raw = b"""From: Away Person <away@example.org>
To: sender@example.com
Subject: Automatic reply: hello
Auto-Submitted: auto-replied

I am on holiday until Monday.
"""
    report = parse_message(raw)
    assert report.kind == "vacation"
    assert [(r.recipient, r.reason) for r in report.recipients] == [
        ("away@example.org", "vacation")
    ]


def test_plain_message_is_unknown() -> None:
    raw = b"From: friend@example.org\nTo: me@example.com\nSubject: lunch\n\nSee you at noon.\n"
    report = parse_message(raw)
    assert report.kind == "unknown"
    assert report.recipients == []
    assert report.notes


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe garbage \x80", b"::::\n\n\n", b"%PDF-1.4\n"])
def test_garbage_is_unknown_with_a_note(raw: bytes) -> None:
    report = parse_message(raw)
    assert report.kind == "unknown"
    assert report.notes


def _ses(payload: dict[str, object]) -> bytes:
    return (
        "From: no-reply@sns.amazonaws.com\nTo: ops@example.com\n"
        "Subject: AWS Notification Message\n\n" + json.dumps(payload) + "\n--\nunsubscribe link\n"
    ).encode()


def test_ses_json_bounce_complaint_and_delivery() -> None:
    bounce = parse_message(
        _ses(
            {
                "notificationType": "Bounce",
                "bounce": {
                    "bounceType": "Transient",
                    "bounceSubType": "MailboxFull",
                    "bouncedRecipients": [{"emailAddress": "Full@Example.org"}],
                },
            }
        )
    )
    assert bounce.kind == "bounce"
    (recipient,) = bounce.recipients
    assert (recipient.recipient, recipient.status, recipient.reason) == (
        "full@example.org",
        "4.0.0",
        "mailboxfull",
    )
    complaint = parse_message(
        _ses(
            {
                "notificationType": "Complaint",
                "complaint": {"complainedRecipients": [{"emailAddress": "x@example.org"}]},
            }
        )
    )
    assert complaint.kind == "feedback"
    assert [r.recipient for r in complaint.recipients] == ["x@example.org"]
    delivery = parse_message(
        _ses(
            {
                "notificationType": "Delivery",
                "delivery": {"recipients": ["ok@example.org"], "smtpResponse": "250 2.6.0 Ok"},
            }
        )
    )
    assert delivery.kind == "delivered"
    assert [(r.status, r.reply_code, r.reason) for r in delivery.recipients] == [
        ("2.6.0", "250", "delivered")
    ]


# --- classifier rules -------------------------------------------------------------------------


def test_user_unknown_after_rcpt_is_dead_but_after_data_is_a_filter() -> None:
    text = "550 Unknown user joe@example.org"
    at_rcpt = classify(Evidence(text=text, status="5.0.0", reply_code="550", command="RCPT"))
    at_data = classify(Evidence(text=text, status="5.0.0", reply_code="550", command="DATA"))
    assert (at_rcpt.reason, at_data.reason) == ("userunknown", "filtered")


def test_stated_cause_beats_generic_status() -> None:
    verdict = classify(Evidence(text="550 5.1.1 mailbox is full", status="5.1.1", reply_code="550"))
    assert verdict.reason == "mailboxfull"


def test_rejection_at_mail_from_is_about_the_sender() -> None:
    verdict = classify(
        Evidence(text="553 5.1.0 Sender domain does not exist", status="5.1.0", command="MAIL")
    )
    assert verdict.reason == "rejected"


def test_transient_no_such_host_is_a_network_error() -> None:
    verdict = classify(Evidence(text="Host or domain name not found", status="4.4.4"))
    permanent = classify(Evidence(text="Host or domain name not found", status="5.0.0"))
    assert (verdict.reason, permanent.reason) == ("networkerror", "hostunknown")


def test_nothing_said_is_undefined_something_unknown_said_is_onhold() -> None:
    assert classify(Evidence(text="", status="5.0.0")).reason == "undefined"
    assert classify(Evidence(text="the flux capacitor", status="5.0.0")).reason == "onhold"


@pytest.mark.parametrize(
    ("reason", "status", "hard"),
    [
        ("userunknown", "5.1.1", True),
        ("userunknown", "4.1.1", True),
        ("hostunknown", "5.1.2", True),
        ("hasmoved", "5.1.6", True),
        ("notaccept", "5.1.10", True),
        ("notaccept", "4.0.0", False),
        ("mailboxfull", "5.2.2", False),
        ("filtered", "5.0.0", False),
        ("feedback", "", False),
    ],
)
def test_hard_bounce_rule(reason: str, status: str, hard: bool) -> None:
    assert is_hard_bounce(reason, status) is hard


def test_codes_prefer_the_innermost_failure() -> None:
    codes = find_codes(
        "554 4.4.7 Message expired: unable to deliver <421 4.4.2 Connection timed out>"
    )
    assert (codes.status, codes.reply) == ("4.4.2", "421")
    transcript = find_codes("451 4.3.0 Error: queue file write error\n221 2.0.0 Bye")
    assert (transcript.status, transcript.reply) == ("4.3.0", "451")


# (Status field, code quoted in the diagnostic, reply code, the one chosen) of one class: the more
# specific code wins.
ONE_CLASS = [
    ("5.1.1", "", "", "5.1.1"),
    ("", "5.7.1", "554", "5.7.1"),
    # The reporting MTA's verdict stands between two equally specific codes.
    ("5.4.7", "5.4.1", "", "5.4.7"),
    # ... but not over a more specific one, nor as a catch-all.
    ("5.0.0", "5.7.1", "554", "5.7.1"),
    ("5.4.0", "5.4.4", "", "5.4.4"),
    ("5.7.1", "5.0.0", "550", "5.7.1"),
    ("4.4.7", "4.4.2", "421", "4.4.2"),
    ("5.3.0", "5.2.2", "552", "5.2.2"),
    ("5.1.1", "5.2.2", "552", "5.2.2"),
]
# Classes disagree: the reply code's class settles it; without one the field wins.
CLASSES_DISAGREE = [
    ("5.4.7", "4.4.2", "421", "4.4.2"),
    ("4.4.1", "5.1.1", "450", "4.4.1"),
    ("5.4.7", "4.4.1", "", "5.4.7"),
]


@pytest.mark.parametrize(("field", "quoted", "reply", "chosen"), ONE_CLASS + CLASSES_DISAGREE)
def test_status_field_versus_quoted_code(field: str, quoted: str, reply: str, chosen: str) -> None:
    assert prefer_status(field, quoted, reply) == chosen


def test_codes_ignore_ip_addresses_and_versions() -> None:
    codes = find_codes("deferred from 192.0.2.5 see 4.16.55.1 (Exim 4.72)")
    assert (codes.status, codes.reply) == ("", "")


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("said: 550 no such user (in reply to RCPT TO command)", "RCPT"),
        ("550 5.1.1 user unknown (in response to RCPT TO command)", "RCPT"),
        ("SMTP error from remote mail server after end of data:", "DATA"),
        ("550 rejected during DATA", "DATA"),
        (">>> MAIL From:<a@b.example>\n<<< 553 rejected", "MAIL"),
        ("SMTP error from remote mail server after initial connection:", "CONN"),
        ("nothing here", ""),
        # A transcript: the command is the one before the first failure.
        (
            "... while talking to mx.example.org.:\n>>> RCPT To:<a@example.org>\n"
            "<<< 550 5.1.1 <a@example.org>... User unknown\n>>> DATA\n<<< 503 5.0.0 Need RCPT\n",
            "RCPT",
        ),
        # RFC 2920: RCPT and DATA sent together, ">>> DATA" logged before both replies; the
        # server's "no valid recipients" answer to DATA shows the refusal answered RCPT (ADR 0055).
        (
            "... while talking to mx.example.org.:\n>>> DATA\n"
            "<<< 550 5.5.0 Invalid recipient\n<<< 554 5.5.1 Error: no valid recipients\n",
            "RCPT",
        ),
        # ... while a refusal of the content itself answered DATA.
        (
            "... while talking to mx.example.org.:\n>>> DATA\n<<< 550 5.7.1 Message rejected\n",
            "DATA",
        ),
    ],
)
def test_command_detection(text: str, command: str) -> None:
    assert find_command(text) == command


def test_status_table_follows_rfc3463() -> None:
    assert status_reason("5.2.2") == "mailboxfull"
    assert status_reason("4.2.2") == "mailboxfull"
    assert status_reason("5.7.26") == "authfailure"
    assert status_reason("5.7.1") == "securityerror"
    assert status_reason("5.0.0") == ""


# Rejection texts as large providers and common filters phrase them (from their public error-code
# pages and everyday bounces), with the SMTP command they typically answer.
PROVIDER_PHRASES = [
    (
        "550-5.7.1 Our system has detected an unusual rate of unsolicited mail "
        "originating from your IP address.",
        "",
        "blocked",
    ),
    (
        "550-5.7.1 Gmail has detected that this message is likely unsolicited mail.",
        "DATA",
        "spamdetected",
    ),
    (
        "421-4.7.0 This message is suspicious due to the very low reputation of the "
        "sending IP address",
        "",
        "badreputation",
    ),
    (
        "550-5.7.1 The user or domain that you are sending to (or from) has a policy "
        "that prohibited the mail",
        "DATA",
        "policyviolation",
    ),
    (
        "450-4.2.1 The user you are trying to contact is receiving mail too quickly.",
        "RCPT",
        "speeding",
    ),
    (
        "421-4.7.0 TLS required for RCPT domain, closing connection.",
        "",
        "failedstarttls",
    ),
    (
        "552-5.2.3 Your message exceeded Google's message size limits.",
        "DATA",
        "exceedlimit",
    ),
    (
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact "
        "your Internet service provider since part of their network is on our block list "
        "(S3150).",
        "",
        "blocked",
    ),
    (
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
        "RCPT",
        "userunknown",
    ),
    (
        "452 4.5.3 Too many recipients",
        "RCPT",
        "toomanyconn",
    ),
    (
        "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
        "",
        "blocked",
    ),
    (
        "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException",
        "",
        "mailboxfull",
    ),
    (
        "550 5.1.1 RESOLVER.ADR.ExRecipNotFound; not found",
        "",
        "userunknown",
    ),
    (
        "550 5.1.8 Access denied, bad outbound sender",
        "",
        "rejected",
    ),
    (
        "554 30 Sorry, your message size exceeds 41943040 bytes.",
        "DATA",
        "mesgtoobig",
    ),
    (
        "421 4.7.0 [TS01] Messages from 192.0.2.1 temporarily deferred due to user "
        "complaints - 4.16.55.1",
        "",
        "badreputation",
    ),
    (
        "550 5.7.0 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=192.0.2.1",
        "",
        "blocked",
    ),
    (
        "554 5.7.1 [CS01] Message rejected due to local policy.",
        "DATA",
        "policyviolation",
    ),
    (
        "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
        "RCPT",
        "requireptr",
    ),
    (
        "554 5.7.1 <x@y.example>: Sender address rejected: Access denied",
        "RCPT",
        "rejected",
    ),
    (
        "550 Message was not accepted -- invalid mailbox.",
        "RCPT",
        "userunknown",
    ),
    (
        "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
        "RCPT",
        "norelaying",
    ),
    (
        "550 5.7.1 Message rejected: virus found in attachment",
        "DATA",
        "virusdetected",
    ),
    (
        "554 5.4.6 Too many hops",
        "",
        "networkerror",
    ),
    (
        "550 OU-002 Mail rejected for policy reasons. Reasons may be related to content "
        "with spam-like characteristics",
        "DATA",
        "spamdetected",
    ),
    (
        "550 5.7.0 Requested action not taken: too many emails per second",
        "",
        "speeding",
    ),
    (
        "554 delivery error: dd Sorry your message cannot be delivered. This mailbox is "
        "disabled (554.30).",
        "",
        "suspend",
    ),
    (
        "550 5.7.1 Recipient address rejected: Message rejected by DMARC policy",
        "",
        "authfailure",
    ),
    (
        "452 4.3.1 Insufficient system resources",
        "",
        "systemfull",
    ),
    (
        "550 5.7.1 Email rejected because 192.0.2.1 is listed by bl.spamcop.net",
        "",
        "blocked",
    ),
    (
        "421 4.4.2 mx.example.com Error: timeout exceeded",
        "",
        "networkerror",
    ),
    (
        "550 5.7.25 The IP address sending this message does not have a PTR record setup",
        "",
        "requireptr",
    ),
]


@pytest.mark.parametrize(("diagnostic", "command", "reason"), PROVIDER_PHRASES)
def test_provider_phrases(diagnostic: str, command: str, reason: str) -> None:
    codes = find_codes(diagnostic)
    evidence = Evidence(
        text=diagnostic, status=codes.status or "5.0.0", reply_code=codes.reply, command=command
    )
    assert classify(evidence).reason == reason


def test_delay_warning_is_never_a_hard_bounce() -> None:
    report = parse_message(
        dsn(
            fields(
                "maybe@example.org",
                "delayed",
                "4.1.1",
                "450 4.1.1 <maybe@example.org>: Recipient address rejected: User unknown",
            )
        )
    )
    assert report.kind == "delayed"
    (recipient,) = report.recipients
    assert (recipient.reason, recipient.hard_bounce) == ("userunknown", False)


def test_arf_fields_pasted_into_plain_text_are_feedback() -> None:
    raw = b"""From: scomp@isp.example
To: fbl@example.com
Subject: Client TOS Notification

Feedback-Type: abuse
User-Agent: SComp
Version: 0.1
Original-Rcpt-To: bob@isp.example
"""
    report = parse_message(raw)
    assert report.kind == "feedback"
    assert [r.recipient for r in report.recipients] == ["bob@isp.example"]


# --- confidence: hard_bounce only on evidence that agrees with itself (ADR 0023) ----------------


def _one(status: str, diagnostic: str, action: str = "failed") -> BouncedRecipient:
    (recipient,) = parse_message(
        dsn(fields("someone@example.org", action, status, diagnostic))
    ).recipients
    return recipient


@pytest.mark.parametrize(
    ("status", "diagnostic", "reason", "confident", "hard"),
    [
        # Code and words agree, at RCPT: the address is dead.
        (
            "5.1.1",
            "550 5.1.1 <someone@example.org>: Recipient address rejected: User unknown "
            "(in reply to RCPT TO command)",
            "userunknown",
            True,
            True,
        ),
        (
            "5.0.0",
            "550 sorry, no such user (in reply to RCPT TO command)",
            "userunknown",
            True,
            True,
        ),
        # A policy code with "user unknown" words: a filter's refusal worded as a missing user
        # (ADR 0055), and the code does not back the words either way.
        (
            "5.7.1",
            "550 5.7.1 user unknown (in reply to RCPT TO command)",
            "filtered",
            False,
            False,
        ),
        # A mailbox code says the mailbox exists.
        (
            "5.2.1",
            "550 5.2.1 user unknown (in reply to RCPT TO command)",
            "userunknown",
            False,
            False,
        ),
        # The code alone, nothing said: one witness.
        ("5.1.1", "550 5.1.1 https://support.example/answer/6596", "userunknown", False, False),
        # Transient: the reporting MTA kept its options open.
        (
            "4.1.1",
            "450 4.1.1 <someone@example.org>: Recipient address rejected: unverified "
            "address: host mx said: 550 5.1.1 user unknown",
            "userunknown",
            False,
            False,
        ),
        # After DATA with a generic code: a content filter's disguise, not a dead address.
        ("5.0.0", "550 user unknown (in reply to end of DATA command)", "filtered", True, False),
        # "Try again later" is a passing condition.
        (
            "5.0.0",
            "550 Host or domain name not found, try again later",
            "hostunknown",
            False,
            False,
        ),
        ("5.1.2", "550 5.1.2 Host or domain name not found", "hostunknown", True, True),
        ("5.1.10", "556 5.1.10 Recipient address has null MX", "notaccept", True, True),
        # The directory's own words outweigh a misused code (Exchange Online's 5.4.1)...
        (
            "5.4.1",
            "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
            "userunknown",
            True,
            True,
        ),
        # ... but not a mailbox or policy code.
        (
            "5.7.1",
            "550 5.7.1 Recipient address rejected: Access denied",
            "userunknown",
            False,
            False,
        ),
        # X.7.x is the catch-all of policy refusals: it agrees with a block list's words.
        (
            "5.7.1",
            "554 5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org",
            "blocked",
            True,
            False,
        ),
        # Soft reasons are confident or not by the same agreement, never hard.
        ("5.2.2", "552 5.2.2 Mailbox full", "mailboxfull", True, False),
    ],
)
def test_hard_bounce_needs_agreeing_evidence(
    status: str, diagnostic: str, reason: str, confident: bool, hard: bool
) -> None:
    recipient = _one(status, diagnostic)
    assert (recipient.reason, recipient.confident, recipient.hard_bounce) == (
        reason,
        confident,
        hard,
    )


def _text_bounce(preamble: str, line: str) -> bytes:
    return f"""From: Mail Delivery System <MAILER-DAEMON@mta.example.net>
To: sender@example.com
Subject: Mail delivery failed: returning message to sender

{preamble}

  someone@example.org
    {line}
""".encode()


def test_text_only_bounce_is_hard_only_on_the_reporting_systems_own_finding() -> None:
    exim = (
        "This message was created automatically by mail delivery software.\n\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:"
    )
    plain = "A message that you sent could not be delivered to one or more of its recipients."
    (unrouteable,) = parse_message(_text_bounce(exim, "Unrouteable address")).recipients
    (no_domain,) = parse_message(_text_bounce(plain, "Domain does not exist")).recipients
    (bare,) = parse_message(_text_bounce(plain, "User unknown")).recipients
    assert (unrouteable.reason, unrouteable.hard_bounce) == ("hostunknown", True)
    # The MTA's own DNS lookup, in a failure report: final even without the word "permanent".
    assert (no_domain.reason, no_domain.hard_bounce) == ("hostunknown", True)
    # A bare "user unknown" with no code and no dialogue: reported, but not acted on.
    assert (bare.reason, bare.confident, bare.hard_bounce) == ("userunknown", False, False)


def test_delay_warning_with_dead_address_words_is_not_hard() -> None:
    recipient = _one("4.1.1", "450 4.1.1 user unknown", action="delayed")
    assert (recipient.reason, recipient.hard_bounce) == ("userunknown", False)


@pytest.mark.parametrize(
    ("status", "diagnostic", "reason"),
    [
        ("5.0.0", "Network error on destination MXs", "networkerror"),
        ("4.4.3", "CNAME lookup failed temporarily. (#4.4.3)", "networkerror"),
        ("4.4.3", "Name server timeout", "networkerror"),
        ("5.4.310", "550 5.4.310 DNS domain example.org does not exist", "hostunknown"),
        ("5.1.10", "Domain example.org does not accept mail (nullMX)", "notaccept"),
        ("5.0.0", "Message expired: queue lifetime exceeded", "expired"),
    ],
)
def test_network_dns_and_expiry_phrases(status: str, diagnostic: str, reason: str) -> None:
    assert _one(status, diagnostic).reason == reason


@pytest.mark.parametrize(
    "diagnostic",
    [
        "550 Addressee unknown",
        "550 Unknown address error",
        "550 Invalid email address",
        "550 Empfaenger unbekannt",
        "550 usuario desconocido",
        "550 utente sconosciuto",
    ],
)
def test_more_ways_to_say_no_such_user(diagnostic: str) -> None:
    recipient = _one("5.0.0", f"{diagnostic} (in reply to RCPT TO command)")
    assert (recipient.reason, recipient.hard_bounce) == ("userunknown", True)


def test_local_delivery_agent_unknown_user_is_the_directory_speaking() -> None:
    recipient = _one("5.5.0", "554 <someone@example.org>... Service unavailable")
    assert recipient.reason != "userunknown"
    recipient = _one(
        "5.5.0",
        "mail.local: unknown user: someone; 554 <someone@example.org>... Service unavailable",
    )
    # Reported as a dead address; Sendmail's generic "Service unavailable" beside it still keeps
    # it from being acted on (ADR 0023).
    assert (recipient.reason, recipient.hard_bounce) == ("userunknown", False)


def test_directory_words_under_a_bare_generic_status_are_not_acted_on() -> None:
    # Status 5.0.0 and no reply of the remote server: the words are the only witness (ADR 0055).
    alone = _one("5.0.0", "The email account that you tried to reach does not exist.")
    assert (alone.reason, alone.confident, alone.hard_bounce) == ("userunknown", False, False)
    # The remote server's own 550 is a second witness.
    replied = _one("5.0.0", "550 The email account that you tried to reach does not exist.")
    assert (replied.reason, replied.hard_bounce) == ("userunknown", True)


def test_dns_fault_given_up_for_good_is_an_unroutable_domain_not_acted_on() -> None:
    failed = _one(
        "5.4.4",
        "Name service error for name=example.org type=MX: Malformed or unexpected name server "
        "reply",
    )
    assert (failed.reason, failed.permanent, failed.hard_bounce) == ("hostunknown", True, False)
    # The same words in a transient report stay a network fault.
    delayed = _one(
        "4.4.3",
        "Name service error for name=example.org type=MX: Malformed or unexpected name server "
        "reply",
        action="delayed",
    )
    assert delayed.reason == "networkerror"


def test_remote_mta_with_a_type_and_no_host_is_not_a_crash() -> None:
    # Sendmail writes "Remote-MTA: DNS; " when the domain had no host to talk to.
    block = (
        "\nFinal-Recipient: RFC822; someone@example.org\nAction: failed\nStatus: 5.1.2\n"
        "Remote-MTA: DNS; \n"
    )
    (recipient,) = parse_message(dsn(block)).recipients
    assert (recipient.recipient, recipient.remote_mta) == ("someone@example.org", "")
    assert (recipient.reason, recipient.status) == ("hostunknown", "5.1.2")
