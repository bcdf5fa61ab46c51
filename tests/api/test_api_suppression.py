"""The Suppression API over real gRPC on PostgreSQL: the round trip (add, get, list, remove,
import) under both schemes, a Domain's key confined to its own list, the errors a caller can
act on, and intake refusing suppressed Recipients with reason "suppressed"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY

from kannon.pb.suppression.apiv1 import suppressionapiv1_pb2 as pb
from tests.api.api_test_support import (
    RunningApi,
    admin_md,
    basic_md,
    create_domain,
    html_request,
    status_of,
    tenant,
)

A = "a.example.com"
B = "b.example.com"
Metadata = tuple[tuple[str, str], ...]


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def listed(api: RunningApi, md: Metadata, domain: str = "", **filters: Any) -> list[str]:
    res = await api.suppression().ListSuppressions(
        pb.ListSuppressionsRequest(domain=domain, **filters), metadata=md
    )
    return [s.address for s in res.suppressions]


@pytest.mark.parametrize("scheme", ["admin token", "api key"])
async def test_round_trip(api: RunningApi, scheme: str) -> None:
    key_md = await tenant(api, A)
    md, domain = (admin_md(), A) if scheme == "admin token" else (key_md, "")
    stub = api.suppression()
    later = datetime.now(UTC) + timedelta(days=30)
    added = await stub.AddSuppression(
        pb.AddSuppressionRequest(
            domain=domain, address=" Ada@Example.ORG ", note="asked by phone", expires_at=ts(later)
        ),
        metadata=md,
    )
    entry = added.suppression
    assert (entry.domain, entry.address, entry.reason, entry.note) == (
        A,
        "Ada@example.org",
        "manual",
        "asked by phone",
    )
    assert not entry.HasField("event")
    assert entry.expires_at.ToDatetime(tzinfo=UTC) == later.replace(microsecond=later.microsecond)
    got = await stub.GetSuppression(
        pb.GetSuppressionRequest(domain=domain, address="ada@example.org"), metadata=md
    )
    assert got.suppression == entry

    imported = await stub.ImportSuppressions(
        pb.ImportSuppressionsRequest(
            domain=domain,
            addresses=["bob@x.org", "ADA@example.org", "not an address", "bob@X.org", "cy@x.org"],
            note="from the old provider",
        ),
        metadata=md,
    )
    # Ada's temporary entry is replaced by the import's permanent one; bob's repeat is counted.
    assert (imported.added, imported.already_suppressed) == (3, 1)
    assert [(r.address, r.reason) for r in imported.rejected] == [
        (
            "not an address",
            "addresses[2]: 'not an address' is not a valid email address "
            "(the address contains whitespace)",
        )
    ]
    assert await listed(api, md, domain) == ["Ada@example.org", "bob@x.org", "cy@x.org"]
    ada = await stub.GetSuppression(
        pb.GetSuppressionRequest(domain=domain, address="ada@example.org"), metadata=md
    )
    assert (ada.suppression.note, ada.suppression.HasField("expires_at")) == (
        "from the old provider",
        False,
    )
    assert await listed(api, md, domain, address_prefix="B") == ["bob@x.org"]
    assert await listed(api, md, domain, reason="complaint") == []
    page = await stub.ListSuppressions(
        pb.ListSuppressionsRequest(domain=domain, skip=1, take=1), metadata=md
    )
    assert ([s.address for s in page.suppressions], page.total) == (["bob@x.org"], 3)

    removed = await stub.RemoveSuppression(
        pb.RemoveSuppressionRequest(domain=domain, address="BOB@x.org"), metadata=md
    )
    assert removed.suppression.address == "bob@x.org"
    assert await listed(api, md, domain) == ["Ada@example.org", "cy@x.org"]
    code, details = await status_of(
        stub.GetSuppression(
            pb.GetSuppressionRequest(domain=domain, address="bob@x.org"), metadata=md
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == f"address: 'bob@x.org' is not suppressed for '{A}'"


async def test_a_domain_key_neither_sees_nor_changes_another_domain_s_list(
    api: RunningApi,
) -> None:
    a_md = await tenant(api, A)
    b_md = await tenant(api, B)
    stub = api.suppression()
    await stub.AddSuppression(pb.AddSuppressionRequest(address="b-only@x.org"), metadata=b_md)
    await stub.AddSuppression(pb.AddSuppressionRequest(address="a-only@x.org"), metadata=a_md)
    assert await listed(api, a_md) == ["a-only@x.org"]
    assert await listed(api, b_md) == ["b-only@x.org"]
    calls = [
        stub.ListSuppressions(pb.ListSuppressionsRequest(domain=B), metadata=a_md),
        stub.GetSuppression(
            pb.GetSuppressionRequest(domain=B, address="b-only@x.org"), metadata=a_md
        ),
        stub.AddSuppression(pb.AddSuppressionRequest(domain=B, address="new@x.org"), metadata=a_md),
        stub.RemoveSuppression(
            pb.RemoveSuppressionRequest(domain=B, address="b-only@x.org"), metadata=a_md
        ),
        stub.ImportSuppressions(
            pb.ImportSuppressionsRequest(domain=B, addresses=["new@x.org"]), metadata=a_md
        ),
    ]
    for call in calls:
        code, details = await status_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert (
            details == f"domain: the API key of '{A}' cannot access the suppression list of '{B}'"
        )
    # Addressing its own Domain by name works; B's list is as it was.
    assert await listed(api, a_md, A.upper()) == ["a-only@x.org"]
    assert await listed(api, admin_md(), B) == ["b-only@x.org"]


async def test_errors_name_what_to_fix(api: RunningApi) -> None:
    md = await tenant(api, A)
    stub = api.suppression()
    await stub.AddSuppression(pb.AddSuppressionRequest(address="dup@x.org"), metadata=md)
    past = datetime.now(UTC) - timedelta(minutes=1)
    cases: list[tuple[Any, grpc.StatusCode, str]] = [
        (
            stub.AddSuppression(pb.AddSuppressionRequest(address="dup@X.org"), metadata=md),
            grpc.StatusCode.ALREADY_EXISTS,
            f"address: 'dup@x.org' is already suppressed for '{A}'",
        ),
        (
            stub.AddSuppression(pb.AddSuppressionRequest(address="nope"), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
            "address: 'nope' is not a valid email address (the address has no @)",
        ),
        (
            stub.AddSuppression(
                pb.AddSuppressionRequest(address="x@x.org", expires_at=ts(past)), metadata=md
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expires_at: must be in the future",
        ),
        (
            stub.ListSuppressions(pb.ListSuppressionsRequest(reason="spam"), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
            "reason: 'spam' is not one of hard_bounce, complaint, unsubscribe, manual, "
            "soft_bounce_limit",
        ),
        (
            stub.RemoveSuppression(pb.RemoveSuppressionRequest(address=" "), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
            "address: required",
        ),
        (
            stub.ImportSuppressions(
                pb.ImportSuppressionsRequest(addresses=["a@x.org"], expires_at=ts(past)),
                metadata=md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expires_at: must be in the future",
        ),
        (
            stub.ListSuppressions(pb.ListSuppressionsRequest(), metadata=admin_md()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "domain: required when calling with the admin token",
        ),
        (
            stub.ListSuppressions(
                pb.ListSuppressionsRequest(domain="gone.example"), metadata=admin_md()
            ),
            grpc.StatusCode.NOT_FOUND,
            "domain: 'gone.example' not found",
        ),
        (
            stub.ListSuppressions(pb.ListSuppressionsRequest(domain=A), metadata=admin_md("wrong")),
            grpc.StatusCode.UNAUTHENTICATED,
            "admin token missing or wrong",
        ),
        (
            stub.ListSuppressions(pb.ListSuppressionsRequest(), metadata=basic_md(A, "k_wrong")),
            grpc.StatusCode.UNAUTHENTICATED,
            "",
        ),
        (
            stub.ListSuppressions(pb.ListSuppressionsRequest(domain=A)),
            grpc.StatusCode.UNAUTHENTICATED,
            "admin token missing or wrong",
        ),
    ]
    for call, expected_code, expected in cases:
        code, details = await status_of(call)
        assert code == expected_code, (details, expected)
        assert details.startswith(expected), (details, expected)


def rejected_metric(reason: str) -> float:
    sample = REGISTRY.get_sample_value("kannon_api_rejected_recipients_total", {"reason": reason})
    return sample or 0.0


async def test_intake_refuses_suppressed_recipients(api: RunningApi, pool: asyncpg.Pool) -> None:
    a_md = await tenant(api, A)
    await create_domain(api, B)
    stub = api.suppression()
    for address in ("gone@x.org", "Spam@X.org"):
        await stub.AddSuppression(pb.AddSuppressionRequest(address=address), metadata=a_md)
    # Suppressed for B only: no concern of A's.
    await stub.AddSuppression(
        pb.AddSuppressionRequest(domain=B, address="fine@x.org"), metadata=admin_md()
    )
    before = rejected_metric("suppressed")
    res = await api.mailer().SendHTML(
        html_request(A, ["fine@x.org", "GONE@x.org", "spam@x.org.", "x" * 300 + "@x.org"]),
        metadata=a_md,
    )
    assert (res.accepted_count, res.rejected_count) == (1, 3)
    assert [(r.email, r.reason) for r in res.rejected_recipients] == [
        ("x" * 300 + "@x.org", "too_long"),
        ("GONE@x.org", "suppressed"),
        ("spam@x.org.", "suppressed"),
    ]
    assert rejected_metric("suppressed") == before + 2
    # In the Pool for the Validator to publish their Rejected events, marked never to send.
    rows = await pool.fetch(
        "SELECT email, status, reject_reason FROM sending_pool_emails WHERE message_id = $1",
        res.message_id,
    )
    assert sorted(tuple(r) for r in rows) == [
        ("GONE@x.org", "to_validate", "suppressed"),
        ("fine@x.org", "to_validate", ""),
        ("spam@x.org", "to_validate", "suppressed"),
    ]


async def test_a_batch_of_suppressed_recipients_only_succeeds_with_none_accepted(
    api: RunningApi,
) -> None:
    md = await tenant(api, A)
    await api.suppression().ImportSuppressions(
        pb.ImportSuppressionsRequest(addresses=["a@x.org", "b@x.org"]), metadata=md
    )
    res = await api.mailer().SendHTML(html_request(A, ["a@x.org", "B@x.org"]), metadata=md)
    assert res.message_id.endswith(f"@{A}")
    assert (res.accepted_count, res.rejected_count) == (0, 2)
    assert {r.reason for r in res.rejected_recipients} == {"suppressed"}
