"""Delivery shaping's pure rules: the configuration grammar, which Destination a send goes to,
the backoff steps, connection leases and message counts."""

from __future__ import annotations

import pytest

from kannon.model.shaping import (
    BackoffPolicy,
    Destination,
    DestinationState,
    Limits,
    after_success,
    after_trouble,
    destination_for,
    drop_lease,
    parse_rules,
    renew_leases,
    take_lease,
    take_message,
)

RULES = parse_rules(
    ".google.com: connections=2 per_connection=50 per_second=5 per_hour=1000;"
    " .mail.google.com: connections=1; example.org: per_hour=10; default: connections=20"
)
POLICY = BackoffPolicy(pause=10, max_pause=60, restore_after=3)


def test_rules_parse_each_key() -> None:
    assert RULES[0].match == ".google.com"
    assert RULES[0].limits == Limits(2, 50, 5, 1000)
    assert RULES[3].limits == Limits(connections=20)
    assert parse_rules(["a.test: connections=1", "default: per_second=2"])[1].match == "default"
    assert parse_rules("") == ()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("example.org connections=2", "is not a rule"),
        ("example.org: connections=two", "is not a count"),
        ("example.org: speed=2", "connections=N"),
        ("exa mple.org: connections=2", "is not a destination"),
        ("..x.org: connections=2", "is not a destination"),
        ("a.test: connections=1; a.test: connections=2", "configured twice"),
    ],
)
def test_bad_rules_name_the_problem(text: str, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        parse_rules(text)


def test_domain_rule_then_longest_mx_suffix_then_default_per_domain() -> None:
    assert destination_for(RULES, "example.org", "mx.google.com") == Destination(
        "example.org", Limits(per_hour=10)
    )
    assert destination_for(RULES, "gmail.com", "alt1.gmail-smtp-in.l.google.com") == Destination(
        ".google.com", Limits(2, 50, 5, 1000)
    )
    nested = destination_for(RULES, "x.test", "aspmx.mail.google.com")
    assert nested is not None and nested.name == ".mail.google.com"
    assert destination_for(RULES, "other.test", "mx.other.test") == Destination(
        "other.test", Limits(connections=20)
    )
    assert destination_for(RULES[:1], "other.test", "mx.other.test") is None
    # A suffix matches at a label boundary only.
    assert destination_for(RULES[:1], "x.test", "notgoogle.com") is None


def test_kv_keys_never_start_with_a_dot() -> None:
    assert Destination(".google.com", Limits()).key == "suffix.google.com"
    assert Destination("example.org", Limits()).key == "domain.example.org"


def test_backoff_halves_limits_pauses_and_sustained_success_restores() -> None:
    state = after_trouble(DestinationState(), POLICY, now=100, reason="421 busy")
    assert state is not None
    assert (state.level, state.paused_until, state.reason) == (1, 110, "421 busy")
    assert state.paused(109) and not state.paused(110)
    # The other sends under way report their failures too: one incident, one step.
    assert after_trouble(state, POLICY, now=105, reason="421 busy") is None
    deeper = after_trouble(state, POLICY, now=111, reason="connection refused")
    assert deeper is not None and (deeper.level, deeper.paused_until) == (2, 131)
    limits = Limits(connections=8, per_second=10, per_hour=3)
    assert deeper.level and limits.lowered(deeper.level, 10) == Limits(2, 0, 2, 1)
    # Nobody configured connections: halved from what one sender opens at most.
    assert Limits().lowered(1, 10) == Limits(connections=5)
    assert Limits().lowered(0, 10) == Limits()
    up = deeper
    for _ in range(2):
        nxt = after_success(up, POLICY)
        assert nxt is not None and nxt.level == 2
        up = nxt
    up1 = after_success(up, POLICY)
    assert up1 is not None and (up1.level, up1.successes) == (1, 0)
    for _ in range(3):
        nxt = after_success(up1, POLICY)
        assert nxt is not None
        up1 = nxt
    assert up1.level == 0 and up1.reason == "restored after sustained success"
    assert after_success(up1, POLICY) is None


def test_pause_doubles_up_to_the_maximum() -> None:
    assert [POLICY.pause_at(n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_leases_are_limited_and_expire() -> None:
    state = DestinationState()
    for holder in ("a", "b"):
        nxt = take_lease(state, holder, 2, now=0, ttl=30)
        assert nxt is not None
        state = nxt
    assert take_lease(state, "c", 2, now=10, ttl=30) is None
    assert take_lease(state, "a", 2, now=10, ttl=30) is not None  # renewing one's own
    # A dead holder's lease runs out.
    freed = take_lease(state, "c", 2, now=31, ttl=30)
    assert freed is not None and set(freed.leases) == {"c"}
    renewed = renew_leases(state, {"a"}, now=20, ttl=30)
    assert renewed is not None and renewed.leases == {"a": 50, "b": 30}
    dropped = drop_lease(state, "a")
    assert dropped is not None and set(dropped.leases) == {"b"}
    assert drop_lease(state, "zzz") is None
    assert take_lease(DestinationState(), "x", 0, now=0, ttl=1) is not None  # 0: no limit


def test_messages_counted_per_second_and_hour() -> None:
    limits = Limits(per_second=2, per_hour=3)
    state = DestinationState()
    for now in (7200.1, 7200.5):
        nxt, wait = take_message(state, limits, now)
        assert nxt is not None and wait == 0
        state = nxt
    full, wait = take_message(state, limits, 7200.75)
    assert full is None and wait == pytest.approx(0.25)
    nxt, _ = take_message(state, limits, 7201.0)
    assert nxt is not None
    hour_full, wait = take_message(nxt, limits, 7202.0)
    assert hour_full is None and wait == pytest.approx(3600 * 3 - 7202.0)


def test_state_round_trips_and_garbage_is_a_fresh_state() -> None:
    state = DestinationState(2, 99.5, 1, "421", {"a": 3.0}, (5, 1), (0, 7))
    assert DestinationState.decode(state.encode()) == state
    assert DestinationState.decode(b"{not json") == DestinationState()
    assert DestinationState.decode(None) == DestinationState()
