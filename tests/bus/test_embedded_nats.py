"""The embedded nats-server refuses connections without its token, which is generated per start
and written only to a 0600 configuration file (never onto the command line); it carries messages
up to the max_payload it was started with."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from kannon.bus.embedded import EmbeddedNats, config_file, start_nats
from tests.support import nats_refusal, scratch_dir


@pytest.fixture
def server() -> Iterator[EmbeddedNats]:
    with scratch_dir("kannon-test-natsauth-") as root:
        started = start_nats(root / "store", max_payload=256 * 1024)
        try:
            yield started
        finally:
            started.stop()


async def test_connections_need_the_token(server: EmbeddedNats) -> None:
    assert "Authorization Violation" in await nats_refusal(f"nats://127.0.0.1:{server.port}")
    assert "Authorization Violation" in await nats_refusal(f"nats://wrong@127.0.0.1:{server.port}")
    nc = await nats.connect(server.url, allow_reconnect=False, connect_timeout=5)
    try:
        assert nc.max_payload == 256 * 1024  # what the server announces in INFO
    finally:
        await nc.close()


def test_the_token_lives_in_a_private_config_file_only(server: EmbeddedNats) -> None:
    conf = config_file(server.store_dir)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert server.token in conf.read_text()
    assert stat.S_IMODE(server.store_dir.stat().st_mode) == 0o700
    log = server.store_dir.parent / f"{server.store_dir.name}.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    assert server.token.encode() not in cmdline
    assert server.token not in repr(server)


async def test_a_process_refuses_a_bus_smaller_than_nats_max_payload(server: EmbeddedNats) -> None:
    from kannon.resources import Resources
    from kannon.runtime.health import HealthRegistry

    too_big = Resources(
        HealthRegistry(), database_url=None, nats_url=server.url, max_payload=1024 * 1024
    )
    with pytest.raises(RuntimeError, match=r"nats\.max_payload is 1048576 bytes .* at most 262144"):
        await too_big.bus()
    await too_big.close()
    matching = Resources(
        HealthRegistry(), database_url=None, nats_url=server.url, max_payload=256 * 1024
    )
    try:
        assert (await matching.bus()).nc.max_payload == 256 * 1024
    finally:
        await matching.close()
