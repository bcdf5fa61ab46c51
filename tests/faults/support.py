"""What every fault test shares: a remote MX with a processing time, the Batch, servers a test may
stop and start (its own nats-server and PostgreSQL), and the one verdict they all reach — every
Recipient received once, every Delivery ended exactly once, nothing left in the Pool or queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from kannon.bus.client import Bus
from kannon.bus.embedded import find_binary, jetstream_ready
from kannon.bus.subjects import SENDER_DURABLE, SENDING_STREAM
from kannon.runtime.clock import utc_now
from kannon.runtime.processes import ChildProcess, free_port, start_child, wait_until
from tests.fleet.fleet import RCPT_DOMAIN, TERMINAL, Fleet, add_recipient_dns
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import ReceivedMessage, SmtpSink
from tests.support import wait_for

# The Batch of the infrastructure and cluster fault tests: big enough that the fault lands mid-Batch
# (after KILL_AT messages), small enough to settle within their timeouts.
RECIPIENTS = 300
BOUNCES = 6
SINK_DELAY = 0.01  # seconds the remote spends per message in DATA
KILL_AT = 60


class SlowSink(SmtpSink):
    """The SMTP sink with a remote's processing time in DATA.

    `commit_first=False`: the delay comes before the message is taken, like an MTA scanning it
    and then queueing it just before its 250 (a connection lost during the delay loses the
    message: aiosmtpd cancels the handler). `commit_first=True`: the message is taken first and
    the 250 is slow: a sender dying meanwhile never learns the remote has it.
    """

    def __init__(self, *, delay: float, commit_first: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.delay = delay
        self.commit_first = commit_first
        self.in_data = 0
        """Transactions in DATA right now: the sender's sends in flight."""
        self.max_busy = 0

    async def _record(self, message: ReceivedMessage) -> None:
        self.in_data += 1
        self.max_busy = max(self.max_busy, self.in_data)
        try:
            if self.commit_first:
                await super()._record(message)
                await asyncio.sleep(self.delay)  # the remote's latency, not the test waiting
            else:
                await asyncio.sleep(self.delay)
                await super()._record(message)
        finally:
            self.in_data -= 1


async def slow_remote(
    dns_server: DnsServer, database_url: str, **sink: Any
) -> tuple[SlowSink, asyncpg.Connection]:
    """The recipients' MX, a started SlowSink (`sink`: its options) that dnsmasq, started too,
    points them at; and a connection to watch the database. The caller stops and closes both."""
    remote = SlowSink(**sink)
    await remote.start()
    add_recipient_dns(dns_server)
    dns_server.start()
    return remote, await asyncpg.connect(database_url)


def recipients(count: int, bounces: int = 0) -> dict[str, dict[str, str]]:
    """`count` Recipients of the test MX's domain; the last `bounces` are refused (550)."""
    emails = [f"user{i:05d}@{RCPT_DOMAIN}" for i in range(count - bounces)]
    emails += [f"bounce.user{i:03d}@{RCPT_DOMAIN}" for i in range(bounces)]
    return {email: {"name": f"N{i}"} for i, email in enumerate(emails)}


async def send_batch(
    fleet: Fleet, count: int, bounces: int = 0
) -> tuple[str, dict[str, dict[str, str]], str]:
    """The tenant's Domain and an API key on `fleet`, then one SendHTML Batch to
    `recipients(count, bounces)`: the key's `authorization`, those Recipients and the Batch id."""
    await fleet.create_domain()
    auth = await fleet.create_api_key()
    wanted = recipients(count, bounces)
    return auth, wanted, await fleet.send_html(auth, wanted)


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in Prometheus text format (0 when absent)."""
    total = 0.0
    for found in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
        total += float(found.group(1))
    return total


async def dispatcher_reclaims(fleet: Fleet) -> float:
    """Deliveries the fleet's Dispatcher has taken back from stale claims (Reclaim) so far."""
    return metric(
        await fleet.processes["dispatcher"].metrics(), "kannon_dispatcher_reclaimed_total"
    )


@dataclass
class Verdict:
    """How a Batch ended, as the remote and the stats table saw it."""

    received: collections.Counter[str]
    types: dict[str, list[str]] = field(default_factory=dict)

    @property
    def duplicates(self) -> dict[str, int]:
        return {email: n for email, n in self.received.items() if n > 1}


async def settle(db: asyncpg.Connection, bus: Bus, batch: str, count: int, timeout: float) -> None:
    """Wait until the Batch left the Pool, each Recipient has a terminal stats row, and the
    SMTPSender has nothing left to (re)deliver — the count of received messages is final."""

    async def pool_empty() -> bool:
        left = await db.fetchval(
            "SELECT count(*) FROM sending_pool_emails WHERE message_id = $1", batch
        )
        return bool(left == 0)

    await wait_for(pool_empty, what="the Pool to empty", timeout=timeout, interval=0.2)

    async def all_ended() -> bool:
        ended = await db.fetchval(
            "SELECT count(DISTINCT email) FROM stats WHERE message_id = $1 AND type = ANY($2)",
            batch,
            list(TERMINAL),
        )
        return bool(ended == count)

    await wait_for(all_ended, what="a terminal stats row per recipient", timeout=timeout)

    async def sending_settled() -> bool:
        info = await bus.js.consumer_info(SENDING_STREAM, SENDER_DURABLE)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await wait_for(sending_settled, what="the sending consumer to drain", timeout=timeout)


async def verdict(
    db: asyncpg.Connection, batch: str, wanted: dict[str, dict[str, str]], sink: SmtpSink
) -> Verdict:
    """Check the invariants every fault must keep, and return what a test may look closer at:
    every Recipient accepted once and ended exactly once (delivered, or bounced for `bounce.*`),
    every deliverable Recipient received by the remote at least once."""
    rows = await db.fetch("SELECT email, type FROM stats WHERE message_id = $1 ORDER BY id", batch)
    by_rcpt: dict[str, list[str]] = collections.defaultdict(list)
    for row in rows:
        by_rcpt[row["email"]].append(row["type"])
    assert set(by_rcpt) == set(wanted), "stats of recipients missing or unexpected"
    for email, types in by_rcpt.items():
        assert types.count("accepted") == 1, (email, types)
        ended = [t for t in types if t in TERMINAL]
        expected = "bounced" if email.startswith("bounce.") else "delivered"
        assert ended == [expected], (email, types)
    received = collections.Counter(r.lower() for m in sink.messages for r in m.rcpt_tos)
    should_arrive = {e for e in wanted if not e.startswith("bounce.")}
    assert set(received) == should_arrive, "a delivered recipient never reached the remote"
    return Verdict(received=received, types=dict(by_rcpt))


EVIDENCE_VARIABLE = "KANNON_FAULT_EVIDENCE"


@contextlib.contextmanager
def evidence_on_failure(name: str) -> Iterator[list[Path]]:
    """With `KANNON_FAULT_EVIDENCE=<dir>` set, a test that fails inside the block has the
    directories it added to the yielded list (component logs, server logs) copied to
    `<dir>/<name>-<UTC time>/` before its fixtures delete them: a rare failure in a long series
    of runs can be read afterwards. Without the variable nothing is kept."""
    keep: list[Path] = []
    try:
        yield keep
    except BaseException:
        target = os.environ.get(EVIDENCE_VARIABLE)
        if target:
            where = Path(target) / f"{name}-{utc_now():%Y%m%dT%H%M%S.%f}"
            for i, source in enumerate(keep):
                if source.is_dir():
                    shutil.copytree(source, where / f"{i}-{source.name}", dirs_exist_ok=True)
            print(f"evidence kept in {where}")
        raise


class NatsServer:
    """A nats-server of the test's own: JetStream, loopback, its own client and monitor ports and
    its own store, kept across restarts so that a stop and a start again is an operator's restart
    (or a StatefulSet's pod coming back). `label` names its process and log."""

    def __init__(self, root: Path, label: str = "nats-server") -> None:
        self.root = root
        self.label = label
        self.port = free_port()
        self.monitor_port = free_port()
        self.child: ChildProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def spawn(self, *options: str) -> ChildProcess:
        """Start the server on its ports and store, with `options` added (cluster, name)."""
        self.starts += 1
        argv = [
            str(find_binary()),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-sd",
            str(self.root / "store"),
            *options,
        ]
        self.child = start_child(self.label, argv, self.root / f"nats.{self.starts}.log")
        return self.child


class RestartableNats(NatsServer):
    """A single nats-server, which the test can stop and start again as an operator's restart
    would."""

    def start(self) -> None:
        child = self.spawn()
        port = self.monitor_port
        wait_until(child, lambda: jetstream_ready(port), 30, "JetStream ready")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop_signal = signal.SIGTERM
            self.child.stop(timeout=20)
            self.child = None
