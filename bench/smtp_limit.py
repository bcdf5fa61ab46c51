"""Loopback SMTP peers for the benchmark, and the loopback SMTP limit to compare Kannon with.

* :func:`start_sink` runs Postfix's ``smtp-sink`` (Debian package ``postfix``) on a loopback
  port, optionally dumping every message to its own file (``-d DIR/%H%M%S.``) so the benchmark
  can count arrivals, time the last 250 (the file's mtime) and check DKIM. Without Postfix it
  runs a minimal aiosmtpd sink in a child process that writes the same kind of files.
* :func:`measure_limit` times ``smtp-source -s 20 -m 20000`` into a count-only ``smtp-sink``:
  the messages/s this machine's loopback SMTP can carry, the ceiling for any sender here.

Every child runs with PR_SET_PDEATHSIG (via kannon.runtime.processes) and is stopped by its PID.

    .venv/bin/python -m bench.smtp_limit [--messages 20000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kannon.runtime.processes import (
    ChildProcess,
    child_argv,
    free_port,
    port_accepts,
    start_child,
    wait_until,
)

POSTFIX_DIRS = ("/usr/sbin", "/usr/lib/postfix", "/usr/libexec/postfix", "/usr/lib/postfix/sbin")
INSTALL_HINT = "install Postfix's test tools with `make bench-deps` (Debian package postfix)"
SOURCE_TIMEOUT = 120.0


def find_postfix_tool(name: str) -> str | None:
    """Path of ``smtp-sink`` / ``smtp-source``: PATH first, then where Debian puts them."""
    found = shutil.which(name)
    if found:
        return found
    for folder in POSTFIX_DIRS:
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


@dataclass
class Sink:
    """A running SMTP sink on 127.0.0.1:port; ``dump_dir`` holds one file per message."""

    kind: str
    """``smtp-sink`` (Postfix) or ``aiosmtpd`` (fallback)."""
    port: int
    dump_dir: Path | None
    process: ChildProcess

    @property
    def pid(self) -> int:
        return self.process.pid

    def message_files(self) -> list[Path]:
        if self.dump_dir is None:
            return []
        with os.scandir(self.dump_dir) as entries:
            return [Path(e.path) for e in entries if e.is_file()]

    def stop(self) -> None:
        self.process.stop(timeout=10)


def start_sink(
    log_dir: Path, dump_dir: Path | None = None, *, backlog: int = 256, aiosmtpd: bool = False
) -> Sink:
    """Start Postfix's smtp-sink (or, without Postfix or when asked, the aiosmtpd fallback) on a
    free loopback port."""
    binary = None if aiosmtpd else find_postfix_tool("smtp-sink")
    port = free_port()
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and binary is not None:
            # As root smtp-sink must drop to another user (-u), who then writes the dumps.
            uid, gid = _nobody()
            os.chown(dump_dir, uid, gid)
    if binary is not None:
        argv = [binary]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        if dump_dir is not None:
            argv += ["-d", f"{dump_dir}/%H%M%S."]
        argv += [f"127.0.0.1:{port}", str(backlog)]
        kind = "smtp-sink"
    else:
        argv = [sys.executable, "-m", "bench.smtp_limit", "--aiosmtpd-sink", str(port)]
        argv += [str(dump_dir)] if dump_dir is not None else []
        kind = "aiosmtpd"
    child = start_child(kind, argv, log_dir / f"{kind}-{port}.log")
    wait_until(child, lambda: port_accepts("127.0.0.1", port), 15.0, "listening")
    return Sink(kind, port, dump_dir, child)


@dataclass(frozen=True)
class Limit:
    messages: int
    sessions: int
    reuse: bool
    seconds: float
    command: str

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def measure_limit(
    log_dir: Path, *, messages: int = 20_000, sessions: int = 20, reuse: bool = False
) -> Limit | None:
    """Time ``smtp-source`` sending ``messages`` into a count-only smtp-sink; None without
    Postfix. ``reuse`` adds ``-d`` (keep the connection for the next message)."""
    source = find_postfix_tool("smtp-source")
    if source is None or find_postfix_tool("smtp-sink") is None:
        return None
    sink = start_sink(log_dir)
    try:
        argv = [source, *(["-d"] if reuse else []), "-s", str(sessions), "-m", str(messages)]
        argv += ["-f", "a@x.test", "-t", "b@y.test", f"127.0.0.1:{sink.port}"]
        started = time.perf_counter()
        result = subprocess.run(
            child_argv(argv),
            capture_output=True,
            text=True,
            timeout=SOURCE_TIMEOUT,
            check=False,
        )
        elapsed = time.perf_counter() - started
    finally:
        sink.stop()
    if result.returncode != 0:
        raise RuntimeError(f"smtp-source exited {result.returncode}: {result.stderr.strip()}")
    shown = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv))
    return Limit(messages, sessions, reuse, elapsed, shown)


# -- the aiosmtpd fallback sink (a child process) ------------------------------------------------


class _DumpHandler:
    """Writes each message to ``<dir>/<HHMMSS>.<random hex>`` like ``smtp-sink -d``."""

    def __init__(self, dump_dir: Path | None) -> None:
        self.dump_dir = dump_dir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.dump_dir is not None:
            name = time.strftime("%H%M%S.") + secrets.token_hex(4)
            content: bytes = envelope.original_content or b""
            # One small write per message: blocking the loop briefly beats a thread hop here.
            (self.dump_dir / name).write_bytes(content)
        return "250 2.0.0 Ok: queued"


async def _serve_aiosmtpd(port: int, dump_dir: Path | None) -> None:
    from aiosmtpd.smtp import SMTP

    handler = _DumpHandler(dump_dir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench-sink", enable_SMTPUTF8=True),
        "127.0.0.1",
        port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--aiosmtpd-sink", nargs="+", metavar=("PORT", "DIR"), help="internal")
    args = parser.parse_args(argv)
    if args.aiosmtpd_sink:
        port = int(args.aiosmtpd_sink[0])
        dump = Path(args.aiosmtpd_sink[1]) if len(args.aiosmtpd_sink) > 1 else None
        asyncio.run(_serve_aiosmtpd(port, dump))
        return 0
    root = Path(tempfile.mkdtemp(prefix="kannon-smtp-limit-", dir="/tmp"))
    try:
        for reuse in (False, True):
            limit = measure_limit(root, messages=args.messages, sessions=args.sessions, reuse=reuse)
            if limit is None:
                print(f"smtp-source/smtp-sink not found: {INSTALL_HINT}")
                return 1
            print(f"{limit.command}: {limit.rate:,.0f} msg/s ({limit.seconds:.2f} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
