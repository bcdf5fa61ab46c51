"""Pure intake rules: the canonical spelling of a Recipient and line breaks in subject fields."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kannon.model.address import canonical_recipient, parse_address
from kannon.model.batch import BatchPlan, RecipientIn, SendRequest
from kannon.model.errors import InvalidArgument
from tests.model.support import plan

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("ada@example.com", "ada@example.com"),
        ("Ada@Example.COM", "Ada@example.com"),  # the local part keeps its case
        ("ada@example.com.", "ada@example.com"),
        ("ada\u200b@exa\u200bmple.com", "ada@example.com"),  # zero-width space
        ("\ufeffada@example.com\u2060", "ada@example.com"),  # BOM, word joiner
        ("a\u00adda@example.com", "ada@example.com"),  # soft hyphen
        ("ada\u202e@example.com", "ada@example.com"),  # right-to-left override
        ("ada@B\u00fccher.DE.", "ada@xn--bcher-kva.de"),
        ("ada@XN--BCHER-KVA.de", "ada@xn--bcher-kva.de"),
        # Invalid ones come back cleaned, for the Validator to reject with its reason.
        ("no-at-sign", "no-at-sign"),
        ("\u00fcser@example.com", "\u00fcser@example.com"),
        ("a@exa mple.com", "a@exa mple.com"),
        ("a@-bad-.com", "a@-bad-.com"),
    ],
)
def test_canonical_recipient(given: str, canonical: str) -> None:
    assert canonical_recipient(given) == canonical


def test_every_valid_address_is_already_canonical_after_parsing() -> None:
    for value in ("Ada@Example.COM.", "x\u200b@b\u00fccher.de", "a.b+c@Sub.Example.org"):
        assert canonical_recipient(value) == str(parse_address(canonical_recipient(value)))


def _request(recipients: list[RecipientIn], subject: str = "Hi {{ name }}") -> SendRequest:
    return SendRequest(
        sender_email="news@t.example",
        sender_alias="",
        subject=subject,
        recipients=recipients,
    )


def _plan(request: SendRequest, subject_fields: tuple[str, ...] = ("name",)) -> BatchPlan:
    return plan(request, now=NOW, subject_fields=subject_fields)


def test_spellings_of_one_mailbox_collapse_into_the_first() -> None:
    plan = _plan(
        _request(
            [
                RecipientIn("Ada@Example.com", {"name": "first"}),
                RecipientIn("ada@EXAMPLE.com.", {"name": "second"}),
                RecipientIn("ada\u200b@example.com", {"name": "third"}),
                RecipientIn("bob@example.com", {}),
            ]
        )
    )
    assert [(d.email, dict(d.fields)) for d in plan.deliveries] == [
        ("Ada@example.com", {"name": "first"}),
        ("bob@example.com", {}),
    ]


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nBcc: x@y.z"])
def test_a_line_break_in_a_subject_field_names_recipient_and_field(value: str) -> None:
    request = _request(
        [
            RecipientIn("ok@example.com", {"name": "x"}),
            RecipientIn("b@example.com", {"name": value}),
        ]
    )
    with pytest.raises(
        InvalidArgument, match=r"^recipients\[1\]\.fields\['name'\] \(recipient 'b@example.com'\)"
    ):
        _plan(request)
    # Fields the subject does not use may hold line breaks (the HTML body can).
    _plan(request, subject_fields=())
