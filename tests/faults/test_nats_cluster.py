"""The fleet on a three-node NATS JetStream cluster (issue 13 item 4, ADR 0041): every process
gets the three nodes' URLs and `nats.stream_replicas: 3`, so the streams and the send-guard bucket
keep three copies. Mid-Batch the node leading the sending stream is SIGKILLed (a machine lost) and
started again on the same ports and store: every Recipient is received exactly once and every
Delivery ends exactly once (ADR 0049 made it so). `KANNON_FAULT_EVIDENCE=<dir>` keeps the logs of
a failing run (`support.evidence_on_failure`).
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from kannon.bus.client import Bus
from kannon.bus.subjects import SENDING_STREAM, SENT_GUARD_BUCKET, STATS_STREAM
from kannon.config import COMPONENTS
from tests.faults.cluster import NatsCluster
from tests.faults.support import (
    BOUNCES,
    KILL_AT,
    RECIPIENTS,
    SINK_DELAY,
    SlowSink,
    evidence_on_failure,
    send_batch,
    settle,
    slow_remote,
    verdict,
)
from tests.fleet.conftest import StartFleet
from tests.peers.dns import DnsServer


async def test_a_cluster_node_killed_mid_batch_loses_and_repeats_nothing(
    start_fleet: StartFleet,
    nats_cluster: NatsCluster,
    dns_server: DnsServer,
    database_url: str,
) -> None:
    sink, db = await slow_remote(dns_server, database_url, delay=SINK_DELAY)
    bus = await Bus.connect(nats_cluster.url)
    with evidence_on_failure("nats-cluster") as evidence:
        evidence.extend(node.root for node in nats_cluster.nodes)
        try:
            await _kill_a_node_mid_batch(
                start_fleet=start_fleet,
                nats_cluster=nats_cluster,
                sink=sink,
                db=db,
                bus=bus,
                evidence=evidence,
            )
        finally:
            await bus.close()
            await db.close()
            await sink.stop()


async def _kill_a_node_mid_batch(
    *,
    start_fleet: StartFleet,
    nats_cluster: NatsCluster,
    sink: SlowSink,
    db: asyncpg.Connection,
    bus: Bus,
    evidence: list[Path],
) -> None:
    fleet = await start_fleet(
        sink_port=sink.port,
        nats_url=nats_cluster.url,
        options={"--nats-stream-replicas": "3", "--nats-sending-ack-wait": "5s"},
    )
    evidence.append(fleet.workdir / "logs")
    _, wanted, batch = await send_batch(fleet, RECIPIENTS, BOUNCES)
    await sink.wait_for_messages(KILL_AT, timeout=60)

    # Three copies of everything the fleet keeps in NATS.
    for stream in (SENDING_STREAM, STATS_STREAM, f"KV_{SENT_GUARD_BUCKET}"):
        info = await bus.js.stream_info(stream)
        assert info.config.num_replicas == 3, stream
    # The node leading the sending stream dies mid-Batch: a new leader takes over.
    leader = (await bus.js.stream_info(SENDING_STREAM)).cluster
    assert leader is not None and leader.leader is not None
    node = nats_cluster.node(leader.leader)
    node.kill()
    before = len(sink.messages)
    await sink.wait_for_messages(before + 20, timeout=60)  # delivery goes on without it
    nats_cluster.restart(node)
    await fleet.wait_healthy(timeout=60)

    await settle(db, bus, batch, RECIPIENTS, timeout=180)
    result = await verdict(db, batch, wanted, sink)
    assert result.duplicates == {}, result.duplicates
    codes = await fleet.stop()
    assert codes == dict.fromkeys(COMPONENTS, 0), fleet.report()
