"""Every deployment's NATS carries exactly the message size its Kannon configuration promises
(`nats.max_payload`, ADR 0021), checked by starting the real nats-server with each shipped NATS
configuration and reading the max_payload it announces to clients."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import yaml

from kannon.bus.embedded import find_binary
from kannon.config import load_settings
from kannon.runtime.processes import free_port, port_accepts, start_child, wait_until
from tests.support import scratch_dir

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "examples" / "docker-compose"
K8S = ROOT / "k8s"


@pytest.fixture
def workdir() -> Iterator[Path]:
    with scratch_dir("kannon-test-buslimits-") as path:
        yield path


def announced_max_payload(conf: Path, workdir: Path) -> int:
    """Start nats-server with `conf` (on a free loopback port) and return its INFO max_payload."""
    port = free_port()
    argv = [str(find_binary()), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)]
    child = start_child("nats-server", argv, workdir / f"{conf.stem}.log")
    try:
        wait_until(child, lambda: port_accepts("127.0.0.1", port), 30, "accepting clients")

        async def read() -> int:
            nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
            try:
                return int(nc.max_payload)
            finally:
                await nc.close()

        return asyncio.run(read())
    finally:
        child.stop()


def _kannon(path: Path) -> tuple[int, int]:
    settings = load_settings({}, {}, config_path=str(path))
    return settings.nats.max_payload, settings.api.max_message_size


def test_compose_nats_carries_what_kannon_yaml_promises(workdir: Path) -> None:
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yaml").read_text(encoding="utf-8"))
    nats_service = compose["services"]["nats"]
    command = nats_service["command"]
    mount = f"./nats.conf:{command[command.index('--config') + 1]}:ro"
    assert mount in nats_service["volumes"], "the compose NATS must run with nats.conf"
    promised, request_limit = _kannon(COMPOSE_DIR / "kannon.yaml")
    assert announced_max_payload(COMPOSE_DIR / "nats.conf", workdir) == promised
    assert request_limit >= promised


def test_the_kubernetes_nats_chart_carries_what_the_configmap_promises(workdir: Path) -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text(encoding="utf-8"))
    assert values["config"]["jetstream"]["enabled"] is True
    # The chart writes `<< value >>` into nats.conf unquoted; do the same and ask the server.
    raw = values["config"]["merge"]["max_payload"]
    match = re.fullmatch(r"<<\s*(\S+)\s*>>", raw)
    assert match, raw
    conf = workdir / "chart.conf"
    conf.write_text(f"max_payload: {match.group(1)}\n")
    announced = announced_max_payload(conf, workdir)

    configmap = yaml.safe_load((K8S / "configmap.yaml").read_text(encoding="utf-8"))
    fleet = workdir / "fleet.yaml"
    fleet.write_text(configmap["data"]["kannon.yaml"])
    promised, request_limit = _kannon(fleet)
    assert announced == promised
    assert request_limit >= promised
    # The standalone pod embeds its own nats-server, started with its nats.max_payload: same
    # value as the fleet, so moving between the two changes nothing for callers.
    assert _kannon(K8S / "overlays" / "standalone" / "kannon.yaml")[0] == promised


def test_the_standalone_example_agrees_with_itself() -> None:
    promised, request_limit = _kannon(ROOT / "examples" / "standalone" / "kannon.yaml")
    assert request_limit >= promised


def test_a_mismatch_would_be_seen(workdir: Path) -> None:
    """Negative control: a server left at its default announces 1 MiB, not the 8 MB promised."""
    conf = workdir / "default.conf"
    conf.write_text("# nothing set\n")
    assert announced_max_payload(conf, workdir) == 1024 * 1024
    assert _kannon(COMPOSE_DIR / "kannon.yaml")[0] != 1024 * 1024
