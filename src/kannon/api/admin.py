"""The Admin service (`pkg.kannon.admin.apiv1.Api` / `kannon.admin.apiv1.AdminApiV1Service`):
Domains with their DKIM keys and DNS records, persistent templates, API keys; a Domain's
Tracking Policy ceiling and one-click unsubscribe endpoint; DKIM key rotation (ADR 0035) and the
DNS check.

A new Domain gets an RSA-2048 key (selector `smtp`) and an Ed25519 key (`smtp-ed25519`), both
signing at once (the operator publishes them before sending). A rotation creates the next pair
under new selectors, pending; ConfirmDkimKeys (or a CheckDomain that finds them published)
makes them sign, and the keys they replace sign beside them for `dkim.rotation_grace`.

Every method first checks the operator's credentials (:class:`kannon.api.auth.AdminGuard`).
"""

from __future__ import annotations

import asyncio

from kannon.api.auth import AdminGuard
from kannon.api.errors import CallContext, rpc
from kannon.config import Settings
from kannon.db import apikeys, domains, templates
from kannon.db.database import Database
from kannon.dns_records import check_domain_dns, dkim_record, records_for_domain
from kannon.envelope.dkim import generate_dkim_keypair, generate_keypair
from kannon.ids import new_api_key, new_api_key_id, new_template_id
from kannon.model.apikey import ApiKey, check_expiry, check_key_id, check_name, hash_key, key_prefix
from kannon.model.domain import (
    DEFAULT_DKIM_SELECTOR,
    DEFAULT_ED25519_SELECTOR,
    ED25519_SHA256,
    KEY_ALGORITHMS,
    PENDING,
    RETIRED,
    DkimKey,
    Domain,
    canonical_domain_name,
    check_selector,
    rotation_selectors,
)
from kannon.model.errors import Conflict, NotFound
from kannon.model.ip_pool import DEFAULT_POOL, check_known_pool
from kannon.model.template import PERSISTENT, Template, check_html, check_template_id, check_title
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as pb
from kannon.runtime.clock import utc_now
from kannon.wire import api as wire

TEMPLATES_PAGE = 50
API_KEYS_PAGE = 100  # the original's default
MAX_PAGE = 1000


class AdminService:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.guard = AdminGuard(settings.api.admin_token)

    def _domain_pb(self, domain: Domain) -> pb.Domain:
        now = utc_now()
        keys = [(k, dkim_record(k, now)) for k in domain.dkim_keys if k.status(now) != RETIRED]
        return wire.domain_pb(domain, records_for_domain(self.settings, domain, now), keys, now)

    def _keys_pb(self, keys: list[DkimKey]) -> list[pb.DkimKey]:
        now = utc_now()
        return [wire.dkim_key_pb(k, dkim_record(k, now), now) for k in keys]

    async def _found_domain(self, value: str) -> Domain:
        return await domains.existing_domain(self.db, canonical_domain_name(value))

    async def _existing_domain(self, value: str) -> str:
        return (await self._found_domain(value)).name

    # --- Domains -----------------------------------------------------------------------------

    @rpc
    async def GetDomains(
        self, request: pb.GetDomainsReq, context: CallContext
    ) -> pb.GetDomainsResponse:
        self.guard.check(context)
        found = await domains.list_domains(self.db)
        return pb.GetDomainsResponse(domains=[self._domain_pb(d) for d in found])

    @rpc
    async def GetDomain(self, request: pb.GetDomainReq, context: CallContext) -> pb.GetDomainRes:
        self.guard.check(context)
        domain = await self._found_domain(request.domain)
        return pb.GetDomainRes(domain=self._domain_pb(domain))

    @rpc
    async def CreateDomain(
        self, request: pb.CreateDomainRequest, context: CallContext
    ) -> pb.Domain:
        self.guard.check(context)
        name = canonical_domain_name(request.domain)
        ip_pool = DEFAULT_POOL
        if request.ip_pool:
            ip_pool = check_known_pool(request.ip_pool, self.settings.known_pools())
        if await domains.get_domain(self.db, name) is not None:
            # Checked before the costly key generation; the unique index still decides races.
            raise Conflict(f"domain: {name!r} already exists")
        # RSA key generation takes tens of milliseconds of CPU: keep the event loop free.
        private_key, public_key = await asyncio.to_thread(generate_dkim_keypair)
        ed_private, ed_public = generate_keypair(ED25519_SHA256)
        domain = await domains.insert_domain(
            self.db,
            name=name,
            dkim_private_key=private_key,
            dkim_public_key=public_key,
            dkim_selector=DEFAULT_DKIM_SELECTOR,
            now=utc_now(),
            extra_keys=[
                domains.NewKey(DEFAULT_ED25519_SELECTOR, ED25519_SHA256, ed_private, ed_public)
            ],
            ip_pool=ip_pool,
        )
        return self._domain_pb(domain)

    @rpc
    async def SetTrackingPolicy(
        self, request: pb.SetTrackingPolicyReq, context: CallContext
    ) -> pb.SetTrackingPolicyRes:
        self.guard.check(context)
        name = canonical_domain_name(request.domain)
        ceiling = wire.ceiling_from_pb(request)
        domain = domains.found_domain(await domains.set_tracking(self.db, name, ceiling), name)
        return pb.SetTrackingPolicyRes(domain=self._domain_pb(domain))

    @rpc
    async def SetOneClickUnsubscribe(
        self, request: pb.SetOneClickUnsubscribeReq, context: CallContext
    ) -> pb.SetOneClickUnsubscribeRes:
        self.guard.check(context)
        name = canonical_domain_name(request.domain)
        domain = domains.found_domain(
            await domains.set_one_click_unsubscribe(self.db, name, request.enabled), name
        )
        return pb.SetOneClickUnsubscribeRes(domain=self._domain_pb(domain))

    # --- DKIM keys and DNS -------------------------------------------------------------------

    @rpc
    async def ListDkimKeys(
        self, request: pb.ListDkimKeysReq, context: CallContext
    ) -> pb.ListDkimKeysRes:
        self.guard.check(context)
        domain = await self._found_domain(request.domain)
        now = utc_now()
        keys = [k for k in domain.dkim_keys if request.include_retired or k.status(now) != RETIRED]
        return pb.ListDkimKeysRes(keys=self._keys_pb(keys))

    @rpc
    async def RotateDkimKeys(
        self, request: pb.RotateDkimKeysReq, context: CallContext
    ) -> pb.RotateDkimKeysRes:
        self.guard.check(context)
        domain = await self._found_domain(request.domain)
        now = utc_now()
        pending = [k.selector for k in domain.dkim_keys if k.status(now) == PENDING]
        if pending:
            raise Conflict(
                f"domain: {domain.name!r} already has keys waiting for confirmation "
                f"({', '.join(pending)}): publish and confirm them first"
            )
        selectors = rotation_selectors(now)
        new_keys = []
        for algorithm in KEY_ALGORITHMS:
            private_key, public_key = await asyncio.to_thread(generate_keypair, algorithm)
            new_keys.append(
                domains.NewKey(selectors[algorithm], algorithm, private_key, public_key)
            )
        keys = await domains.add_pending_keys(self.db, domain.name, new_keys, now)
        records = [dkim_record(k, now) for k in keys]
        return pb.RotateDkimKeysRes(
            keys=self._keys_pb(keys), dns_records=[wire.dns_record_pb(r) for r in records]
        )

    @rpc
    async def ConfirmDkimKeys(
        self, request: pb.ConfirmDkimKeysReq, context: CallContext
    ) -> pb.ConfirmDkimKeysRes:
        self.guard.check(context)
        domain = await self._found_domain(request.domain)
        selector = check_selector(request.selector) if request.selector.strip() else None
        keys = await domains.confirm_keys(
            self.db, domain.name, selector, utc_now(), self.settings.dkim.rotation_grace
        )
        if not keys:
            what = f"selector {selector!r}" if selector else "any selector"
            raise NotFound(f"selector: no pending DKIM key of {domain.name!r} at {what}")
        return pb.ConfirmDkimKeysRes(keys=self._keys_pb(keys))

    @rpc
    async def CheckDomain(
        self, request: pb.CheckDomainReq, context: CallContext
    ) -> pb.CheckDomainRes:
        self.guard.check(context)
        domain = await self._found_domain(request.domain)
        checks, _ = await check_domain_dns(self.db, self.settings, domain, utc_now())
        res = pb.CheckDomainRes(domain=domain.name, ok=all(c.status == "ok" for c in checks))
        for check in checks:
            res.checks.add(
                kind=check.kind,
                name=check.name,
                status=check.status,
                detail=check.detail,
                expected=wire.dns_record_pb(check.expected),
                found=list(check.found),
            )
        return res

    # --- Templates ---------------------------------------------------------------------------

    @rpc
    async def CreateTemplate(
        self, request: pb.CreateTemplateReq, context: CallContext
    ) -> pb.CreateTemplateRes:
        self.guard.check(context)
        domain = await self._existing_domain(request.domain)
        check_html(request.html)
        check_title(request.title)
        now = utc_now()
        template = Template(
            template_id=new_template_id(domain),
            domain=domain,
            html=request.html,
            title=request.title,
            type=PERSISTENT,
            created_at=now,
            updated_at=now,
        )
        await templates.insert_template(self.db, template)
        return pb.CreateTemplateRes(template=wire.template_pb(template))

    @rpc
    async def UpdateTemplate(
        self, request: pb.UpdateTemplateReq, context: CallContext
    ) -> pb.UpdateTemplateRes:
        self.guard.check(context)
        template_id = check_template_id(request.template_id)
        check_html(request.html)
        check_title(request.title)
        template = _found_template(
            await templates.update_template(
                self.db,
                template_id,
                html=request.html,
                title=request.title,
                now=utc_now(),
            ),
            template_id,
        )
        return pb.UpdateTemplateRes(template=wire.template_pb(template))

    @rpc
    async def DeleteTemplate(
        self, request: pb.DeleteTemplateReq, context: CallContext
    ) -> pb.DeleteTemplateRes:
        self.guard.check(context)
        template_id = check_template_id(request.template_id)
        template = _found_template(
            await templates.delete_template(self.db, template_id), template_id
        )
        return pb.DeleteTemplateRes(template=wire.template_pb(template))

    @rpc
    async def GetTemplate(
        self, request: pb.GetTemplateReq, context: CallContext
    ) -> pb.GetTemplateRes:
        self.guard.check(context)
        template_id = check_template_id(request.template_id)
        template = _found_template(await templates.get_template(self.db, template_id), template_id)
        return pb.GetTemplateRes(template=wire.template_pb(template))

    @rpc
    async def GetTemplates(
        self, request: pb.GetTemplatesReq, context: CallContext
    ) -> pb.GetTemplatesRes:
        self.guard.check(context)
        domain = await self._existing_domain(request.domain)
        page = wire.page(request.skip, request.take, default=TEMPLATES_PAGE, cap=MAX_PAGE)
        found, total = await templates.list_templates(
            self.db, domain, offset=page.offset, limit=page.limit
        )
        return pb.GetTemplatesRes(templates=[wire.template_pb(t) for t in found], total=total)

    # --- API keys ----------------------------------------------------------------------------

    @rpc
    async def CreateAPIKey(
        self, request: pb.CreateAPIKeyRequest, context: CallContext
    ) -> pb.CreateAPIKeyResponse:
        self.guard.check(context)
        domain = canonical_domain_name(request.domain)
        name = check_name(request.name)
        now = utc_now()
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
        await apikeys.insert_api_key(self.db, key, hash_key(plaintext))
        return pb.CreateAPIKeyResponse(api_key=wire.api_key_pb(key), key=plaintext)

    @rpc
    async def ListAPIKeys(
        self, request: pb.ListAPIKeysRequest, context: CallContext
    ) -> pb.ListAPIKeysResponse:
        self.guard.check(context)
        domain = await self._existing_domain(request.domain)
        page = wire.page(request.offset, request.limit, default=API_KEYS_PAGE, cap=MAX_PAGE)
        found, total = await apikeys.list_api_keys(
            self.db,
            domain,
            only_active=request.only_active,
            now=utc_now(),
            offset=page.offset,
            limit=page.limit,
        )
        return pb.ListAPIKeysResponse(api_keys=[wire.api_key_pb(k) for k in found], total=total)

    @rpc
    async def GetAPIKey(
        self, request: pb.GetAPIKeyRequest, context: CallContext
    ) -> pb.GetAPIKeyResponse:
        self.guard.check(context)
        domain = canonical_domain_name(request.domain)
        key_id = check_key_id(request.id)
        key = _found_key(await apikeys.get_api_key(self.db, domain, key_id), domain, key_id)
        return pb.GetAPIKeyResponse(api_key=wire.api_key_pb(key))

    @rpc
    async def DeactivateAPIKey(
        self, request: pb.DeactivateAPIKeyRequest, context: CallContext
    ) -> pb.DeactivateAPIKeyResponse:
        self.guard.check(context)
        domain = canonical_domain_name(request.domain)
        key_id = check_key_id(request.id)
        key = _found_key(
            await apikeys.deactivate_api_key(self.db, domain, key_id, utc_now()), domain, key_id
        )
        return pb.DeactivateAPIKeyResponse(api_key=wire.api_key_pb(key))


def _found_template(template: Template | None, template_id: str) -> Template:
    if template is None:
        raise NotFound(f"template_id: {template_id!r} not found")
    return template


def _found_key(key: ApiKey | None, domain: str, key_id: str) -> ApiKey:
    if key is None:
        raise NotFound(f"id: no API key {key_id!r} in domain {domain!r}")
    return key
