"""Stats API v1 (`kannon.StatsApiV1` / `kannon.stats.apiv1.StatsApiV1Service`) and v2
(`kannon.stats.apiv2.StatsApiV2`): a Domain's outcome events and hourly aggregates.

Callers authenticate with their Domain's API key and read only that Domain (the original took
the domain from the request and checked nothing). An empty `domain` means the key's own.
"""

from __future__ import annotations

from kannon.api.auth import ApiKeyAuth
from kannon.api.errors import CallContext, rpc
from kannon.db import stats_queries
from kannon.db.database import Database
from kannon.model.domain import canonical_domain_name
from kannon.model.errors import PermissionDenied
from kannon.pb.stats.apiv1 import statsapiv1_pb2 as v1
from kannon.pb.stats.apiv2 import statsapiv2_pb2 as v2
from kannon.pb.stats.types.stats_pb2 import StatsAggregated
from kannon.wire import api as wire

STATS_PAGE = 100
MAX_PAGE = 1000


# The v1 and v2 requests share `domain`, `from_date` and `to_date`.
AggregatedRequest = v1.GetStatsAggregatedReq | v2.GetAggregatedStatsReq
StatsRequest = v1.GetStatsReq | AggregatedRequest


class StatsService:
    def __init__(self, db: Database, auth: ApiKeyAuth) -> None:
        self.db = db
        self.auth = auth

    async def _domain(self, request: StatsRequest, context: CallContext) -> str:
        tenant = await self.auth.tenant(context)
        if not request.domain.strip():
            return tenant
        asked = canonical_domain_name(request.domain)
        if asked != tenant:
            raise PermissionDenied(
                f"domain: the API key of {tenant!r} cannot read the stats of {asked!r}"
            )
        return tenant

    async def _buckets(
        self, request: AggregatedRequest, context: CallContext
    ) -> list[StatsAggregated]:
        domain = await self._domain(request, context)
        start, end = wire.time_range(request)
        buckets = await stats_queries.aggregated_stats(self.db, domain, start, end)
        return [wire.bucket_pb(b) for b in buckets]

    @rpc
    async def GetStats(self, request: v1.GetStatsReq, context: CallContext) -> v1.GetStatsRes:
        domain = await self._domain(request, context)
        start, end = wire.time_range(request)
        page = wire.page(request.skip, request.take, default=STATS_PAGE, cap=MAX_PAGE)
        rows, total = await stats_queries.list_stats(
            self.db, domain, start, end, offset=page.offset, limit=page.limit
        )
        return v1.GetStatsRes(total=total, stats=[wire.stats_pb(row) for row in rows])

    @rpc
    async def GetStatsAggregated(
        self, request: v1.GetStatsAggregatedReq, context: CallContext
    ) -> v1.GetStatsAggregatedRes:
        return v1.GetStatsAggregatedRes(stats=await self._buckets(request, context))

    @rpc
    async def GetAggregatedStats(
        self, request: v2.GetAggregatedStatsReq, context: CallContext
    ) -> v2.GetAggregatedStatsRes:
        return v2.GetAggregatedStatsRes(stats=await self._buckets(request, context))
