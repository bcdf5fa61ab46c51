"""Hostile reports over real SMTP do not stall the process that receives them.

The smtp and tracker Components run together in one OS process (`kannon --run-smtp --run-tracker`,
as standalone and a small deployment run them). While a hostile report is sent to a valid bounce
address, the test keeps asking the tracker for `/healthz`: every answer must come back quickly,
and the report itself must be answered within a second. A genuine report sent afterwards must
still be recorded.
"""

from __future__ import annotations

import asyncio
import smtplib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kannon.bus.client import Bus
from kannon.envelope import DkimSigner
from kannon.runtime.processes import ChildProcess, free_port, start_child
from tests.fleet.fleet import http_get
from tests.smtp_server.hostile_support import HOSTILE, Hostile
from tests.smtp_server.smtp_support import DOMAIN, SECRET, postfix_dsn, sent_message
from tests.support import read_events

KANNON = str(Path(sys.executable).parent / "kannon")
# The report must be answered within this (from the end of DATA to the reply).
MAX_HANDLING = 1.0
# Every tracker answer while a report is handled must come back within this.
MAX_TRACKER_ANSWER = 0.5


@dataclass
class SmtpAndTracker:
    child: ChildProcess
    smtp_port: int
    tracker_port: int


@pytest.fixture
async def smtp_and_tracker(database_url: str, nats_url: str) -> AsyncIterator[SmtpAndTracker]:
    smtp_port, tracker_port, health_port = free_port(), free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="kannon-hostile-", dir="/tmp"))
    argv = [
        KANNON,
        "--run-smtp",
        "--run-tracker",
        "--nats-url",
        nats_url,
        "--health-host",
        "127.0.0.1",
        "--health-port",
        str(health_port),
        "--smtp-address",
        f"127.0.0.1:{smtp_port}",
        # Room for the 1 MiB report plus its headers.
        "--smtp-max-payload",
        "2mb",
        "--tracker-host",
        "127.0.0.1",
        "--tracker-port",
        str(tracker_port),
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "K_DATABASE_URL": database_url,
        "K_SECRET_KEY": SECRET,
    }
    child = start_child("kannon-smtp-tracker", argv, workdir / "kannon.log", env=env)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            assert child.alive(), f"kannon exited:\n{child.log_tail(40)}"
            try:
                if (await http_get("127.0.0.1", health_port, "/healthz"))[0] == 200:
                    break
            except (OSError, TimeoutError):
                pass
            assert loop.time() < deadline, f"kannon not healthy:\n{child.log_tail(40)}"
            await asyncio.sleep(0.1)
        yield SmtpAndTracker(child, smtp_port, tracker_port)
    finally:
        await asyncio.to_thread(child.stop)
        print(child.log_tail(60))


def _send(port: int, rcpt: str, body: bytes) -> tuple[int, float]:
    """One report over SMTP; the DATA reply code and seconds from the end of data to it."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("mx.far.example")
        assert client.mail("")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        assert client.docmd("DATA")[0] == 354
        client.send(body + b"\r\n.\r\n")
        started = time.monotonic()
        code, _ = client.getreply()
        return code, time.monotonic() - started


async def _poll_tracker(port: int, done: asyncio.Event) -> list[float]:
    """Ask the tracker for /healthz back to back until ``done``; how long each answer took."""
    answers: list[float] = []
    while not done.is_set() or not answers:
        started = time.monotonic()
        status, _ = await http_get("127.0.0.1", port, "/healthz", timeout=30)
        answers.append(time.monotonic() - started)
        assert status == 200
        await asyncio.sleep(0.02)
    return answers


async def _send_while_polling(
    running: SmtpAndTracker, rcpt: str, body: bytes
) -> tuple[int, float, list[float]]:
    done = asyncio.Event()
    poller = asyncio.create_task(_poll_tracker(running.tracker_port, done))
    try:
        code, handling = await asyncio.to_thread(_send, running.smtp_port, rcpt, body)
    finally:
        done.set()
    return code, handling, await poller


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
async def test_hostile_report_is_handled_quickly_and_the_tracker_keeps_answering(
    smtp_and_tracker: SmtpAndTracker, bus: Bus, signer: DkimSigner, hostile: Hostile
) -> None:
    sent = sent_message(signer, f"reader@{DOMAIN}")
    # Warm up: the first report of a process imports and compiles what parsing needs.
    code, _, _ = await _send_while_polling(smtp_and_tracker, sent.bounce_address, postfix_dsn(sent))
    assert code == 250

    code, handling, answers = await _send_while_polling(
        smtp_and_tracker, sent.bounce_address, hostile.message(sent.bounce_address)
    )
    print(f"{hostile.name}: handled in {handling:.3f}s, slowest tracker answer {max(answers):.3f}s")
    assert code == 250
    assert handling < MAX_HANDLING, f"{hostile.name} took {handling:.2f}s"
    assert max(answers) < MAX_TRACKER_ANSWER, f"tracker stalled {max(answers):.2f}s"

    # Nothing else stalled or broke: the genuine report was recorded (once), and a new one is.
    other = sent_message(signer, f"other@{DOMAIN}")
    assert (
        await asyncio.to_thread(
            _send, smtp_and_tracker.smtp_port, other.bounce_address, postfix_dsn(other)
        )
    )[0] == 250
    events = await read_events(bus, "kannon.stats.bounced", 2)
    assert {e.recipient for e in events} == {sent.recipient, other.recipient}
    # Every client above hung up after QUIT: an ordinary end, no error in the process's log.
    assert b"level=error" not in smtp_and_tracker.child.log_path.read_bytes()


async def test_control_characters_from_a_client_are_escaped_in_the_log(
    smtp_and_tracker: SmtpAndTracker,
) -> None:
    # aiosmtpd logs an unrecognised command as it came (a warning, shown in production).
    def script() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", smtp_and_tracker.smtp_port, timeout=15) as client:
            client.ehlo("mx.far.example")
            client.send(b"\x1b[2J\x1b[31mFORGED\rlevel=error msg=pwned\x07\r\n")
            return client.getreply()

    code, _ = await asyncio.to_thread(script)
    assert code == 500
    log_path = smtp_and_tracker.child.log_path
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while b"FORGED" not in log_path.read_bytes():
        assert loop.time() < deadline, "the unrecognised command was not logged"
        await asyncio.sleep(0.05)
    logged = log_path.read_bytes()
    line = next(x for x in logged.splitlines() if b"FORGED" in x)
    # (aiosmtpd logs the command word only, upper-cased)
    assert b'unrecognised: \\x1b[2J\\x1b[31MFORGED\\rLEVEL=ERROR"' in line
    assert not [b for b in logged if b < 0x20 and b != 0x0A], "raw control bytes in the log"
