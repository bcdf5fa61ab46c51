"""Bounce address: round trip, RFC 5321 length, case mangling, forgery, DSN recipient matching."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from kannon.envelope.bounce import BounceAddress, make_bounce_address, parse_bounce_address
from tests.envelope.envelope_testdata import BATCH_ID, BOUNCE_SECRET

RCPT = "Alice.Example@Example.org"
LONG_RCPT = "a" * 64 + "@" + ".".join(["b" * 63, "c" * 63, "d" * 58]) + ".io"


def test_long_recipient_is_254_chars() -> None:
    assert len(LONG_RCPT) == 254  # the fixture itself is what the test claims


def test_round_trip() -> None:
    address = make_bounce_address(BATCH_ID, RCPT, BOUNCE_SECRET)
    parsed = parse_bounce_address(address, BOUNCE_SECRET)
    assert parsed is not None
    assert parsed.batch_id == BATCH_ID
    assert parsed.domain == "k.example.com"
    assert parsed.matches(RCPT, BOUNCE_SECRET)


def test_shape() -> None:
    address = make_bounce_address(BATCH_ID, RCPT, BOUNCE_SECRET)
    assert re.fullmatch(
        r"bump_k9x2m4p7q1w8e5r3t6y0u2i4\.[a-z2-7]{16}\.[a-z2-7]{16}@k\.example\.com", address
    )
    assert "alice" not in address.lower()  # the recipient is not disclosed


@pytest.mark.parametrize("recipient", ["a@b.co", RCPT, LONG_RCPT, "ünïcødé@bücher.example"])
def test_local_part_fits_rfc5321(recipient: str) -> None:
    address = make_bounce_address(BATCH_ID, recipient, BOUNCE_SECRET)
    local = address.rpartition("@")[0]
    assert local.startswith("bump_")
    assert len(local.encode()) <= 64
    assert parse_bounce_address(address, BOUNCE_SECRET) is not None


@pytest.mark.parametrize(
    "mangle",
    [
        str.upper,
        str.title,
        lambda a: f"<{a}>",
        lambda a: f"  <{a.upper()}>  ",
        lambda a: a + ".",  # trailing root dot on the domain
    ],
)
def test_tolerates_case_changes_and_brackets(mangle: Callable[[str], str]) -> None:
    address = make_bounce_address(BATCH_ID, RCPT, BOUNCE_SECRET)
    parsed = parse_bounce_address(mangle(address), BOUNCE_SECRET)
    assert parsed is not None
    assert parsed.batch_id == BATCH_ID
    assert parsed.matches(RCPT, BOUNCE_SECRET)


def test_forged_tag_is_refused() -> None:
    address = make_bounce_address(BATCH_ID, RCPT, BOUNCE_SECRET)
    local, _, domain = address.rpartition("@")
    head, _, tag = local.rpartition(".")
    forged_tag = ("b" if tag[0] != "b" else "c") + tag[1:]
    assert parse_bounce_address(f"{head}.{forged_tag}@{domain}", BOUNCE_SECRET) is None


def test_altered_batch_or_hash_or_domain_is_refused() -> None:
    address = make_bounce_address(BATCH_ID, RCPT, BOUNCE_SECRET)
    other_batch = address.replace("k9x2m4p7", "k9x2m4p8", 1)
    assert parse_bounce_address(other_batch, BOUNCE_SECRET) is None
    local, _, domain = address.rpartition("@")
    prefix, rhash, tag = local.split(".")
    other_hash = ("a" if rhash[0] != "a" else "b") + rhash[1:]
    assert parse_bounce_address(f"{prefix}.{other_hash}.{tag}@{domain}", BOUNCE_SECRET) is None
    assert parse_bounce_address(f"{local}@other.example.com", BOUNCE_SECRET) is None


def test_other_secret_is_refused() -> None:
    address = make_bounce_address(BATCH_ID, RCPT, BOUNCE_SECRET)
    assert parse_bounce_address(address, b"x" * 32) is None


@pytest.mark.parametrize(
    "address",
    [
        "",
        "postmaster@k.example.com",
        "bump_@k.example.com",
        "bump_abc@k.example.com",
        # the original's format is not ours
        "bump_dGVzdEB0ZXN0LmNvbQ==+msg_abc@k.example.com",
        "bump_k9x2.aaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaa",  # no domain
        "bump_k9x2.aaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaa@",
    ],
)
def test_not_ours(address: str) -> None:
    assert parse_bounce_address(address, BOUNCE_SECRET) is None


@pytest.mark.parametrize(
    "dsn_value",
    [
        RCPT,
        RCPT.lower(),
        RCPT.upper(),
        f"<{RCPT}>",
        f"rfc822; {RCPT}",
        f"RFC822;<{RCPT.lower()}>",
        f"utf-8; {RCPT}",
        f"  {RCPT}  ",
    ],
)
def test_matches_dsn_recipient_forms(dsn_value: str) -> None:
    address = make_bounce_address(BATCH_ID, RCPT, BOUNCE_SECRET)
    parsed = parse_bounce_address(address, BOUNCE_SECRET)
    assert parsed is not None
    assert parsed.matches(dsn_value, BOUNCE_SECRET)


def test_matches_refuses_other_recipients_and_batches() -> None:
    parsed = parse_bounce_address(make_bounce_address(BATCH_ID, RCPT, BOUNCE_SECRET), BOUNCE_SECRET)
    assert parsed is not None
    assert not parsed.matches("someone.else@example.org", BOUNCE_SECRET)
    assert not parsed.matches(RCPT, b"x" * 32)
    # same recipient in another Batch hashes differently (no cross-Batch linkability)
    other = make_bounce_address("msg_zzzzzzzzzzzzzzzzzzzzzzzz@k.example.com", RCPT, BOUNCE_SECRET)
    assert other.split(".")[1] != make_bounce_address(BATCH_ID, RCPT, BOUNCE_SECRET).split(".")[1]


def test_untrimmed_pool_recipient_matches_trimmed_dsn_value() -> None:
    address = make_bounce_address(BATCH_ID, "  bob@example.org ", BOUNCE_SECRET)
    parsed = parse_bounce_address(address, BOUNCE_SECRET)
    assert parsed is not None and parsed.matches("bob@example.org", BOUNCE_SECRET)


def test_uppercase_tenant_domain_parses_lower_cased() -> None:
    address = make_bounce_address("msg_abc123@K.Example.COM", RCPT, BOUNCE_SECRET)
    assert address.endswith("@K.Example.COM")
    parsed = parse_bounce_address(address, BOUNCE_SECRET)
    assert parsed is not None
    assert parsed.batch_id == "msg_abc123@k.example.com"
    assert isinstance(parsed, BounceAddress)


@pytest.mark.parametrize(
    "batch_id", ["msg_ABC@k.example.com", "msg_@k.example.com", "nope", "msg_" + "a" * 25 + "@x.y"]
)
def test_make_refuses_foreign_batch_ids(batch_id: str) -> None:
    with pytest.raises(ValueError):
        make_bounce_address(batch_id, RCPT, BOUNCE_SECRET)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        make_bounce_address(BATCH_ID, RCPT, b"short")
