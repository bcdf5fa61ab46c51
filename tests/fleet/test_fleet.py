"""Fleet mode (issue 6 item 4): the seven Components as seven OS processes, driven only through the
README's calls (`buf curl` with server reflection: CreateDomain, CreateAPIKey, SendHTML, GetStats).

The Batch reaches the loopback SMTP sink through the MX dnsmasq serves, DKIM-signed with the key
CreateDomain returned (verified by dkimpy against the TXT record published in dnsmasq, as a
receiver would); GetStats then shows accepted + delivered per recipient. The tracker and smtp
processes are used too: an open pixel hit becomes `opened`, a DSN sent to the bounce address
becomes `bounced` (the smtp process verifies the tag the dispatcher process signed). The webhooks
process POSTs every one of those outcome events, once per webhook-id, to an endpoint registered
through the API, to a receiver the test runs (signatures verified with `standardwebhooks`).
Finally every process gets SIGTERM and must exit 0 within the supervisor's grace period.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from kannon.config import COMPONENTS
from kannon.envelope.bounce import parse_bounce_address
from tests.fleet.conftest import StartFleet
from tests.fleet.fleet import (
    GRACE,
    RCPT_DOMAIN,
    SECRET,
    SENDER_ALIAS,
    SENDER_EMAIL,
    SENDER_HOSTNAME,
    TENANT,
    add_recipient_dns,
    http_get,
)
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.smtp_server.smtp_support import Sent, postfix_dsn
from tests.support import dkim_verifies, dns_lookup, http_receiver, parse_message, wait_for


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """An HTTP endpoint on loopback answering 204; its URL and the POSTs it got."""
    received: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.Response(status=204)

    async with http_receiver("/events", handle) as port:
        yield f"http://127.0.0.1:{port}/events", received


async def test_seven_processes_deliver_a_batch_through_the_readme_calls_and_stop_cleanly(
    start_fleet: StartFleet, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    async with webhook_receiver() as (hook_url, hooks):
        await run_fleet(start_fleet, dns_server, smtp_sink, hook_url, hooks)


async def run_fleet(
    start_fleet: StartFleet,
    dns_server: DnsServer,
    smtp_sink: SmtpSink,
    hook_url: str,
    hooks: list[tuple[dict[str, str], bytes]],
) -> None:
    add_recipient_dns(dns_server)
    dns_server.start()
    fleet = await start_fleet(sink_port=smtp_sink.port)
    assert set(fleet.processes) == set(COMPONENTS)
    assert len({p.pid for p in fleet.processes.values()}) == len(COMPONENTS)
    for process in fleet.processes.values():
        status, body = await process.health()
        assert status == 200, (process.component, body)

    # 1. CreateDomain; publish the DKIM record it tells the operator to publish.
    domain = await fleet.create_domain(TENANT)
    assert domain["domain"] == TENANT
    # Two keys, both signing: RSA (the Domain's dkimSelector) and Ed25519 (ADR 0035).
    dkim_records = [r for r in domain["dnsRecords"] if "._domainkey." in r["name"]]
    by_name = {r["name"]: r for r in dkim_records}
    rsa_record = by_name[f"{domain['dkimSelector']}._domainkey.{TENANT}"]
    assert domain["dkimPubKey"] in rsa_record["value"]
    assert "k=ed25519" in by_name[f"smtp-ed25519._domainkey.{TENANT}"]["value"]
    for record in dkim_records:
        dns_server.add_txt(record["name"], record["value"])
    dns_server.restart()  # dnsmasq reads records at start; same port, so the sender keeps it

    # 2. CreateAPIKey; the plaintext key makes the Basic credentials.
    auth = await fleet.create_api_key(TENANT)

    # A webhook endpoint for every event type, registered with the Domain's own key.
    endpoint = await fleet.call(
        "kannon.webhooks.apiv1.WebhooksApiV1Service/CreateEndpoint",
        {"url": hook_url},
        authorization=auth,
    )
    hook_secret = endpoint["secret"]

    # 3. SendHTML to three recipients with their own fields.
    names = {f"ann@{RCPT_DOMAIN}": "Ann", f"bob@{RCPT_DOMAIN}": "Bob", f"cy@{RCPT_DOMAIN}": "Cy"}
    batch = await fleet.send_html(
        auth,
        {email: {"name": name} for email, name in names.items()},
        subject="Hello {{ name }}",
        html='<h1>Hi {{ name }}</h1><p><a href="https://example.com/read">Read</a></p>',
    )
    assert batch.startswith("msg_") and batch.endswith(f"@{TENANT}")

    # The sink receives each message once, through the MX from dnsmasq, DKIM-signed.
    received = await smtp_sink.wait_for_messages(3, timeout=60)
    assert sorted(r for m in received for r in m.rcpt_tos) == sorted(names)
    lookup = dns_lookup(dns_server)
    messages: dict[str, Any] = {}
    for rcpt, name in names.items():
        [message] = smtp_sink.messages_to(rcpt)
        messages[rcpt] = message
        assert message.helo == SENDER_HOSTNAME
        assert dkim_verifies(message.data, lookup), f"DKIM of {rcpt}"
        bounce = parse_bounce_address(message.mail_from, SECRET.encode())
        assert bounce is not None and bounce.batch_id == batch
        assert bounce.matches(rcpt, SECRET.encode())
        parsed = parse_message(message.data)
        assert parsed["Subject"] == f"Hello {name}"
        assert parsed["From"] == f"{SENDER_ALIAS} <{SENDER_EMAIL}>"
        assert f"<h1>Hi {name}</h1>" in parsed.get_content()

    # 4. GetStats: accepted then delivered for every recipient.
    async def all_delivered() -> bool:
        stats = await fleet.get_stats(auth, batch)
        return all("delivered" in stats.get(rcpt, []) for rcpt in names)

    await wait_for(all_delivered, what="delivered in GetStats for all 3", timeout=60, interval=0.2)
    assert await fleet.get_stats(auth, batch) == {rcpt: ["accepted", "delivered"] for rcpt in names}

    # The tracker process: Ann's open pixel → opened.
    body = parse_message(messages[f"ann@{RCPT_DOMAIN}"].data).get_content()
    pixel = body.split(f'src="https://track.{TENANT}', 1)[1].split('"', 1)[0]
    assert pixel.startswith("/o/")
    status, gif = await http_get("127.0.0.1", fleet.tracker_port, pixel)
    assert status == 200 and gif.startswith(b"GIF8")

    # The smtp process: a DSN for Cy to the bounce address the dispatcher process signed.
    cy = messages[f"cy@{RCPT_DOMAIN}"]
    headers = cy.data.split(b"\r\n\r\n", 1)[0]
    report = postfix_dsn(Sent(batch, f"cy@{RCPT_DOMAIN}", cy.mail_from, headers))

    def send_report() -> dict[str, tuple[int, bytes]]:
        # smtplib (in a thread): MTAs send reports with the null sender, MAIL FROM:<>.
        with smtplib.SMTP("127.0.0.1", fleet.smtp_port, timeout=30) as client:
            return client.sendmail("", [cy.mail_from], report)

    assert await asyncio.to_thread(send_report) == {}

    async def opened_and_bounced() -> bool:
        stats = await fleet.get_stats(auth, batch)
        return "opened" in stats.get(f"ann@{RCPT_DOMAIN}", []) and "bounced" in stats.get(
            f"cy@{RCPT_DOMAIN}", []
        )

    await wait_for(opened_and_bounced, what="opened (tracker) and bounced (smtp)", timeout=30)
    stats = await fleet.get_stats(auth, batch)
    assert stats[f"ann@{RCPT_DOMAIN}"] == ["accepted", "delivered", "opened"]
    assert stats[f"bob@{RCPT_DOMAIN}"] == ["accepted", "delivered"]
    assert stats[f"cy@{RCPT_DOMAIN}"] == ["accepted", "delivered", "bounced"]
    assert len(smtp_sink.messages) == 3

    # The webhooks process: each of those eight events POSTed, signed, once per webhook-id.
    def hooked() -> dict[tuple[str, str], int]:
        seen: dict[str, tuple[str, str]] = {}
        for headers, body in hooks:
            event = json.loads(body)
            seen[headers["webhook-id"]] = (event["data"]["email"], event["type"])
        counts: dict[tuple[str, str], int] = {}
        for key in seen.values():
            counts[key] = counts.get(key, 0) + 1
        return counts

    wanted = {(rcpt, kind): 1 for rcpt, kinds in stats.items() for kind in kinds}

    async def all_hooked() -> bool:
        return hooked() == wanted

    await wait_for(all_hooked, what="the eight events as webhooks", timeout=60)
    for hook_headers, hook_body in hooks:
        event = Webhook(hook_secret).verify(hook_body, hook_headers)
        assert event["data"]["message_id"] == batch and event["data"]["domain"] == TENANT

    # SIGTERM to every process at once: each drains and exits 0 within the grace period.
    codes = await fleet.stop()
    assert codes == dict.fromkeys(COMPONENTS, 0), fleet.report()
    for process in fleet.processes.values():
        assert process.stop_seconds is not None and process.stop_seconds < GRACE, (
            process.component,
            process.stop_seconds,
        )
    assert fleet.error_lines() == []
    print({p.component: round(p.stop_seconds or 0, 2) for p in fleet.processes.values()})
