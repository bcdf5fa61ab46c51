"""The Webhooks service (`kannon.webhooks.apiv1.WebhooksApiV1Service`, ADR 0032): a Domain's
endpoints (create, list, update, delete, rotate secret, send a test event), their attempts, and
replays.

Callers: the operator token reaches every Domain (`domain` names it); a Domain's API key
(Basic) reaches its own Domain only (`domain` empty or its own). URLs are checked here
(https, no credentials, no non-public IP literal, and a host name that resolves to a non-public
address is refused too unless `webhooks.allow_private`); the webhooks Component checks the
addresses again at every POST.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from kannon.api.auth import AdminGuard, ApiKeyAuth, metadata, uses_basic
from kannon.api.errors import CallContext, rpc
from kannon.bus.subjects import WEBHOOK_EVENT_TYPES
from kannon.config import Settings
from kannon.db import domains
from kannon.db import webhooks as store
from kannon.db.database import Database
from kannon.ids import new_token, new_webhook_endpoint_id, new_webhook_secret
from kannon.model.domain import canonical_domain_name
from kannon.model.errors import InvalidArgument, NotFound, PermissionDenied
from kannon.model.event_ids import webhook_id, webhook_test_event_id
from kannon.model.webhooks import (
    TEST_EVENT,
    Endpoint,
    check_description,
    check_event_types,
    check_url,
    claim_timeout,
    is_forbidden_address,
    payload,
)
from kannon.pb.webhooks.apiv1 import webhooksapiv1_pb2 as pb
from kannon.runtime.clock import utc_now
from kannon.wire import api as wire

if TYPE_CHECKING:
    pass

ATTEMPTS_PAGE = 50
MAX_PAGE = 1000
RESOLVE_TIMEOUT = 5.0


def endpoint_pb(endpoint: Endpoint) -> pb.Endpoint:
    message = pb.Endpoint(
        id=endpoint.id,
        domain=endpoint.domain,
        url=endpoint.url,
        event_types=list(endpoint.event_types),
        enabled=endpoint.enabled,
        description=endpoint.description,
    )
    message.created_at.FromDatetime(endpoint.created_at)
    message.updated_at.FromDatetime(endpoint.updated_at)
    return message


class WebhooksService:
    def __init__(self, settings: Settings, db: Database, auth: ApiKeyAuth) -> None:
        self.settings = settings
        self.db = db
        self.auth = auth
        self.guard = AdminGuard(settings.api.admin_token)

    async def _domain(self, requested: str, context: CallContext) -> str:
        if uses_basic(metadata(context)):
            tenant = await self.auth.tenant(context)
            if requested.strip() and canonical_domain_name(requested) != tenant:
                raise PermissionDenied(
                    f"domain: the API key of {tenant!r} cannot manage the webhooks of "
                    f"{requested.strip()!r}"
                )
            return tenant
        self.guard.check(context)
        if not requested.strip():
            raise InvalidArgument("domain: required with the operator token")
        return (await domains.existing_domain(self.db, canonical_domain_name(requested))).name

    async def _url(self, value: str) -> str:
        config = self.settings.webhooks
        url = check_url(value, allow_http=config.allow_http, allow_private=config.allow_private)
        host = urlsplit(url).hostname or ""
        if config.allow_private:
            return url
        try:
            ipaddress.ip_address(host)
            return url  # a literal was checked by check_url
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
            )
        except (OSError, TimeoutError):
            # Unresolvable now is not proof of anything: every POST checks again.
            return url
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if is_forbidden_address(address):
                raise InvalidArgument(
                    f"url: {host} resolves to {address}, a non-public address; endpoints must "
                    "be reachable on the internet (webhooks.allow_private)"
                )
        return url

    async def _endpoint(self, domain: str, endpoint_id: str) -> Endpoint:
        return _found_endpoint(
            await store.get_endpoint(self.db, domain, endpoint_id.strip()), domain, endpoint_id
        )

    @rpc
    async def CreateEndpoint(
        self, request: pb.CreateEndpointReq, context: CallContext
    ) -> pb.CreateEndpointRes:
        domain = await self._domain(request.domain, context)
        url = await self._url(request.url)
        now = utc_now()
        endpoint = Endpoint(
            id=new_webhook_endpoint_id(),
            domain=domain,
            url=url,
            event_types=check_event_types(request.event_types, WEBHOOK_EVENT_TYPES),
            enabled=not request.disabled,
            description=check_description(request.description),
            created_at=now,
            updated_at=now,
        )
        secret = new_webhook_secret()
        await store.insert_endpoint(self.db, endpoint, secret)
        return pb.CreateEndpointRes(endpoint=endpoint_pb(endpoint), secret=secret)

    @rpc
    async def ListEndpoints(
        self, request: pb.ListEndpointsReq, context: CallContext
    ) -> pb.ListEndpointsRes:
        domain = await self._domain(request.domain, context)
        found = await store.list_endpoints(self.db, domain)
        return pb.ListEndpointsRes(endpoints=[endpoint_pb(e) for e in found])

    @rpc
    async def UpdateEndpoint(
        self, request: pb.UpdateEndpointReq, context: CallContext
    ) -> pb.Endpoint:
        domain = await self._domain(request.domain, context)
        url = await self._url(request.url) if request.HasField("url") else None
        updated = await store.update_endpoint(
            self.db,
            domain,
            request.id.strip(),
            now=utc_now(),
            url=url,
            enabled=request.enabled if request.HasField("enabled") else None,
            description=(
                check_description(request.description) if request.HasField("description") else None
            ),
            event_types=(
                check_event_types(request.event_types, WEBHOOK_EVENT_TYPES)
                if request.set_event_types
                else None
            ),
        )
        return endpoint_pb(_found_endpoint(updated, domain, request.id))

    @rpc
    async def DeleteEndpoint(self, request: pb.EndpointRef, context: CallContext) -> pb.Endpoint:
        domain = await self._domain(request.domain, context)
        deleted = await store.delete_endpoint(self.db, domain, request.id.strip())
        return endpoint_pb(_found_endpoint(deleted, domain, request.id))

    @rpc
    async def RotateSecret(
        self, request: pb.EndpointRef, context: CallContext
    ) -> pb.RotateSecretRes:
        domain = await self._domain(request.domain, context)
        secret = new_webhook_secret()
        updated = await store.update_endpoint(
            self.db, domain, request.id.strip(), now=utc_now(), secret=secret
        )
        endpoint = _found_endpoint(updated, domain, request.id)
        return pb.RotateSecretRes(endpoint=endpoint_pb(endpoint), secret=secret)

    @rpc
    async def SendTestEvent(
        self, request: pb.EndpointRef, context: CallContext
    ) -> pb.SendTestEventRes:
        domain = await self._domain(request.domain, context)
        endpoint = await self._endpoint(domain, request.id)
        now = utc_now()
        event_id = webhook_test_event_id(new_token())
        hook_id = webhook_id(event_id)
        body = payload(
            TEST_EVENT,
            timestamp=now,
            event_id=event_id,
            batch_id="",
            domain=domain,
            recipient="",
            details={"endpoint_id": endpoint.id},
        )
        await store.insert_deliveries(
            self.db,
            [
                store.NewDelivery(
                    endpoint_id=endpoint.id,
                    event_id=event_id,
                    webhook_id=hook_id,
                    domain=domain,
                    event_type=TEST_EVENT,
                    event_at=now,
                    payload=body,
                )
            ],
            now,
        )
        return pb.SendTestEventRes(webhook_id=hook_id)

    @rpc
    async def ListAttempts(
        self, request: pb.ListAttemptsReq, context: CallContext
    ) -> pb.ListAttemptsRes:
        domain = await self._domain(request.domain, context)
        endpoint = await self._endpoint(domain, request.endpoint_id)
        page = wire.page(request.skip, request.take, default=ATTEMPTS_PAGE, cap=MAX_PAGE)
        rows, total = await store.list_attempts(
            self.db, domain, endpoint.id, offset=page.offset, limit=page.limit
        )
        result = pb.ListAttemptsRes(total=total)
        for row in rows:
            attempt = result.attempts.add(
                webhook_id=row.webhook_id,
                event_id=row.event_id,
                event_type=row.event_type,
                status_code=row.status_code or 0,
                error=row.error,
                latency_ms=row.latency_ms,
                response=row.response,
                delivery_status=row.delivery_status,
            )
            attempt.attempted_at.FromDatetime(row.attempted_at)
        return result

    @rpc
    async def Replay(self, request: pb.ReplayReq, context: CallContext) -> pb.ReplayRes:
        domain = await self._domain(request.domain, context)
        endpoint = await self._endpoint(domain, request.endpoint_id)
        now = utc_now()
        stale_before = now - claim_timeout(self.settings.webhooks.timeout)
        if request.event_id.strip():
            count = await store.replay(
                self.db,
                domain,
                endpoint.id,
                now=now,
                stale_before=stale_before,
                event_id=request.event_id.strip(),
            )
            if count == 0:
                raise NotFound(
                    f"event_id: no recorded event {request.event_id!r} for endpoint {endpoint.id!r}"
                )
        else:
            start, end = wire.time_range(request)
            count = await store.replay(
                self.db,
                domain,
                endpoint.id,
                now=now,
                stale_before=stale_before,
                start=start,
                end=end,
            )
        return pb.ReplayRes(scheduled=count)


def _found_endpoint(endpoint: Endpoint | None, domain: str, endpoint_id: str) -> Endpoint:
    if endpoint is None:
        raise NotFound(f"id: no webhook endpoint {endpoint_id!r} in domain {domain!r}")
    return endpoint
