"""The delivery pipeline assembled in one process for end-to-end tests.

`Pipeline.start` runs the real Components — ApiComponent, Validator, Dispatcher, SmtpSender and
StatsWorker — each with `run(life)` as an asyncio task, on the test session's PostgreSQL and
nats-server, with Settings made by `load_settings` from CLI-style values (the same path an
operator's flags take). The SMTPSender delivers to the aiosmtpd sink found through the dnsmasq MX
records below. The tenant Domain's key is made first and stored as CreateDomain would, because
dnsmasq must start before gRPC runs in the process (a fork next to live gRPC threads can abort
the child) and reads its records only at start; the test then checks that the DKIM record the
Admin API tells the operator to publish is the one dnsmasq serves, and verifies DKIM through it
like a receiver would. The API key comes from the Admin API.

DNS (all answered by dnsmasq on loopback):

* ``example.test`` and ``xn--bcher-kva.test`` (bücher.test) → MX ``mx.example.test`` → 127.0.0.1
* ``nomail.test`` → null MX (RFC 7505)
* ``<selector>._domainkey.tenant.test`` → the tenant's DKIM key
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from kannon.api.component import ApiComponent
from kannon.bus.client import Bus
from kannon.bus.subjects import STATS_DURABLE, STATS_STREAM
from kannon.config import Settings, load_settings
from kannon.db.database import open_database
from kannon.db.domains import NewKey, insert_domain
from kannon.dispatcher.component import Dispatcher
from kannon.envelope.dkim import (
    ED25519_SHA256,
    dns_txt_value,
    generate_dkim_keypair,
    generate_ed25519_keypair,
)
from kannon.model.domain import DEFAULT_DKIM_SELECTOR, DEFAULT_ED25519_SELECTOR, dkim_record_name
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.admin.apiv1 import adminapiv1_pb2_grpc
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2_grpc
from kannon.pb.mailer.types import send_pb2
from kannon.smtp_sender.component import SmtpSender
from kannon.stats.component import StatsWorker
from kannon.validator.component import Validator
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.support import (
    Running,
    dkim_verdicts,
    dkim_verifies,
    dns_lookup,
    start_component,
    wait_for,
)

TENANT = "tenant.test"
SENDER_EMAIL = f"news@{TENANT}"
SENDER_ALIAS = "Tenant News"
RCPT_DOMAIN = "example.test"
IDN_DOMAIN = "bücher.test"
NULL_MX_DOMAIN = "nomail.test"
MX_HOST = "mx.example.test"
SENDER_HOSTNAME = "sender.kannon.test"
ADMIN_TOKEN = "e2e-operator-token"
SECRET = "e2e-bounce-secret-0123456789abcdef"
TRACKER_BASE = "https://track.{domain}"
TERMINAL = ("rejected", "delivered", "bounced", "failed")


class ShiftedClock:
    """Real time plus an offset the test moves forward: the Dispatcher's retries come due when
    the test says so, without anybody sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def jump_to(self, when: datetime) -> None:
        """Make `when` (aware) the past, never moving the clock backwards."""
        self.offset = max(self.offset, when - datetime.now(UTC) + timedelta(milliseconds=1))


def pipeline_settings(
    *, database_url: str, nats_url: str, dns_server: DnsServer, sink: SmtpSink, **overrides: str
) -> Settings:
    """Settings from CLI-style values (flag dests such as `sender_smtp_port`), env ignored."""
    cli: dict[str, str] = {
        "database_url": database_url,
        "nats_url": nats_url,
        "secret_key": SECRET,
        "api_host": "127.0.0.1",
        "api_port": "0",
        "api_http_port": "0",
        "api_admin_token": ADMIN_TOKEN,
        "sender_hostname": SENDER_HOSTNAME,
        "sender_dns_servers": dns_server.address,
        "sender_smtp_port": str(sink.port),
        "sender_connect_timeout": "5s",
        "sender_command_timeout": "10s",
        "tracker_base_url": TRACKER_BASE,
        "validator_idle_interval": "20ms",
        "dispatcher_idle_interval": "20ms",
        "nats_sending_ack_wait": "60s",
        **overrides,
    }
    return load_settings(cli, {})


def add_recipient_dns(dns_server: DnsServer) -> None:
    dns_server.add_mx(RCPT_DOMAIN, MX_HOST, 10)
    dns_server.add_mx("xn--bcher-kva.test", MX_HOST, 10)
    dns_server.add_host(MX_HOST, "127.0.0.1")
    dns_server.add_null_mx(NULL_MX_DOMAIN)


@dataclass
class StatsRow:
    type: str
    email: str
    data: dict[str, Any]


@dataclass
class Pipeline:
    settings: Settings
    pool: asyncpg.Pool
    bus: Bus
    dns: DnsServer
    sink: SmtpSink
    channel: grpc.aio.Channel
    credentials: tuple[tuple[str, str], ...] = ()
    components: list[Running] = field(default_factory=list)

    @classmethod
    async def start(
        cls,
        *,
        database_url: str,
        nats_url: str,
        bus: Bus,
        dns_server: DnsServer,
        sink: SmtpSink,
        clock: Callable[[], datetime] | None = None,
        jitter: Callable[[], float] | None = None,
        extra_dns: Callable[[DnsServer], None] | None = None,
        **overrides: str,
    ) -> Pipeline:
        # The tenant's key exists before any server starts: dnsmasq must be started before
        # gRPC runs in this process (forking next to live gRPC threads can abort the child), and
        # it reads its records only at start.
        private_key, public_key = await asyncio.to_thread(generate_dkim_keypair)
        # As CreateDomain does: an Ed25519 key beside the RSA one, both signing.
        ed_private, ed_public = generate_ed25519_keypair()
        add_recipient_dns(dns_server)
        dns_server.add_txt(
            dkim_record_name(DEFAULT_DKIM_SELECTOR, TENANT), dns_txt_value(public_key)
        )
        dns_server.add_txt(
            dkim_record_name(DEFAULT_ED25519_SELECTOR, TENANT),
            dns_txt_value(ed_public, ED25519_SHA256),
        )
        if extra_dns is not None:
            extra_dns(dns_server)
        dns_server.start()
        settings = pipeline_settings(
            database_url=database_url,
            nats_url=nats_url,
            dns_server=dns_server,
            sink=sink,
            **overrides,
        )
        pool = await open_database(database_url, max_size=10)
        await insert_domain(
            pool,
            name=TENANT,
            dkim_private_key=private_key,
            dkim_public_key=public_key,
            dkim_selector=DEFAULT_DKIM_SELECTOR,
            now=datetime.now(UTC),
            extra_keys=[
                NewKey(DEFAULT_ED25519_SELECTOR, ED25519_SHA256, ed_private, ed_public),
            ],
        )
        api = ApiComponent(settings, pool)
        running_api = await start_component(api)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{api.port}")
        pipeline = cls(settings, pool, bus, dns_server, sink, channel, components=[running_api])
        try:
            await pipeline._authorize_tenant()
            extra: dict[str, Any] = {}
            if clock is not None:
                extra["clock"] = clock
            if jitter is not None:
                extra["jitter"] = jitter
            for component in (
                Validator(settings, pool, bus),
                Dispatcher(settings, pool, bus, **extra),
                SmtpSender(settings, bus),
                StatsWorker(settings, pool, bus),
            ):
                pipeline.components.append(await start_component(component))
        except BaseException:
            await pipeline.stop()
            raise
        return pipeline

    async def _authorize_tenant(self) -> None:
        admin: Any = adminapiv1_pb2_grpc.ApiStub(self.channel)
        md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        # What the Admin API tells the operator to publish is what dnsmasq serves.
        domain = (await admin.GetDomain(admin_pb.GetDomainReq(domain=TENANT), metadata=md)).domain
        records = [r for r in domain.dns_records if "._domainkey." in r.name]
        assert len(records) == 2  # RSA and Ed25519
        for record in records:
            answer = self.dns.resolver().resolve(record.name, "TXT")
            assert b"".join(b"".join(r.strings) for r in answer).decode() == record.value
        key = await admin.CreateAPIKey(
            admin_pb.CreateAPIKeyRequest(domain=TENANT, name="e2e"), metadata=md
        )
        basic = base64.b64encode(f"{TENANT}:{key.key}".encode()).decode()
        self.credentials = (("authorization", f"Basic {basic}"),)

    async def stop(self) -> None:
        """Stop every Component gracefully (newest first) and check each one returned."""
        failures: list[BaseException] = []
        for running in reversed(self.components):
            try:
                await running.stop()
            except BaseException as exc:  # keep stopping the others, then report
                failures.append(exc)
        self.components.clear()
        await self.channel.close()
        await self.pool.close()
        if failures:
            raise failures[0]

    # -- the caller's side -------------------------------------------------------------------

    async def send_html(
        self,
        recipients: Sequence[str] | Mapping[str, Mapping[str, str]],
        *,
        subject: str = "Hello {{ name }}",
        html: str = "<html><body><p>Hi {{ name }}</p></body></html>",
        scheduled_time: datetime | None = None,
    ) -> Any:
        """SendHTML through the real gRPC client; recipients with fields as a mapping."""
        if isinstance(recipients, Mapping):
            items = [
                send_pb2.Recipient(email=email, fields=dict(fields))
                for email, fields in recipients.items()
            ]
        else:
            items = [send_pb2.Recipient(email=email) for email in recipients]
        request = mailer_pb.SendHTMLReq(
            sender=send_pb2.Sender(email=SENDER_EMAIL, alias=SENDER_ALIAS),
            subject=subject,
            html=html,
            recipients=items,
            scheduled_time=scheduled_time,
        )
        mailer: Any = mailerapiv1_pb2_grpc.MailerStub(self.channel)
        return await mailer.SendHTML(request, metadata=self.credentials)

    # -- what tests look at ------------------------------------------------------------------

    async def stats(self, batch_id: str) -> list[StatsRow]:
        rows = await self.pool.fetch(
            # Event time: Stats stores concurrently handled events in any order.
            "SELECT type, email, data FROM stats WHERE message_id = $1 ORDER BY timestamp, id",
            batch_id,
        )
        return [StatsRow(r["type"], r["email"], r["data"]) for r in rows]

    async def pool_rows(self, batch_id: str) -> dict[str, asyncpg.Record]:
        rows = await self.pool.fetch(
            "SELECT * FROM sending_pool_emails WHERE message_id = $1", batch_id
        )
        return {r["email"]: r for r in rows}

    async def wait_until_settled(self, batch_id: str, recipients: int) -> list[StatsRow]:
        """Wait until every Recipient has a terminal event stored, the Pool holds nothing of the
        Batch and Stats has stored every event published so far; return the Batch's stats rows."""

        async def settled() -> bool:
            ended = {r.email for r in await self.stats(batch_id) if r.type in TERMINAL}
            if len(ended) < recipients or await self.pool_rows(batch_id):
                return False
            info = await self.bus.js.consumer_info(STATS_STREAM, STATS_DURABLE)
            return not info.num_pending and not info.num_ack_pending

        await wait_for(settled, what=f"{recipients} terminal outcomes of {batch_id}")
        return await self.stats(batch_id)

    async def drive_retries(
        self,
        clock: ShiftedClock,
        batch_id: str,
        email: str,
        *,
        max_attempts: int = 20,
    ) -> int:
        """Move `clock` to each retry of one Delivery as soon as it is rescheduled, until the
        Delivery leaves the Pool; returns how many reschedules it went through."""
        seen = 0
        while True:
            state: dict[str, Any] = {}

            async def moved(state: dict[str, Any] = state, seen: int = seen) -> bool:
                row = (await self.pool_rows(batch_id)).get(email)
                state["row"] = row
                if row is None:
                    return True
                return bool(row["status"] == "scheduled" and row["send_attempts_cnt"] > seen)

            await wait_for(moved, what=f"reschedule #{seen + 1} or end of {email}")
            row = state["row"]
            if row is None:
                return seen
            seen = row["send_attempts_cnt"]
            assert seen <= max_attempts, f"{email} was retried more than {max_attempts} times"
            clock.jump_to(row["scheduled_time"].replace(tzinfo=UTC))

    def dkim_verify(self, message: bytes) -> bool:
        """dkimpy's verdict, the key looked up in dnsmasq like any receiver would."""
        return dkim_verifies(message, dns_lookup(self.dns))

    def dkim_verify_each(self, message: bytes) -> list[tuple[str, bool]]:
        """Every DKIM-Signature of `message` in order: (selector, dkimpy's verdict), each key
        looked up in dnsmasq like any receiver would."""
        return dkim_verdicts(message, dns_lookup(self.dns))
