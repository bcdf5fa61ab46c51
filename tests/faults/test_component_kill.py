"""SIGKILL of each Component but the sender (see test_sender_kill.py) in the middle of a Batch, in
fleet mode, then a successor process: every Recipient is received exactly once and every Delivery
ends exactly once.

None of these Components holds an SMTP transaction, so none of their deaths may cost a duplicate:

* dispatcher — it dies holding claims (some published, some not). Its successor takes every
  claim back at start, under the same attempt: an Envelope that was published is published again
  under the same `Nats-Msg-Id` and dropped by the stream (ADR 0025). The claim timeout is at its
  maximum (5 min), so the Batch can only finish in time if the successor recovers at once;
* validator — it dies holding validation claims, which its successor's Reclaim returns (the
  validator's claim timeout is set short here, as it is its only way back);
* stats — outcome events it took but did not acknowledge come back to its successor, which
  stores each once;
* api, smtp, tracker and webhooks — not on the Batch's path once it is accepted: the Batch goes on.
"""

from __future__ import annotations

import pytest

from kannon.bus.client import Bus
from kannon.config import COMPONENTS
from tests.faults.support import (
    dispatcher_reclaims,
    send_batch,
    settle,
    slow_remote,
    verdict,
)
from tests.fleet.conftest import StartFleet
from tests.peers.dns import DnsServer

RECIPIENTS = 400
BOUNCES = 8
SINK_DELAY = 0.01
KILL_AT = 80  # messages received by the remote when the Component is killed


@pytest.mark.parametrize(
    "victims",
    [("dispatcher",), ("validator",), ("stats",), ("api", "smtp", "tracker", "webhooks")],
    ids=["dispatcher", "validator", "stats", "api+smtp+tracker+webhooks"],
)
async def test_sigkill_mid_batch_costs_no_mail_and_no_duplicate(
    victims: tuple[str, ...],
    start_fleet: StartFleet,
    dns_server: DnsServer,
    database_url: str,
    bus: Bus,
) -> None:
    sink, db = await slow_remote(dns_server, database_url, delay=SINK_DELAY)
    try:
        fleet = await start_fleet(
            sink_port=sink.port,
            options={
                # Small claims so that the kill finds work in every stage.
                "--validator-batch-size": "10",
                "--dispatcher-batch-size": "20",
                "--validator-claim-timeout": "2s",
                "--dispatcher-claim-timeout": "5m",
            },
        )
        _, wanted, batch = await send_batch(fleet, RECIPIENTS, BOUNCES)

        await sink.wait_for_messages(KILL_AT, timeout=90)
        pending = await db.fetchval(
            "SELECT count(*) FROM sending_pool_emails WHERE message_id = $1", batch
        )
        for name in victims:
            assert await fleet.processes[name].kill() == -9
        assert len(sink.messages) < RECIPIENTS - BOUNCES, "the kill came after the last message"
        assert pending > 0
        for name in victims:
            await fleet.replace(name)

        await settle(db, bus, batch, RECIPIENTS, timeout=90)
        result = await verdict(db, batch, wanted, sink)
        assert result.duplicates == {}, result.duplicates
        reclaimed = await dispatcher_reclaims(fleet)
        print(
            f"\nSIGKILL of {'+'.join(victims)} with {pending} Deliveries in the Pool: "
            f"{len(sink.messages)} messages for {RECIPIENTS - BOUNCES} recipients, no duplicate; "
            f"dispatcher reclaims after the kill: {reclaimed:.0f}"
        )
        codes = await fleet.stop()
        assert codes == dict.fromkeys(COMPONENTS, 0), fleet.report()
    finally:
        await db.close()
        await sink.stop()
