"""The pure parts of MTA-STS (RFC 8461): the TXT record, the policy file, the HTTP response
around it and the `mx` pattern match."""

from __future__ import annotations

import pytest

from kannon.smtp_sender import mta_sts
from kannon.smtp_sender.mta_sts import (
    MAX_AGE_LIMIT,
    MAX_POLICY_BYTES,
    MtaSts,
    Policy,
    PolicyError,
    _policy_text,
    parse_policy,
    parse_txt,
)
from kannon.smtp_sender.mx import MxResolver


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=abc; ext=1"], "abc"),  # other TXT records are ignored
        (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # not exactly one
        ([], None),
        (["v=STSv1;"], None),  # no id
        (["v=STSv1; id=has-dash"], None),  # id is 1-32 letters and digits
        (["v=STSv1; id=" + "a" * 33], None),
        (["id=abc; v=STSv1"], None),  # v must come first
        (["v=STSv1; id"], None),
    ],
)
def test_txt_record(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


def test_policy_file() -> None:
    text = (
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\nmx: *.Example.NET.\n"
        "max_age: 604800\r\nfuture: ignored\r\n"
    )
    assert parse_policy(text, "id1") == Policy(
        "enforce", ("mail.example.com", "*.example.net"), 604800, "id1"
    )


def test_policy_none_needs_no_mx_and_max_age_is_capped() -> None:
    policy = parse_policy(f"version: STSv1\nmode: none\nmax_age: {MAX_AGE_LIMIT * 2}\n")
    assert policy == Policy("none", (), MAX_AGE_LIMIT)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -5\n", "max_age"),
        ("version: STSv1\nmode: testing\nmax_age: 86400\n", "mx"),
        ("<html>\nversion: STSv1\n", "key: value"),
    ],
)
def test_invalid_policy_files(text: str, error: str) -> None:
    with pytest.raises(PolicyError, match=error):
        parse_policy(text)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("mail.example.com", True),
        ("MAIL.example.com.", True),
        ("mx1.example.net", True),
        ("a.b.example.net", False),  # the wildcard covers exactly one label
        ("example.net", False),
        (".example.net", False),
        ("mail.example.org", False),
        ("xmail.example.com", False),
    ],
)
def test_mx_patterns(host: str, allowed: bool) -> None:
    policy = Policy("enforce", ("mail.example.com", "*.example.net"), 60)
    assert policy.allows(host) is allowed


def response(status: str, content_type: str, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {size}\r\n\r\n"
    ).encode() + body


def test_policy_response_body() -> None:
    raw = response("200 OK", "text/plain; charset=utf-8", b"version: STSv1\r\n")
    assert _policy_text(raw, "mta-sts.a.test") == "version: STSv1\r\n"
    assert _policy_text(response("200 OK", "text/plain", b"abcdef", 3), "h") == "abc"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (response("301 Moved Permanently", "text/plain", b""), "HTTP 301"),
        (response("404 Not Found", "text/plain", b""), "HTTP 404"),
        (response("200 OK", "text/html", b"version: STSv1"), "not text/plain"),
        (response("200 OK", "text/plain", b"x" * (MAX_POLICY_BYTES + 1)), "over"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", "no complete"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "no HTTP status"),
    ],
)
def test_policy_responses_refused(raw: bytes, error: str) -> None:
    with pytest.raises(PolicyError, match=error):
        _policy_text(raw, "mta-sts.a.test")


def test_the_cache_is_bounded_expired_then_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mta_sts, "CACHE_MAX", 3)
    now = [0.0]
    cache = MtaSts(MxResolver(["127.0.0.1:9"]), ca_file=None, clock=lambda: now[0])
    for domain, age in (("a.test", 10), ("b.test", 1000), ("c.test", 1000)):
        cache._remember(domain, Policy("enforce", ("mx.test",), age))
    now[0] = 100.0  # a.test expired
    cache._remember("d.test", Policy("enforce", ("mx.test",), 1000))
    assert list(cache._cache) == ["b.test", "c.test", "d.test"]
    cache._remember("e.test", Policy("enforce", ("mx.test",), 1000))
    assert list(cache._cache) == ["c.test", "d.test", "e.test"]
