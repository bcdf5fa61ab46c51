"""API intake benchmark: SendHTML with 10,000 and 100,000 recipients, wall time to response.

Starts its own PostgreSQL (embedded binaries, fast test settings) and migrates it, runs the API
Component on a free loopback port, creates a Domain and an API key through the Admin API, then
times SendHTML calls from a real gRPC client until the response arrives — request
serialisation, transfer, validation, the one-transaction COPY of every Delivery and the commit
included; building the request message is not. Each Delivery carries one personal field. After
each call it checks that every Delivery is in the Pool as `to_validate`.

Client and server share one process and event loop (as in a test), so the figures are a floor
for a deployment where they do not compete for the same core.

    .venv/bin/python bench/api_bench.py [--repeat 3]

Goal (issue 3): 10,000 recipients accepted in under 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from kannon.api.component import ApiComponent
from kannon.config import Settings
from kannon.db.embedded import start_postgres
from kannon.db.migrate import migrate
from kannon.db.pool import create_pool
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.admin.apiv1 import adminapiv1_pb2_grpc
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2_grpc
from kannon.pb.mailer.types import send_pb2
from kannon.runtime.component import Life

SIZES = (10_000, 100_000)
DOMAIN = "bench.example"
TOKEN = "bench-admin-token"
GOAL_10K_SECONDS = 0.5


def _request(size: int) -> Any:
    request = mailer_pb.SendHTMLReq(
        sender=send_pb2.Sender(email=f"news@{DOMAIN}", alias="Bench"),
        subject="Hello {{ name }}",
        html="<html><body><p>Hello {{ name }}, this is the benchmark.</p></body></html>",
    )
    for i in range(size):
        request.recipients.add(email=f"user{i}@recipients.example", fields={"name": f"User {i}"})
    return request


def _stub(cls: Any, channel: grpc.aio.Channel) -> Any:
    return cls(channel)  # generated stubs are untyped


async def _migrate_when_up(url: str) -> None:
    # The port accepts connections a moment before PostgreSQL finishes starting up.
    for _ in range(200):
        try:
            await migrate(url)
            return
        except asyncpg.CannotConnectNowError:
            await asyncio.sleep(0.05)
    await migrate(url)


async def _run(database_url: str, repeat: int) -> dict[str, Any]:
    await _migrate_when_up(database_url)
    pool = await create_pool(database_url, max_size=4)
    settings = Settings.model_validate(
        {"api": {"port": 0, "host": "127.0.0.1", "admin_token": TOKEN}}
    )
    component = ApiComponent(settings, pool)
    life = Life("api")
    server = asyncio.create_task(component.run(life))
    await life.wait_ready()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{component.port}",
        options=[("grpc.max_send_message_length", settings.api.max_message_size)],
    )
    results: dict[str, Any] = {}
    try:
        admin = _stub(adminapiv1_pb2_grpc.ApiStub, channel)
        admin_md = (("authorization", f"Bearer {TOKEN}"),)
        await admin.CreateDomain(admin_pb.CreateDomainRequest(domain=DOMAIN), metadata=admin_md)
        key = await admin.CreateAPIKey(
            admin_pb.CreateAPIKeyRequest(domain=DOMAIN, name="bench"), metadata=admin_md
        )
        auth = base64.b64encode(f"{DOMAIN}:{key.key}".encode()).decode()
        md = (("authorization", f"Basic {auth}"),)
        mailer = _stub(mailerapiv1_pb2_grpc.MailerStub, channel)
        await mailer.SendHTML(_request(10), metadata=md)  # warm up connections and caches

        for size in SIZES:
            request = _request(size)
            timings = []
            for _ in range(repeat):
                started = time.perf_counter()
                res = await mailer.SendHTML(request, metadata=md)
                elapsed = time.perf_counter() - started
                stored = await pool.fetchval(
                    "SELECT count(*) FROM sending_pool_emails "
                    "WHERE message_id = $1 AND status = 'to_validate'",
                    res.message_id,
                )
                if res.accepted_count != size or stored != size:
                    raise RuntimeError(f"{size}: accepted {res.accepted_count}, stored {stored}")
                timings.append(elapsed)
            best, median = min(timings), statistics.median(timings)
            results[str(size)] = {
                "recipients": size,
                "runs": len(timings),
                "best_s": round(best, 4),
                "median_s": round(median, 4),
                "deliveries_per_s_best": round(size / best),
                "deliveries_per_s_median": round(size / median),
            }
            print(
                f"SendHTML {size:>7,} recipients: best {best:.3f} s, median {median:.3f} s "
                f"over {len(timings)} runs -> {size / median:,.0f} Deliveries/s written (median)"
            )
        ten_k = results[str(SIZES[0])]["median_s"]
        verdict = "met" if ten_k < GOAL_10K_SECONDS else "MISSED"
        print(f"goal: 10,000 recipients in < {GOAL_10K_SECONDS} s -> {verdict} ({ten_k:.3f} s)")
        results["goal_met"] = ten_k < GOAL_10K_SECONDS
    finally:
        await channel.close()
        life.stopping.set()
        await server
        await pool.close()
    return results


async def main(repeat: int = 3) -> dict[str, Any]:
    """Run the benchmark on a throw-away PostgreSQL; return the figures (also printed)."""
    root = Path(tempfile.mkdtemp(prefix="kannon-api-bench-", dir="/tmp"))
    os.chmod(root, 0o755)  # the embedded server may run as another user and must enter it
    pg = await asyncio.to_thread(start_postgres, root / "pg", fast=True)
    try:
        return await _run(pg.url(), repeat)
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per size")
    asyncio.run(main(parser.parse_args().repeat))
