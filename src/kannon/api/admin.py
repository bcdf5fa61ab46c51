"""The Admin service (`pkg.kannon.admin.apiv1.Api` / `kannon.admin.apiv1.AdminApiV1Service`):
Domains with their DKIM keys and DNS records, persistent templates, API keys.

Every method first checks the operator's credentials (:class:`kannon.api.auth.AdminGuard`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kannon.api.auth import AdminGuard
from kannon.api.errors import rpc
from kannon.config import Settings
from kannon.db import apikeys, domains, templates
from kannon.dns_records import records_for_domain
from kannon.envelope.dkim import generate_dkim_keypair
from kannon.ids import new_api_key, new_api_key_id, new_template_id
from kannon.model.apikey import ApiKey, check_expiry, check_key_id, check_name, hash_key, key_prefix
from kannon.model.domain import DEFAULT_DKIM_SELECTOR, Domain, canonical_domain_name
from kannon.model.errors import Conflict, NotFound
from kannon.model.template import PERSISTENT, Template, check_html, check_template_id, check_title
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as pb
from kannon.wire import api as wire

if TYPE_CHECKING:
    # Types only: asyncpg is imported at run time by kannon.db alone.
    import asyncpg

TEMPLATES_PAGE = 50
API_KEYS_PAGE = 100  # the original's default
MAX_PAGE = 1000


class AdminService:
    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.guard = AdminGuard(settings.api.admin_token)

    def _domain_pb(self, domain: Domain) -> Any:
        return wire.domain_pb(domain, records_for_domain(self.settings, domain))

    async def _existing_domain(self, value: str) -> str:
        name = canonical_domain_name(value)
        if await domains.get_domain(self.pool, name) is None:
            raise NotFound(f"domain: {name!r} not found")
        return name

    # --- Domains -----------------------------------------------------------------------------

    @rpc
    async def GetDomains(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        found = await domains.list_domains(self.pool)
        return pb.GetDomainsResponse(domains=[self._domain_pb(d) for d in found])

    @rpc
    async def GetDomain(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        name = canonical_domain_name(request.domain)
        domain = await domains.get_domain(self.pool, name)
        if domain is None:
            raise NotFound(f"domain: {name!r} not found")
        return pb.GetDomainRes(domain=self._domain_pb(domain))

    @rpc
    async def CreateDomain(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        name = canonical_domain_name(request.domain)
        if await domains.get_domain(self.pool, name) is not None:
            # Checked before the costly key generation; the unique index still decides races.
            raise Conflict(f"domain: {name!r} already exists")
        # RSA key generation takes tens of milliseconds of CPU: keep the event loop free.
        private_key, public_key = await asyncio.to_thread(generate_dkim_keypair)
        domain = await domains.insert_domain(
            self.pool,
            name=name,
            dkim_private_key=private_key,
            dkim_public_key=public_key,
            dkim_selector=DEFAULT_DKIM_SELECTOR,
            now=datetime.now(UTC),
        )
        return self._domain_pb(domain)

    # --- Templates ---------------------------------------------------------------------------

    @rpc
    async def CreateTemplate(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        domain = await self._existing_domain(request.domain)
        check_html(request.html)
        check_title(request.title)
        now = datetime.now(UTC)
        template = Template(
            template_id=new_template_id(domain),
            domain=domain,
            html=request.html,
            title=request.title,
            type=PERSISTENT,
            created_at=now,
            updated_at=now,
        )
        await templates.insert_template(self.pool, template)
        return pb.CreateTemplateRes(template=wire.template_pb(template))

    @rpc
    async def UpdateTemplate(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        template_id = check_template_id(request.template_id)
        check_html(request.html)
        check_title(request.title)
        template = _found_template(
            await templates.update_template(
                self.pool,
                template_id,
                html=request.html,
                title=request.title,
                now=datetime.now(UTC),
            ),
            template_id,
        )
        return pb.UpdateTemplateRes(template=wire.template_pb(template))

    @rpc
    async def DeleteTemplate(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        template_id = check_template_id(request.template_id)
        template = _found_template(
            await templates.delete_template(self.pool, template_id), template_id
        )
        return pb.DeleteTemplateRes(template=wire.template_pb(template))

    @rpc
    async def GetTemplate(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        template_id = check_template_id(request.template_id)
        template = _found_template(
            await templates.get_template(self.pool, template_id), template_id
        )
        return pb.GetTemplateRes(template=wire.template_pb(template))

    @rpc
    async def GetTemplates(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        domain = await self._existing_domain(request.domain)
        page = wire.page(request.skip, request.take, default=TEMPLATES_PAGE, cap=MAX_PAGE)
        found, total = await templates.list_templates(
            self.pool, domain, offset=page.offset, limit=page.limit
        )
        return pb.GetTemplatesRes(templates=[wire.template_pb(t) for t in found], total=total)

    # --- API keys ----------------------------------------------------------------------------

    @rpc
    async def CreateAPIKey(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        domain = canonical_domain_name(request.domain)
        name = check_name(request.name)
        now = datetime.now(UTC)
        expires_at = wire.optional_datetime(request, "expires_at")
        check_expiry(expires_at, now)
        plaintext = new_api_key()
        key = ApiKey(
            id=new_api_key_id(),
            domain=domain,
            name=name,
            key_prefix=key_prefix(plaintext),
            created_at=now,
            expires_at=expires_at,
            is_active=True,
            deactivated_at=None,
        )
        await apikeys.insert_api_key(self.pool, key, hash_key(plaintext))
        return pb.CreateAPIKeyResponse(api_key=wire.api_key_pb(key), key=plaintext)

    @rpc
    async def ListAPIKeys(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        domain = await self._existing_domain(request.domain)
        page = wire.page(request.offset, request.limit, default=API_KEYS_PAGE, cap=MAX_PAGE)
        found, total = await apikeys.list_api_keys(
            self.pool,
            domain,
            only_active=request.only_active,
            now=datetime.now(UTC),
            offset=page.offset,
            limit=page.limit,
        )
        return pb.ListAPIKeysResponse(api_keys=[wire.api_key_pb(k) for k in found], total=total)

    @rpc
    async def GetAPIKey(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        domain = canonical_domain_name(request.domain)
        key_id = check_key_id(request.id)
        key = await apikeys.get_api_key(self.pool, domain, key_id)
        if key is None:
            raise NotFound(f"id: no API key {key_id!r} in domain {domain!r}")
        return pb.GetAPIKeyResponse(api_key=wire.api_key_pb(key))

    @rpc
    async def DeactivateAPIKey(self, request: Any, context: Any) -> Any:
        self.guard.check(context)
        domain = canonical_domain_name(request.domain)
        key_id = check_key_id(request.id)
        key = await apikeys.deactivate_api_key(self.pool, domain, key_id, datetime.now(UTC))
        if key is None:
            raise NotFound(f"id: no API key {key_id!r} in domain {domain!r}")
        return pb.DeactivateAPIKeyResponse(api_key=wire.api_key_pb(key))


def _found_template(template: Template | None, template_id: str) -> Template:
    if template is None:
        raise NotFound(f"template_id: {template_id!r} not found")
    return template
