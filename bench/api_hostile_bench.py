"""What unauthenticated 60 MB calls cost the API: peak memory of the API process and time to the
refusal, for N such calls at once.

Starts its own PostgreSQL (embedded binaries), migrates it, and runs `kannon --run-api` as a child
process (so its memory is its own), then sends N concurrent SendHTML calls whose HTML is
`--mb` MB and whose API key is wrong. Reports the API process's peak RSS (VmHWM) before and
after, and each call's time to its status. Everything listens on 127.0.0.1 and is stopped by PID.

    .venv/bin/python -m bench.api_hostile_bench [--calls 8] [--mb 60]

Measures whichever code `kannon` imports: run it with PYTHONPATH pointing at another checkout's
src/ to compare versions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from kannon.db.embedded import start_postgres
from kannon.db.migrate import migrate
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2_grpc
from kannon.pb.mailer.types import send_pb2
from kannon.runtime.processes import free_port

KANNON = str(Path(sys.executable).parent / "kannon")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kannon --run-api exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the API did not become healthy")


async def _hostile_calls(port: int, calls: int, mb: int) -> list[tuple[str, float]]:
    size = mb * 1024 * 1024
    request = mailer_pb.SendHTMLReq(
        sender=send_pb2.Sender(email="news@victim.example"),
        subject="x",
        html="x" * size,
        recipients=[send_pb2.Recipient(email="a@b.example")],
    )
    wrong = base64.b64encode(b"victim.example:k_" + b"0" * 64).decode()
    options = [("grpc.max_send_message_length", size + 1024 * 1024)]
    results: list[tuple[str, float]] = []

    async def one() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub: Any = mailerapiv1_pb2_grpc.MailerStub(channel)  # type: ignore[no-untyped-call]  # generated
            start = time.monotonic()
            try:
                await stub.SendHTML(
                    request, metadata=(("authorization", f"Basic {wrong}"),), timeout=120
                )
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            results.append((code, time.monotonic() - start))

    await asyncio.gather(*(one() for _ in range(calls)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--mb", type=int, default=60)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kannon-bench-hostile-", dir="/tmp"))
    root.chmod(0o755)
    pg = start_postgres(root / "pg", fast=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(migrate(pg.url()))
        api_port, health_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("K_")}
        env.update(
            {
                "HOME": str(root),
                "K_DATABASE_URL": pg.url(),
                "K_API_HOST": "127.0.0.1",
                "K_API_PORT": str(api_port),
                "K_API_HTTP_PORT": str(free_port()),
                "K_HEALTH_HOST": "127.0.0.1",
                "K_HEALTH_PORT": str(health_port),
                "K_API_ADMIN_TOKEN": "bench-token",
            }
        )
        proc = subprocess.Popen(
            [KANNON, "--run-api"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_healthy(health_port, proc)
        before = _peak_rss_mb(proc.pid)
        start = time.monotonic()
        results = asyncio.run(_hostile_calls(api_port, args.calls, args.mb))
        wall = time.monotonic() - start
        after = _peak_rss_mb(proc.pid)
        codes = sorted({code for code, _ in results})
        slowest = max(seconds for _, seconds in results)
        print(
            f"{args.calls} unauthenticated SendHTML calls of {args.mb} MB: status {codes}, "
            f"slowest {slowest:.2f} s, all done in {wall:.2f} s; API peak RSS "
            f"{before:.0f} MB before, {after:.0f} MB after (+{after - before:.0f} MB)"
        )
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
