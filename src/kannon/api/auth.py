"""Who may call what: API keys for Mailer and Stats, the operator token for Admin.

* Mailer and Stats: ``authorization: Basic base64(domain:apikey)``; the key must exist for that
  Domain, be active and unexpired. Every failure gives one message, so probing tells nothing.
* Admin: ``api.admin_token`` as ``authorization: Bearer <token>`` or ``x-kannon-admin-token``,
  compared in constant time. Without a configured token only loopback peers are served — the
  original left the Admin API open to anyone reaching the port; a deployment sets a token.
* Webhooks and Suppression: either scheme; an API key reaches its own Domain only, the admin
  token any Domain (:class:`DomainOrAdmin`).
* HZ, health and reflection are open (probes and tooling must work without credentials).

:class:`EarlyAuth`, a server interceptor, makes these decisions from the call's metadata
*before* the request body is received: a refused caller costs no message buffering or parsing
(up to `api.max_message_size` each). It hands the resolved tenant to the handler in a context
variable (grpc.aio runs an interceptor and its handler in one `contextvars.Context`). The Admin
API's loopback-only mode needs the peer address, which interceptors do not see: that case, and
every case again as defence in depth, is checked by the handlers themselves.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import unquote

import grpc

from kannon.api.errors import CallContext, failure_status
from kannon.api.metrics import CALLS, REQUESTS
from kannon.db.apikeys import find_key_by_hash
from kannon.db.database import Database
from kannon.model.apikey import AUTH_FAILED, parse_basic_authorization
from kannon.model.errors import PermissionDenied, Unauthenticated
from kannon.runtime.clock import utc_now

ADMIN_TOKEN_HEADER = "x-kannon-admin-token"
ADMIN_REFUSED = (
    "the Admin API answers only loopback clients while api.admin_token is not configured; "
    "set api.admin_token (K_API_ADMIN_TOKEN) and send it as 'authorization: Bearer <token>'"
)
ADMIN_TOKEN_FAILED = (
    "admin token missing or wrong: send 'authorization: Bearer <api.admin_token>' "
    f"or '{ADMIN_TOKEN_HEADER}: <api.admin_token>'"
)


# The tenant EarlyAuth resolved for the current call (unset outside an intercepted call).
_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("kannon_api_tenant")


def text_metadata(pairs: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in pairs or ():
        if isinstance(value, str):
            result[key.lower()] = value
    return result


def metadata(context: CallContext) -> dict[str, str]:
    """The call's text metadata, keys lower-cased (gRPC already lower-cases them; HTTP/2 too)."""
    return text_metadata(context.invocation_metadata())


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


def uses_basic(headers: dict[str, str]) -> bool:
    """Whether the call presents Domain API key credentials (else: the operator's)."""
    return headers.get("authorization", "").strip().lower().startswith("basic ")


class AdminGuard:
    def __init__(self, token: str | None) -> None:
        self.token = token

    def check(self, context: CallContext) -> None:
        check_admin(self.token, metadata(context), context.peer())


class ApiKeyAuth:
    """Resolves a call's Basic credentials to the tenant Domain they are valid for."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def tenant_of(self, headers: dict[str, str]) -> str:
        credentials = parse_basic_authorization(headers.get("authorization"))
        key = await find_key_by_hash(self.db, credentials.domain, credentials.key_hash)
        if key is None or not key.usable_at(utc_now()):
            raise Unauthenticated(AUTH_FAILED)
        return key.domain

    async def tenant(self, context: CallContext) -> str:
        """The call's tenant: as EarlyAuth resolved it, else (a handler called without the
        interceptor) looked up now."""
        resolved = _tenant.get(None)
        if resolved is not None:
            return resolved
        return await self.tenant_of(metadata(context))


class DomainOrAdmin:
    """Services open to both schemes: a Domain's API key for its own Domain, the admin token
    for any Domain."""

    def __init__(self, auth: ApiKeyAuth, admin: AdminGuard) -> None:
        self.auth = auth
        self.admin = admin

    async def scope(self, context: CallContext) -> str | None:
        """The Domain the caller is limited to (its API key's), or None for the operator."""
        if uses_basic(metadata(context)):
            return await self.auth.tenant(context)
        self.admin.check(context)
        return None


Continuation = Callable[[Any], Awaitable[Any]]


def _refusal(code: Any, details: str) -> Any:
    """A handler that answers `code` without receiving the request: declared request-streaming,
    so grpc.aio never reads a message for it (a unary handler's request is read first)."""

    async def refuse(request_iterator: Any, context: Any) -> Any:
        await context.abort(code, details)

    return grpc.stream_unary_rpc_method_handler(refuse)


class CallGate:
    """Which credentials each service needs, decided from a call's headers alone.

    Shared by the gRPC interceptor (:class:`EarlyAuth`) and the Connect/gRPC-Web listener
    (:mod:`kannon.api.connect`), so both protocols refuse the same callers the same way.
    `api_key_services` and `admin_services` are full service names (`package.Service`).
    """

    def __init__(
        self,
        auth: ApiKeyAuth,
        admin_token: str | None,
        *,
        api_key_services: Iterable[str],
        admin_services: Iterable[str],
        either_services: Iterable[str] = (),
    ) -> None:
        self.auth = auth
        self.admin_token = admin_token
        self.api_key_services = frozenset(api_key_services)
        self.admin_services = frozenset(admin_services)
        self.either_services = frozenset(either_services)
        """Services taking the operator token or a Domain API key (Basic)."""

    async def check(self, service: str, headers: dict[str, str]) -> None:
        """Raise unless `headers` may call `service`; remember the tenant for the handler."""
        if service in self.either_services:
            if uses_basic(headers):
                _tenant.set(await self.auth.tenant_of(headers))
            elif self.admin_token is not None:
                check_admin(self.admin_token, headers, peer="")
        elif service in self.api_key_services:
            _tenant.set(await self.auth.tenant_of(headers))
        elif service in self.admin_services and self.admin_token is not None:
            check_admin(self.admin_token, headers, peer="")


class EarlyAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Authenticates gRPC calls from their metadata before the body is read (module docstring)."""

    def __init__(self, gate: CallGate) -> None:
        self.gate = gate

    async def intercept_service(self, continuation: Continuation, details: Any) -> Any:
        service, _, method = details.method.lstrip("/").rpartition("/")
        REQUESTS.labels("grpc", "proto", method).inc()
        try:
            await self.gate.check(service, text_metadata(details.invocation_metadata))
        except Exception as exc:
            code, text = failure_status(exc, details.method)
            CALLS.labels(method, code.name).inc()
            return _refusal(code, text)
        return await continuation(details)
