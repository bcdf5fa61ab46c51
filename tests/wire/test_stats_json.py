"""`data_json` is built by hand (ADR 0058): it must stay exactly what protobuf's json_format made
of the same StatsData, since it is stored in `stats.data` and sent in webhook payloads."""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime

import pytest
from google.protobuf.json_format import MessageToDict

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
    Unsubscribed,
)
from kannon.wire.stats import data_json, data_pb, decode, encode

DETAILS: list[Detail] = [
    Accepted(),
    Delivered(),
    Unsubscribed(),
    Rejected(""),
    Rejected("invalid address: no @"),
    Failed(""),
    Failed("retry budget spent"),
    Bounced(permanent=False, code=0, message=""),
    Bounced(permanent=True, code=550, message="5.1.1 unknown user"),
    Bounced(
        permanent=True,
        code=554,
        message="no such mailbox",
        status="5.1.1",
        reason="user_unknown",
        hard_bounce=True,
        remote_mta="mx.example.net",
        from_dsn=True,
    ),
    Bounced(permanent=False, code=-1, message="", status="4.2.2", hard_bounce=False),
    Errored(0, ""),
    Errored(-3, "connection refused"),
    Errored(421, "4.7.0 try later"),
    Opened("", ""),
    Opened("Mozilla/5.0 ünïcode", "203.0.113.9"),
    Clicked("", "", ""),
    Clicked("curl/8", "2001:db8::1", "https://example.com/a?b=c&d=é"),
    Complained(""),
    Complained("abuse", "Feedback/1", "198.51.100.7", "Thu, 1 Jan 2026 00:00:00 +0000"),
]


def test_every_detail_type_is_covered() -> None:
    assert {type(d) for d in DETAILS} == set(typing.get_args(Detail))


@pytest.mark.parametrize("detail", DETAILS, ids=repr)
def test_data_json_is_what_json_format_makes_of_the_stats_data(detail: Detail) -> None:
    expected = MessageToDict(data_pb(detail))
    assert data_json(detail) == expected
    # The same keys in the same order: webhook payloads are this dict serialised.
    assert json.dumps(data_json(detail)) == json.dumps(expected)


@pytest.mark.parametrize("detail", DETAILS, ids=repr)
def test_data_json_of_a_decoded_event_matches_too(detail: Detail) -> None:
    outcome = Outcome("b@shop.test", "shop.test", "r@x.test", datetime.now(UTC), detail, "e-1")
    decoded = decode(encode(outcome), "e-1").detail
    assert json.dumps(data_json(decoded)) == json.dumps(MessageToDict(data_pb(decoded)))
