"""Delivery shaping, pure: per-destination limits, which destination a send goes to, and the
shared state every sender replica reads and changes (ADR 0037, ADR 0038).

A **Destination** is what remote limits apply to: a rule of `sender.shaping.destinations`
matched by recipient domain (`example.org`) or by the suffix of the most preferred MX host
(`.google.com` — every domain hosted by Google), else the `default` rule applied per recipient
domain. Its **Limits**: concurrent connections, messages per connection, messages per second and
per hour (0 = no limit).

The shared state of one Destination (`DestinationState`, one JSON value per Destination in the
`kannon-shaping` KV bucket, changed with compare-and-set) holds the connection leases (holder →
expiry, so a killed sender's leases run out), the current second's and hour's message counts, and
the adaptive backoff: a level that halves the limits per step, a pause, and the successes counted
towards the next step back up. Every function here takes `now` (epoch seconds) and returns a new
state: callers decide nothing by clock or randomness of their own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_MATCH = "default"
MAX_LEVEL = 10
"""Backoff steps: 2^10 divides any sane limit down to its floor of 1."""
_FIELDS = ("connections", "per_connection", "per_second", "per_hour")


@dataclass(frozen=True)
class Limits:
    """0 means no limit (`per_connection` 0: the sender's own default)."""

    connections: int = 0
    per_connection: int = 0
    per_second: int = 0
    per_hour: int = 0

    @property
    def any(self) -> bool:
        return any((self.connections, self.per_second, self.per_hour))

    def lowered(self, level: int, unlimited_connections: int) -> Limits:
        """The limits `level` backoff steps down: each step halves them, never below 1. An
        unlimited connection count is halved from `unlimited_connections` (what one sender
        would open at most), so backing off also slows a destination nobody configured."""
        if level <= 0:
            return self

        def halve(value: int) -> int:
            return max(1, value >> level) if value else 0

        return replace(
            self,
            connections=halve(self.connections or unlimited_connections),
            per_second=halve(self.per_second),
            per_hour=halve(self.per_hour),
        )

    def describe(self) -> str:
        parts = [f"{name}={getattr(self, name)}" for name in _FIELDS if getattr(self, name)]
        return " ".join(parts) or "unlimited"


@dataclass(frozen=True)
class Rule:
    match: str
    """`default`, a recipient domain (`example.org`) or an MX host suffix (`.google.com`)."""
    limits: Limits


@dataclass(frozen=True)
class Destination:
    name: str
    """The rule's match, or the recipient domain under the default rule."""
    limits: Limits

    @property
    def key(self) -> str:
        """Its KV key: only `[-_=/.a-zA-Z0-9]`, never starting with a dot."""
        if self.name.startswith("."):
            return "suffix" + self.name
        return "domain." + self.name


def parse_rules(value: object) -> tuple[Rule, ...]:
    """`sender.shaping.destinations`: rules separated by `;` (or a YAML list of them), each
    `MATCH: key=value ...` with keys connections, per_connection, per_second, per_hour.

    >>> parse_rules(".google.com: connections=2 per_second=5; default: connections=20")[0].match
    '.google.com'
    """
    if isinstance(value, tuple) and all(isinstance(r, Rule) for r in value):
        return value
    if isinstance(value, str):
        texts = [t for t in value.split(";") if t.strip()]
    elif isinstance(value, list | tuple) and all(isinstance(t, str) for t in value):
        texts = [t for t in value if t.strip()]
    else:
        raise ValueError(f"{value!r} is not a list of rules (use 'MATCH: connections=2; ...')")
    rules: list[Rule] = []
    for text in texts:
        rule = _parse_rule(text.strip())
        if any(r.match == rule.match for r in rules):
            raise ValueError(f"destination {rule.match!r} is configured twice")
        rules.append(rule)
    return tuple(rules)


def _parse_rule(text: str) -> Rule:
    match, colon, rest = text.partition(":")
    match = match.strip().lower().rstrip(".")
    if not colon or not match:
        raise ValueError(f"{text!r} is not a rule (use 'example.org: connections=2 per_second=5')")
    name = match.lstrip(".")
    if match != DEFAULT_MATCH and (
        not name
        or not all(
            label and all(c.isalnum() or c == "-" for c in label) for label in name.split(".")
        )
        or not name.isascii()
        or match.startswith("..")
    ):
        raise ValueError(
            f"{match!r} is not a destination (a domain, a .suffix of MX hosts, or default)"
        )
    values: dict[str, int] = {}
    for item in rest.split():
        key, eq, number = item.partition("=")
        if key not in _FIELDS or not eq:
            raise ValueError(
                f"{item!r} in the rule for {match!r}: use {', '.join(f + '=N' for f in _FIELDS)}"
            )
        if not number.isdigit():
            raise ValueError(f"{item!r} in the rule for {match!r}: {number!r} is not a count")
        values[key] = int(number)
    return Rule(match, Limits(**values))


def _is_name(name: str) -> bool:
    labels = name.split(".")
    return name.isascii() and all(
        label and all(c.isalnum() or c == "-" for c in label) for label in labels
    )


def destination_for(rules: tuple[Rule, ...], domain: str, mx_host: str) -> Destination | None:
    """The Destination of mail to `domain` whose most preferred MX host is `mx_host` (ASCII,
    lower case): the domain's rule, else the longest matching MX suffix rule, else the default
    rule per domain; None when no rule applies (no shaping)."""
    suffix: Rule | None = None
    default: Rule | None = None
    for rule in rules:
        if rule.match == domain:
            return Destination(rule.match, rule.limits)
        if rule.match == DEFAULT_MATCH:
            default = rule
        elif (
            rule.match.startswith(".")
            and mx_host.endswith(rule.match)
            and (suffix is None or len(rule.match) > len(suffix.match))
        ):
            suffix = rule
    if suffix is not None:
        return Destination(suffix.match, suffix.limits)
    if default is not None:
        return Destination(domain, default.limits)
    return None


# -- adaptive backoff (ADR 0038) -----------------------------------------------------------


@dataclass(frozen=True)
class BackoffPolicy:
    pause: float
    """Seconds of the first pause; each further step doubles it."""
    max_pause: float
    restore_after: int
    """Successes in a row that take the level one step back up."""

    def pause_at(self, level: int) -> float:
        return min(self.max_pause, self.pause * (1 << max(0, level - 1)))


@dataclass(frozen=True)
class DestinationState:
    level: int = 0
    paused_until: float = 0.0
    successes: int = 0
    reason: str = ""
    leases: dict[str, float] = field(default_factory=dict)
    """Connection lease holder → expiry (epoch seconds)."""
    second: tuple[int, int] = (0, 0)
    """(epoch second, messages sent in it)."""
    hour: tuple[int, int] = (0, 0)

    def paused(self, now: float) -> bool:
        return now < self.paused_until

    def encode(self) -> bytes:
        data: dict[str, Any] = {
            "level": self.level,
            "paused_until": self.paused_until,
            "successes": self.successes,
            "reason": self.reason,
            "leases": self.leases,
            "second": list(self.second),
            "hour": list(self.hour),
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> DestinationState:
        """The stored state; an empty or unreadable value is a fresh one (it only loses a
        pause or some counts, never mail)."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(
                level=int(data["level"]),
                paused_until=float(data["paused_until"]),
                successes=int(data["successes"]),
                reason=str(data["reason"]),
                leases={str(k): float(v) for k, v in dict(data["leases"]).items()},
                second=(int(data["second"][0]), int(data["second"][1])),
                hour=(int(data["hour"][0]), int(data["hour"][1])),
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return cls()


def after_trouble(
    state: DestinationState, policy: BackoffPolicy, now: float, reason: str
) -> DestinationState | None:
    """One step down and a pause, after a 4xx or a connection failure; None (no change) while
    already paused: the sends that were under way when the first trouble came report theirs
    too, and one incident must not count as many."""
    if state.paused(now):
        return None
    level = min(MAX_LEVEL, state.level + 1)
    return replace(
        state,
        level=level,
        paused_until=now + policy.pause_at(level),
        successes=0,
        reason=reason,
    )


def after_success(state: DestinationState, policy: BackoffPolicy) -> DestinationState | None:
    """Count a delivery towards the next step back up; None when there is nothing to restore."""
    if state.level == 0:
        return None
    successes = state.successes + 1
    if successes < policy.restore_after:
        return replace(state, successes=successes)
    level = state.level - 1
    return replace(
        state,
        level=level,
        successes=0,
        reason="restored after sustained success" if level == 0 else state.reason,
    )


# -- connection leases and message counts (ADR 0037) ---------------------------------------


def take_lease(
    state: DestinationState, holder: str, limit: int, now: float, ttl: float
) -> DestinationState | None:
    """`state` with a lease for `holder`, or None when `limit` live leases are held already
    (0: no limit). Expired leases — their sender died or lost the bus — are dropped here."""
    live = {h: exp for h, exp in state.leases.items() if exp > now}
    if limit and len(live) >= limit and holder not in live:
        return None
    live[holder] = now + ttl
    return replace(state, leases=live)


def drop_lease(state: DestinationState, holder: str) -> DestinationState | None:
    if holder not in state.leases:
        return None
    return replace(state, leases={h: e for h, e in state.leases.items() if h != holder})


def renew_leases(
    state: DestinationState, holders: set[str], now: float, ttl: float
) -> DestinationState | None:
    """Extend the leases of connections still open; forget expired ones. A lease given back
    meanwhile stays given back."""
    leases = {h: (now + ttl if h in holders else exp) for h, exp in state.leases.items()}
    leases = {h: exp for h, exp in leases.items() if exp > now}
    if leases == state.leases:
        return None
    return replace(state, leases=leases)


def take_message(
    state: DestinationState, limits: Limits, now: float
) -> tuple[DestinationState | None, float]:
    """Count one message in the current second and hour: (new state, 0), or (None, seconds
    until the window that is full has room again)."""
    second, hour = math.floor(now), math.floor(now // 3600)
    in_second = state.second[1] if state.second[0] == second else 0
    in_hour = state.hour[1] if state.hour[0] == hour else 0
    if limits.per_hour and in_hour >= limits.per_hour:
        return None, (hour + 1) * 3600 - now
    if limits.per_second and in_second >= limits.per_second:
        return None, second + 1 - now
    return replace(state, second=(second, in_second + 1), hour=(hour, in_hour + 1)), 0.0
