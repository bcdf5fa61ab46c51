"""Every event-id format, in its one home (`model.event_ids`, ADR 0006, 0025, 0050).

An event id is a `Nats-Msg-Id` (the stream's deduplication) and `stats.event_id` (Stats stores an
event once): its format is a contract between Components and across versions, so the formats are
pinned here to the letter, and every id a Component reads back round-trips.
"""

from __future__ import annotations

import pytest

from kannon.model.event_ids import (
    attempt_of_send_outcome,
    delivery_event_id,
    dsn_event_id,
    envelope_msg_id,
    parse_envelope_msg_id,
    random_event_id,
    send_guard_key,
    send_outcome_id,
    unsubscribed_event_id,
    webhook_id,
    webhook_test_event_id,
)
from kannon.model.outcome import domain_of_batch

BATCH = "msg_abc@k.example.com"
EMAIL_ID = "<cmVhZGVyQGV4YW1wbGUub3Jn/msg_abc@k.example.com>"
DIGEST = "9bb64043b542f0e46871b175b7a7f5eb"  # of EMAIL_ID
RECIPIENT_DIGEST = "32a9c5afd14518dde375f5d361400d2f"  # of reader@example.org


def test_formats_are_pinned() -> None:
    """Changing any of these changes what the stream and Stats deduplicate: a new ADR, not a
    refactor."""
    assert envelope_msg_id(EMAIL_ID, 3) == EMAIL_ID + ".3"
    assert send_outcome_id("error", envelope_msg_id(EMAIL_ID, 3), 7) == f"error.{DIGEST}.3"
    assert send_outcome_id("delivered", "not ours", 7) == "delivered.7"
    assert send_outcome_id("bounced", None, 9) == "bounced.9"
    assert send_guard_key(envelope_msg_id(EMAIL_ID, 3), 7, EMAIL_ID) == f"a.{DIGEST}.3"
    assert delivery_event_id("accepted", BATCH, "reader@example.org") == (
        f"accepted.{BATCH}.{RECIPIENT_DIGEST}"
    )
    assert unsubscribed_event_id(BATCH, "reader@example.org") == (
        f"unsubscribed.{BATCH}.{RECIPIENT_DIGEST}"
    )
    assert dsn_event_id(BATCH, "Reader@Example.org", "5.1.1", "<r1@mx>") == (
        "bounced.dsn.68961285a140fc8b958fce154c807533bcf7305c6b286c2220ab1a289a76c698"
    )
    assert random_event_id("opened", "00ff") == "opened.00ff"
    assert webhook_test_event_id("tok") == "test.tok"
    assert webhook_id("delivered.x") == "msg_92ce62047d66acf5e5ef7930fdf48adf"


@pytest.mark.parametrize("attempt", [0, 1, 17])
@pytest.mark.parametrize("email_id", [EMAIL_ID, "<a.b.c/msg_x@d.e>", "no-dots"])
def test_envelope_msg_id_round_trips(email_id: str, attempt: int) -> None:
    assert parse_envelope_msg_id(envelope_msg_id(email_id, attempt)) == (email_id, attempt)


@pytest.mark.parametrize("msg_id", [None, "", "x", ".3", "x.", "x.-1", "x.3a"])
def test_parse_envelope_msg_id_refuses(msg_id: str | None) -> None:
    assert parse_envelope_msg_id(msg_id) is None


@pytest.mark.parametrize("kind", ["delivered", "bounced", "error"])
@pytest.mark.parametrize("attempt", [0, 2, 40])
def test_send_outcome_names_its_attempt(kind: str, attempt: int) -> None:
    """What the SMTPSender writes, the Dispatcher reads back (the stale-error check)."""
    event_id = send_outcome_id(kind, envelope_msg_id(EMAIL_ID, attempt), 5)
    assert attempt_of_send_outcome(event_id) == attempt


@pytest.mark.parametrize(
    "event_id",
    [
        None,
        "",
        send_outcome_id("error", None, 5),  # an Envelope without our Nats-Msg-Id
        delivery_event_id("failed", BATCH, "reader@example.org"),
        f"error.{DIGEST[:-1]}.3",
        f"error.{DIGEST}.x",
    ],
)
def test_send_outcome_without_attempt(event_id: str | None) -> None:
    assert attempt_of_send_outcome(event_id) is None


def test_one_happening_one_id_two_happenings_two() -> None:
    one = envelope_msg_id(EMAIL_ID, 1)
    assert send_outcome_id("error", one, 1) == send_outcome_id("error", one, 2)  # redelivered
    assert send_outcome_id("error", one, 1) != send_outcome_id(
        "error", envelope_msg_id(EMAIL_ID, 2), 1
    )
    assert send_guard_key(one, 1, EMAIL_ID) == send_guard_key(one, 2, EMAIL_ID)
    assert send_guard_key(None, 1, EMAIL_ID) != send_guard_key(None, 2, EMAIL_ID)
    assert delivery_event_id("failed", BATCH, "a@x.org") != delivery_event_id(
        "failed", BATCH, "b@x.org"
    )
    assert delivery_event_id("failed", BATCH, "a@x.org") != delivery_event_id(
        "bounced", BATCH, "a@x.org"
    )
    # One DSN copy or another: one id. The Recipient's case does not matter; the status does.
    assert dsn_event_id(BATCH, "A@x.org", "5.1.1", "<r>") == dsn_event_id(
        BATCH, "a@x.org", "5.1.1", "<r>"
    )
    assert dsn_event_id(BATCH, "a@x.org", "5.1.1", "<r>") != dsn_event_id(
        BATCH, "a@x.org", "4.4.1", "<r>"
    )


def test_ids_are_header_safe_whatever_the_address_holds() -> None:
    recipient = "we\r\nird\x00@example.org"
    for event_id in (
        delivery_event_id("accepted", BATCH, recipient),
        dsn_event_id(BATCH, recipient, "5.1.1", "<r>"),
        send_outcome_id("error", envelope_msg_id("<\r\n>", 1), 1),
        send_guard_key(envelope_msg_id("<\r\n>", 1), 1, "<\r\n>"),
    ):
        assert event_id.isprintable() and " " not in event_id


def test_domain_of_batch() -> None:
    assert domain_of_batch(BATCH) == "k.example.com"
    assert domain_of_batch("msg_a@b@c.example") == "c.example"  # after the last "@"
    for bad in ("msg_abc", "msg_abc@", ""):
        assert domain_of_batch(bad) == ""
