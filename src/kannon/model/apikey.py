"""API keys: the credential a Domain's Mailer and Stats callers present.

The plaintext (``k_`` + 64 alphanumerics) is shown once, at creation; only its SHA-256 (hex) and
an 8-character prefix (so people can tell keys apart) are stored. A key authenticates while it
is active and not expired; deactivation is permanent.

Callers send ``authorization: Basic base64(domain:apikey)``. Every way this can fail gives the
same message (:data:`AUTH_FAILED`), so a caller learns nothing about which keys or Domains exist.

Pure: hashing and checks; `now` is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime

from kannon.model.errors import InvalidArgument, Unauthenticated

MAX_NAME = 100  # api_keys.name is VARCHAR(100)
PREFIX_LENGTH = 8
KEY_ID_PREFIX = "key_"
AUTH_FAILED = (
    "invalid or missing credentials: send 'authorization: Basic base64(<domain>:<api key>)' "
    "with an active, unexpired API key of that domain"
)


@dataclass(frozen=True)
class ApiKey:
    id: str
    domain: str
    name: str
    key_prefix: str
    created_at: datetime
    expires_at: datetime | None
    is_active: bool
    deactivated_at: datetime | None

    @property
    def masked(self) -> str:
        return self.key_prefix + "..."

    def usable_at(self, now: datetime) -> bool:
        return self.is_active and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class Credentials:
    """What a Basic authorization header claims; still to be checked against the store."""

    domain: str
    key_hash: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def key_prefix(plaintext: str) -> str:
    return plaintext[:PREFIX_LENGTH]


def check_name(name: str) -> str:
    value = name.strip()
    if not value:
        raise InvalidArgument("name: an API key name is required")
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"name: longer than {MAX_NAME} characters")
    if "\x00" in value:
        raise InvalidArgument("name: contains a NUL character")
    return value


def check_expiry(expires_at: datetime | None, now: datetime) -> None:
    if expires_at is not None and expires_at <= now:
        raise InvalidArgument("expires_at: must be in the future (leave it unset for no expiry)")


def check_key_id(key_id: str) -> str:
    value = key_id.strip()
    if not value.startswith(KEY_ID_PREFIX):
        raise InvalidArgument(f"id: {key_id!r} is not an API key id (they start with 'key_')")
    return value


def parse_basic_authorization(header: str | None) -> Credentials:
    """Read ``Basic base64(domain:apikey)``; any malformation is Unauthenticated(AUTH_FAILED).

    The domain is compared in canonical form (lower-case, no trailing dot) because that is how
    Domains are stored; the key is hashed here so the plaintext goes no further.
    """
    if header is None:
        raise Unauthenticated(AUTH_FAILED)
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Unauthenticated(AUTH_FAILED)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated(AUTH_FAILED) from None
    domain, sep, key = decoded.partition(":")
    domain = domain.strip().lower().removesuffix(".")
    if not sep or not domain or not key:
        raise Unauthenticated(AUTH_FAILED)
    return Credentials(domain=domain, key_hash=hash_key(key))
