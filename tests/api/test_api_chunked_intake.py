"""Intake reads a send request's Recipients a chunk at a time (ADR 0059) and stays what it was
when it read them whole: duplicates collapse across chunks, rejections are reported in the same
order, a refusal found in a later chunk leaves nothing behind, an idempotent repeat answers the
final response; and the memory a large call allocates stays a small multiple of its request."""

from __future__ import annotations

import tracemalloc

import asyncpg
import grpc
import pytest

from kannon.api import send_body
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.types import send_pb2
from kannon.pb.suppression.apiv1 import suppressionapiv1_pb2 as suppression_pb
from tests.api.api_test_support import RunningApi, html_request, status_of, tenant

DOMAIN = "chunks.example"


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_body, "CHUNK", 3)


async def stored(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM messages) AS b,"
        " (SELECT count(*) FROM sending_pool_emails) AS d,"
        " (SELECT count(*) FROM templates WHERE type = 'transient') AS t"
    )
    assert row is not None
    return row["b"], row["d"], row["t"]


@pytest.mark.usefixtures("small_chunks")
async def test_recipients_over_several_chunks_make_one_batch_as_before(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    await api.suppression().ImportSuppressions(
        suppression_pb.ImportSuppressionsRequest(addresses=["gone@x.org", "late@x.org"]),
        metadata=creds,
    )
    recipients = [
        "a@x.org",
        "GONE@x.org",  # suppressed, chunk 1
        "x" * 300 + "@x.org",  # too long, chunk 1
        "b@x.org",
        "A@X.ORG",  # chunk 2: a duplicate of chunk 1's first
        " ",  # blank: skipped
        "late@x.org",  # suppressed, chunk 3
        "y" * 300 + "@x.org",  # too long, chunk 3
        "c@x.org",
    ]
    res = await api.mailer().SendHTML(html_request(DOMAIN, recipients), metadata=creds)
    assert (res.accepted_count, res.rejected_count) == (3, 4)
    # Intake's own rejections first, then the suppressed ones: the order of the whole Batch.
    assert [(r.email, r.reason) for r in res.rejected_recipients] == [
        ("x" * 300 + "@x.org", "too_long"),
        ("y" * 300 + "@x.org", "too_long"),
        ("GONE@x.org", "suppressed"),
        ("late@x.org", "suppressed"),
    ]
    rows = await api.pool.fetch(
        "SELECT email, reject_reason FROM sending_pool_emails WHERE message_id = $1",
        res.message_id,
    )
    assert sorted(tuple(r) for r in rows) == [
        ("GONE@x.org", "suppressed"),
        ("a@x.org", ""),
        ("b@x.org", ""),
        ("c@x.org", ""),
        ("late@x.org", "suppressed"),
    ]


@pytest.mark.usefixtures("small_chunks")
async def test_a_refusal_in_a_later_chunk_leaves_nothing_behind(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    request = html_request(DOMAIN, [f"r{i}@x.org" for i in range(7)])
    request.recipients.add(email="bad@x.org", fields={"name": "line\nbreak"})
    code, details = await status_of(api.mailer().SendHTML(request, metadata=creds))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("recipients[7].fields['name'] (recipient 'bad@x.org')")
    assert await stored(api.pool) == (0, 0, 0)

    # Too large an Envelope, found only in the last chunk: refused at the end, named.
    request = html_request(DOMAIN, [], html="<p>{{ bio }}</p>")
    for i in range(7):
        request.recipients.add(email=f"r{i}@x.org", fields={"bio": "short"})
    request.recipients.add(email="huge@x.org", fields={"bio": "<" * 400_000})
    code, details = await status_of(api.mailer().SendHTML(request, metadata=creds))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "message too large: the Envelope for recipient 'huge@x.org'" in details
    assert await stored(api.pool) == (0, 0, 0)

    code, details = await status_of(
        api.mailer().SendHTML(html_request(DOMAIN, [" "] * 7), metadata=creds)
    )
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "recipients: at least one non-blank recipient email is required",
    )
    assert await stored(api.pool) == (0, 0, 0)


@pytest.mark.usefixtures("small_chunks")
async def test_an_idempotent_repeat_answers_the_final_response(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    md = (*creds, ("idempotency-key", "chunked-1"))
    request = html_request(DOMAIN, [f"r{i}@x.org" for i in range(8)] + ["z" * 300 + "@x.org"])
    first = await api.mailer().SendHTML(request, metadata=md)
    assert (first.accepted_count, first.rejected_count) == (8, 1)
    again = await api.mailer(readme=True).SendHTML(request, metadata=md)
    assert again == first
    assert await stored(api.pool) == (1, 8, 1)


def large_request(size: int) -> mailer_pb.SendHTMLReq:
    request = mailer_pb.SendHTMLReq(
        sender=send_pb2.Sender(email=f"news@{DOMAIN}", alias="News"),
        subject="Hello {{ name }}",
        html="<p>Hello {{ name }}</p>",
    )
    for i in range(size):
        request.recipients.add(email=f"user{i}@recipients.example", fields={"name": f"User {i}"})
    return request


async def test_a_large_call_allocates_a_small_multiple_of_its_request(api: RunningApi) -> None:
    """The Python objects alive at once during a 20,000-Recipient SendHTML (client and server
    share the process): the request's bytes (client and server side), the dedup set of its
    addresses, and one chunk: about 9 times the request. Decoded and planned whole, as before
    ADR 0059, they were about 32 times."""
    creds = await tenant(api, DOMAIN)
    request = large_request(20_000)
    size = request.ByteSize()
    tracemalloc.start()
    try:
        res = await api.mailer().SendHTML(request, metadata=creds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.accepted_count == 20_000
    assert peak < 12 * size, f"peak {peak / size:.1f} times the request's {size} bytes"
