"""Idempotency keys on send (ADR 0031): the rules, free of I/O.

A caller may send `idempotency-key: <key>` with SendHTML/SendTemplate. Within
`api.idempotency_window` (24 h by default) the same key for the same Domain answers with the first
call's response and creates nothing; the same key with a different request is refused. The
request is compared by a fingerprint: SHA-256 of the method name and the request message's
deterministic binary encoding, so a JSON and a binary call of the same request are the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from kannon.model.errors import Conflict, InvalidArgument

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255


def check_key(value: str | None) -> str | None:
    """The key as sent, None when absent; refuses an empty, over-long or non-printable one."""
    if value is None:
        return None
    if not value or len(value) > MAX_KEY_LENGTH:
        raise InvalidArgument(
            f"{HEADER}: must be 1 to {MAX_KEY_LENGTH} characters, got {len(value)}"
        )
    if not all(" " < ch < "\x7f" for ch in value):
        raise InvalidArgument(
            f"{HEADER}: only printable ASCII without spaces is allowed (e.g. a UUID)"
        )
    return value


def fingerprint(method: str, encoded_request: bytes) -> bytes:
    return hashlib.sha256(fingerprint_prefix(method) + encoded_request).digest()


def fingerprint_prefix(method: str) -> bytes:
    """What the hashed bytes of :func:`fingerprint` start with, before the request's."""
    return method.encode() + b"\0"


@dataclass(frozen=True)
class IdempotencyClaim:
    """What a send with a key writes in its intake transaction (one row per Domain and key)."""

    domain: str
    key: str
    fingerprint: bytes
    response: bytes
    """The encoded response the first call answered, returned again to a repeated call."""


@dataclass(frozen=True)
class StoredCall:
    fingerprint: bytes
    response: bytes


def replayed_response(stored: StoredCall, fingerprint: bytes, key: str) -> bytes:
    """The first call's response when the request is the same; Conflict when it is not."""
    if stored.fingerprint != fingerprint:
        raise Conflict(
            f"{HEADER}: {key!r} was already used within the idempotency window for a "
            "different request; send a new key for a new request (a retry must repeat the "
            "request exactly)"
        )
    return stored.response
