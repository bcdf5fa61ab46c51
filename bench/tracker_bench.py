"""Tracker benchmark: open-pixel and click-redirect hits per second on one core, and p99 latency.

Starts its own nats-server and PostgreSQL (migrated) on loopback, mints a tracking key and
tokens as the Dispatcher would, and runs the Tracker in a child process pinned to one CPU core
with every hit publishing its event through JetStream as in production. Load comes from ``wrk``
(Debian package ``wrk``) on the other cores, or, without wrk, from an httpx/asyncio loop;
either way bounded in time (``--seconds``) and, for the fallback, in count (``--max-requests``).
After the load it checks that every answered hit reached the stats stream.

    .venv/bin/python bench/tracker_bench.py [--seconds 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kannon.bus.client import Bus
from kannon.bus.embedded import start_nats
from kannon.bus.subjects import STATS_STREAM
from kannon.db.database import open_database
from kannon.db.embedded import start_postgres
from kannon.db.migrate import migrate
from kannon.db.tracking_keys import signing_key
from kannon.envelope import make_batch_id, sign_click, sign_open
from kannon.ids import new_token
from kannon.runtime.processes import free_port

TOKEN_TTL = timedelta(days=90)
TRACKER_CORE = 0


@dataclass(frozen=True)
class Result:
    route: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), None where /proc is unavailable.

    Hits per CPU-second is the Tracker's capacity on a core of its own, whatever else the machine
    is doing; requests per wall-clock second also measures the neighbours.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the Tracker process ----------------------------------------------------------------------


async def _serve(port: int, database_url: str, nats_url: str) -> int:
    from kannon.config import Settings, TrackerSettings
    from kannon.runtime.supervisor import supervise
    from kannon.tracker.component import Tracker

    settings = Settings(tracker=TrackerSettings(host="127.0.0.1", port=port))
    pool = await open_database(database_url, max_size=2)
    bus = await Bus.connect(nats_url, name="tracker-bench")
    try:
        outcome = await supervise([Tracker(settings, pool, bus)], grace=30)
    finally:
        await bus.close()
        await pool.close()
    return outcome.exit_code


def serve_main(args: argparse.Namespace) -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {TRACKER_CORE})
    return asyncio.run(_serve(args.port, args.database_url, args.nats_url))


# -- load generators ---------------------------------------------------------------------------

_WRK_SCRIPT = """
paths = {%s}
i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1], {["User-Agent"] = "wrk-bench"})
end
"""


def _ms(text: str) -> float:
    """wrk's latency figures ("812.00us", "1.25ms", "2.01s") in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def run_wrk(
    wrk: str,
    *,
    base: str,
    route: str,
    paths: list[str],
    seconds: int,
    connections: int,
    cores: set[int],
) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths))
    threads = max(1, min(len(cores), 2))
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    argv += ["-s", script.name, base]
    preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    out = subprocess.run(argv, capture_output=True, text=True, check=True, preexec_fn=preexec)
    os.unlink(script.name)
    text = out.stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    assert total is not None, text
    secs = float(total.group(2)) * {"s": 1.0, "ms": 0.001, "m": 60.0}[total.group(3)]
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(g) for g in socket_errors.groups())
    assert p50 is not None and p99 is not None, text
    return Result(route, int(total.group(1)), secs, _ms(p50.group(1)), _ms(p99.group(1)), failed)


async def run_httpx(
    *, base: str, route: str, paths: list[str], seconds: int, connections: int, max_requests: int
) -> Result:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, follow_redirects=False) as client:

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.monotonic() < deadline and len(latencies) < max_requests:
                start = time.perf_counter()
                response = await client.get(paths[i % len(paths)])
                latencies.append(time.perf_counter() - start)
                errors += response.status_code not in (200, 307)
                i += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(connections)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return Result(
        route,
        len(latencies),
        elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        errors,
    )


# -- orchestration -----------------------------------------------------------------------------


async def _tokens(database_url: str, count: int) -> tuple[list[str], list[str]]:
    pool = await open_database(database_url, max_size=1)
    try:
        now = datetime.now(UTC)
        key = await signing_key(pool, now, TOKEN_TTL)
    finally:
        await pool.close()
    batch_id = make_batch_id(new_token(), "bench.example.com")
    opens, clicks = [], []
    for i in range(count):
        rcpt = f"reader{i}@example.org"
        opens.append("/o/" + sign_open(key, batch_id, rcpt, now + TOKEN_TTL))
        url = f"https://shop.example.com/product/{i}?utm_source=mail&utm_campaign=bench"
        clicks.append("/c/" + sign_click(key, batch_id, rcpt, url, now + TOKEN_TTL))
    return opens, clicks


async def _stored_events(nats_url: str, expected: int, timeout: float = 30.0) -> int:
    """Events in the stats stream once it reaches ``expected`` (or the timeout passes)."""
    bus = await Bus.connect(nats_url, name="tracker-bench-check")
    try:
        deadline = time.monotonic() + timeout
        while True:
            stored = int((await bus.js.stream_info(STATS_STREAM)).state.messages)
            if stored >= expected or time.monotonic() > deadline:
                return stored
            await asyncio.sleep(0.2)
    finally:
        await bus.close()


async def _streams(nats_url: str) -> None:
    bus = await Bus.connect(nats_url, name="tracker-bench-setup")
    try:
        await bus.ensure_streams()
    finally:
        await bus.close()


def _wait_healthy(port: int, child: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"tracker exited with code {child.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("tracker did not become healthy")


def bench_main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="kannon-tracker-bench-", dir="/tmp"))
    os.chmod(root, 0o755)
    nats = start_nats(root / "nats")
    pg = start_postgres(root / "pg", fast=True)
    tracker: subprocess.Popen[bytes] | None = None
    try:
        database_url = pg.url()
        asyncio.run(migrate(database_url))
        asyncio.run(_streams(nats.url))
        opens, clicks = asyncio.run(_tokens(database_url, args.tokens))
        port = free_port()
        log = open(root / "tracker.log", "wb")  # noqa: SIM115 - closed with the child
        tracker = subprocess.Popen(
            [
                *(sys.executable, __file__, "--serve", "--port", str(port)),
                *("--database-url", database_url, "--nats-url", nats.url),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _wait_healthy(port, tracker)
        base = f"http://127.0.0.1:{port}"
        all_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        load_cores = (all_cores - {TRACKER_CORE}) or all_cores
        if load_cores:
            # Keep the Tracker's core to itself: nats-server works hard too (a PubAck per hit).
            # PostgreSQL's backends are forked later, so they inherit the postmaster's mask.
            for pid in (nats.process.pid, pg.process.pid):
                os.sched_setaffinity(pid, load_cores)
        wrk = None if args.no_wrk else shutil.which("wrk")
        print(
            f"tracker pinned to core {TRACKER_CORE}; load from "
            f"{'wrk' if wrk else 'httpx'} on cores {sorted(load_cores)}, "
            f"{args.connections} connections, {args.seconds}s per route"
        )
        results = []
        runs = [("warm-up", opens + clicks, max(1, args.seconds // 5))]
        runs += [
            ("/o/ (open pixel)", opens, args.seconds),
            ("/c/ (click redirect)", clicks, args.seconds),
        ]
        for route, paths, seconds in runs:
            cpu_before = cpu_seconds(tracker.pid)
            if wrk:
                result = run_wrk(
                    wrk,
                    base=base,
                    route=route,
                    paths=paths,
                    seconds=seconds,
                    connections=args.connections,
                    cores=load_cores,
                )
            else:
                result = asyncio.run(
                    run_httpx(
                        base=base,
                        route=route,
                        paths=paths,
                        seconds=seconds,
                        connections=args.connections,
                        max_requests=args.max_requests,
                    )
                )
            cpu_after = cpu_seconds(tracker.pid)
            results.append(result)
            if route == "warm-up":
                continue  # the first seconds pay for imports, caches and stream files
            per_cpu = ""
            if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
                per_cpu = f"  {result.requests / (cpu_after - cpu_before):6.0f} hits/CPU-s"
            print(
                f"{route:22} {result.rate:6.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                f"p99 {result.p99_ms:6.2f} ms{per_cpu}  ({result.requests} requests, "
                f"{result.errors} errors)"
            )
        answered = sum(r.requests - r.errors for r in results)
        stored = asyncio.run(_stored_events(nats.url, answered))
        # wrk counts only completed responses; a request cut at the deadline may still publish.
        print(f"events stored in {STATS_STREAM}: {stored} for {answered} answered hits")
        tracker.send_signal(signal.SIGTERM)
        code = tracker.wait(timeout=60)
        log.close()
        tracker = None
        ok = stored >= answered and code == 0 and all(r.errors == 0 for r in results)
        if not ok:
            print(f"FAILED (tracker exit code {code}); log: {root / 'tracker.log'}")
            return 1
        return 0
    finally:
        if tracker is not None:
            tracker.kill()
            tracker.wait()
        nats.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="load duration per route")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=1000, help="distinct tokens per route")
    parser.add_argument("--max-requests", type=int, default=200_000, help="httpx fallback cap")
    parser.add_argument("--no-wrk", action="store_true", help="use the httpx load loop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--nats-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return serve_main(args) if args.serve else bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
