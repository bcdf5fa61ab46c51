"""Who may call what: API keys for Mailer and Stats, the operator token for Admin.

* Mailer and Stats: ``authorization: Basic base64(domain:apikey)``; the key must exist for that
  Domain, be active and unexpired. Every failure gives one message, so probing tells nothing.
* Admin: ``api.admin_token`` as ``authorization: Bearer <token>`` or ``x-kannon-admin-token``,
  compared in constant time. Without a configured token only loopback peers are served — the
  original left the Admin API open to anyone reaching the port; a deployment sets a token.
* HZ, health and reflection are open (probes and tooling must work without credentials).
"""

from __future__ import annotations

import hmac
import ipaddress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from kannon.db.apikeys import find_key_by_hash
from kannon.model.apikey import AUTH_FAILED, parse_basic_authorization
from kannon.model.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    # Types only: asyncpg is imported at run time by kannon.db alone.
    import asyncpg

ADMIN_TOKEN_HEADER = "x-kannon-admin-token"
ADMIN_REFUSED = (
    "the Admin API answers only loopback clients while api.admin_token is not configured; "
    "set api.admin_token (K_API_ADMIN_TOKEN) and send it as 'authorization: Bearer <token>'"
)
ADMIN_TOKEN_FAILED = (
    "admin token missing or wrong: send 'authorization: Bearer <api.admin_token>' "
    f"or '{ADMIN_TOKEN_HEADER}: <api.admin_token>'"
)


def metadata(context: Any) -> dict[str, str]:
    """The call's text metadata, keys lower-cased (gRPC already lower-cases them; HTTP/2 too)."""
    result: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            result[key.lower()] = value
    return result


def is_loopback_peer(peer: str) -> bool:
    """True for a gRPC peer string of a loopback client or a Unix socket.

    Formats: ``ipv4:127.0.0.1:1234``, ``ipv6:[::1]:5`` (possibly percent-encoded, as some gRPC
    versions write ``ipv6:%5B::1%5D:5``), ``unix:/path``, ``unix-abstract:name``. An IPv4-mapped
    IPv6 loopback (``::ffff:127.0.0.1``) counts; anything unparseable does not.
    """
    scheme, sep, rest = peer.partition(":")
    if not sep:
        return False
    if scheme in ("unix", "unix-abstract"):
        return True
    rest = unquote(rest)
    if scheme == "ipv4":
        host = rest.rpartition(":")[0]
    elif scheme == "ipv6":
        if not rest.startswith("[") or "]" not in rest:
            return False
        host = rest[1 : rest.index("]")]
    else:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def presented_admin_token(headers: dict[str, str]) -> str | None:
    explicit = headers.get(ADMIN_TOKEN_HEADER)
    if explicit is not None:
        return explicit.strip()
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def check_admin(token: str | None, headers: dict[str, str], peer: str) -> None:
    """Raise unless the caller may use the Admin API (see module docstring)."""
    if token is None:
        if not is_loopback_peer(peer):
            raise PermissionDenied(ADMIN_REFUSED)
        return
    presented = presented_admin_token(headers)
    expected = token.strip().encode("utf-8")
    if presented is None or not hmac.compare_digest(presented.encode("utf-8"), expected):
        raise Unauthenticated(ADMIN_TOKEN_FAILED)


class AdminGuard:
    def __init__(self, token: str | None) -> None:
        self.token = token

    def check(self, context: Any) -> None:
        check_admin(self.token, metadata(context), context.peer())


class ApiKeyAuth:
    """Resolves a call's Basic credentials to the tenant Domain they are valid for."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def tenant(self, context: Any) -> str:
        credentials = parse_basic_authorization(metadata(context).get("authorization"))
        key = await find_key_by_hash(self.pool, credentials.domain, credentials.key_hash)
        if key is None or not key.usable_at(datetime.now(UTC)):
            raise Unauthenticated(AUTH_FAILED)
        return key.domain
