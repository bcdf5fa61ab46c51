"""Webhooks throughput: outcome events per second POSTed, signed, to a fast local receiver by one
webhooks worker on one core.

Starts its own PostgreSQL (embedded binaries) and nats-server, a receiver process (aiohttp,
answering 204, pinned to the other core), one Domain with one endpoint; publishes N Delivered
events on `kannon.stats.delivered` first, then runs the WebhooksWorker in this process pinned to
core 0 and times how long until every delivery row is `delivered` (consume, INSERT, claim, sign,
POST, record). Everything listens on 127.0.0.1 and is stopped by PID.

    .venv/bin/python -m bench.webhooks_bench [--events 10000] [--runs 2] [--profile FILE]

`--runs N` repeats the whole measurement N times (fresh servers each) and reports the lowest
rate; `--profile FILE` writes a cProfile of the worker's event loop (the timed part only) of the
last run, for `python -m pstats FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from kannon.bus.client import Bus
from kannon.bus.embedded import start_nats
from kannon.config import Settings
from kannon.db import webhooks as store
from kannon.db.database import open_database
from kannon.db.embedded import start_postgres
from kannon.db.migrate import migrate
from kannon.ids import new_webhook_secret
from kannon.model.outcome import Delivered, Outcome
from kannon.model.webhooks import Endpoint
from kannon.runtime.component import Life
from kannon.runtime.processes import free_port
from kannon.webhooks.component import WebhooksWorker
from kannon.wire.stats import publish_outcome

GOAL = 1000.0
# POSTs in flight to the one endpoint (webhooks.endpoint_concurrency; the default is 8).
CONCURRENCY = 64
DOMAIN = "bench.example"

RECEIVER = """
import sys
from aiohttp import web
async def hook(request):
    await request.read()
    return web.Response(status=204)
app = web.Application()
app.router.add_post("/hook", hook)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core})


async def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def run(
    database_url: str,
    nats_url: str,
    receiver_port: int,
    events: int,
    *,
    profile: cProfile.Profile | None = None,
    others: Sequence[Callable[[], float]] = (),
) -> tuple[float, float, float, list[float]]:
    """Events/s, the worker process's CPU seconds per event (independent of what else the
    machine runs: the ceiling of one core is its inverse), the kernel's share of them, and the
    CPU seconds per event of each of `others` (readers of other processes' CPU time)."""
    pool = await open_database(database_url, max_size=8)
    bus = await Bus.connect(nats_url, name="kannon-bench")
    try:
        await bus.ensure_streams()
        await pool.execute(
            "INSERT INTO domains (domain, dkim_private_key, dkim_public_key) VALUES ($1, 'k', 'k')",
            DOMAIN,
        )
        now = datetime.now(UTC)
        endpoint = Endpoint(
            "whe_bench", DOMAIN, f"http://127.0.0.1:{receiver_port}/hook", (), True, "", now, now
        )
        await store.insert_endpoint(pool, endpoint, new_webhook_secret())
        await _wait_port(receiver_port)
        publishes = [
            publish_outcome(
                bus,
                Outcome(
                    batch_id=f"msg_bench@{DOMAIN}",
                    domain=DOMAIN,
                    recipient=f"r{i}@example.org",
                    timestamp=now,
                    detail=Delivered(),
                    event_id=f"delivered.bench.{i}",
                ),
            )
            for i in range(events)
        ]
        for start in range(0, events, 500):
            await asyncio.gather(*publishes[start : start + 500])
        settings = Settings.model_validate(
            {
                "webhooks": {
                    "allow_http": True,
                    "allow_private": True,
                    "idle_interval": "20ms",
                    "endpoint_concurrency": CONCURRENCY,
                }
            }
        )
        worker = WebhooksWorker(settings, pool, bus)
        life = Life("webhooks")
        if profile is not None:
            profile.enable()
        others_began = [read() for read in others]
        began = time.perf_counter()
        cpu_began = time.process_time()
        sys_began = os.times().system
        task = asyncio.create_task(worker.run(life))
        while True:
            done = await pool.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'"
            )
            if done >= events:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        took = time.perf_counter() - began
        others_cpu = [(read() - b) / events for read, b in zip(others, others_began, strict=True)]
        cpu = time.process_time() - cpu_began
        system = os.times().system - sys_began
        if profile is not None:
            profile.disable()
        life.stopping.set()
        await task
        return events / took, cpu / events, system / max(cpu, 1e-9), others_cpu
    finally:
        await bus.close()
        await pool.close()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(root: int) -> float:
    """CPU time so far of process `root` and of its live descendants (PostgreSQL's postmaster
    and backends)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += _cpu_seconds(pid)
        todo.extend(children.get(pid, ()))
    return total


def measure(
    events: int, profile: cProfile.Profile | None
) -> tuple[float, float, float, tuple[float, float, float], float, float]:
    """One run on fresh servers: events/s, worker CPU s/event and its kernel share, the CPU
    s/event of the receiver, PostgreSQL and NATS, load average at the start and at the end."""
    root = Path(tempfile.mkdtemp(prefix="kannon-bench-webhooks-", dir="/tmp"))
    root.chmod(0o755)
    pg = start_postgres(root / "pg", fast=True)
    nats = start_nats(root / "nats")
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(port)],
        preexec_fn=(lambda: _pin(1)) if hasattr(os, "sched_setaffinity") else None,  # noqa: PLW1509 - no thread runs yet
    )
    try:
        asyncio.run(migrate(pg.url()))
        _pin(0)
        load = os.getloadavg()[0]
        rate, cpu, system, (receiver_cpu, pg_cpu, nats_cpu) = asyncio.run(
            run(
                pg.url(),
                nats.url,
                port,
                events,
                profile=profile,
                others=[
                    lambda: _cpu_seconds(receiver.pid),
                    lambda: _tree_cpu_seconds(pg.process.pid),
                    lambda: _cpu_seconds(nats.process.pid),
                ],
            )
        )
        return rate, cpu, system, (receiver_cpu, pg_cpu, nats_cpu), load, os.getloadavg()[0]
    finally:
        receiver.terminate()
        receiver.wait(10)
        nats.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # `make bench` calls main([]): two runs of 10,000, the lower counting (ADR 0052).
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=2, help="repeat; the lowest rate counts")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the last run here")
    args = parser.parse_args(argv)
    rates: list[float] = []
    profile: cProfile.Profile | None = None
    for n in range(1, args.runs + 1):
        if args.profile is not None and n == args.runs:
            profile = cProfile.Profile()
        rate, cpu, system, (receiver_cpu, pg_cpu, nats_cpu), load, load_end = measure(
            args.events, profile
        )
        rates.append(rate)
        line = (
            f"{rate:,.0f} events/s ({args.events} events, goal {GOAL:,.0f}); "
            f"worker CPU {cpu * 1000:.2f} ms/event ({system:.0%} in the kernel) = "
            f"{1 / cpu:,.0f} events per CPU-second; "
            f"receiver CPU {receiver_cpu * 1000:.2f}, PostgreSQL {pg_cpu * 1000:.2f}, "
            f"NATS {nats_cpu * 1000:.2f} ms/event; "
            f"load average {load:.1f} at the start, {load_end:.1f} at the end"
        )
        print(f"run {n}: {line}" if args.runs > 1 else f"webhooks one core: {line}")
    if args.runs > 1:
        print(
            f"webhooks one core: {min(rates):,.0f} events/s (lowest of {args.runs} runs: "
            f"{', '.join(f'{r:,.0f}' for r in rates)}; goal {GOAL:,.0f})"
        )
    if profile is not None:
        profile.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
