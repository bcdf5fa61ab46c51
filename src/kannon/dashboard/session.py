"""Dashboard sessions (pure): what a signed session cookie says, and its CSRF token.

A cookie is ``<payload>.<signature>``: the payload is base64url JSON (scope, key hash, expiry,
nonce), the signature HMAC-SHA256 under a key derived from the shared secret in the database
and the admin token, so changing the admin token signs every operator out. A Domain session
carries the SHA-256 of the API key it signed in with; each request checks that key is still
usable, so deactivating it ends the session. The CSRF token of a session is an HMAC of its
nonce: a form carries it, a cross-site page cannot read it (ADR 0044).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime

COOKIE_NAME = "kannon_dashboard"


@dataclass(frozen=True)
class Session:
    domain: str | None
    """The Domain the session may see; None for the operator (every Domain)."""
    key_hash: str | None
    """SHA-256 hex of the API key a Domain session signed in with."""
    expires: int
    """Unix time after which the cookie is refused."""
    nonce: str

    @property
    def is_admin(self) -> bool:
        return self.domain is None

    def may_see(self, domain: str) -> bool:
        return self.domain is None or self.domain == domain


def signing_key(secret: bytes, admin_token: str | None) -> bytes:
    return hmac.new(secret, b"session|" + (admin_token or "").encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(session: Session, key: bytes) -> str:
    payload = _b64(
        json.dumps(
            {"d": session.domain, "k": session.key_hash, "e": session.expires, "n": session.nonce},
            separators=(",", ":"),
        ).encode()
    )
    signature = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def decode(cookie: str, key: bytes, now: datetime) -> Session | None:
    """The session a cookie carries, or None when forged, malformed or expired."""
    payload, _, signature = cookie.partition(".")
    expected = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not signature or not hmac.compare_digest(signature, expected):
        return None
    try:
        fields = json.loads(_unb64(payload))
        session = Session(
            domain=fields["d"], key_hash=fields["k"], expires=int(fields["e"]), nonce=fields["n"]
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    if session.expires <= now.timestamp():
        return None
    if session.domain is not None and not session.key_hash:
        return None
    return session


def csrf_token(session: Session, key: bytes) -> str:
    return _b64(hmac.new(key, b"csrf|" + session.nonce.encode(), hashlib.sha256).digest())


def csrf_ok(session: Session, key: bytes, presented: str) -> bool:
    return bool(presented) and hmac.compare_digest(presented, csrf_token(session, key))
