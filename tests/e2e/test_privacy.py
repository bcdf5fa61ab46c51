"""End to end, privacy and compliance (issue 11): each Tracking Mode as the received message and
the stored statistics show it, the Domain's ceiling at intake, RFC 8058 one-click unsubscribe
(the caller's URL and Kannon's own /u/ endpoint), RSA + Ed25519 signatures and a DKIM key
rotation verified by dkimpy against the records dnsmasq serves, and the unsubscribe headers'
signatures verified a second time by OpenDKIM's opendkim-testmsg.

Everything goes through the real gRPC API, the real Tracker over HTTP and the SMTP sink; the
messages looked at are the ones the sink received.
"""

from __future__ import annotations

import re
from datetime import UTC
from types import SimpleNamespace
from typing import Any

import dkim
import grpc
import httpx
import pytest

from kannon.envelope.dkim import ED25519_SHA256, dns_txt_value
from kannon.model.domain import dkim_record_name
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2_grpc
from kannon.pb.mailer.types import send_pb2
from kannon.pb.tracking.types import tracking_pb2
from tests.e2e.conftest import Launch
from tests.e2e.engagement_support import (
    admin,
    get_stats,
    launch_engaged,
    set_tracking_ceiling,
)
from tests.e2e.pipeline import (
    RCPT_DOMAIN,
    SENDER_ALIAS,
    SENDER_EMAIL,
    TENANT,
    Pipeline,
    ShiftedClock,
)
from tests.e2e.test_engagement import HREF
from tests.peers import opendkim
from tests.peers.smtp_sink import SmtpSink
from tests.support import html_of, parse_message, wait_for

OFF, ANONYMOUS, PSEUDONYMOUS, IDENTIFIED, FULL = 1, 2, 3, 4, 5
LANDING = "https://shop.example.org/deal"
HTML = f'<html><body><p>Hi</p><p><a href="{LANDING}">Deal</a></p></body></html>'
USER_AGENT = "KannonPrivacyE2E/1.0"
PIXEL = re.compile(r'<img\b[^>]*\bsrc="([^"]*)"')


def policy(opens: int, links: int) -> Any:
    # The wire's numbers as such, unknown ones included (the stubs type them as TrackingMode).
    return tracking_pb2.TrackingPolicy(opens=opens, links=links)  # type: ignore[arg-type]  # ints


async def send(
    pipeline: Pipeline,
    recipients: list[Any],
    *,
    tracking: Any = None,
    one_click: str | None = None,
    html: str = HTML,
) -> Any:
    request = mailer_pb.SendHTMLReq(
        sender=send_pb2.Sender(email=SENDER_EMAIL, alias=SENDER_ALIAS),
        subject="Hello",
        html=html,
        recipients=recipients,
    )
    if tracking is not None:
        request.tracking.CopyFrom(tracking)
    if one_click is not None:
        request.one_click_unsubscribe.url_template = one_click
    stub: Any = mailerapiv1_pb2_grpc.MailerStub(pipeline.channel)
    return await stub.SendHTML(request, metadata=pipeline.credentials)


async def test_each_tracking_mode_end_to_end(launch: Launch, smtp_sink: SmtpSink) -> None:
    engaged = await launch_engaged(launch)
    pipeline = engaged.pipeline
    base = engaged.tracker_base

    # The default ceiling is identified: a Batch asking for full fails whole, nothing written.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await send(
            pipeline,
            [send_pb2.Recipient(email=f"x@{RCPT_DOMAIN}")],
            tracking=policy(FULL, IDENTIFIED),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tracking.opens" in (refused.value.details() or "")
    # A Recipient above it (or naming no known mode) is rejected alone.
    res = await send(
        pipeline,
        [
            send_pb2.Recipient(email=f"greedy@{RCPT_DOMAIN}", tracking=policy(FULL, FULL)),
            send_pb2.Recipient(email=f"odd@{RCPT_DOMAIN}", tracking=policy(9, OFF)),
            send_pb2.Recipient(email=f"fine@{RCPT_DOMAIN}", tracking=policy(OFF, OFF)),
        ],
    )
    assert (res.accepted_count, res.rejected_count) == (1, 2)
    assert {(r.email, r.reason) for r in res.rejected_recipients} == {
        (f"greedy@{RCPT_DOMAIN}", "tracking_above_ceiling"),
        (f"odd@{RCPT_DOMAIN}", "unsupported_tracking_mode"),
    }
    await pipeline.wait_until_settled(res.message_id, 1)

    # With the ceiling raised to full, one Recipient per mode.
    domain = await set_tracking_ceiling(pipeline, FULL, FULL)
    assert (domain.tracking.opens, domain.tracking.links) == (FULL, FULL)
    modes = {"off": OFF, "anon": ANONYMOUS, "pseudo": PSEUDONYMOUS, "ident": IDENTIFIED}
    modes["full"] = FULL
    rcpts = {name: f"{name}@{RCPT_DOMAIN}" for name in modes}
    res = await send(
        pipeline,
        [
            send_pb2.Recipient(email=rcpts[name], tracking=policy(mode, mode))
            for name, mode in modes.items()
        ],
    )
    assert res.accepted_count == len(modes)
    batch = res.message_id
    await pipeline.wait_until_settled(batch, len(modes))

    # What each received message carries.
    html = {name: html_of(smtp_sink.messages_to(rcpt)[0].data) for name, rcpt in rcpts.items()}
    assert HREF.findall(html["off"]) == [LANDING]
    assert not PIXEL.findall(html["off"])
    assert f"{base}/" not in html["off"]
    hits: dict[str, tuple[str, str]] = {}
    for name in ("anon", "pseudo", "ident", "full"):
        [link] = HREF.findall(html[name])
        [pixel] = PIXEL.findall(html[name])
        assert link.startswith(f"{base}/c/") and pixel.startswith(f"{base}/o/")
        assert LANDING not in html[name]
        hits[name] = (pixel, link)

    async with httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, timeout=15) as client:
        for pixel, link in hits.values():
            assert (await client.get(pixel)).status_code == 200
            click = await client.get(link)
            assert (click.status_code, click.headers["location"]) == (307, LANDING)

    # Anonymous: counted (8 opened/clicked in the aggregates), never a row naming anybody.
    async def all_counted() -> bool:
        total = await pipeline.pool.fetchval(
            "SELECT coalesce(sum(count), 0) FROM aggregated_stats"
            " WHERE domain = $1 AND type IN ('opened', 'clicked')",
            TENANT,
        )
        return int(total) == 8

    await wait_for(all_counted, what="8 engagement events counted")
    rows = await pipeline.stats(batch)
    engagement = [r for r in rows if r.type in ("opened", "clicked")]
    assert len(engagement) == 6  # pseudonymous, identified and full: an open and a click each
    assert not [r for r in engagement if "anon" in r.email]  # neither the address nor the sentinel
    assert await pipeline.pool.fetchval("SELECT count(*) FROM anonymous_events") == 2

    # Pseudonymous: one stand-in for the open and the click, not the address, no client data.
    stand_ins = {r.email for r in engagement if r.email.endswith(f"@track.{TENANT}")}
    [stand_in] = stand_ins
    assert re.fullmatch(rf"[0-9a-f]{{32}}@track\.{re.escape(TENANT)}", stand_in)
    assert rcpts["pseudo"] not in {r.email for r in engagement}

    # Through GetStats: the mode of each event, IP and user agent only in full.
    for name, mode in (("ident", IDENTIFIED), ("full", FULL)):
        got = [r for r in await get_stats(pipeline, rcpts[name]) if r.type == "opened"]
        [opened] = got
        assert opened.tracking_mode == mode
        kept = (opened.data.opened.user_agent, opened.data.opened.ip)
        assert kept == ((USER_AGENT, "127.0.0.1") if name == "full" else ("", ""))
    [pseudo_open] = [r for r in await get_stats(pipeline, stand_in) if r.type == "opened"]
    assert pseudo_open.tracking_mode == PSEUDONYMOUS
    assert (pseudo_open.data.opened.user_agent, pseudo_open.data.opened.ip) == ("", "")


async def test_one_click_unsubscribe_signed_and_served(launch: Launch, smtp_sink: SmtpSink) -> None:
    engaged = await launch_engaged(launch)
    pipeline, base = engaged.pipeline, engaged.tracker_base

    # A caller's template: https only; a Recipient whose fields cannot fill it is rejected.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await send(
            pipeline,
            [send_pb2.Recipient(email=f"a@{RCPT_DOMAIN}")],
            one_click="http://lists.example.org/u?e={{ email }}",
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one_click_unsubscribe.url_template" in (refused.value.details() or "")
    ada = f"ada+news@{RCPT_DOMAIN}"
    res = await send(
        pipeline,
        [
            send_pb2.Recipient(email=ada, fields={"list": "weekly & more"}),
            send_pb2.Recipient(email=f"bob@{RCPT_DOMAIN}"),
        ],
        one_click="https://lists.example.org/u?e={{ email }}&l={{ list }}",
    )
    assert [(r.email, r.reason) for r in res.rejected_recipients] == [
        (f"bob@{RCPT_DOMAIN}", "unsubscribe_url_unresolved")
    ]
    await pipeline.wait_until_settled(res.message_id, 1)
    raw = smtp_sink.messages_to(ada)[0].data
    message = parse_message(raw)
    expected = f"<https://lists.example.org/u?e=ada%2Bnews%40{RCPT_DOMAIN}&l=weekly%20%26%20more>"
    assert message["List-Unsubscribe"] == expected
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    signed = re.sub(r"\s+", "", str(message.get_all("DKIM-Signature", [])[0]))
    h = re.search(r"h=([^;]+);", signed)
    assert h is not None
    names = h.group(1).split(":")
    # Signed, and over-signed: a second List-Unsubscribe added on the way breaks the signature.
    assert names.count("list-unsubscribe") == 2 and names.count("list-unsubscribe-post") == 2
    assert pipeline.dkim_verify_each(raw) == [("smtp", True), ("smtp-ed25519", True)]
    forged = raw.replace(
        b"\r\nList-Unsubscribe:", b"\r\nList-Unsubscribe: <https://evil.example/u>\r\nX-Y:", 1
    )
    assert pipeline.dkim_verify_each(forged) == [("smtp", False), ("smtp-ed25519", False)]

    # No template, Domain not enabled: no header. Enabled: Kannon's own endpoint.
    res = await send(pipeline, [send_pb2.Recipient(email=f"none@{RCPT_DOMAIN}")])
    await pipeline.wait_until_settled(res.message_id, 1)
    assert (
        parse_message(smtp_sink.messages_to(f"none@{RCPT_DOMAIN}")[0].data)["List-Unsubscribe"]
        is None
    )
    request = admin_pb.SetOneClickUnsubscribeReq(domain=TENANT, enabled=True)
    assert (await admin(pipeline, "SetOneClickUnsubscribe", request)).domain.one_click_unsubscribe
    carol = f"carol@{RCPT_DOMAIN}"
    res = await send(pipeline, [send_pb2.Recipient(email=carol)])
    batch = res.message_id
    await pipeline.wait_until_settled(batch, 1)
    raw = smtp_sink.messages_to(carol)[0].data
    header = parse_message(raw)["List-Unsubscribe"]
    assert header.startswith(f"<{base}/u/") and header.endswith(">")
    url = header[1:-1]
    assert pipeline.dkim_verify_each(raw) == [("smtp", True), ("smtp-ed25519", True)]
    [click] = [link for link in HREF.findall(html_of(raw)) if "/c/" in link]

    async with httpx.AsyncClient(timeout=15) as client:
        # GET (what link scanners do) shows the page with its button, and unsubscribes nobody.
        page = await client.get(url)
        assert page.status_code == 200
        assert '<form method="post"' in page.text and "Unsubscribe</button>" in page.text
        assert (await client.head(url)).status_code == 200
        # A click token cannot unsubscribe.
        wrong = url.replace("/u/", "/x/").rsplit("/", 1)[0] + "/" + click.rsplit("/", 1)[1]
        assert (await client.post(wrong.replace("/x/", "/u/"))).status_code == 404
        assert not [r for r in await pipeline.stats(batch) if r.type == "unsubscribed"]
        # RFC 8058's POST, twice (a client retrying): one Unsubscribed event.
        for _ in range(2):
            done = await client.post(url, content=b"List-Unsubscribe=One-Click")
            assert done.status_code == 200
            assert "You are unsubscribed" in done.text

    async def stored() -> bool:
        return any(r.type == "unsubscribed" for r in await pipeline.stats(batch))

    await wait_for(stored, what="the unsubscribed event stored")
    rows = [r for r in await get_stats(pipeline, carol) if r.type == "unsubscribed"]
    assert len(rows) == 1
    assert rows[0].data.WhichOneof("data") == "unsubscribed"

    # The POST also put the address on the Domain's suppression list (the GETs did not).
    async def suppressed() -> bool:
        return bool(
            await pipeline.pool.fetchval(
                "SELECT count(*) FROM suppressions WHERE address = $1 AND reason = 'unsubscribe'",
                carol,
            )
        )

    await wait_for(suppressed, what="the unsubscribed address on the suppression list")
    assert await pipeline.pool.fetchval("SELECT count(*) FROM suppressions") == 1


async def test_one_click_headers_verified_by_opendkim(launch: Launch, smtp_sink: SmtpSink) -> None:
    """A second verifier that shares no code with Kannon or dkimpy: OpenDKIM's
    opendkim-testmsg, fetching both keys from the test's DNS records (tests/peers/opendkim.py
    says how it is pointed at them without touching the machine's resolver)."""
    reason = opendkim.unavailable()
    if reason is not None:
        pytest.skip(reason)
    engaged = await launch_engaged(launch)
    pipeline = engaged.pipeline
    rcpt = f"ada@{RCPT_DOMAIN}"
    res = await send(
        pipeline,
        [send_pb2.Recipient(email=rcpt)],
        one_click="https://lists.example.org/u?e={{ email }}",
    )
    await pipeline.wait_until_settled(res.message_id, 1)
    raw = smtp_sink.messages_to(rcpt)[0].data
    message = parse_message(raw)
    assert message["List-Unsubscribe"] == f"<https://lists.example.org/u?e=ada%40{RCPT_DOMAIN}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # Both unsubscribe headers inside h= (and over-signed) of both signatures, RSA then Ed25519.
    algorithms = []
    for field in message.get_all("DKIM-Signature") or []:
        tags = dict(
            tag.split("=", 1) for tag in re.sub(r"\s+", "", str(field)).split(";") if "=" in tag
        )
        algorithms.append(tags["a"])
        names = tags["h"].split(":")
        assert names.count("list-unsubscribe") == 2 and names.count("list-unsubscribe-post") == 2
    assert algorithms == ["rsa-sha256", "ed25519-sha256"]

    # Each signature on its own: OpenDKIM 2.11 verifies ed25519-sha256 (RFC 8463) too.
    altered = raw.replace(b"u?e=ada%40", b"u?e=eve%40", 1)
    post_dropped = raw.replace(b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click", b"", 1)
    second_added = raw.replace(
        b"\r\nList-Unsubscribe:", b"\r\nList-Unsubscribe: <https://evil.example/u>\r\nX-Y:", 1
    )
    assert len({raw, altered, post_dropped, second_added}) == 4
    verdicts = opendkim.verify_all([raw, altered, post_dropped, second_added], pipeline.dns)
    assert [(v.selector, v.ok) for v in verdicts[0]] == [
        ("smtp", True),
        ("smtp-ed25519", True),
    ], verdicts[0]
    # A changed, removed or added unsubscribe header breaks both (not a key lookup failure).
    for forged in verdicts[1:]:
        assert [(v.selector, v.ok) for v in forged] == [
            ("smtp", False),
            ("smtp-ed25519", False),
        ], forged
        assert all(v.detail.endswith("Bad signature") for v in forged), forged


async def test_rsa_and_ed25519_through_a_key_rotation(
    launch: Launch, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ShiftedClock()
    # The tenant's and the sending host's zones are dnsmasq's own, so names it has no record
    # of answer NXDOMAIN (missing), not REFUSED.
    engaged = await launch_engaged(
        launch,
        clock=clock,
        extra_dns=lambda server: server.add_zone(TENANT).add_zone("kannon.test"),
    )
    pipeline = engaged.pipeline
    verdicts: list[list[tuple[str, bool]]] = []

    async def one_message(name: str) -> list[tuple[str, bool]]:
        rcpt = f"{name}@{RCPT_DOMAIN}"
        res = await send(pipeline, [send_pb2.Recipient(email=rcpt)])
        await pipeline.wait_until_settled(res.message_id, 1)
        raw = smtp_sink.messages_to(rcpt)[0].data
        verdict = pipeline.dkim_verify_each(raw)
        verdicts.append(verdict)
        # RSA first, then Ed25519: a verifier that knows only RSA finds it at the top.
        algorithms = re.findall(rb"^DKIM-Signature: v=1; a=([a-z0-9-]+);", raw, re.MULTILINE)
        assert algorithms == sorted(algorithms, key=lambda a: a != b"rsa-sha256")
        return verdict

    assert await one_message("before") == [("smtp", True), ("smtp-ed25519", True)]

    rotated = await admin(pipeline, "RotateDkimKeys", admin_pb.RotateDkimKeysReq(domain=TENANT))
    new = {k.algorithm: k for k in rotated.keys}
    assert {k.status for k in rotated.keys} == {"pending"}
    assert set(new) == {"rsa-sha256", "ed25519-sha256"}
    # Pending keys do not sign: mail stays verifiable while their records are not published.
    assert await one_message("pending") == [("smtp", True), ("smtp-ed25519", True)]
    # The DNS check sees them missing and confirms nothing yet.
    check = await admin(pipeline, "CheckDomain", admin_pb.CheckDomainReq(domain=TENANT))
    dkim_checks = {c.name: c.status for c in check.checks if c.kind == "dkim"}
    for key in new.values():
        assert dkim_checks[dkim_record_name(key.selector, TENANT)] == "missing"

    # The operator publishes the records the rotation returned; the DNS check confirms them.
    for record in rotated.dns_records:
        pipeline.dns.add_txt(record.name, record.value)
    assert new["ed25519-sha256"].dns_record.value == dns_txt_value(
        new["ed25519-sha256"].public_key, ED25519_SHA256
    )
    pipeline.dns.restart()
    check = await admin(pipeline, "CheckDomain", admin_pb.CheckDomainReq(domain=TENANT))
    dkim_checks = {c.name: c.status for c in check.checks if c.kind == "dkim"}
    assert set(dkim_checks.values()) == {"ok"}
    keys = await admin(pipeline, "ListDkimKeys", admin_pb.ListDkimKeysReq(domain=TENANT))
    status = {k.selector: k.status for k in keys.keys}
    assert status == {
        "smtp": "retiring",
        "smtp-ed25519": "retiring",
        new["rsa-sha256"].selector: "active",
        new["ed25519-sha256"].selector: "active",
    }
    # Grace period: old and new keys both sign.
    rsa_new, ed_new = new["rsa-sha256"].selector, new["ed25519-sha256"].selector
    during = await one_message("during")
    assert sorted(during) == sorted(
        [("smtp", True), ("smtp-ed25519", True), (rsa_new, True), (ed_new, True)]
    )
    # After it (the Dispatcher's clock moved past dkim.rotation_grace): only the new keys.
    retire = min(k.retire_at.ToDatetime() for k in keys.keys if k.status == "retiring")
    clock.jump_to(retire.replace(tzinfo=UTC))
    # The receiver lives on the same clock (dkimpy refuses signatures dated in its future).
    monkeypatch.setattr(dkim, "time", SimpleNamespace(time=lambda: clock().timestamp()))
    assert sorted(await one_message("after")) == sorted([(rsa_new, True), (ed_new, True)])
    # Not a single signature that did not verify, all the way through.
    assert all(ok for verdict in verdicts for _, ok in verdict)
    domain = await admin(pipeline, "GetDomain", admin_pb.GetDomainReq(domain=TENANT))
    assert domain.domain.dkim_selector == rsa_new
