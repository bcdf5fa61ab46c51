"""Mailer API: SendHTML / SendTemplate intake into the Pool, its validation and its atomicity."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as pb
from kannon.pb.mailer.types import send_pb2
from tests.api.api_test_support import (
    RunningApi,
    admin_md,
    html_request,
    make_settings,
    running_api,
    status_of,
    tenant,
)

DOMAIN = "send.example"


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM messages) AS m, (SELECT count(*) FROM templates) AS t,
                  (SELECT count(*) FROM sending_pool_emails) AS d"""
    )
    return row["m"], row["t"], row["d"]


async def test_send_html_writes_batch_transient_template_and_deliveries(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    before = datetime.now(UTC)
    request = html_request(
        DOMAIN,
        [],
        html="<p>{{ greeting }} {{ name }}</p>",
        global_fields={"greeting": "<Hello>"},
        headers=send_pb2.Headers(to=["list@send.example"], cc=["boss@x.test"]),
    )
    request.recipients.add(email="a@x.test", fields={"name": "Ann"})
    request.recipients.add(email="b@x.test")
    res = await api.mailer().SendHTML(request, metadata=creds)
    after = datetime.now(UTC)

    assert re.fullmatch(r"msg_[a-z][a-z0-9]{23}@send\.example", res.message_id)
    assert re.fullmatch(r"template_[a-z][a-z0-9]{23}@send\.example", res.template_id)
    assert (res.accepted_count, res.rejected_count, list(res.rejected_recipients)) == (2, 0, [])
    scheduled = res.scheduled_time.ToDatetime(tzinfo=UTC)
    assert before <= scheduled <= after

    batch = await api.pool.fetchrow("SELECT * FROM messages")
    assert batch["message_id"] == res.message_id
    assert (batch["subject"], batch["sender_email"], batch["sender_alias"]) == (
        "Hello {{ name }}",
        f"news@{DOMAIN}",
        "News",
    )
    assert (batch["template_id"], batch["domain"]) == (res.template_id, DOMAIN)
    assert batch["attachments"] == {}
    assert batch["headers"] == {"to": ["list@send.example"], "cc": ["boss@x.test"]}

    template = await api.pool.fetchrow("SELECT *, type::text AS t FROM templates")
    assert (template["template_id"], template["t"], template["domain"]) == (
        res.template_id,
        "transient",
        DOMAIN,
    )
    # Global fields are baked in (HTML-escaped); per-Recipient placeholders stay for dispatch.
    assert template["html"] == "<p>&lt;Hello&gt; {{ name }}</p>"

    rows = await api.pool.fetch("SELECT * FROM sending_pool_emails ORDER BY email")
    assert [(r["email"], r["fields"], r["status"], r["domain"]) for r in rows] == [
        ("a@x.test", {"name": "Ann"}, "to_validate", DOMAIN),
        ("b@x.test", {}, "to_validate", DOMAIN),
    ]
    for row in rows:
        assert row["message_id"] == res.message_id
        assert row["scheduled_time"] == row["original_scheduled_time"]
        assert row["scheduled_time"] == scheduled.replace(tzinfo=None)
        assert row["send_attempts_cnt"] == 0


async def test_recipients_are_trimmed_blank_skipped_and_duplicates_collapsed(
    api: RunningApi,
) -> None:
    creds = await tenant(api, DOMAIN)
    request = html_request(DOMAIN, [])
    request.recipients.add(email="  first@x.test ", fields={"n": "1"})
    for email in ("", "   ", "FIRST@X.TEST", "second@x.test", "first@x.test\t"):
        request.recipients.add(email=email, fields={"n": "dup"})
    res = await api.mailer().SendHTML(request, metadata=creds)
    assert (res.accepted_count, res.rejected_count) == (2, 0)
    rows = await api.pool.fetch("SELECT email, fields FROM sending_pool_emails ORDER BY email")
    assert [(r["email"], r["fields"]) for r in rows] == [
        ("first@x.test", {"n": "1"}),
        ("second@x.test", {"n": "dup"}),
    ]


async def test_unstorable_recipients_are_rejected_and_reported(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    long_address = "a" * 250 + "@x.test"
    request = html_request(DOMAIN, ["ok@x.test", long_address, "nul\x00@x.test", "not-an-email"])
    request.recipients.add(email="fields@x.test", fields={"k": "bad\x00value"})
    res = await api.mailer().SendHTML(request, metadata=creds)
    assert (res.accepted_count, res.rejected_count) == (2, 3)
    assert [(r.email, r.reason) for r in res.rejected_recipients] == [
        (long_address, "too_long"),
        ("nul\x00@x.test", "invalid_email"),
        ("fields@x.test", "invalid_fields"),
    ]
    # Syntax is the Validator's job: "not-an-email" is accepted into the Pool.
    emails = {r["email"] for r in await api.pool.fetch("SELECT email FROM sending_pool_emails")}
    assert emails == {"ok@x.test", "not-an-email"}


async def test_scheduled_time_is_honoured(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    when = datetime(2031, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    res = await api.mailer().SendHTML(
        html_request(DOMAIN, ["a@x.test"], scheduled_time=ts(when)), metadata=creds
    )
    assert res.scheduled_time.ToDatetime(tzinfo=UTC) == when
    row = await api.pool.fetchrow("SELECT * FROM sending_pool_emails")
    assert row["scheduled_time"] == row["original_scheduled_time"] == when.replace(tzinfo=None)


async def test_send_template_uses_the_stored_template(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    created = await api.admin().CreateTemplate(
        admin_pb.CreateTemplateReq(domain=DOMAIN, html="<p>{{ offer }} {{ name }}</p>"),
        metadata=admin_md(),
    )
    stored_id = created.template.template_id

    def request(**kw: Any) -> pb.SendTemplateReq:
        return pb.SendTemplateReq(
            sender=send_pb2.Sender(email=f"shop@{DOMAIN}"),
            subject="Offer",
            template_id=stored_id,
            recipients=[send_pb2.Recipient(email="a@x.test")],
            **kw,
        )

    plain = await api.mailer().SendTemplate(request(), metadata=creds)
    assert plain.template_id == stored_id
    # Global fields the template does not mention change nothing: no new template.
    unused = await api.mailer().SendTemplate(request(global_fields={"other": "x"}), metadata=creds)
    assert unused.template_id == stored_id
    assert await api.pool.fetchval("SELECT count(*) FROM templates") == 1
    # Global fields that change the HTML give a transient copy; the stored one is untouched.
    changed = await api.mailer().SendTemplate(
        request(global_fields={"offer": "50% off"}), metadata=creds
    )
    assert changed.template_id != stored_id
    copy = await api.pool.fetchrow(
        "SELECT html, type::text AS t FROM templates WHERE template_id = $1", changed.template_id
    )
    assert (copy["html"], copy["t"]) == ("<p>50% off {{ name }}</p>", "transient")
    original = await api.pool.fetchval(
        "SELECT html FROM templates WHERE template_id = $1", stored_id
    )
    assert original == "<p>{{ offer }} {{ name }}</p>"
    listed = await api.admin().GetTemplates(
        admin_pb.GetTemplatesReq(domain=DOMAIN), metadata=admin_md()
    )
    assert [t.template_id for t in listed.templates] == [stored_id]


async def test_attachments_are_stored_base64_by_filename(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    request = html_request(DOMAIN, ["a@x.test"])
    request.attachments.add(filename="a.txt", content=b"hello")
    request.attachments.add(filename="empty.bin", content=b"")
    await api.mailer().SendHTML(request, metadata=creds)
    stored = await api.pool.fetchval("SELECT attachments FROM messages")
    assert stored == {"a.txt": base64.b64encode(b"hello").decode(), "empty.bin": ""}


async def test_a_parent_domain_sender_is_allowed(api: RunningApi) -> None:
    creds = await tenant(api, "mail.parent.example")
    request = html_request("mail.parent.example", ["a@x.test"])
    request.sender.email = "News@Parent.Example"
    res = await api.mailer().SendHTML(request, metadata=creds)
    assert res.accepted_count == 1
    assert await api.pool.fetchval("SELECT sender_email FROM messages") == "News@parent.example"


def _invalid_requests() -> list[tuple[str, pb.SendHTMLReq, grpc.StatusCode, str]]:
    def req(**kw: Any) -> pb.SendHTMLReq:
        return html_request(DOMAIN, ["a@x.test"], **kw)

    no_sender = req()
    no_sender.ClearField("sender")
    empty_sender = req()
    empty_sender.sender.email = " "
    bad_sender = req()
    bad_sender.sender.email = "not an address"
    foreign = req()
    foreign.sender.email = "x@elsewhere.example"
    lookalike = req()
    lookalike.sender.email = "x@evilsend.example"
    child = req()
    child.sender.email = "x@sub.send.example"  # a child of the tenant is not the tenant
    alias_crlf = req()
    alias_crlf.sender.alias = "News\r\nBcc: victim@x.test"
    alias_long = req()
    alias_long.sender.alias = "n" * 101
    dup_attachment = req()
    dup_attachment.attachments.add(filename="a.pdf", content=b"1")
    dup_attachment.attachments.add(filename="a.pdf", content=b"2")
    nameless_attachment = req()
    nameless_attachment.attachments.add(filename=" ", content=b"1")
    crlf_attachment = req()
    crlf_attachment.attachments.add(filename="a\r\n.pdf", content=b"1")
    blank_recipients = html_request(DOMAIN, ["", "  "])
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("no-sender", no_sender, invalid, "sender:"),
        ("empty-sender", empty_sender, invalid, "sender.email:"),
        ("bad-sender", bad_sender, invalid, "sender.email:"),
        ("foreign-sender", foreign, grpc.StatusCode.PERMISSION_DENIED, "sender.email:"),
        ("lookalike-sender", lookalike, grpc.StatusCode.PERMISSION_DENIED, "sender.email:"),
        ("child-sender", child, grpc.StatusCode.PERMISSION_DENIED, "sender.email:"),
        ("alias-crlf", alias_crlf, invalid, "sender.alias:"),
        ("alias-long", alias_long, invalid, "sender.alias:"),
        ("empty-subject", req(subject="  "), invalid, "subject:"),
        ("subject-crlf", req(subject="Hi\r\nBcc: v@x.test"), invalid, "subject:"),
        ("subject-lf", req(subject="Hi\nthere"), invalid, "subject:"),
        ("empty-html", req(html=""), invalid, "html:"),
        ("nul-html", req(html="<p>\x00</p>"), invalid, "html:"),
        (
            "bad-to",
            req(headers=send_pb2.Headers(to=["ok@x.test", "nope"])),
            invalid,
            "headers.to[1]:",
        ),
        (
            "crlf-cc",
            req(headers=send_pb2.Headers(cc=["a@x.test\r\nBcc: v@x.test"])),
            invalid,
            "headers.cc[0]:",
        ),
        ("dup-attachment", dup_attachment, invalid, "attachments[1].filename:"),
        ("nameless-attachment", nameless_attachment, invalid, "attachments[0].filename:"),
        ("crlf-attachment", crlf_attachment, invalid, "attachments[0].filename:"),
        ("nul-global-field", req(global_fields={"k": "\x00"}), invalid, "global_fields:"),
        ("no-recipients", html_request(DOMAIN, []), invalid, "recipients:"),
        ("blank-recipients", blank_recipients, invalid, "recipients:"),
        (
            "bad-scheduled-time",
            req(scheduled_time=Timestamp(seconds=2**40)),
            invalid,
            "scheduled_time:",
        ),
    ]


INVALID = _invalid_requests()


@pytest.mark.parametrize(
    ("request_", "code", "prefix"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
async def test_send_html_validation_errors(
    api: RunningApi, request_: pb.SendHTMLReq, code: grpc.StatusCode, prefix: str
) -> None:
    creds = await tenant(api, DOMAIN)
    got, details = await status_of(api.mailer().SendHTML(request_, metadata=creds))
    assert (got, details[: len(prefix)]) == (code, prefix), details
    assert await counts(api.pool) == (0, 0, 0)


async def test_send_template_validation_errors(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    base = pb.SendTemplateReq(
        sender=send_pb2.Sender(email=f"n@{DOMAIN}"),
        subject="s",
        recipients=[send_pb2.Recipient(email="a@x.test")],
    )
    code, details = await status_of(api.mailer().SendTemplate(base, metadata=creds))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "template_id")
    base.template_id = "template_missing@send.example"
    code, details = await status_of(api.mailer().SendTemplate(base, metadata=creds))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.NOT_FOUND, "template_id")
    assert await counts(api.pool) == (0, 0, 0)


async def test_too_many_recipients_is_invalid_argument(pool: asyncpg.Pool) -> None:
    async with running_api(make_settings(max_recipients=3), pool) as small:
        creds = await tenant(small, DOMAIN)
        ok = await small.mailer().SendHTML(
            html_request(DOMAIN, ["a@x.test", "b@x.test", "c@x.test"]), metadata=creds
        )
        assert ok.accepted_count == 3
        code, details = await status_of(
            small.mailer().SendHTML(
                html_request(DOMAIN, ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]),
                metadata=creds,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("recipients:") and "3" in details
        assert await counts(pool) == (1, 1, 3)


async def test_ten_thousand_recipients_land_as_one_batch(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    request = html_request(DOMAIN, [])
    for i in range(10_000):
        request.recipients.add(email=f"user{i}@x.test", fields={"name": f"User {i}"})
    res = await api.mailer().SendHTML(request, metadata=creds)
    assert res.accepted_count == 10_000
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 1
    row = await api.pool.fetchrow(
        """SELECT count(*) AS n, count(DISTINCT email) AS emails,
                  bool_and(status = 'to_validate') AS all_to_validate,
                  bool_and(message_id = $1) AS one_batch
           FROM sending_pool_emails""",
        res.message_id,
    )
    assert dict(row) == {"n": 10_000, "emails": 10_000, "all_to_validate": True, "one_batch": True}
    sample = await api.pool.fetchval(
        "SELECT fields FROM sending_pool_emails WHERE email = 'user7777@x.test'"
    )
    assert sample == {"name": "User 7777"}


async def test_a_failure_halfway_leaves_nothing_behind(
    api: RunningApi, caplog: pytest.LogCaptureFixture
) -> None:
    creds = await tenant(api, DOMAIN)
    # A constraint the 5,001st Delivery violates, so COPY fails after thousands of rows.
    await api.pool.execute(
        "ALTER TABLE sending_pool_emails ADD CONSTRAINT no_poison CHECK (email <> 'poison@x.test')"
    )
    emails = [f"user{i}@x.test" for i in range(10_000)]
    emails[5_000] = "poison@x.test"
    with caplog.at_level("ERROR", logger="kannon.api"):
        code, details = await status_of(
            api.mailer().SendHTML(html_request(DOMAIN, emails), metadata=creds)
        )
    assert code == grpc.StatusCode.INTERNAL
    match = re.search(r"correlation id ([0-9a-f]{16})", details)
    assert match is not None, details
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "no_poison" not in details  # internals stay in the log
    assert await counts(api.pool) == (0, 0, 0)


async def test_awkward_values_are_stored_exactly(api: RunningApi) -> None:
    """COPY's CSV quoting must carry any text unchanged into the Pool."""
    creds = await tenant(api, DOMAIN)
    fields = {
        'quote"d': 'say "hi", then\nleave',
        "back\\slash": "C:\\path\\",
        "unicode": "Grüße 😀 \u2028 中文",
        "tab": "a\tb",
        "empty": "",
    }
    emails = ['o"neil@x.test', "comma,name@x.test", "back\\slash@x.test", "üser@x.test"]
    request = html_request(DOMAIN, [])
    for email in emails:
        request.recipients.add(email=email, fields=fields)
    res = await api.mailer().SendHTML(request, metadata=creds)
    assert res.accepted_count == len(emails)
    rows = await api.pool.fetch("SELECT email, fields FROM sending_pool_emails")
    assert sorted(r["email"] for r in rows) == sorted(emails)
    assert all(r["fields"] == fields for r in rows)


async def test_a_large_batch_is_prepared_off_the_event_loop_with_the_same_result(
    api: RunningApi,
) -> None:
    from kannon.api.mailer import OFF_LOOP_RECIPIENTS

    creds = await tenant(api, DOMAIN)
    emails = [f"u{i}@x.test" for i in range(OFF_LOOP_RECIPIENTS)] + ["u1@X.test", " ", "u2@x.test"]
    emails.append("x" * 300 + "@x.test")
    res = await api.mailer().SendHTML(html_request(DOMAIN, emails), metadata=creds)
    assert (res.accepted_count, res.rejected_count) == (OFF_LOOP_RECIPIENTS, 1)
    assert res.rejected_recipients[0].reason == "too_long"
    # A validation error raised in the worker thread still reaches the caller as such.
    bad = html_request(DOMAIN, emails, subject="a\r\nb")
    code, details = await status_of(api.mailer().SendHTML(bad, metadata=creds))
    assert (code, details[:8]) == (grpc.StatusCode.INVALID_ARGUMENT, "subject:")
