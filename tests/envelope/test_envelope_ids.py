"""Batch ids and email ids (Message-ID): formats of spec §4.1 and their parsers."""

from __future__ import annotations

import pytest

from kannon.envelope.ids import (
    make_batch_id,
    make_email_id,
    parse_email_id,
    split_batch_id,
)
from tests.envelope.envelope_testdata import BATCH_ID


def test_email_id_matches_original_format() -> None:
    # spec §4.1 example: base64url(recipient, padded)
    assert make_email_id("msg_x@k.example.com", "test@test.com") == (
        "<dGVzdEB0ZXN0LmNvbQ==/msg_x@k.example.com>"
    )


@pytest.mark.parametrize(
    "recipient",
    ["test@test.com", "a@b.co", "ünï+code@bücher.example", "x?>~~~@example.org", "a" * 254],
)
def test_email_id_round_trip(recipient: str) -> None:
    email_id = make_email_id(BATCH_ID, recipient)
    assert parse_email_id(email_id) == (recipient, BATCH_ID)


def test_url_alphabet_is_used() -> None:
    # "?>~~~" encodes to "-" and "_" in base64url ("+" and "/" in the standard alphabet)
    email_id = make_email_id(BATCH_ID, "x?>~~~@example.org")
    assert "+" not in email_id.split("/")[0]
    assert parse_email_id(email_id) is not None


def test_parse_accepts_unpadded_and_whitespace() -> None:
    assert parse_email_id(" <dGVzdEB0ZXN0LmNvbQ/msg_x@k.example.com> ") == (
        "test@test.com",
        "msg_x@k.example.com",
    )


@pytest.mark.parametrize(
    "email_id",
    [
        "",
        "<>",
        "dGVzdEB0ZXN0LmNvbQ==/msg_x@k.example.com",  # no brackets
        "<dGVzdEB0ZXN0LmNvbQ==msg_x@k.example.com>",  # no slash
        "<dGVzdEB0ZXN0LmNvbQ==/msg_x>",  # batch id without domain
        "<dGVz+EB0ZXN0LmNvbQ==/msg_x@k.example.com>",  # standard alphabet
        "<//msg_x@k.example.com>",
        "</msg_x@k.example.com>",
        "<_w==/msg_x@k.example.com>",  # not UTF-8
    ],
)
def test_parse_refuses(email_id: str) -> None:
    assert parse_email_id(email_id) is None


def test_batch_ids() -> None:
    assert make_batch_id("k9x2m4p7q1w8e5r3t6y0u2i4", "k.example.com") == BATCH_ID
    assert split_batch_id(BATCH_ID) == ("k9x2m4p7q1w8e5r3t6y0u2i4", "k.example.com")
    assert split_batch_id("template_abc@k.example.com") is None
    with pytest.raises(ValueError):
        make_batch_id("UPPER", "k.example.com")
