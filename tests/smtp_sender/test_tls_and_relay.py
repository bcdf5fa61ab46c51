"""STARTTLS towards MX hosts (verified when possible, opportunistic otherwise) and relay mode
(smart host with AUTH and TLS) against a real SMTP server with a certificate from a test CA."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kannon.bus.client import Bus
from kannon.model.outcome import Delivered, Errored
from kannon.smtp_sender.component import SmtpSender
from tests.peers.dns import DnsServer
from tests.peers.fixtures import SinkFactory
from tests.peers.smtp_sink import SmtpSink
from tests.peers.tls import TlsIdentity
from tests.smtp_sender.conftest import (
    Outcomes,
    SendOne,
    make_job,
    make_settings,
    mx_for,
    publish,
)
from tests.support import running

USERS = {"kannon": "s3cret"}


@pytest.fixture
def trusted_ca(tls_identity: TlsIdentity, monkeypatch: pytest.MonkeyPatch) -> TlsIdentity:
    """The sender verifies against the system trust store; make that the test CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_identity.ca_path))
    return tls_identity


@pytest.fixture
async def tls_sink(smtp_sink_factory: SinkFactory, tls_identity: TlsIdentity) -> SmtpSink:
    return await smtp_sink_factory(tls=tls_identity)


def relay_at(port: int, *, password: str = "s3cret", tls: str = "none") -> dict[str, Any]:
    """`sender.relay` settings for a loopback relay that knows the user `kannon`."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "username": "kannon",
        "password": password,
        "tls": tls,
    }


async def test_starttls_with_a_verified_certificate(
    send_one: SendOne,
    dns_server: DnsServer,
    tls_sink: SmtpSink,
    trusted_ca: TlsIdentity,
) -> None:
    sink = tls_sink
    mx_for(dns_server)
    event = await send_one(make_settings(dns=dns_server, port=sink.port), "tls@example.test")
    assert event.detail == Delivered()
    [message] = sink.messages
    assert message.tls
    assert sink.connections == 1  # verified on the first handshake


async def test_starttls_falls_back_to_unverified_encryption_when_the_certificate_fails(
    bus: Bus,
    outcomes: Outcomes,
    dns_server: DnsServer,
    tls_sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kannon.sender")
    sink = tls_sink  # its CA is trusted by nobody here
    mx_for(dns_server)
    settings = make_settings(dns=dns_server, port=sink.port, max_jobs=1)
    async with running(SmtpSender(settings, bus)):
        await publish(bus, make_job("first@example.test"))
        await publish(bus, make_job("second@example.test"))
        events = await outcomes.wait(2)
    assert [e.detail for e in events] == [Delivered(), Delivered()]
    assert all(m.tls for m in sink.messages)
    # One handshake failed verification, the redo went unverified and was then reused.
    assert sink.connections == 2
    assert {m.connection for m in sink.messages} == {2}
    assert "certificate not verifiable" in caplog.text


@pytest.mark.parametrize("tls_mode", ["starttls", "none"])
async def test_relay_mode_delivers_through_the_relay_with_auth(
    bus: Bus,
    outcomes: Outcomes,
    smtp_sink_factory: SinkFactory,
    trusted_ca: TlsIdentity,
    tls_mode: str,
) -> None:
    relay = await smtp_sink_factory(
        tls=trusted_ca if tls_mode == "starttls" else None,
        users=USERS,
        auth_require_tls=tls_mode == "starttls",
    )
    relay_settings = relay_at(relay.port, tls=tls_mode)
    # No DNS server at all: in relay mode the recipient's domain is never looked up.
    settings = make_settings(relay=relay_settings, max_jobs=1)
    async with running(SmtpSender(settings, bus)):
        await publish(bus, make_job("someone@unresolvable.invalid"))
        await publish(bus, make_job("bounce.other@unresolvable.invalid"))
        events = await outcomes.wait(2)
    assert events[0].detail == Delivered()
    assert events[1].type == "bounced"
    [message] = relay.messages
    assert message.rcpt_tos == ("someone@unresolvable.invalid",)
    assert message.auth_user == "kannon"
    assert message.tls is (tls_mode == "starttls")
    assert relay.connections == 1


@pytest.mark.parametrize(
    ("relay_options", "job", "refusal"),
    [
        # The relay refuses our credentials: Errored, not Bounced.
        ({"password": "wrong"}, {"should_retry": False}, (535, "")),
        # The relay offers no STARTTLS: it is not used in plaintext.
        ({"tls": "starttls"}, {}, (0, "STARTTLS")),
    ],
    ids=["refusing-our-credentials", "without-starttls"],
)
async def test_a_relay_we_cannot_use_errors_the_delivery_and_gets_nothing(
    relay_options: dict[str, str],
    job: dict[str, bool],
    refusal: tuple[int, str],
    send_one: SendOne,
    smtp_sink_factory: SinkFactory,
) -> None:
    code, said = refusal
    relay = await smtp_sink_factory(users=USERS, auth_require_tls=False)
    relay_settings = relay_at(relay.port, **relay_options)
    event = await send_one(make_settings(relay=relay_settings), "someone@example.test", **job)
    assert isinstance(event.detail, Errored)
    assert event.detail.code == code
    assert said in event.detail.message
    assert relay.messages == []
