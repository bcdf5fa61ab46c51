"""Helpers every test folder shares: hand-moved clocks, waiting on a condition with a deadline,
running a Component until it is ready, reading what reached the bus, parsing a received message,
verifying its DKIM signatures. Shared fixtures (servers, database pool, bus) are in conftest.py;
folder-specific set-ups stay in their folder's support module."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import inspect
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
import dns.exception
import nats.aio.client
import nats.errors
from aiohttp import web

from kannon.bus.client import Bus
from kannon.bus.subjects import STATS_STREAM
from kannon.db.database import Database
from kannon.db.domains import insert_domain
from kannon.envelope.dkim import dns_txt_value
from kannon.model.outcome import Outcome
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Component, Life
from kannon.wire.stats import decode

if TYPE_CHECKING:
    from tests.peers.dns import DnsServer

# ---------------------------------------------------------------------------------------------
# Scratch space


@contextlib.contextmanager
def scratch_dir(prefix: str, *, shared: bool = False) -> Iterator[Path]:
    """A fresh folder under /tmp, removed at the end. `shared`: readable by other users, for a
    PostgreSQL that runs as an unprivileged user when the tests run as root."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if shared:
        root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Clocks


class Clock:
    """A wall clock the test moves by hand (Components take it as `clock=`)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Ticks:
    """A monotonic clock in seconds the test moves by hand (caches and rate limits take it)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------------------------------------
# Waiting for a condition


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    what: str,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> None:
    """Poll `predicate` (plain or async) until it holds: waiting for work to be done, not for
    time to pass. Fails naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        verdict = predicate()
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(interval)


def poll_until(
    condition: Callable[[], bool], *, what: str, timeout: float = 30.0, interval: float = 0.05
) -> None:
    """`wait_for` for tests without an event loop (a process exiting, a file appearing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Running a Component


@dataclass
class Running:
    """A Component running under its own Life, as its supervisor would run it."""

    name: str
    life: Life
    task: asyncio.Task[None]

    async def stop(self, timeout: float = 30.0) -> None:
        """Ask for a graceful stop and wait for it (a Component that raises fails the test)."""
        self.life.stopping.set()
        await asyncio.wait_for(self.task, timeout)


async def start_component(component: Component, *, timeout: float = 30.0) -> Running:
    """Run `component` until it says it is ready; fails if it returns or raises first."""
    life = Life(component.name)
    task: asyncio.Task[None] = asyncio.create_task(component.run(life))
    ready = asyncio.create_task(life.wait_ready())
    done, _ = await asyncio.wait(
        {task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if task in done:
        ready.cancel()
        task.result()
        raise AssertionError(f"{component.name} returned before it was ready")
    if ready not in done:
        ready.cancel()
        task.cancel()
        raise AssertionError(f"{component.name} did not become ready within {timeout}s")
    return Running(component.name, life, task)


@contextlib.asynccontextmanager
async def running(component: Component, *, stop_timeout: float = 60.0) -> AsyncIterator[Running]:
    """Run `component` for the block, then stop it gracefully (and check it did)."""
    started = await start_component(component)
    try:
        yield started
    finally:
        await started.stop(stop_timeout)


# ---------------------------------------------------------------------------------------------
# Peers over HTTP


@contextlib.asynccontextmanager
async def http_receiver(
    path: str, handle: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[int]:
    """A loopback HTTP server answering POSTs to `path` with `handle`; yields its port."""
    app = web.Application()
    app.router.add_post(path, handle)
    # A hanging handler must not hold the test's teardown for aiohttp's default 60 s.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------------------------
# Connections that must be refused


async def nats_refusal(url: str) -> str:
    """The error nats-server answers a connection to `url` with (fails if it is accepted)."""
    client = nats.aio.client.Client()
    try:
        await client.connect(url, allow_reconnect=False, connect_timeout=5)
    except nats.errors.Error as refused:
        return str(refused)
    finally:
        # nats-py keeps a refused connection's socket open until its client is closed.
        await client.close()
    raise AssertionError(f"{url} accepted the connection")


# ---------------------------------------------------------------------------------------------
# Rows a test starts from


async def store_domain(
    db: Database,
    name: str,
    *,
    private_key: str = "k",
    public_key: str = "p",
    selector: str = "smtp",
    now: datetime | None = None,
) -> None:
    """A Domain stored as the API stores it (placeholder keys for tests that never sign)."""
    await insert_domain(
        db,
        name=name,
        dkim_private_key=private_key,
        dkim_public_key=public_key,
        dkim_selector=selector,
        now=now or utc_now(),
    )


async def store_batch_row(db: Database, batch_id: str, domain: str) -> None:
    """The bare `messages` row a Batch's Deliveries refer to (no template, no Domain needed)."""
    await db.execute(
        "INSERT INTO messages (message_id, subject, sender_email, sender_alias, template_id,"
        " domain) VALUES ($1, 'Hi', 'a@k.example.com', 'A', 't', $2)",
        batch_id,
        domain,
    )


# ---------------------------------------------------------------------------------------------
# What reached the bus


async def stream_messages(bus: Bus, stream: str) -> list[tuple[str, str, bytes]]:
    """Every message a stream holds, in order: (subject, Nats-Msg-Id, data)."""
    info = await bus.js.stream_info(stream)
    found: list[tuple[str, str, bytes]] = []
    if info.state.messages == 0:
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg(stream, seq)
        assert msg.subject is not None and msg.data is not None
        found.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id", ""), msg.data))
    return found


async def stats_events(bus: Bus) -> list[tuple[str, Outcome]]:
    """Every event on kannon.stats.*, in order: (subject, outcome with its Nats-Msg-Id)."""
    return [
        (subject, decode(data, msg_id))
        for subject, msg_id, data in await stream_messages(bus, STATS_STREAM)
    ]


async def read_events(bus: Bus, subject: str, count: int, timeout: float = 15.0) -> list[Outcome]:
    """The first ``count`` events on ``subject``, waiting for them to be stored."""
    sub = await bus.js.pull_subscribe(subject, stream=STATS_STREAM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    events: list[Outcome] = []
    try:
        while len(events) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"expected {count} events on {subject}, got {len(events)}")
            try:
                msgs = await sub.fetch(count - len(events), timeout=remaining)
            except TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
                events.append(decode(msg.data, (msg.headers or {}).get("Nats-Msg-Id")))
    finally:
        await sub.unsubscribe()
    return events


async def stored_events(bus: Bus) -> int:
    """How many events the stats stream holds (the bus fixture starts it empty)."""
    info = await bus.js.stream_info(STATS_STREAM)
    return int(info.state.messages)


# ---------------------------------------------------------------------------------------------
# Received messages and their DKIM signatures


def parse_message(raw: bytes) -> EmailMessage:
    """A received message, parsed the way a modern mail client would."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def html_of(raw: bytes) -> str:
    """The HTML body of a received message, decoded."""
    part = parse_message(raw).get_body(("html",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


DnsFunc = Callable[..., bytes]
"""dkimpy's `dnsfunc`: the TXT record at a name (b"" when there is none)."""


def published_key(public_key: str, *, selector: str, domain: str) -> DnsFunc:
    """A `dnsfunc` that knows one record: the Domain's DKIM key, as Kannon tells it to publish."""
    txt = dns_txt_value(public_key).encode()
    expected = f"{selector}._domainkey.{domain}.".encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return txt if name == expected else b""

    return dnsfunc


def dns_lookup(dns_server: DnsServer) -> DnsFunc:
    """A `dnsfunc` that asks the test's dnsmasq, like any receiver would."""
    resolver = dns_server.resolver()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        try:
            answer = resolver.resolve(name.decode("ascii").rstrip("."), "TXT")
        except dns.exception.DNSException:
            return b""
        return b"".join(b"".join(rdata.strings) for rdata in answer)

    return dnsfunc


def dkim_verifies(message: bytes, dnsfunc: DnsFunc) -> bool:
    """dkimpy's verdict on the first DKIM-Signature of `message`."""
    return bool(dkim.verify(message, dnsfunc=dnsfunc))


def dkim_verdicts(message: bytes, dnsfunc: DnsFunc) -> list[tuple[str, bool]]:
    """Every DKIM-Signature of `message` in order: (selector, dkimpy's verdict)."""
    verifier = dkim.DKIM(message)
    found = re.findall(rb"^DKIM-Signature:[^\r]*?\bs=([^;]+);", message, re.MULTILINE)
    return [
        (selector.decode(), bool(verifier.verify(idx=i, dnsfunc=dnsfunc)))
        for i, selector in enumerate(found)
    ]
