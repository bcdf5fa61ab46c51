"""The test peers do what their docstrings promise (other suites rely on them)."""

from __future__ import annotations

import asyncio
import base64

import aiosmtplib
import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from tests.peers import opendkim
from tests.peers.dns import DnsServer, txt_chunks
from tests.peers.fixtures import SinkFactory
from tests.peers.smtp_sink import SmtpSink
from tests.peers.tls import TlsIdentity


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _client(sink: SmtpSink) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=sink.host, port=sink.port, start_tls=False, local_hostname="client.test"
    )
    await client.connect()
    return client


async def _rcpt(client: aiosmtplib.SMTP, recipient: str) -> int:
    await client.rset()
    await client.mail("from@client.test")
    try:
        return (await client.rcpt(recipient)).code
    except aiosmtplib.SMTPRecipientRefused as exc:
        return exc.code


async def test_sink_recipient_grammar(smtp_sink: SmtpSink) -> None:
    client = await _client(smtp_sink)
    try:
        assert await _rcpt(client, "ok@x.test") == 250
        assert await _rcpt(client, "bounce.a@x.test") == 550
        assert [await _rcpt(client, "transient.x2.b@x.test") for _ in range(3)] == [451, 451, 250]
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await _rcpt(client, "never.c@x.test")
    finally:
        client.close()
    assert smtp_sink.attempts("transient.x2.b@x.test") == 3


async def test_sink_records_messages_and_holds_on_request(smtp_sink: SmtpSink) -> None:
    client = await _client(smtp_sink)
    try:
        await client.sendmail("from@client.test", ["ok@x.test"], b"Subject: 1\r\n\r\nbody\r\n")
        held = asyncio.create_task(
            client.sendmail("from@client.test", ["hold.d@x.test"], b"Subject: 2\r\n\r\nx\r\n")
        )
        await asyncio.wait_for(smtp_sink.held.wait(), 5)
        assert len(smtp_sink.messages) == 1 and not held.done()
        smtp_sink.release_held()
        await asyncio.wait_for(held, 5)
        messages = await smtp_sink.wait_for_messages(2)
    finally:
        client.close()
    assert [m.rcpt_tos for m in messages] == [("ok@x.test",), ("hold.d@x.test",)]
    assert messages[0].data == b"Subject: 1\r\n\r\nbody\r\n"
    assert messages[0].helo == "client.test"
    assert smtp_sink.connections == 1


async def test_sink_starttls_and_auth(
    smtp_sink_factory: SinkFactory, tls_identity: TlsIdentity
) -> None:
    sink = await smtp_sink_factory(tls=tls_identity, users={"u": "p"})
    client = await _client(sink)
    try:
        await client.starttls(
            server_hostname="mx.example.test", tls_context=tls_identity.client_context()
        )
        await client.login("u", "p")
        await client.sendmail("from@client.test", ["ok@x.test"], b"Subject: t\r\n\r\nx\r\n")
    finally:
        client.close()
    [message] = sink.messages
    assert message.tls and message.auth_user == "u"


def test_dns_server_records(dns_server: DnsServer) -> None:
    dkim = "v=DKIM1; k=rsa; p=" + "A" * 400
    dns_server.add_mx("example.test", "mx.example.test", 10)
    dns_server.add_host("mx.example.test", "127.0.0.1", "::1")
    dns_server.add_null_mx("nomail.test")
    dns_server.add_txt("smtp._domainkey.example.test", dkim)
    dns_server.add_txt("_dmarc.example.test", "v=DMARC1; rua=mailto:a@x.test,mailto:b@x.test")
    dns_server.start()
    resolver = dns_server.resolver()
    assert [r.to_text() for r in resolver.resolve("example.test", "MX")] == ["10 mx.example.test."]
    assert [r.to_text() for r in resolver.resolve("mx.example.test", "A")] == ["127.0.0.1"]
    assert [r.to_text() for r in resolver.resolve("mx.example.test", "AAAA")] == ["::1"]
    assert [r.to_text() for r in resolver.resolve("nomail.test", "MX")] == ["0 ."]
    [txt] = resolver.resolve("smtp._domainkey.example.test", "TXT")
    assert [len(s) for s in txt.strings] == [255, 163]
    assert b"".join(txt.strings).decode() == dkim
    [dmarc] = resolver.resolve("_dmarc.example.test", "TXT")
    assert dmarc.strings == (b"v=DMARC1; rua=mailto:a@x.test,mailto:b@x.test",)
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("missing.example.test", "A")


def test_dns_server_restart_applies_new_records_on_the_same_port(dns_server: DnsServer) -> None:
    dns_server.add_host("a.example.test", "127.0.0.1").start()
    port = dns_server.port
    dns_server.add_host("b.example.test", "127.0.0.2").restart()
    assert dns_server.port == port
    [answer] = dns_server.resolver().resolve("b.example.test", "A")
    assert answer.to_text() == "127.0.0.2"


def test_dns_server_ttl() -> None:
    with DnsServer(ttl=300) as server:
        server.add_host("a.example.test", "127.0.0.1").restart()
        rrset = server.resolver().resolve("a.example.test", "A").rrset
        assert rrset is not None and rrset.ttl == 300


def test_txt_chunks() -> None:
    assert txt_chunks("") == [""]
    assert txt_chunks("a" * 256) == ["a" * 255, "a"]
    with pytest.raises(ValueError):
        txt_chunks('with "quotes"')


def test_opendkim_checks_each_signature_against_the_test_records(dns_server: DnsServer) -> None:
    # Signed by dkimpy here, so this checks the harness alone, not Kannon's signer.
    reason = opendkim.unavailable()
    if reason is not None:
        pytest.skip(reason)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    raw, der, pem = Encoding.Raw, Encoding.DER, Encoding.PEM
    rsa_public = rsa_key.public_key().public_bytes(der, PublicFormat.SubjectPublicKeyInfo)
    ed_public = ed_key.public_key().public_bytes(raw, PublicFormat.Raw)
    dns_server.add_txt("rsa._domainkey.example.test", "v=DKIM1; k=rsa; p=" + b64(rsa_public))
    dns_server.add_txt("ed._domainkey.example.test", "v=DKIM1; k=ed25519; p=" + b64(ed_public))
    message = (
        b"From: a@example.test\r\nTo: b@example.net\r\nSubject: hi\r\n"
        b"Date: Sat, 05 Dec 2026 18:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n"
        b"List-Unsubscribe: <https://example.test/u>\r\n\r\nbody\r\n"
    )
    signed = [b"from", b"subject", b"date", b"list-unsubscribe"]
    rsa_pem = rsa_key.private_bytes(pem, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    ed_seed = b64(ed_key.private_bytes(raw, PrivateFormat.Raw, NoEncryption())).encode()
    by_rsa = dkim.sign(message, b"rsa", b"example.test", rsa_pem, include_headers=signed)
    by_ed = dkim.sign(
        message,
        b"ed",
        b"example.test",
        ed_seed,
        signature_algorithm=b"ed25519-sha256",
        include_headers=signed,
    )
    unknown = dkim.sign(message, b"gone", b"example.test", rsa_pem, include_headers=signed)
    both = by_rsa + by_ed + message
    assert opendkim.selectors(both) == ["rsa", "ed"]
    assert opendkim.only_signature(both, 1) == by_ed + message

    forged = both.replace(b"example.test/u", b"evil.example/u")
    good, bad, missing = opendkim.verify_all([both, forged, unknown + message], dns_server)
    assert good == [opendkim.Verdict("rsa", True, ""), opendkim.Verdict("ed", True, "")]
    assert [(v.selector, v.ok) for v in bad] == [("rsa", False), ("ed", False)]
    assert all(v.detail.endswith("Bad signature") for v in bad), bad
    # A key the DNS server does not have is not mistaken for a bad signature.
    assert [(v.selector, v.ok) for v in missing] == [("gone", False)]
    assert missing[0].detail.endswith("Key retrieval failed"), missing
    # Its bind mount over /etc/resolv.conf refuses to happen in the caller's namespaces.
    assert not opendkim.in_private_namespaces()
