"""Value syntaxes: durations, sizes, booleans, lists, listen and DNS server addresses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kannon.config import (
    format_duration,
    parse_bool,
    parse_dns_server,
    parse_duration,
    parse_listen_address,
    parse_size,
)
from kannon.config.values import parse_list


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", timedelta(seconds=10)),
        ("1m30s", timedelta(seconds=90)),
        ("8760h", timedelta(hours=8760)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("2h45m10s", timedelta(hours=2, minutes=45, seconds=10)),
        ("250us", timedelta(microseconds=250)),
        ("250µs", timedelta(microseconds=250)),
        (" 10s ", timedelta(seconds=10)),
        ("30", timedelta(seconds=30)),
        ("2.5", timedelta(seconds=2.5)),
        (45, timedelta(seconds=45)),
        (0.25, timedelta(milliseconds=250)),
    ],
)
def test_duration_parses_go_syntax_and_plain_seconds(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["ten", "", "s", "10x", "1h 30m", "m10", "10s5", True, None])
def test_duration_rejects_garbage(text: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(seconds=10), "10s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=2160), "2160h"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(seconds=1.5), "1.5s"),
        (timedelta(0), "0s"),
    ],
)
def test_format_duration_is_compact_and_round_trips(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected
    assert parse_duration(expected) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024kb", 1024 * 1024),
        ("1mb", 1024 * 1024),
        ("32MiB", 32 * 1024 * 1024),
        ("1048576", 1048576),
        ("64 MB", 64 * 1024 * 1024),
        ("2g", 2 * 1024**3),
        ("512b", 512),
        ("1.5kb", 1536),
        (4096, 4096),
    ],
)
def test_size_parses_units_as_powers_of_1024(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "10tb", "kb", "1.3b", "-", True, 1.5])
def test_size_rejects_garbage(text: object) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("0", False),
        (" false ", False),
        (True, True),
        (0, False),
    ],
)
def test_bool_accepts_true_false_yes_no_1_0(text: object, expected: bool) -> None:
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["maybe", "", "2", "on", "y", 2, None])
def test_bool_rejects_anything_else(text: object) -> None:
    with pytest.raises(ValueError, match="is not a boolean"):
        parse_bool(text)


def test_list_splits_commas_and_drops_blanks() -> None:
    assert parse_list(" a, b,,c ,") == ("a", "b", "c")
    assert parse_list("") == ()
    assert parse_list(["x", 5]) == ("x", "5")
    with pytest.raises(ValueError, match="is not a list"):
        parse_list({"a": 1})


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":25", ("", 25)),
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("mail.example.com:25", ("mail.example.com", 25)),
        ("[::1]:25", ("::1", 25)),
        (":0", ("", 0)),
    ],
)
def test_listen_address_splits_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize(
    "address", ["25", "localhost", "host:99999", "::1:25", "host:", ":abc", "[nope]:25", "a b:25"]
)
def test_listen_address_rejects_malformed(address: str) -> None:
    with pytest.raises(ValueError, match="is not a listen address"):
        parse_listen_address(address)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("1.1.1.1", ("1.1.1.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_dns_server_splits_ip_and_port(entry: str, expected: tuple[str, int]) -> None:
    assert parse_dns_server(entry) == expected


@pytest.mark.parametrize("entry", ["dns.google", "1.1.1.1:0", "1.1.1.1:x", "[::1", "[::1]x"])
def test_dns_server_rejects_non_ip_or_bad_port(entry: str) -> None:
    with pytest.raises(ValueError, match="is not a DNS server"):
        parse_dns_server(entry)
