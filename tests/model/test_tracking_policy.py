"""The Tracking Policy rules (pure): restriction, the ceiling at intake, identities, tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kannon.envelope.tokens import (
    TrackingKey,
    sign_click,
    sign_open,
    sign_unsubscribe,
    verify_click,
    verify_token,
    verify_unsubscribe,
)
from kannon.model.batch import RecipientIn, SendRequest
from kannon.model.errors import InvalidArgument
from kannon.model.tracking import (
    DEFAULT_CEILING,
    TrackingMode,
    TrackingPolicy,
    restrict,
    token_identity,
)
from tests.model.support import BATCH_ID, plan

M = TrackingMode
NOW = datetime(2026, 11, 28, tzinfo=UTC)
KEY = TrackingKey("key_a", b"k" * 32)
KEYS = {KEY.kid: KEY.secret}


def test_most_restrictive_stated_mode_wins_per_channel() -> None:
    ceiling = TrackingPolicy(M.FULL, M.IDENTIFIED)
    assert restrict(ceiling, TrackingPolicy(M.PSEUDONYMOUS, M.UNSPECIFIED)) == TrackingPolicy(
        M.PSEUDONYMOUS, M.IDENTIFIED
    )
    assert restrict(
        ceiling, TrackingPolicy(M.ANONYMOUS, M.FULL), TrackingPolicy(M.IDENTIFIED, M.OFF)
    ) == TrackingPolicy(M.ANONYMOUS, M.OFF)


def request(*recipients: RecipientIn, tracking: tuple[int, int] | None = None) -> SendRequest:
    return SendRequest(
        sender_email="news@t.example",
        sender_alias="",
        subject="Hi",
        recipients=recipients,
        tracking=tracking,
    )


def test_batch_above_the_ceiling_fails_the_call_recipient_is_rejected_alone() -> None:
    with pytest.raises(InvalidArgument, match=r"tracking\.links: full is above"):
        plan(
            request(RecipientIn("a@x.example", {}), tracking=(0, int(M.FULL))),
            now=NOW,
            ceiling=DEFAULT_CEILING,
        )
    result = plan(
        request(
            RecipientIn("a@x.example", {}, (int(M.FULL), 0)),
            RecipientIn("b@x.example", {}, (0, 42)),
            RecipientIn("c@x.example", {}, (int(M.OFF), 0)),
            RecipientIn("d@x.example", {}),
            tracking=(int(M.ANONYMOUS), 0),
        ),
        now=NOW,
    )
    assert {(r.email, r.reason) for r in result.rejected} == {
        ("a@x.example", "tracking_above_ceiling"),
        ("b@x.example", "unsupported_tracking_mode"),
    }
    frozen = {d.email: d.tracking for d in result.deliveries}
    assert frozen == {
        "c@x.example": TrackingPolicy(M.OFF, M.IDENTIFIED),
        "d@x.example": TrackingPolicy(M.ANONYMOUS, M.IDENTIFIED),
    }
    assert result.tracking == TrackingPolicy(M.ANONYMOUS, M.UNSPECIFIED)


def test_identities_per_mode() -> None:
    pseudonym = "0" * 32
    assert token_identity(M.OFF, "a@x", "t.example", pseudonym) is None
    assert token_identity(M.ANONYMOUS, "a@x", "t.example", pseudonym) == "anonymous@track.t.example"
    assert token_identity(M.PSEUDONYMOUS, "a@x", "t.example", pseudonym) == (
        f"{pseudonym}@track.t.example"
    )
    assert token_identity(M.IDENTIFIED, "a@x", "t.example", pseudonym) == "a@x"
    assert token_identity(M.FULL, "a@x", "t.example", pseudonym) == "a@x"


def test_tokens_carry_their_mode_and_an_unsubscribe_token_is_its_own_kind() -> None:
    exp = NOW + timedelta(days=1)
    click = sign_click(KEY, BATCH_ID, "a@x", "https://x.example", exp, M.FULL)
    claim = verify_click(click, KEYS, NOW)
    assert claim is not None and claim.mode is M.FULL
    opened = verify_token(sign_open(KEY, BATCH_ID, "a@x", exp, M.ANONYMOUS), KEYS, NOW)
    assert opened is not None and getattr(opened, "mode", None) is M.ANONYMOUS
    unsubscribe = sign_unsubscribe(KEY, BATCH_ID, "a@x", exp)
    assert verify_unsubscribe(unsubscribe, KEYS, NOW) is not None
    assert verify_unsubscribe(click, KEYS, NOW) is None  # a click token cannot unsubscribe
    assert verify_click(unsubscribe, KEYS, NOW) is None
    with pytest.raises(ValueError, match="off"):
        sign_open(KEY, BATCH_ID, "a@x", exp, M.OFF)
