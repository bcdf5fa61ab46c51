"""Bounce address (SMTP MAIL FROM / Return-Path) of a Delivery, and reading it back from a DSN.

Format: ``bump_<batch token>.<recipient hash>.<tag>@<tenant domain>``

* ``batch token``: the cuid2 of the Batch id ``msg_<token>@<domain>``; with the domain after
  ``@`` it rebuilds the Batch id, so a DSN maps back to its Batch after the Pool row is gone.
* ``recipient hash``: 80 bits of HMAC-SHA256(secret, batch token, lower-cased Recipient).
* ``tag``: 80 bits of HMAC-SHA256(secret, token, recipient hash, lower-cased domain). The
  SMTPServer checks it at RCPT time: mail to forged ``bump_`` addresses is refused, so nobody
  can mark a Delivery bounced (or make us accept backscatter) without the secret.

Why the Recipient is hashed rather than embedded (as the original's
``bump_<b64url(rcpt)>+<batch id>`` did):

* Length: RFC 5321 caps the local part at 64 octets; a Recipient may be 254. Embedding it
  overflows for ordinary addresses and strict MTAs refuse or truncate the MAIL FROM.
* Case: remote MTAs may change the case of an address; base64 is case-sensitive, so the
  original lost bounces. Hash and tag use lowercase base32 (a-z, 2-7) and everything is compared
  lower-cased, so a mangled address still parses.
* Privacy: the MAIL FROM is copied into Return-Path headers, logs and DSNs along the way; a keyed
  hash does not disclose the Recipient, and (keyed per Batch) does not link one Recipient across
  Batches either.

A DSN names the failed Recipient in its ``Final-Recipient`` / ``Original-Recipient`` fields;
``BounceAddress.matches`` tells which candidate is ours, so the hash loses no information.

The parsed Batch id carries the domain lower-cased: domains are case-insensitive and the address
may have been case-mangled in transit.

Pure: the secret is passed in.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass

from kannon.envelope.ids import BATCH_ID_PREFIX, BATCH_TOKEN_MAX, split_batch_id

BOUNCE_PREFIX = "bump_"
LOCAL_PART_MAX = 64  # RFC 5321 §4.5.3.1.1
_HASH_BYTES = 10  # 80 bits -> 16 base32 chars, no padding
_MIN_SECRET = 16
_RCPT_DOMAIN = b"kannon-bounce-rcpt-v1\x00"
_TAG_DOMAIN = b"kannon-bounce-tag-v1\x00"
_LOCAL_RE = re.compile(
    rf"{BOUNCE_PREFIX}([a-z0-9]{{1,{BATCH_TOKEN_MAX}}})\.([a-z2-7]{{16}})\.([a-z2-7]{{16}})"
)
# DSN recipient fields are "<address-type>; <address>" (RFC 3464 §2.3.1-2, RFC 6533).
_ADDR_TYPE_RE = re.compile(r"\s*(?:rfc822|utf-8)\s*;", re.IGNORECASE)


def _check_secret(secret: bytes) -> None:
    if len(secret) < _MIN_SECRET:
        raise ValueError(f"bounce secret must be at least {_MIN_SECRET} bytes")


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").lower()


def _normalise_address(address: str) -> str:
    """Strip an address-type prefix, whitespace and one pair of angle brackets; lower-case."""
    m = _ADDR_TYPE_RE.match(address)
    if m is not None:
        address = address[m.end() :]
    address = address.strip()
    if len(address) >= 2 and address[0] == "<" and address[-1] == ">":
        address = address[1:-1].strip()
    return address.lower()


def _recipient_hash(secret: bytes, token: str, recipient: str) -> str:
    msg = b"".join(
        (_RCPT_DOMAIN, token.encode("ascii"), b"\x00", _normalise_address(recipient).encode())
    )
    return _b32(hmac.digest(secret, msg, "sha256")[:_HASH_BYTES])


def _tag(secret: bytes, token: str, recipient_hash: str, domain: str) -> str:
    msg = f"{token}.{recipient_hash}@{domain.lower()}".encode()
    return _b32(hmac.digest(secret, _TAG_DOMAIN + msg, "sha256")[:_HASH_BYTES])


@dataclass(frozen=True, slots=True)
class BounceAddress:
    """A verified bounce address: which Batch, and a keyed hash of which Recipient."""

    batch_id: str
    recipient_hash: str

    @property
    def batch_token(self) -> str:
        return self.batch_id[len(BATCH_ID_PREFIX) : self.batch_id.index("@")]

    @property
    def domain(self) -> str:
        return self.batch_id.rpartition("@")[2]

    def matches(self, recipient: str, secret: bytes) -> bool:
        """True when ``recipient`` is the Recipient this address was made for.

        Accepts DSN field values as they come (``rfc822; <User@Example.COM>``).
        """
        _check_secret(secret)
        expected = _recipient_hash(secret, self.batch_token, recipient)
        return hmac.compare_digest(expected, self.recipient_hash)


def make_bounce_address(batch_id: str, recipient: str, secret: bytes) -> str:
    """Return the MAIL FROM for ``recipient``'s Delivery in ``batch_id``.

    Raises ValueError for a Batch id not of the form ``msg_<token>@<domain>``.
    """
    _check_secret(secret)
    parts = split_batch_id(batch_id)
    if parts is None:
        raise ValueError(f"not a batch id: {batch_id!r}")
    token, domain = parts
    rhash = _recipient_hash(secret, token, recipient)
    local = f"{BOUNCE_PREFIX}{token}.{rhash}.{_tag(secret, token, rhash, domain)}"
    assert len(local) <= LOCAL_PART_MAX  # guaranteed by the token length bound
    return f"{local}@{domain}"


def parse_bounce_address(address: str, secret: bytes) -> BounceAddress | None:
    """Return the Batch and Recipient hash of one of our bounce addresses, else None.

    Tolerates case changes, surrounding ``<>``/whitespace and a trailing dot on the domain.
    None when the address is not ``bump_`` shaped or its tag does not verify.
    """
    _check_secret(secret)
    normalised = _normalise_address(address)
    local, at, domain = normalised.rpartition("@")
    domain = domain.rstrip(".")
    if not at or not domain or "@" in local:
        return None
    m = _LOCAL_RE.fullmatch(local)
    if m is None:
        return None
    token, rhash, tag = m.groups()
    if not hmac.compare_digest(tag, _tag(secret, token, rhash, domain)):
        return None
    return BounceAddress(batch_id=f"{BATCH_ID_PREFIX}{token}@{domain}", recipient_hash=rhash)
