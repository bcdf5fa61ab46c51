"""What the parser reads from the real ARF feedback reports of shared/testdata: the report's
fields and what identifies the returned message, raw, for the SMTPServer to verify."""

from __future__ import annotations

from kannon.dsn import Feedback, parse_message
from tests.shared_data import bounce_testdata


def feedback(name: str) -> Feedback:
    report = parse_message((bounce_testdata() / "emails" / name).read_bytes())
    assert report.kind == "feedback"
    assert report.feedback is not None
    return report.feedback


def test_return_path_s_fbl_report() -> None:
    assert feedback("arf-21.eml") == Feedback(
        feedback_type="abuse",
        user_agent="ReturnPathFBL/1.0",
        source_ip="198.51.100.224",
        arrival_date="Thu, 29 Apr 2015 23:34:45 +0000",
        original_mail_from=("sironeko@example.net",),
        return_paths=("<sironeko@example.net>",),
        message_ids=("<00000000000000000000000022222222@example.net>",),
        original_to=("<kijitora@example.org>",),
    )


def test_abusix_report_names_several_recipients_and_no_return_path() -> None:
    found = feedback("arf-17.eml")
    assert found.original_rcpt_to == ("kijitora@example.com", "sabatora@example.net")
    assert found.return_paths == ()
    assert found.message_ids == ("<EEEEEEEE-0000-0000-0000-EEEEEEEE2222@example.net>",)


def test_a_dmarc_failure_report_is_feedback_of_another_type() -> None:
    found = feedback("arf-19.eml")
    assert found.feedback_type == "auth-failure"
    assert found.original_mail_from == ("<sironeko@neko.example.com>",)


def test_an_old_report_without_arrival_date_uses_received_date() -> None:
    found = feedback("arf-01.eml")
    assert found.arrival_date == "Thu, 29 Apr 2009 00:00:00 -0000 (EST)"
    assert found.return_paths == ("<support@example.ed.jp>",)
