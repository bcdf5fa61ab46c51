"""IP pools across processes (issue 13 item 3, ADR 0039): two sender nodes of the fleet, one in
pool `eu` bound to 127.0.0.2 and one in pool `us` bound to 127.0.0.3, each with its own HELO name.
The remote sees each Domain's mail from its pool's address (and HELO) only, a Batch that names
another pool goes out through that one, and mail of a pool with no sender node (`default` here)
waits in the queue until a node of that pool starts.
"""

from __future__ import annotations

import collections

import asyncpg

from kannon.config import COMPONENTS
from tests.fleet.conftest import StartFleet
from tests.fleet.fleet import (
    ADMIN_AUTH,
    CREATE_DOMAIN,
    RCPT_DOMAIN,
    SEND_HTML,
    Fleet,
    add_recipient_dns,
)
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.support import wait_for

NODES = {
    # process name: (pool, source address, HELO name)
    "sender-eu": ("eu", "127.0.0.2", "eu.sender.kannon.test"),
    "sender-us": ("us", "127.0.0.3", "us.sender.kannon.test"),
}
PER_BATCH = 12


async def _send(fleet: Fleet, domain: str, tag: str, ip_pool: str | None = None) -> list[str]:
    """A Batch of `PER_BATCH` Recipients from news@`domain`; their addresses."""
    auth = await fleet.create_api_key(domain, name=tag)
    emails = [f"{tag}{i:02d}@{RCPT_DOMAIN}" for i in range(PER_BATCH)]
    body: dict[str, object] = {
        "sender": {"email": f"news@{domain}", "alias": tag},
        "subject": "Hello {{ name }}",
        "html": "<p>Hi {{ name }}</p>",
        "recipients": [{"email": e, "fields": {"name": e}} for e in emails],
    }
    if ip_pool is not None:
        body["ipPool"] = ip_pool
    await fleet.call(SEND_HTML, body, authorization=auth)
    return emails


async def test_each_domains_mail_leaves_from_its_pools_address_only(
    start_fleet: StartFleet, dns_server: DnsServer, smtp_sink: SmtpSink, database_url: str
) -> None:
    add_recipient_dns(dns_server)
    dns_server.start()
    fleet = await start_fleet(
        sink_port=smtp_sink.port,
        options={"--ip-pools": "eu,us"},
        components=[c for c in COMPONENTS if c != "sender"],
    )
    for name, (pool, address, helo) in NODES.items():
        fleet.spawn(
            "sender",
            name=name,
            flags={
                "--sender-pool": pool,
                "--sender-source-address": address,
                "--sender-hostname": helo,
            },
        )
    await fleet.wait_healthy()

    for domain, pool in [("eu.test", "eu"), ("us.test", "us"), ("plain.test", "")]:
        created = await fleet.call(
            CREATE_DOMAIN, {"domain": domain, "ipPool": pool}, authorization=ADMIN_AUTH
        )
        assert created.get("ipPool", "") == (pool or "default"), created
    queued = await _send(fleet, "plain.test", "plain")  # pool `default`: no node yet
    eu = await _send(fleet, "eu.test", "eu")
    us = await _send(fleet, "us.test", "us")
    eu_via_us = await _send(fleet, "eu.test", "euvius", ip_pool="us")
    await smtp_sink.wait_for_messages(4 * PER_BATCH - PER_BATCH, timeout=60)

    expected = {
        **dict.fromkeys(eu, ("127.0.0.2", "eu.sender.kannon.test")),
        **dict.fromkeys(us + eu_via_us, ("127.0.0.3", "us.sender.kannon.test")),
    }
    seen: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for message in smtp_sink.messages:
        for rcpt in message.rcpt_tos:
            seen[rcpt.lower()].append((message.peer[0], message.helo))
    assert {rcpt: origins for rcpt, origins in seen.items()} == {
        rcpt: [origin] for rcpt, origin in expected.items()
    }

    db = await asyncpg.connect(database_url)
    try:
        # The default pool's Batch went out before the others, and waits for a node of its own.
        async def only_default_left() -> bool:
            left = await db.fetchval(
                "SELECT count(*) FROM sending_pool_emails WHERE email <> ALL($1::varchar[])",
                queued,
            )
            return bool(left == 0)

        await wait_for(only_default_left, what="the pooled Batches to end", timeout=60)
        statuses = await db.fetch(
            "SELECT status, count(*) AS n FROM sending_pool_emails GROUP BY status"
        )
        assert {r["status"]: r["n"] for r in statuses} == {"queued": PER_BATCH}
        fleet.spawn("sender", flags={"--sender-source-address": "127.0.0.1"})
        await fleet.wait_healthy()

        async def pool_empty() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM sending_pool_emails") == 0)

        await wait_for(pool_empty, what="the default pool's Batch to leave", timeout=60)
    finally:
        await db.close()
    late = {
        rcpt.lower(): (m.peer[0], m.helo)
        for m in smtp_sink.messages
        for rcpt in m.rcpt_tos
        if rcpt.startswith("plain")
    }
    assert late == dict.fromkeys(queued, ("127.0.0.1", "sender.kannon.test"))
    assert len(smtp_sink.messages) == 4 * PER_BATCH
    codes = await fleet.stop()
    assert set(codes.values()) == {0}, fleet.report()
