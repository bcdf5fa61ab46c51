"""Tracking tokens: the signed, expiring claims behind ``/o/<token>``, ``/c/<token>`` and
``/u/<token>`` (Kannon's own one-click unsubscribe endpoint).

The Dispatcher signs one open token and one click token per link per Recipient, and one
unsubscribe token when the Domain serves unsubscribes itself; the Tracker verifies them on every
hit. Both must be cheap and need no database round trip, so a token is
an HMAC-SHA256 over a small binary claim set (the original's RSA-4096 JWT per link cost
milliseconds each: too slow for bulk).

Token = base64url without padding (safe in a URL path) of::

    kind (1 byte: low nibble 0x1 open, 0x2 click, 0x3 unsubscribe; high nibble the
          Tracking Mode the event is recorded under, 0 for tokens from before policies
          existed, which count as ``identified``, and always 0 for unsubscribe tokens)
    exp  (8 bytes, big-endian unix seconds)
    kid  (1-byte length + UTF-8)
    batch_id, recipient (each 2-byte length + UTF-8)
    url  (click only: the remaining payload bytes, UTF-8)
    mac  (16 bytes: HMAC-SHA256(secret, DOMAIN || payload), truncated)

The kind byte is inside the MAC, so an open token cannot be replayed as a click (which would
turn the Tracker into an open redirect to whatever URL an attacker appended), a click token
cannot unsubscribe anybody, and nobody can raise the mode a token was minted with. The kid
selects the secret, so keys can rotate: the Tracker keeps accepting old kids until their
tokens expire. A 128-bit truncated MAC is far beyond online-forgery reach. Decoding is strict
and canonical: any altered character yields a different byte string, and the MAC is compared in
constant time.

Pure: ``now`` and ``expires_at`` are passed in; datetimes must be timezone-aware.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kannon.model.tracking import TrackingMode

_DOMAIN = b"kannon-tracking-token-v1\x00"
_KIND_OPEN = 0x01
_KIND_CLICK = 0x02
_KIND_UNSUBSCRIBE = 0x03
_KIND_MASK = 0x0F
_MODE_SHIFT = 4
# What a token without a mode (minted before Tracking Policies) is recorded under.
LEGACY_MODE = TrackingMode.IDENTIFIED
_MAC_LEN = 16
_HEAD = struct.Struct(">BQ")
_LEN8 = struct.Struct(">B")
_LEN16 = struct.Struct(">H")
_MIN_SECRET = 16
# Bounds the work a hostile request can cause before the MAC check (URLs of ~6 KB still fit).
MAX_TOKEN_CHARS = 8192
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class TrackingKey:
    """A signing key: ``kid`` travels in the token, ``secret`` never leaves the fleet."""

    kid: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.kid or len(self.kid.encode("utf-8")) > 255:
            raise ValueError("tracking key id must be 1..255 UTF-8 bytes")
        if len(self.secret) < _MIN_SECRET:
            raise ValueError(f"tracking key secret must be at least {_MIN_SECRET} bytes")


@dataclass(frozen=True, slots=True)
class OpenClaim:
    """A verified open token: this Recipient of this Batch opened the mail."""

    kid: str
    batch_id: str
    recipient: str  # the identity the mode allows: an address or a stand-in
    expires_at: datetime
    mode: TrackingMode = LEGACY_MODE


@dataclass(frozen=True, slots=True)
class ClickClaim:
    """A verified click token: redirect to ``url`` (and only to it)."""

    kid: str
    batch_id: str
    recipient: str
    url: str
    expires_at: datetime
    mode: TrackingMode = LEGACY_MODE


@dataclass(frozen=True, slots=True)
class UnsubscribeClaim:
    """A verified unsubscribe token: this Recipient (the real address) of this Batch."""

    kid: str
    batch_id: str
    recipient: str
    expires_at: datetime


Claim = OpenClaim | ClickClaim | UnsubscribeClaim


def _unix(ts: datetime, what: str) -> int:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return int(ts.timestamp())


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.digest(secret, _DOMAIN + payload, "sha256")[:_MAC_LEN]


class BatchTokens:
    """Mints the tokens of one Batch (one key, one Batch id, one expiry).

    The claim bytes before the Recipient (kind, exp, kid, Batch id) and the HMAC state over them
    are computed once per kind byte, so a token costs one HMAC copy, update and digest: the
    Dispatcher mints about a dozen per Delivery. Tokens are byte-identical to ``sign_*``'s (which
    use this class); errors are raised by the first token that needs the faulty part."""

    __slots__ = ("_batch_id", "_expires_at", "_key", "_states")

    def __init__(self, key: TrackingKey, batch_id: str, expires_at: datetime) -> None:
        self._key = key
        self._batch_id = batch_id
        self._expires_at = expires_at
        self._states: dict[int, tuple[bytes, hmac.HMAC]] = {}

    def _state(self, kind: int) -> tuple[bytes, hmac.HMAC]:
        state = self._states.get(kind)
        if state is None:
            exp = _unix(self._expires_at, "expires_at")
            kid_b = self._key.kid.encode("utf-8")
            batch_b = self._batch_id.encode("utf-8")
            if exp < 0 or len(batch_b) > 0xFFFF:
                raise ValueError("token claim out of range")
            head = b"".join(
                (
                    _HEAD.pack(kind, exp),
                    _LEN8.pack(len(kid_b)),
                    kid_b,
                    _LEN16.pack(len(batch_b)),
                    batch_b,
                )
            )
            state = self._states[kind] = (
                head,
                hmac.new(self._key.secret, _DOMAIN + head, "sha256"),
            )
        return state

    def sign(self, kind: int, recipient: str, url: str) -> str:
        """The token of claim ``kind`` (kind byte, mode included) for ``recipient`` and ``url``."""
        head, mac = self._state(kind)
        rcpt_b = recipient.encode("utf-8")
        if len(rcpt_b) > 0xFFFF:
            raise ValueError("token claim out of range")
        tail = b"".join((_LEN16.pack(len(rcpt_b)), rcpt_b, url.encode("utf-8")))
        digest = mac.copy()
        digest.update(tail)
        return _b64encode(head + tail + digest.digest()[:_MAC_LEN])

    def open(self, recipient: str, mode: TrackingMode = LEGACY_MODE) -> str:
        """As ``sign_open`` for this Batch."""
        return self.sign(_with_mode(_KIND_OPEN, mode), recipient, "")

    def click(self, recipient: str, url: str, mode: TrackingMode = LEGACY_MODE) -> str:
        """As ``sign_click`` for this Batch."""
        if not url:
            raise ValueError("click token needs a url")
        return self.sign(_with_mode(_KIND_CLICK, mode), recipient, url)

    def unsubscribe(self, recipient: str) -> str:
        """As ``sign_unsubscribe`` for this Batch."""
        return self.sign(_KIND_UNSUBSCRIBE, recipient, "")


def _sign(
    key: TrackingKey,
    kind: int,
    *,
    batch_id: str,
    recipient: str,
    url: str,
    expires_at: datetime,
) -> str:
    return BatchTokens(key, batch_id, expires_at).sign(kind, recipient, url)


def _with_mode(kind: int, mode: TrackingMode) -> int:
    if not mode.tracks:
        raise ValueError(f"no tracking token is minted under mode {mode.label}")
    return kind | (int(mode) << _MODE_SHIFT)


def sign_open(
    key: TrackingKey,
    batch_id: str,
    recipient: str,
    expires_at: datetime,
    mode: TrackingMode = LEGACY_MODE,
) -> str:
    """Return the token for the open pixel of ``recipient`` (the identity ``mode`` allows) in
    ``batch_id``."""
    return _sign(
        key,
        _with_mode(_KIND_OPEN, mode),
        batch_id=batch_id,
        recipient=recipient,
        url="",
        expires_at=expires_at,
    )


def sign_click(  # noqa: PLR0917  (the original four, plus the mode)
    key: TrackingKey,
    batch_id: str,
    recipient: str,
    url: str,
    expires_at: datetime,
    mode: TrackingMode = LEGACY_MODE,
) -> str:
    """Return the token for one tracked link; the Tracker will redirect only to ``url``."""
    if not url:
        raise ValueError("click token needs a url")
    return _sign(
        key,
        _with_mode(_KIND_CLICK, mode),
        batch_id=batch_id,
        recipient=recipient,
        url=url,
        expires_at=expires_at,
    )


def sign_unsubscribe(key: TrackingKey, batch_id: str, recipient: str, expires_at: datetime) -> str:
    """Return the token of Kannon's one-click unsubscribe URL for ``recipient`` of ``batch_id``."""
    return _sign(
        key,
        _KIND_UNSUBSCRIBE,
        batch_id=batch_id,
        recipient=recipient,
        url="",
        expires_at=expires_at,
    )


def _decode(token: str) -> bytes | None:
    if not (0 < len(token) <= MAX_TOKEN_CHARS) or _TOKEN_RE.fullmatch(token) is None:
        return None
    if len(token) % 4 == 1:  # no byte string encodes to this length
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    # Non-canonical spellings (unused low bits set in the last char) decode to the same bytes;
    # refuse them so that every altered character is an invalid token.
    if _b64encode(raw) != token:
        return None
    return raw


def verify_token(token: str, keys: Mapping[str, bytes], now: datetime) -> Claim | None:
    """Return the claim of a valid token, or None.

    None for: malformed or non-canonical encoding, unknown kid, bad MAC, unknown kind or mode,
    expired (``now >= exp``). ``keys`` maps kid to secret.
    """
    now_ts = _unix(now, "now")
    raw = _decode(token)
    if raw is None or len(raw) < _HEAD.size + 1 + 2 + 2 + _MAC_LEN:
        return None
    payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
    kind, exp = _HEAD.unpack_from(payload, 0)
    pos = _HEAD.size
    kid_len = payload[pos]
    pos += 1
    kid_b = payload[pos : pos + kid_len]
    pos += kid_len
    try:
        kid = kid_b.decode("utf-8")
    except UnicodeDecodeError:
        return None
    secret = keys.get(kid)
    if secret is None or not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    # From here on the bytes are ours: the structure is trusted, only semantics are checked.
    base, mode_number = kind & _KIND_MASK, kind >> _MODE_SHIFT
    if exp <= now_ts or base not in (_KIND_OPEN, _KIND_CLICK, _KIND_UNSUBSCRIBE):
        return None
    if mode_number == 0:
        mode = LEGACY_MODE
    elif base == _KIND_UNSUBSCRIBE or mode_number > TrackingMode.FULL:
        return None
    else:
        mode = TrackingMode(mode_number)
        if not mode.tracks:
            return None
    try:
        (batch_len,) = _LEN16.unpack_from(payload, pos)
        pos += 2
        batch_id = payload[pos : pos + batch_len].decode("utf-8")
        pos += batch_len
        (rcpt_len,) = _LEN16.unpack_from(payload, pos)
        pos += 2
        recipient = payload[pos : pos + rcpt_len].decode("utf-8")
        pos += rcpt_len
        url = payload[pos:].decode("utf-8")
        expires_at = datetime.fromtimestamp(exp, UTC)
    except (struct.error, ValueError, OverflowError, OSError):
        return None
    if pos > len(payload):
        return None
    if base == _KIND_OPEN:
        return None if url else OpenClaim(kid, batch_id, recipient, expires_at, mode)
    if base == _KIND_UNSUBSCRIBE:
        return None if url else UnsubscribeClaim(kid, batch_id, recipient, expires_at)
    if not url:
        return None
    return ClickClaim(kid, batch_id, recipient, url, expires_at, mode)


def verify_open(token: str, keys: Mapping[str, bytes], now: datetime) -> OpenClaim | None:
    """Verify a token presented at ``/o/``: a click token there is refused."""
    claim = verify_token(token, keys, now)
    return claim if isinstance(claim, OpenClaim) else None


def verify_click(token: str, keys: Mapping[str, bytes], now: datetime) -> ClickClaim | None:
    """Verify a token presented at ``/c/``: an open token there is refused."""
    claim = verify_token(token, keys, now)
    return claim if isinstance(claim, ClickClaim) else None


def verify_unsubscribe(
    token: str, keys: Mapping[str, bytes], now: datetime
) -> UnsubscribeClaim | None:
    """Verify a token presented at ``/u/``: open and click tokens there are refused."""
    claim = verify_token(token, keys, now)
    return claim if isinstance(claim, UnsubscribeClaim) else None
