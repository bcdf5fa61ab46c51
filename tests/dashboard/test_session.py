"""Dashboard sessions and charts (pure): forged, expired or re-keyed cookies are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kannon.dashboard.charts import line_chart
from kannon.dashboard.session import (
    Session,
    csrf_ok,
    csrf_token,
    decode,
    encode,
    signing_key,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEY = signing_key(b"s" * 32, "admin-token")
LATER = int((NOW + timedelta(hours=1)).timestamp())


def test_a_cookie_round_trips_and_scopes_its_domain() -> None:
    session = Session("a.example", "ab" * 32, LATER, "nonce")
    back = decode(encode(session, KEY), KEY, NOW)
    assert back == session
    assert back.may_see("a.example") and not back.may_see("b.example")
    operator = Session(None, None, LATER, "n2")
    assert decode(encode(operator, KEY), KEY, NOW) == operator
    assert operator.is_admin and operator.may_see("b.example")


def test_forged_expired_and_rekeyed_cookies_are_refused() -> None:
    cookie = encode(Session("a.example", "ab" * 32, LATER, "nonce"), KEY)
    payload, _, signature = cookie.partition(".")
    forged = encode(Session(None, None, LATER, "nonce"), b"other key")
    assert decode(forged, KEY, NOW) is None
    assert decode(payload + "." + signature[:-2] + "AA", KEY, NOW) is None
    assert decode("garbage", KEY, NOW) is None
    assert decode(cookie, KEY, NOW + timedelta(hours=2)) is None
    # Changing the admin token changes the key: every session ends.
    assert decode(cookie, signing_key(b"s" * 32, "new-token"), NOW) is None
    # A Domain session must name its key.
    assert decode(encode(Session("a.example", None, LATER, "n"), KEY), KEY, NOW) is None


def test_the_csrf_token_belongs_to_one_session() -> None:
    one = Session(None, None, LATER, "nonce-1")
    two = Session(None, None, LATER, "nonce-2")
    assert csrf_ok(one, KEY, csrf_token(one, KEY))
    assert not csrf_ok(one, KEY, csrf_token(two, KEY))
    assert not csrf_ok(one, KEY, "")


def test_the_chart_escapes_names_and_totals_each_series() -> None:
    svg = line_chart("<t>", ["a", "b"], {"x<y": [1, 2], "z": [0, 0]})
    assert svg.startswith("<svg") and "&lt;t&gt;" in svg and "x&lt;y (3)" in svg
    assert "z (0)" in svg and svg.count("<polyline") == 2
