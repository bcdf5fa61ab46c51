"""API intake benchmark: SendHTML with 10,000 and 100,000 recipients, wall time to response;
then 10,000 recipients of which 1,000 are on the Domain's suppression list.

Starts its own PostgreSQL (embedded binaries, fast test settings) and migrates it, runs the API
Component on a free loopback port, creates a Domain and an API key through the Admin API, then
times SendHTML calls from a real gRPC client until the response arrives — request
serialisation, transfer, validation, the one-transaction COPY of every Delivery and the commit
included; building the request message is not. Each Delivery carries one personal field. After
each call it checks that every Delivery is in the Pool as `to_validate`. The suppressed run
(ADR 0027) puts every tenth recipient on the suppression list first, and checks that exactly
those 1,000 come back rejected with "suppressed" and sit in the Pool with that reject reason.

Client and server share one process and event loop (as in a test), so the figures are a floor
for a deployment where they do not compete for the same core. Memory: for each call, how far
the process's peak RSS (VmHWM, reset before the call through /proc/self/clear_refs) rose above
its RSS at the start of the call; the client's request message exists before, its serialized
bytes (the request's size) during the call are counted (issue 12, ADR 0059). CPU: the
process's CPU time (client and API, all threads; not PostgreSQL) during the call, which
depends less on the machine's other load than the wall-clock time.

    .venv/bin/python bench/api_bench.py [--repeat 3]

Goals: 10,000 recipients accepted in under 0.5 s, also with 1,000 of them suppressed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from kannon.api.component import ApiComponent
from kannon.config import Settings
from kannon.db.database import open_database
from kannon.db.embedded import start_postgres
from kannon.db.migrate import migrate
from kannon.db.suppressions import import_suppressions
from kannon.model.suppression import manual
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.admin.apiv1 import adminapiv1_pb2_grpc
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2_grpc
from kannon.pb.mailer.types import send_pb2
from kannon.runtime.component import Life

SIZES = (10_000, 100_000)
SUPPRESSED_SIZE = 10_000
SUPPRESSED_EVERY = 10  # 1,000 of 10,000
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


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _timed(
    mailer: Any, md: Any, pool: asyncpg.Pool, size: int, repeat: int, *, suppressed: int
) -> dict[str, Any]:
    """`repeat` timed SendHTML calls of `size` recipients, `suppressed` of them on the list."""
    request = _request(size)
    timings = []
    peaks = []
    cpu = []
    for _ in range(repeat):
        gc.collect()
        start_rss = _rss_kib("VmRSS")
        measured = _reset_peak()
        started, cpu_started = time.perf_counter(), time.process_time()
        res = await mailer.SendHTML(request, metadata=md)
        elapsed = time.perf_counter() - started
        cpu.append(time.process_time() - cpu_started)
        if measured:
            peaks.append((_rss_kib("VmHWM") - start_rss) / 1024)
        rows = await pool.fetch(
            "SELECT reject_reason, count(*) FROM sending_pool_emails "
            "WHERE message_id = $1 AND status = 'to_validate' GROUP BY 1",
            res.message_id,
        )
        stored = {row[0]: row[1] for row in rows}
        refused = [r for r in res.rejected_recipients if r.reason == "suppressed"]
        expected = {"": size - suppressed, **({"suppressed": suppressed} if suppressed else {})}
        if (
            res.accepted_count != size - suppressed
            or len(refused) != suppressed
            or stored != expected
        ):
            raise RuntimeError(
                f"{size} ({suppressed} suppressed): accepted {res.accepted_count}, "
                f"refused {len(refused)}, stored {stored}"
            )
        timings.append(elapsed)
    best, median = min(timings), statistics.median(timings)
    label = f" ({suppressed:,} suppressed)" if suppressed else ""
    peak = f", peak RSS +{max(peaks):.0f} MiB (max)" if peaks else ""
    print(
        f"SendHTML {size:>7,} recipients{label}: best {best:.3f} s, median {median:.3f} s "
        f"over {len(timings)} runs -> {size / median:,.0f} Deliveries/s written (median)"
        f"{peak}, CPU of this process {statistics.median(cpu):.3f} s (median)"
    )
    return {
        "peak_rss_growth_mib": round(max(peaks), 1) if peaks else None,
        "cpu_s_median": round(statistics.median(cpu), 4),
        "recipients": size,
        "suppressed": suppressed,
        "runs": len(timings),
        "best_s": round(best, 4),
        "median_s": round(median, 4),
        "deliveries_per_s_best": round(size / best),
        "deliveries_per_s_median": round(size / median),
    }


async def _run(database_url: str, repeat: int) -> dict[str, Any]:
    await _migrate_when_up(database_url)
    pool = await open_database(database_url, max_size=4)
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

        results[str(SIZES[0])] = await _timed(mailer, md, pool, SIZES[0], repeat, suppressed=0)

        # The same 10,000 with every tenth on the suppression list, measured next to the plain
        # run (before the 100,000 ones load the database); the list is emptied afterwards.
        now = datetime.now(UTC)
        listed = [
            manual(DOMAIN, f"user{i}@recipients.example", now)
            for i in range(0, SUPPRESSED_SIZE, SUPPRESSED_EVERY)
        ]
        await import_suppressions(pool, DOMAIN, listed)
        results["10000_suppressed"] = await _timed(
            mailer, md, pool, SUPPRESSED_SIZE, repeat, suppressed=len(listed)
        )
        await pool.execute("DELETE FROM suppressions WHERE domain = $1", DOMAIN)

        for size in SIZES[1:]:
            results[str(size)] = await _timed(mailer, md, pool, size, repeat, suppressed=0)
        met = True
        for name, label in (("10000", ""), ("10000_suppressed", ", 1,000 suppressed")):
            seconds = results[name]["median_s"]
            verdict = "met" if seconds < GOAL_10K_SECONDS else "MISSED"
            met = met and seconds < GOAL_10K_SECONDS
            print(
                f"goal: 10,000 recipients{label} in < {GOAL_10K_SECONDS} s -> {verdict} "
                f"({seconds:.3f} s)"
            )
        results["goal_met"] = met
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
