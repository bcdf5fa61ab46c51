"""Outcome webhooks, the rules free of I/O (ADR 0032): endpoint checks, which events an endpoint
gets, the JSON payload, Standard Webhooks signatures, which addresses may be called, and when a
failed delivery is tried again.

Signatures follow the Standard Webhooks spec: the secret is `whsec_` + base64 key bytes; each POST
carries `webhook-id` (the same for every attempt of one event), `webhook-timestamp` (Unix seconds
of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
"""

from __future__ import annotations

import base64
import functools
import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from kannon.model.errors import InvalidArgument
from kannon.model.retry import RetryPolicy

SECRET_PREFIX = "whsec_"
TEST_EVENT = "test"
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION = 255
SNIPPET_CHARS = 256

LANE_DEPTH = 4
"""A lane holds up to `endpoint_concurrency × LANE_DEPTH` claimed rows before it counts as full."""

PENDING = "pending"
DELIVERED = "delivered"
GIVEN_UP = "given_up"


@dataclass(frozen=True)
class Endpoint:
    id: str
    domain: str
    url: str
    event_types: tuple[str, ...]
    """Empty = every outcome type."""
    enabled: bool
    description: str
    created_at: datetime
    updated_at: datetime

    def wants(self, event_type: str) -> bool:
        return self.enabled and (not self.event_types or event_type in self.event_types)


def check_event_types(values: Iterable[str], known: Sequence[str]) -> tuple[str, ...]:
    """The endpoint's event types, deduplicated in the order given; unknown ones refused."""
    chosen: list[str] = []
    for value in values:
        name = value.strip().lower()
        if name not in known:
            raise InvalidArgument(
                f"event_types: unknown event type {value!r}; known: {', '.join(known)}"
            )
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def check_description(value: str) -> str:
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description: at most {MAX_DESCRIPTION} characters")
    return value


def is_forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local (cloud metadata 169.254.169.254 included), shared (CGNAT),
    reserved, multicast or unspecified: anything that is not a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_forbidden_address(mapped)
    return not address.is_global or address.is_multicast


def check_url(url: str, *, allow_http: bool, allow_private: bool) -> str:
    """An endpoint URL: absolute https (http only with webhooks.allow_http), a host, no
    credentials, and not an IP literal in a forbidden range (unless webhooks.allow_private).
    Host names are checked again when they are resolved, at every attempt."""
    text = url.strip()
    if not text or len(text) > MAX_URL_LENGTH:
        raise InvalidArgument(f"url: must be 1 to {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"url: {text!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise InvalidArgument(f"url: {text!r} must start with https://")
    if scheme == "http" and not allow_http:
        raise InvalidArgument(
            f"url: {text!r} is not https; plain http is allowed only with webhooks.allow_http"
        )
    if not parts.hostname:
        raise InvalidArgument(f"url: {text!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument("url: credentials in the URL are not allowed")
    if port == 0:
        raise InvalidArgument(f"url: {text!r} has port 0")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None and not allow_private and is_forbidden_address(literal):
        raise InvalidArgument(
            f"url: {parts.hostname} is a loopback, private, link-local or otherwise non-public "
            "address; endpoints must be reachable on the internet (webhooks.allow_private)"
        )
    return text


@functools.lru_cache(maxsize=1024)
def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (scheme v1)."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.digest(secret_key(secret), signed, "sha256")
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, webhook_id: str, now: datetime, body: bytes) -> dict[str, str]:
    timestamp = int(now.timestamp())
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def payload(
    event_type: str,
    *,
    timestamp: datetime,
    event_id: str,
    batch_id: str,
    domain: str,
    recipient: str,
    details: Mapping[str, Any],
) -> bytes:
    """The JSON body of one event: Standard Webhooks' {type, timestamp, data} envelope."""
    body = {
        "type": event_type,
        "timestamp": _iso(timestamp),
        "data": {
            "event_id": event_id,
            "message_id": batch_id,
            "domain": domain,
            "email": recipient,
            "details": dict(details),
        },
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def is_success(status_code: int) -> bool:
    return 200 <= status_code < 300


@dataclass(frozen=True)
class NextStep:
    status: str
    next_attempt_at: datetime | None
    """When a pending delivery is tried again."""


def after_attempt(
    *,
    succeeded: bool,
    policy: RetryPolicy,
    created_at: datetime,
    attempts_before: int,
    now: datetime,
    jitter: float,
) -> NextStep:
    """Delivered, or retried after `min · 2^attempts` (capped, jittered) while the window from
    the delivery's creation lasts, else given up."""
    if succeeded:
        return NextStep(DELIVERED, None)
    at = policy.next_attempt(created_at, attempts_before, now, jitter)
    if at is None:
        return NextStep(GIVEN_UP, None)
    return NextStep(PENDING, at)


def snippet(body: bytes) -> str:
    return body[: SNIPPET_CHARS * 4].decode("utf-8", "replace")[:SNIPPET_CHARS]


def claim_timeout(post_timeout: timedelta) -> timedelta:
    """How long a claim holds before another worker may take the row (its holder presumed
    dead): room for LANE_DEPTH attempts of `post_timeout` each, twice over, never under five
    minutes. Shared by the webhooks worker and by replays (which release only stale claims)."""
    return max(timedelta(minutes=5), post_timeout * LANE_DEPTH * 2)
