"""MTA-STS (RFC 8461) outbound, against real servers on loopback: dnsmasq answering the MX and
`_mta-sts` TXT records, an https server serving the policy and an SMTP peer with STARTTLS, both
with certificates from one test CA that the sender trusts through `sender.mta_sts.ca_file`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from kannon.bus.client import Bus
from kannon.config import Settings
from kannon.model.outcome import Delivered, Errored
from kannon.smtp_sender.component import SmtpSender
from kannon.smtp_sender.mta_sts import MtaSts
from kannon.smtp_sender.mx import MxResolver
from tests.peers.dns import DnsServer
from tests.peers.fixtures import SinkFactory
from tests.peers.policy_server import POLICY_PATH, PolicyServer
from tests.peers.smtp_sink import SmtpSink
from tests.peers.tls import TlsIdentity, make_identity
from tests.smtp_sender.conftest import (
    MX_HOST,
    RCPT_DOMAIN,
    Outcomes,
    make_job,
    make_settings,
    mx_for,
    publish,
)
from tests.support import Ticks, running

STS_NAME = f"_mta-sts.{RCPT_DOMAIN}"
POLICY_HOST = f"mta-sts.{RCPT_DOMAIN}"
VIOLATED = "MTA-STS policy violated"


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


def logged(caplog: pytest.LogCaptureFixture, message: str) -> list[dict[str, Any]]:
    """The structured fields (`kv`) of every captured log record with this message."""
    return [getattr(r, "kv", {}) for r in caplog.records if r.getMessage() == message]


@dataclass
class StsWorld:
    """The recipient domain's side: DNS, the policy host, and its MX (made per test)."""

    dns: DnsServer
    policy_server: PolicyServer
    ca: TlsIdentity
    sinks: SinkFactory

    async def mx(self, tls: TlsIdentity | None = None) -> SmtpSink:
        """The MX host's SMTP peer: STARTTLS with `tls` (default: the trusted CA's)."""
        return await self.sinks(tls=tls or self.ca)

    def publish(self, text: str, policy_id: str = "1") -> None:
        """MX, `_mta-sts` TXT record and policy host in DNS (started); the policy served."""
        self.policy_server.policy = text
        self.dns.add_txt(STS_NAME, f"v=STSv1; id={policy_id};")
        self.dns.add_host(POLICY_HOST, "127.0.0.1")
        mx_for(self.dns)

    def settings(self, sink: SmtpSink, *, enabled: bool = True, **sender: Any) -> Settings:
        mta_sts = {
            "enabled": enabled,
            "ca_file": str(self.ca.ca_path),
            "policy_port": self.policy_server.port,
        }
        return make_settings(dns=self.dns, port=sink.port, mta_sts=mta_sts, **sender)


@pytest.fixture
async def sts(
    dns_server: DnsServer, smtp_sink_factory: SinkFactory, tls_identity: TlsIdentity
) -> AsyncIterator[StsWorld]:
    server = await PolicyServer(tls_identity).start()
    try:
        yield StsWorld(dns_server, server, tls_identity, smtp_sink_factory)
    finally:
        await server.stop()


async def deliver_one(bus: Bus, outcomes: Outcomes, settings: Settings) -> Delivered | Errored:
    async with running(SmtpSender(settings, bus)):
        await publish(bus, make_job("sts@example.test"))
        [event] = await outcomes.wait(1)
    assert isinstance(event.detail, Delivered | Errored)
    return event.detail


async def test_enforce_delivers_to_a_matching_mx_over_verified_tls(
    bus: Bus, outcomes: Outcomes, sts: StsWorld
) -> None:
    sink = await sts.mx()
    sts.publish(policy("enforce", "*.example.test"))
    assert await deliver_one(bus, outcomes, sts.settings(sink)) == Delivered()
    [message] = sink.messages
    assert message.tls
    # Fetched from the policy host by name (its certificate verified for that name).
    assert sts.policy_server.requests == [(POLICY_PATH, f"{POLICY_HOST}:{sts.policy_server.port}")]


@pytest.mark.parametrize("mode", ["enforce", "testing", "none"])
async def test_an_mx_outside_the_policy_is_deferred_only_when_enforced(
    bus: Bus, outcomes: Outcomes, sts: StsWorld, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.INFO, logger="kannon.sender")
    sink = await sts.mx()
    sts.publish(policy(mode, *(() if mode == "none" else ("mx.elsewhere.test",))))
    detail = await deliver_one(bus, outcomes, sts.settings(sink))
    assert sts.policy_server.fetches == 1
    if mode == "enforce":
        # A temporary failure the Dispatcher retries with the normal budget, naming the cause.
        assert isinstance(detail, Errored)
        assert detail.code == 0
        assert f"MTA-STS policy of {RCPT_DOMAIN} (mode enforce" in detail.message
        assert MX_HOST in detail.message
        assert sink.connections == 0
        assert sink.messages == []
    else:
        assert detail == Delivered()
        assert len(sink.messages) == 1
    violations = logged(caplog, VIOLATED)
    if mode == "none":
        assert violations == []
    else:
        [violation] = violations
        assert violation["check"] == "mx"
        assert violation["mode"] == mode


@pytest.mark.parametrize("mode", ["enforce", "testing"])
async def test_an_mx_certificate_that_does_not_verify_is_deferred_only_when_enforced(
    bus: Bus, outcomes: Outcomes, sts: StsWorld, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.INFO, logger="kannon.sender")
    # The MX's certificate comes from a CA the sender does not trust.
    stranger = make_identity(sts.ca.ca_path.parent.parent / "stranger", (MX_HOST,))
    sink = await sts.mx(stranger)
    sts.publish(policy(mode, MX_HOST))
    detail = await deliver_one(bus, outcomes, sts.settings(sink))
    [violation] = logged(caplog, VIOLATED)
    assert violation["check"] == "certificate"
    if mode == "enforce":
        assert isinstance(detail, Errored)
        assert f"MTA-STS policy of {RCPT_DOMAIN} (mode enforce" in detail.message
        assert "certificate" in detail.message
        assert sink.messages == []
    else:
        assert detail == Delivered()
        [message] = sink.messages
        assert message.tls  # opportunistic, unverified: as without a policy


async def test_enforce_defers_an_mx_without_starttls(
    bus: Bus, outcomes: Outcomes, sts: StsWorld, smtp_sink: SmtpSink
) -> None:
    sts.publish(policy("enforce", MX_HOST))
    detail = await deliver_one(bus, outcomes, sts.settings(smtp_sink))
    assert isinstance(detail, Errored)
    assert "does not offer STARTTLS" in detail.message
    assert smtp_sink.messages == []


async def test_the_policy_is_cached_until_the_txt_id_changes(
    bus: Bus, outcomes: Outcomes, sts: StsWorld
) -> None:
    sink = await sts.mx()
    sts.publish(policy("enforce", MX_HOST), policy_id="20261205a")
    async with running(SmtpSender(sts.settings(sink, max_jobs=1), bus)):
        await publish(bus, make_job("first@example.test"))
        await outcomes.wait(1)
        # A new file under the same id is not looked at while the cached policy is valid.
        sts.policy_server.policy = policy("enforce", "mx.elsewhere.test")
        await publish(bus, make_job("second@example.test"))
        first = await outcomes.wait(2)
        assert [e.detail for e in first] == [Delivered(), Delivered()]
        assert sts.policy_server.fetches == 1

        sts.dns.set_txt(STS_NAME, "v=STSv1; id=20261205b").restart()
        await publish(bus, make_job("third@example.test"))
        third = (await outcomes.wait(3))[2]
    assert sts.policy_server.fetches == 2
    assert isinstance(third.detail, Errored)
    assert "id 20261205b" in third.detail.message
    assert [m.rcpt_tos for m in sink.messages] == [
        ("first@example.test",),
        ("second@example.test",),
    ]


async def test_a_policy_that_cannot_be_fetched_leaves_delivery_as_without_mta_sts(
    bus: Bus, outcomes: Outcomes, sts: StsWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kannon.sender")
    sink = await sts.mx()
    sts.publish(policy("enforce", "mx.elsewhere.test"))
    sts.policy_server.status = 404  # RFC 8461 §5.1: no valid policy, deliver as usual
    assert await deliver_one(bus, outcomes, sts.settings(sink)) == Delivered()
    assert sts.policy_server.fetches == 1
    [failure] = logged(caplog, "MTA-STS policy fetch failed")
    assert "HTTP 404" in failure["error"]
    assert failure["using"] == "no policy"


async def test_mta_sts_is_off_by_default(bus: Bus, outcomes: Outcomes, sts: StsWorld) -> None:
    assert Settings().sender.mta_sts.enabled is False
    sink = await sts.mx()
    sts.publish(policy("enforce", "mx.elsewhere.test"))
    assert await deliver_one(bus, outcomes, sts.settings(sink, enabled=False)) == Delivered()
    assert sts.policy_server.requests == []


# -- the cache, on its own clock (the policy host and DNS still real) --------------------------


def policies(sts: StsWorld, clock: Ticks) -> MtaSts:
    resolver = MxResolver([sts.dns.address], timeout=5)
    port = sts.policy_server.port
    return MtaSts(resolver, ca_file=str(sts.ca.ca_path), port=port, timeout=5, clock=clock)


async def test_a_cached_policy_is_fetched_again_after_max_age(sts: StsWorld) -> None:
    clock = Ticks(1000.0)
    sts.publish(policy("enforce", MX_HOST, max_age=600))
    cache = policies(sts, clock)
    first = await cache.policy(RCPT_DOMAIN)
    assert first is not None
    assert (first.mode, first.mx, first.id) == ("enforce", (MX_HOST,), "1")
    sts.policy_server.policy = policy("testing", MX_HOST, max_age=600)
    clock.now += 599
    assert await cache.policy(RCPT_DOMAIN) == first
    assert sts.policy_server.fetches == 1
    clock.now += 2  # past max_age: the same TXT id no longer keeps it
    again = await cache.policy(RCPT_DOMAIN)
    assert again is not None
    assert again.mode == "testing"
    assert sts.policy_server.fetches == 2


async def test_a_valid_cached_policy_outlives_a_failed_fetch_and_a_missing_txt_record(
    sts: StsWorld,
) -> None:
    clock = Ticks(1000.0)
    sts.publish(policy("enforce", MX_HOST, max_age=600), policy_id="a1")
    cache = policies(sts, clock)
    cached = await cache.policy(RCPT_DOMAIN)
    assert cached is not None

    # A new id whose policy cannot be fetched: the cached policy stays (RFC 8461 §5.1).
    sts.policy_server.status = 500
    sts.dns.set_txt(STS_NAME, "v=STSv1; id=b2").restart()
    assert await cache.policy(RCPT_DOMAIN) == cached
    assert sts.policy_server.fetches == 2

    # No STS record at all any more: still the cached policy, until it expires.
    sts.dns.set_txt(STS_NAME, "v=spf1 -all").restart()
    assert await cache.policy(RCPT_DOMAIN) == cached
    clock.now += 601
    assert await cache.policy(RCPT_DOMAIN) is None
    assert sts.policy_server.fetches == 2


async def test_concurrent_deliveries_share_one_fetch(sts: StsWorld) -> None:
    sts.publish(policy("enforce", MX_HOST))
    cache = policies(sts, Ticks(1000.0))
    found = await asyncio.gather(*(cache.policy(RCPT_DOMAIN) for _ in range(20)))
    assert len({p.id if p else None for p in found}) == 1
    assert sts.policy_server.fetches == 1
