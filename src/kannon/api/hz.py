"""HZService.HZ: the original's health RPC. It lists only FAILING checks (name -> error text),
so a healthy API answers an empty map. The API process only depends on PostgreSQL."""

from __future__ import annotations

import asyncio

from kannon.api.errors import CallContext, rpc
from kannon.db.database import Database, check_database
from kannon.pb.admin.apiv1 import hz_pb2 as pb

CHECK_TIMEOUT = 5.0


class HZService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def failing_checks(self) -> dict[str, str]:
        try:
            await asyncio.wait_for(check_database(self.db), CHECK_TIMEOUT)
        except Exception as exc:
            return {"db": str(exc) or type(exc).__name__}
        return {}

    @rpc
    async def HZ(self, request: pb.HZRequest, context: CallContext) -> pb.HZResponse:
        return pb.HZResponse(result=await self.failing_checks())
