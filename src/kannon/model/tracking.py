"""The Tracking Policy: how much of a Recipient's engagement may be observed (ADR 0033).

A policy is one `TrackingMode` for the open pixel and one for link clicks. The Domain's policy is
a *ceiling*; a Batch and a Recipient may state a policy of their own that only *restricts*:

* a Batch above its Domain's ceiling fails the whole call (InvalidArgument naming the field);
* a Recipient above the ceiling is rejected alone (`tracking_above_ceiling`), an unknown mode
  alone too (`unsupported_tracking_mode`);
* otherwise, per channel, the most restrictive *stated* mode wins (UNSPECIFIED states nothing).

The result is resolved at intake and frozen on the Delivery (`sending_pool_emails.tracking`):
changing the ceiling later changes no Delivery already accepted.

What each mode means for the Envelope and the Tracker:

* ``off``: no pixel, no rewritten link;
* ``anonymous``: tokens carry ``anonymous@track.<domain>``; Stats only counts the event;
* ``pseudonymous``: tokens carry ``<32 hex>@track.<domain>``, drawn for each Envelope and
  stored nowhere, so the events of one message are linkable to each other and to nobody;
* ``identified``: tokens carry the Recipient's address; no IP address or user agent is kept;
* ``full``: as identified, plus the IP address and user agent of the hit.

Pure: no I/O. The stand-in identity's randomness is passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kannon.model.errors import InvalidArgument

REJECT_TRACKING_ABOVE_CEILING = "tracking_above_ceiling"
REJECT_UNSUPPORTED_TRACKING_MODE = "unsupported_tracking_mode"
# Stand-in identities live under this label of the Domain, which no real mailbox uses.
RESERVED_LABEL = "track"
PSEUDONYM_HEX = 32


class TrackingMode(enum.IntEnum):
    """The wire's `pkg.kannon.tracking.types.TrackingMode`, numbers included; larger collects
    more (UNSPECIFIED aside, which states nothing)."""

    UNSPECIFIED = 0
    OFF = 1
    ANONYMOUS = 2
    PSEUDONYMOUS = 3
    IDENTIFIED = 4
    FULL = 5

    @property
    def label(self) -> str:
        """The lower-case name stored in the database and shown to people."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> TrackingMode:
        try:
            return cls[label.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown tracking mode {label!r}") from None

    @property
    def tracks(self) -> bool:
        """Whether the channel is observed at all (a pixel or a rewritten link)."""
        return self > TrackingMode.OFF

    @property
    def keeps_client(self) -> bool:
        """Whether the IP address and user agent of a hit are kept."""
        return self is TrackingMode.FULL


@dataclass(frozen=True, slots=True)
class TrackingPolicy:
    opens: TrackingMode = TrackingMode.UNSPECIFIED
    links: TrackingMode = TrackingMode.UNSPECIFIED

    def to_json(self) -> dict[str, str]:
        """The jsonb layout of `domains.tracking` and `sending_pool_emails.tracking`; unstated
        channels are left out (`{}` states nothing, as `messages.tracking` may)."""
        out: dict[str, str] = {}
        if self.opens is not TrackingMode.UNSPECIFIED:
            out["opens"] = self.opens.label
        if self.links is not TrackingMode.UNSPECIFIED:
            out["links"] = self.links.label
        return out

    @classmethod
    def from_json(cls, value: Any, default: TrackingPolicy | None = None) -> TrackingPolicy:
        """Read the jsonb layout; a missing or unreadable channel takes `default`'s."""
        base = default or TrackingPolicy()
        if not isinstance(value, Mapping):
            return base
        return cls(
            opens=_mode_or(value.get("opens"), base.opens),
            links=_mode_or(value.get("links"), base.links),
        )

    def uses(self, mode: TrackingMode) -> bool:
        return mode in (self.opens, self.links)

    @property
    def is_stated(self) -> bool:
        return self.opens is not TrackingMode.UNSPECIFIED or (
            self.links is not TrackingMode.UNSPECIFIED
        )


def _mode_or(value: Any, default: TrackingMode) -> TrackingMode:
    if isinstance(value, str):
        try:
            return TrackingMode.from_label(value)
        except ValueError:
            return default
    return default


DEFAULT_CEILING = TrackingPolicy(TrackingMode.IDENTIFIED, TrackingMode.IDENTIFIED)
"""A new Domain's ceiling, and the policy of Deliveries from before policies existed."""


def mode_from_number(number: int, field: str) -> TrackingMode:
    """A wire enum number as a mode; InvalidArgument naming `field` for numbers we do not know."""
    try:
        return TrackingMode(number)
    except ValueError:
        raise InvalidArgument(
            f"{field}: unsupported tracking mode {number} (use OFF, ANONYMOUS, PSEUDONYMOUS, "
            "IDENTIFIED or FULL)"
        ) from None


def check_ceiling(policy: TrackingPolicy, field: str) -> TrackingPolicy:
    """A Domain ceiling must state both channels (a ceiling that states nothing is no ceiling)."""
    for channel in ("opens", "links"):
        if getattr(policy, channel) is TrackingMode.UNSPECIFIED:
            raise InvalidArgument(f"{field}.{channel}: a Domain's ceiling must state a mode")
    return policy


def _stricter(a: TrackingMode, b: TrackingMode) -> TrackingMode:
    if a is TrackingMode.UNSPECIFIED:
        return b
    if b is TrackingMode.UNSPECIFIED:
        return a
    return min(a, b)


def restrict(ceiling: TrackingPolicy, *policies: TrackingPolicy) -> TrackingPolicy:
    """Per channel, the most restrictive stated mode of the ceiling and `policies`."""
    opens, links = ceiling.opens, ceiling.links
    for policy in policies:
        opens = _stricter(opens, policy.opens)
        links = _stricter(links, policy.links)
    return TrackingPolicy(opens, links)


def above_ceiling(policy: TrackingPolicy, ceiling: TrackingPolicy) -> list[str]:
    """The channels on which `policy` states more than `ceiling` allows."""
    return [
        channel
        for channel in ("opens", "links")
        if getattr(policy, channel) > getattr(ceiling, channel)
    ]


def check_batch_policy(policy: TrackingPolicy, ceiling: TrackingPolicy) -> None:
    """A Batch above its Domain's ceiling fails the call (InvalidArgument naming the field)."""
    for channel in above_ceiling(policy, ceiling):
        raise InvalidArgument(
            f"tracking.{channel}: {getattr(policy, channel).label} is above the Domain's "
            f"ceiling ({getattr(ceiling, channel).label}); ask the operator to raise it "
            "(SetTrackingPolicy) or track less"
        )


def token_identity(mode: TrackingMode, recipient: str, domain: str, pseudonym: str) -> str | None:
    """Who a tracking token of this channel names: None when the channel is off."""
    if not mode.tracks:
        return None
    if mode is TrackingMode.ANONYMOUS:
        return f"anonymous@{RESERVED_LABEL}.{domain}"
    if mode is TrackingMode.PSEUDONYMOUS:
        if len(pseudonym) != PSEUDONYM_HEX:
            raise ValueError(f"a pseudonym is {PSEUDONYM_HEX} hex digits")
        return f"{pseudonym}@{RESERVED_LABEL}.{domain}"
    return recipient
