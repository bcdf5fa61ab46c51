"""Stats API: raw events (paged) and hourly aggregates, read from rows the Stats worker writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kannon.model.outcome import Bounced, Clicked, Delivered, Detail, Opened, Rejected
from kannon.pb.stats.apiv1 import statsapiv1_pb2 as v1
from kannon.pb.stats.apiv2 import statsapiv2_pb2 as v2
from kannon.wire.stats import data_json
from tests.api.api_test_support import RunningApi, status_of, tenant

DOMAIN = "stats.example"
T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


async def insert_event(
    api: RunningApi, when: datetime, detail: Detail, email: str, domain: str = DOMAIN
) -> None:
    await api.pool.execute(
        """INSERT INTO stats (type, email, message_id, domain, timestamp, data)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        detail.type,
        email,
        f"msg_abc@{domain}",
        domain,
        when.astimezone(UTC).replace(tzinfo=None),
        data_json(detail),
    )


async def insert_bucket(api: RunningApi, hour: datetime, type_: str, count: int) -> None:
    await api.pool.execute(
        "INSERT INTO aggregated_stats (domain, timestamp, type, count) VALUES ($1, $2, $3, $4)",
        DOMAIN,
        hour.replace(tzinfo=None),
        type_,
        count,
    )


def span(start: datetime, end: datetime, **kw: Any) -> dict[str, Any]:
    return {"from_date": ts(start), "to_date": ts(end), **kw}


async def test_get_stats_returns_events_newest_first_with_their_details(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    details: list[Detail] = [
        Delivered(),
        Bounced(permanent=True, code=550, message="5.1.1 no such user"),
        Opened(user_agent="UA", ip="192.0.2.1"),
        Clicked(user_agent="UA", ip="192.0.2.1", url="https://x.test/"),
        Rejected(reason="invalid address"),
    ]
    for i, detail in enumerate(details):
        await insert_event(api, T0 + timedelta(minutes=i), detail, f"r{i}@x.test")
    await insert_event(api, T0, Delivered(), "other@x.test", domain="other.example")
    await insert_event(api, T0 + timedelta(hours=2), Delivered(), "late@x.test")  # out of range

    res = await api.stats().GetStats(
        v1.GetStatsReq(domain=DOMAIN, **span(T0, T0 + timedelta(hours=1))), metadata=creds
    )
    assert res.total == 5
    assert [s.email for s in res.stats] == [f"r{i}@x.test" for i in reversed(range(5))]
    clicked = res.stats[1]
    assert (clicked.type, clicked.message_id, clicked.domain) == (
        "clicked",
        f"msg_abc@{DOMAIN}",
        DOMAIN,
    )
    assert clicked.timestamp.ToDatetime(tzinfo=UTC) == T0 + timedelta(minutes=3)
    assert clicked.data.clicked.url == "https://x.test/"
    bounced = res.stats[3].data.bounced
    assert (bounced.permanent, bounced.code, bounced.msg) == (True, 550, "5.1.1 no such user")
    assert res.stats[4].data.WhichOneof("data") == "delivered"


async def test_get_stats_pages_and_take_zero_is_a_default_page(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    for i in range(120):
        await insert_event(api, T0 + timedelta(seconds=i), Delivered(), f"r{i}@x.test")
    window = span(T0, T0 + timedelta(hours=1))
    default = await api.stats().GetStats(v1.GetStatsReq(domain=DOMAIN, **window), metadata=creds)
    assert default.total == 120 and len(default.stats) == 100
    page = await api.stats().GetStats(
        v1.GetStatsReq(domain=DOMAIN, skip=110, take=50, **window), metadata=creds
    )
    assert [s.email for s in page.stats] == [f"r{i}@x.test" for i in reversed(range(10))]


async def test_empty_domain_means_the_keys_own(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    await insert_event(api, T0, Delivered(), "a@x.test")
    res = await api.stats().GetStats(
        v1.GetStatsReq(**span(T0, T0 + timedelta(hours=1))), metadata=creds
    )
    assert res.total == 1


async def test_aggregated_stats_are_hourly_buckets_in_order(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    await insert_bucket(api, T0 - timedelta(hours=1), "delivered", 99)  # before the range
    await insert_bucket(api, T0, "opened", 3)
    await insert_bucket(api, T0, "delivered", 7)
    await insert_bucket(api, T0 + timedelta(hours=1), "delivered", 2)
    await insert_bucket(api, T0 + timedelta(hours=3), "delivered", 5)  # at the end: excluded
    window = span(T0 + timedelta(minutes=30), T0 + timedelta(hours=3))
    expected = [
        ("delivered", T0, 7),
        ("opened", T0, 3),
        ("delivered", T0 + timedelta(hours=1), 2),
    ]

    def rows(res: Any) -> list[tuple[str, datetime, int]]:
        return [(b.type, b.timestamp.ToDatetime(tzinfo=UTC), b.count) for b in res.stats]

    res1 = await api.stats().GetStatsAggregated(
        v1.GetStatsAggregatedReq(domain=DOMAIN, **window), metadata=creds
    )
    res2 = await api.stats_v2().GetAggregatedStats(
        v2.GetAggregatedStatsReq(domain=DOMAIN, **window), metadata=creds
    )
    assert rows(res1) == rows(res2) == expected


RANGE_ERRORS = [
    ("no-from", {"to_date": ts(T0)}, "from_date:"),
    ("no-to", {"from_date": ts(T0)}, "to_date:"),
    ("from-equals-to", span(T0, T0), "to_date:"),
    ("from-after-to", span(T0, T0 - timedelta(seconds=1)), "to_date:"),
    ("over-a-year", span(T0, T0 + timedelta(days=367)), "to_date:"),
    ("bad-timestamp", {"from_date": Timestamp(seconds=2**40), "to_date": ts(T0)}, "from_date:"),
]


@pytest.mark.parametrize(
    ("fields", "prefix"), [c[1:] for c in RANGE_ERRORS], ids=[c[0] for c in RANGE_ERRORS]
)
async def test_ranges_are_validated_in_every_method(
    api: RunningApi, fields: dict[str, Any], prefix: str
) -> None:
    creds = await tenant(api, DOMAIN)
    calls = [
        api.stats().GetStats(v1.GetStatsReq(domain=DOMAIN, **fields), metadata=creds),
        api.stats(readme=True).GetStatsAggregated(
            v1.GetStatsAggregatedReq(domain=DOMAIN, **fields), metadata=creds
        ),
        api.stats_v2().GetAggregatedStats(
            v2.GetAggregatedStatsReq(domain=DOMAIN, **fields), metadata=creds
        ),
    ]
    for call in calls:
        code, details = await status_of(call)
        assert (code, details[: len(prefix)]) == (grpc.StatusCode.INVALID_ARGUMENT, prefix)


async def test_a_year_is_allowed(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    res = await api.stats().GetStats(
        v1.GetStatsReq(domain=DOMAIN, **span(T0, T0 + timedelta(days=366))), metadata=creds
    )
    assert res.total == 0


async def test_invalid_domain_is_invalid_argument(api: RunningApi) -> None:
    creds = await tenant(api, DOMAIN)
    code, details = await status_of(
        api.stats().GetStats(
            v1.GetStatsReq(domain="not a domain", **span(T0, T0 + timedelta(1))), metadata=creds
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("domain:")
