"""The Suppression service (`kannon.suppression.apiv1.SuppressionApiV1Service`): a Domain's
suppression list — list, get, add, remove, import (ADR 0027).

Both schemes (:class:`kannon.api.auth.DomainOrAdmin`): a Domain's API key works on its own list
only (an empty `domain` means its own; another Domain's is PermissionDenied, so a key can neither
see nor change another Domain's list), the admin token on any Domain's (`domain` required, an
unknown one is NotFound).
"""

from __future__ import annotations

import asyncio
import functools

from kannon.api.auth import DomainOrAdmin
from kannon.api.errors import CallContext, rpc
from kannon.db import domains, suppressions
from kannon.db.database import Database
from kannon.model.address import canonical_recipient
from kannon.model.domain import canonical_domain_name
from kannon.model.errors import InvalidArgument, NotFound, PermissionDenied
from kannon.model.suppression import (
    Suppression,
    check_expiry,
    check_note,
    check_reason,
    manual,
    manual_imports,
)
from kannon.pb.suppression.apiv1 import suppressionapiv1_pb2 as pb
from kannon.runtime.clock import utc_now
from kannon.wire import api as wire

LIST_PAGE = 100
MAX_PAGE = 1000
MAX_IMPORT = 100_000
OFF_LOOP_IMPORT = 5_000


def _lookup_address(value: str) -> str:
    text = value.strip()
    if not text:
        raise InvalidArgument("address: required")
    return canonical_recipient(text)


def _found(suppression: Suppression | None, domain: str, address: str) -> Suppression:
    if suppression is None:
        raise NotFound(f"address: {address!r} is not suppressed for {domain!r}")
    return suppression


# Every request of the service names its Domain.
DomainRequest = (
    pb.ListSuppressionsRequest
    | pb.GetSuppressionRequest
    | pb.AddSuppressionRequest
    | pb.RemoveSuppressionRequest
    | pb.ImportSuppressionsRequest
)


class SuppressionService:
    def __init__(self, db: Database, access: DomainOrAdmin) -> None:
        self.db = db
        self.access = access

    async def _domain(self, request: DomainRequest, context: CallContext) -> str:
        """The Domain the call is about, checked against what the caller may access."""
        scope = await self.access.scope(context)
        given = request.domain.strip()
        if scope is not None:
            if given and (asked := canonical_domain_name(given)) != scope:
                raise PermissionDenied(
                    f"domain: the API key of {scope!r} cannot access the suppression list "
                    f"of {asked!r}"
                )
            return scope
        if not given:
            raise InvalidArgument("domain: required when calling with the admin token")
        return (await domains.existing_domain(self.db, canonical_domain_name(given))).name

    @rpc
    async def ListSuppressions(
        self, request: pb.ListSuppressionsRequest, context: CallContext
    ) -> pb.ListSuppressionsResponse:
        domain = await self._domain(request, context)
        reason = check_reason(request.reason, allow_empty=True)
        page = wire.page(request.skip, request.take, default=LIST_PAGE, cap=MAX_PAGE)
        found, total = await suppressions.list_suppressions(
            self.db,
            domain,
            utc_now(),
            reason=reason,
            prefix=request.address_prefix.strip(),
            offset=page.offset,
            limit=page.limit,
        )
        return pb.ListSuppressionsResponse(
            suppressions=[wire.suppression_msg(s) for s in found], total=total
        )

    @rpc
    async def GetSuppression(
        self, request: pb.GetSuppressionRequest, context: CallContext
    ) -> pb.GetSuppressionResponse:
        domain = await self._domain(request, context)
        address = _lookup_address(request.address)
        found = await suppressions.get(self.db, domain, address, utc_now())
        return pb.GetSuppressionResponse(
            suppression=wire.suppression_msg(_found(found, domain, address))
        )

    @rpc
    async def AddSuppression(
        self, request: pb.AddSuppressionRequest, context: CallContext
    ) -> pb.AddSuppressionResponse:
        domain = await self._domain(request, context)
        now = utc_now()
        item = manual(
            domain,
            request.address,
            now,
            expires_at=wire.optional_datetime(request, "expires_at"),
            note=request.note,
        )
        added = await suppressions.add(self.db, item, now)
        return pb.AddSuppressionResponse(suppression=wire.suppression_msg(added))

    @rpc
    async def RemoveSuppression(
        self, request: pb.RemoveSuppressionRequest, context: CallContext
    ) -> pb.RemoveSuppressionResponse:
        domain = await self._domain(request, context)
        address = _lookup_address(request.address)
        removed = await suppressions.remove(self.db, domain, address)
        return pb.RemoveSuppressionResponse(
            suppression=wire.suppression_msg(_found(removed, domain, address))
        )

    @rpc
    async def ImportSuppressions(
        self, request: pb.ImportSuppressionsRequest, context: CallContext
    ) -> pb.ImportSuppressionsResponse:
        domain = await self._domain(request, context)
        count = len(request.addresses)
        if count > MAX_IMPORT:
            raise InvalidArgument(
                f"addresses: {count} in one call, the maximum is {MAX_IMPORT}; "
                "split them over several calls"
            )
        now = utc_now()
        expires_at = wire.optional_datetime(request, "expires_at")
        # Checked once for the call: only the addresses are refused one by one.
        check_expiry(expires_at, now)
        check_note(request.note)
        check = functools.partial(
            manual_imports,
            domain,
            list(request.addresses),
            now,
            expires_at=expires_at,
            note=request.note,
        )
        items, refused = await asyncio.to_thread(check) if count >= OFF_LOOP_IMPORT else check()
        counts = await suppressions.import_suppressions(self.db, domain, items)
        return pb.ImportSuppressionsResponse(
            added=counts.added,
            already_suppressed=counts.present,
            rejected=[pb.RejectedAddress(address=r.address, reason=r.reason) for r in refused],
        )
