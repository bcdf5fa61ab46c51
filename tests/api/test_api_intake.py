"""Intake refuses what could never be sent and merges what is one mailbox (ADR 0020, ADR 0021):

* a Batch whose Envelope would exceed the bus's max_payload is InvalidArgument, nothing stored;
* a CR/LF in a field the subject uses is InvalidArgument naming the Recipient and the field;
* one mailbox written several ways (domain case, trailing dot, zero-width space) is one Delivery.
"""

from __future__ import annotations

import asyncpg
import grpc

from tests.api.api_test_support import (
    RunningApi,
    html_request,
    make_settings,
    running_api,
    status_of,
    tenant,
)

DOMAIN = "intake.example"


async def counts(pool: asyncpg.Pool) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM messages) AS b,"
        " (SELECT count(*) FROM sending_pool_emails) AS d"
    )
    assert row is not None
    return row["b"], row["d"]


async def test_an_attachment_the_bus_cannot_carry_is_refused_at_intake(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    request = html_request(DOMAIN, ["a@x.test", "b@x.test"])
    # 900 KB is 1.2 MB in base64: over the default nats.max_payload of 1 MiB.
    request.attachments.add(filename="scan.pdf", content=b"\x00" * 900_000)
    code, details = await status_of(api.mailer().SendHTML(request, metadata=creds))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("message too large: the Envelope for recipient 'a@x.test'")
    assert "nats.max_payload" in details and "1048576" in details
    assert await counts(api.pool) == (0, 0)

    # Half of that fits, with its base64 and everything around it.
    request = html_request(DOMAIN, ["a@x.test"])
    request.attachments.add(filename="scan.pdf", content=b"\x00" * 450_000)
    res = await api.mailer().SendHTML(request, metadata=creds)
    assert res.accepted_count == 1


async def test_html_that_grows_past_the_limit_when_encoded_is_refused(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    # 400,000 characters of "é" are 800 KB of UTF-8 and 2.4 MB quoted-printable.
    request = html_request(DOMAIN, ["a@x.test"], html="<p>" + "é" * 400_000 + "</p>")
    code, details = await status_of(api.mailer().SendHTML(request, metadata=creds))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "message too large" in details
    assert await counts(api.pool) == (0, 0)


async def test_the_largest_recipient_decides_and_is_named(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    request = html_request(DOMAIN, [], html="<p>{{ bio }}</p>")
    request.recipients.add(email="small@x.test", fields={"bio": "hello"})
    request.recipients.add(email="huge@x.test", fields={"bio": "<" * 200_000})  # &lt; each
    code, details = await status_of(api.mailer().SendHTML(request, metadata=creds))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "recipient 'huge@x.test'" in details


async def test_the_limit_follows_nats_max_payload(pool: asyncpg.Pool) -> None:
    settings = make_settings(nats={"max_payload": "64kb"})
    async with running_api(settings, pool) as api:
        creds = await tenant(api, DOMAIN)
        request = html_request(DOMAIN, ["a@x.test"])
        request.attachments.add(filename="a.bin", content=b"\x01" * 60_000)
        code, details = await status_of(api.mailer().SendHTML(request, metadata=creds))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "65536 bytes" in details


async def test_a_line_break_in_a_subject_field_is_refused_naming_recipient_and_field(
    api: RunningApi,
) -> None:
    creds = await tenant(api, DOMAIN)
    request = html_request(DOMAIN, [], subject="Order {{ order }} shipped")
    request.recipients.add(email="ok@x.test", fields={"order": "A-1"})
    request.recipients.add(email="evil@x.test", fields={"order": "A-2\r\nBcc: victim@x.test"})
    code, details = await status_of(api.mailer().SendHTML(request, metadata=creds))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("recipients[1].fields['order'] (recipient 'evil@x.test'):")
    assert await counts(api.pool) == (0, 0)

    # The same value in a field only the HTML uses is fine: HTML may hold line breaks.
    request = html_request(DOMAIN, [], subject="Hello", html="<pre>{{ order }}</pre>")
    request.recipients.add(email="ok@x.test", fields={"order": "line 1\r\nline 2"})
    assert (await api.mailer().SendHTML(request, metadata=creds)).accepted_count == 1


async def test_one_mailbox_written_three_ways_is_one_delivery(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    request = html_request(DOMAIN, [])
    for spelling in ("Ada@Example.COM", "Ada@example.com.", "Ada\u200b@exa\u200bmple.com"):
        request.recipients.add(email=spelling, fields={"name": spelling})
    request.recipients.add(email="ada@b\u00fccher.example", fields={"name": "idn"})
    request.recipients.add(email="ADA@XN--BCHER-KVA.EXAMPLE.", fields={"name": "idn again"})
    res = await api.mailer().SendHTML(request, metadata=creds)
    assert (res.accepted_count, res.rejected_count) == (2, 0)
    rows = await api.pool.fetch("SELECT email, fields FROM sending_pool_emails ORDER BY email")
    # The first spelling's fields and local-part case win; the domain is canonical.
    assert [(r["email"], r["fields"]["name"]) for r in rows] == [
        ("Ada@example.com", "Ada@Example.COM"),
        ("ada@xn--bcher-kva.example", "idn"),
    ]
