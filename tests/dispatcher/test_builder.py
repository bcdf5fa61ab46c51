"""The Dispatcher's Envelope builders: worker processes build exactly what an inline build does,
an inline build lets the loop run between Envelopes, a broken worker pool costs no Envelope, and
no worker outlives its builder or the process that started it."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kannon.dispatcher.builder import (
    BatchJob,
    Built,
    InlineBuilder,
    ProcessBuilder,
    build_items,
)
from kannon.envelope.build import BatchSpec, RecipientPart
from kannon.envelope.dkim import DkimSigner
from kannon.envelope.tokens import TrackingKey
from kannon.wire import envelope as wire_envelope
from tests.dispatcher.support import BATCH, DOMAIN, HTML, SECRET, SELECTOR, T0, dkim_verifies
from tests.support import parse_message, poll_until


def job(
    dkim_keypair: tuple[str, str], dkim_keys: tuple[tuple[str, str], ...] | None = None
) -> BatchJob:
    values: dict[str, Any] = {
        "batch_id": BATCH,
        "domain": DOMAIN,
        "sender_email": "news@k.example.com",
        "sender_alias": "Kannon News",
        "subject": "Hello {{ name }}",
        "html": HTML,
        "attachments": (("a.txt", b"attached"),),
        "headers_to": (),
        "headers_cc": (),
        "tracker_base_url": "https://track.{domain}",
        "tracking_key": TrackingKey("key_test", b"0123456789abcdef0123"),
        "token_expires_at": T0 + timedelta(days=90),
        "bounce_secret": SECRET.encode(),
        "now": T0,
    }
    spec = BatchSpec(**values)
    return BatchJob(spec, dkim_keys or ((SELECTOR, dkim_keypair[0]),))


def items(count: int) -> list[RecipientPart]:
    made = [
        RecipientPart(
            recipient=f"r{i}@example.org",
            fields={"name": f"R{i}"},
            should_retry=i % 2 == 0,
            boundary_seed=bytes([i]) * 12,
        )
        for i in range(count)
    ]
    # CR/LF in a Recipient cannot make an Envelope: a per-item failure, not a batch one.
    made.append(RecipientPart(recipient="bad\r\n@example.org", boundary_seed=b"x" * 12))
    return made


def signer(dkim_keypair: tuple[str, str]) -> list[DkimSigner]:
    return [DkimSigner(DOMAIN, SELECTOR, dkim_keypair[0])]


def children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


async def test_worker_processes_build_the_same_bytes_as_an_inline_build(
    dkim_keypair: tuple[str, str],
) -> None:
    the_job, the_items = job(dkim_keypair), items(6)
    inline = await InlineBuilder().build(the_job, the_items, signer(dkim_keypair))
    async with ProcessBuilder(2) as builder:
        in_workers = await builder.build(the_job, the_items, signer(dkim_keypair))
    assert in_workers == inline
    assert isinstance(inline[-1], str) and "recipient" in inline[-1]
    for item, built in zip(the_items[:-1], inline[:-1], strict=True):
        assert isinstance(built, Built)
        sent = wire_envelope.decode(built.payload)
        assert (sent.email_id, sent.recipient) == (built.email_id, item.recipient)
        assert sent.should_retry is item.should_retry
        assert dkim_verifies(sent.body, dkim_keypair[1])
        assert parse_message(sent.body)["Subject"] == f"Hello {item.fields['name']}"


async def test_an_inline_build_lets_the_loop_run_between_envelopes(
    dkim_keypair: tuple[str, str],
) -> None:
    ticks = 0
    stop = False

    async def other_component() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_component())
    await asyncio.sleep(0)
    before = ticks
    results = await InlineBuilder().build(job(dkim_keypair), items(12), signer(dkim_keypair))
    during = ticks - before
    stop = True
    await ticker
    assert len(results) == 13
    assert during >= 3  # 13 builds, a yield every 4: the loop ran at least 3 times meanwhile


async def test_workers_are_started_up_front_and_gone_after_the_builder(
    dkim_keypair: tuple[str, str],
) -> None:
    before = children()
    async with ProcessBuilder(2) as builder:
        workers = children() - before
        assert len(workers) == 2  # both started (and warmed up) on entry
        await builder.build(job(dkim_keypair), items(1), signer(dkim_keypair))
    assert children() - before == set()
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_worker_ignores_ctrl_c_sent_to_the_process_group(
    dkim_keypair: tuple[str, str],
) -> None:
    async with ProcessBuilder(1) as builder:
        [worker] = multiprocessing.active_children()
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGINT)
        os.kill(worker.pid, signal.SIGTERM)
        # Still the same worker, still building: signals to the group do not stop it.
        results = await builder.build(job(dkim_keypair), items(1), signer(dkim_keypair))
        assert isinstance(results[0], Built)
        assert multiprocessing.active_children() == [worker]


async def test_a_dead_worker_costs_no_envelope_and_is_replaced(
    dkim_keypair: tuple[str, str],
) -> None:
    the_job, the_items = job(dkim_keypair), items(3)
    expected = build_items(the_job, the_items)
    async with ProcessBuilder(1) as builder:
        [worker] = multiprocessing.active_children()
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        assert await builder.build(the_job, the_items, signer(dkim_keypair)) == expected
        assert await builder.build(the_job, the_items, signer(dkim_keypair)) == expected
        replacement = multiprocessing.active_children()
        assert replacement and worker not in replacement


def test_workers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    # A Dispatcher process killed outright (SIGKILL, OOM) must not leave workers behind.
    script = textwrap.dedent(
        """
        import asyncio, multiprocessing, sys
        from kannon.dispatcher.builder import ProcessBuilder

        async def main() -> None:
            async with ProcessBuilder(1):
                print(multiprocessing.active_children()[0].pid, flush=True)
                await asyncio.Event().wait()

        if __name__ == "__main__":
            asyncio.run(main())
        """
    )
    path = tmp_path / "dispatcher_like.py"
    path.write_text(script)
    with subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None
            worker = int(parent.stdout.readline())
            assert _alive(worker)
        finally:
            parent.kill()
            parent.wait(10)
    poll_until(lambda: not _alive(worker), what="the orphaned worker to exit", timeout=20)


def test_a_job_with_an_unusable_key_fails_each_item_with_the_reason(
    dkim_keypair: tuple[str, str],
) -> None:
    results = build_items(job(dkim_keypair, dkim_keys=((SELECTOR, "not a key"),)), items(2))
    assert len(results) == 3
    assert all(isinstance(r, str) and r.startswith(f"DKIM key of domain {DOMAIN}") for r in results)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
