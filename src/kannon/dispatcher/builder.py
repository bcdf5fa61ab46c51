"""Building the Dispatcher's Envelopes off the event loop: in this process with regular yields,
or in worker processes (`dispatcher.build_workers`).

Building and DKIM-signing an Envelope costs about 1 ms of CPU. Done inline for a whole chunk it
stalled the event loop (every other Component in `kannon standalone`) for 100 ms at a time, and
it kept the whole pipeline on one core. So the Dispatcher hands each chunk to a `Builder`:

* `InlineBuilder` builds in the loop's thread but yields to the loop every few Envelopes;
* `ProcessBuilder` builds in a `ProcessPoolExecutor` whose workers use another core while the loop
  publishes the previous chunk and serves the other Components.

What crosses the process boundary is plain, picklable data (`BatchJob`: the Batch's `BatchSpec` and
its key material; one `RecipientPart` per Delivery) and comes back as the encoded `kannon.sending`
payload (`Built`): the Dispatcher's process does not even serialise
the Envelope. A `DkimSigner` holds a parsed OpenSSL key, which cannot be pickled, so a job carries
the key material (every key the Domain signs with: RSA, Ed25519, and during a rotation the
retiring ones) and each worker keeps its own signers, parsed once per (Domain, selector, key).

Randomness (MIME boundary seeds, pseudonymous tracking identities) and the clock are decided by
the Dispatcher and passed in, so a worker builds exactly what an inline build would.

Workers ignore SIGINT and SIGTERM: the Dispatcher owns their lifetime and shuts the pool down when
it stops (a Ctrl-C reaches the whole foreground process group; a worker dying under a chunk would
only cost a fallback). On Linux they also get SIGKILL when the Dispatcher's process dies, so a
killed Kannon leaves no worker behind.

The spawn context also starts multiprocessing's resource tracker, a child process that otherwise
lives until this process has exited and then quits on its own a moment later. Standalone promises
that no child outlives it, so stopping the builder stops (and waits for) the tracker too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Protocol

from kannon.envelope.build import BatchSpec, RecipientPart, build_envelope
from kannon.envelope.dkim import DkimSigner
from kannon.wire import envelope as wire_envelope

log = logging.getLogger("kannon.dispatcher")

# Inline builds between two yields to the loop: ~1 ms each, so the loop stalls a few ms at most.
YIELD_EVERY = 4
# Signers a worker keeps (two to four per Domain in use): a parsed RSA key is a few KB.
SIGNER_CACHE = 256


DkimKeys = tuple[tuple[str, str], ...]
"""(selector, base64 private key) of every key a Domain signs with."""


@dataclass(frozen=True, slots=True)
class BatchJob:
    """One Batch's share of a dispatch cycle: its `BatchSpec` and the key material a worker
    signs with (a parsed `DkimSigner` cannot cross the process boundary)."""

    spec: BatchSpec
    dkim_keys: DkimKeys = field(repr=False)


@dataclass(frozen=True, slots=True)
class Built:
    """A built Envelope as published: its email id and the encoded `EmailToSend`."""

    email_id: str
    payload: bytes


# Per item: the Envelope, or why it cannot be built (the build's ValueError, as text).
BuildResult = Built | str


def build_items(
    job: BatchJob, parts: Sequence[RecipientPart], signers: Sequence[DkimSigner] | None = None
) -> list[BuildResult]:
    """Build and sign the Envelopes of `parts`. Runs in a worker process or inline; `signers`
    (the caller's parsed keys) save a worker's cache lookups when given."""
    domain = job.spec.domain
    if signers is None:
        try:
            signers = [_cached_signer(domain, *key) for key in job.dkim_keys]
        except ValueError as exc:
            return [f"DKIM key of domain {domain}: {exc}"] * len(parts)
    if not signers:
        return [f"domain {domain} has no DKIM key to sign with"] * len(parts)
    return [_build_one(job.spec, part, signers) for part in parts]


def _build_one(batch: BatchSpec, part: RecipientPart, signers: Sequence[DkimSigner]) -> BuildResult:
    try:
        env = build_envelope(batch, part, signers)
    except ValueError as exc:
        return str(exc)
    return Built(env.email_id, wire_envelope.encode(env))


# A worker process's signers; in the Dispatcher's own process the Dispatcher passes its own.
_signers: OrderedDict[tuple[str, str, str], DkimSigner] = OrderedDict()


def _cached_signer(domain: str, selector: str, private_key: str) -> DkimSigner:
    key = (domain, selector, private_key)
    signer = _signers.get(key)
    if signer is None:
        signer = DkimSigner(domain, selector, private_key)
        _signers[key] = signer
        while len(_signers) > SIGNER_CACHE:
            _signers.popitem(last=False)
    else:
        _signers.move_to_end(key)
    return signer


class Builder(Protocol):
    async def build(
        self, job: BatchJob, parts: Sequence[RecipientPart], signers: Sequence[DkimSigner]
    ) -> list[BuildResult]: ...


class InlineBuilder:
    """Builds in the event loop's thread, yielding to the loop every `YIELD_EVERY` Envelopes."""

    async def build(
        self, job: BatchJob, parts: Sequence[RecipientPart], signers: Sequence[DkimSigner]
    ) -> list[BuildResult]:
        results: list[BuildResult] = []
        for start in range(0, len(parts), YIELD_EVERY):
            if start:
                await asyncio.sleep(0)  # let the other Components run between builds
            results += build_items(job, parts[start : start + YIELD_EVERY], signers)
        return results


def _worker_init(parent: int) -> None:
    # See the module docstring: the Dispatcher stops its workers, signals to the group do not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)  # the Dispatcher died before the death signal was armed


def _stop_resource_tracker() -> None:
    """Stop multiprocessing's resource tracker and reap it; the next pool starts a new one.

    Called once the pool is shut down, when its semaphores have been unregistered; `_stop` (a
    private method of CPython 3.8+) closes the tracker's pipe and waits for it to exit.
    """
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()


def _warm_up() -> int:
    return os.getpid()


class ProcessBuilder:
    """Builds in `workers` processes; use as an async context manager (starts and stops them).

    Should the pool break (a worker killed by the OOM killer, say), the chunk at hand is built
    inline and a new pool replaces the broken one: no Delivery notices.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a ProcessBuilder needs at least one worker")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._inline = InlineBuilder()

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn, not fork: forking a process that runs gRPC, NATS and asyncio threads is unsafe.
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )

    async def __aenter__(self) -> ProcessBuilder:
        self._executor = self._new_executor()
        # Start every worker now (they import the envelope package, ~0.3 s), not under the first
        # chunk; and fail at start, not mid-run, if processes cannot be started here.
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, _warm_up) for _ in range(self.workers))
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # Waits for the chunk being built (milliseconds) and for the workers to exit, in a
            # thread so the loop keeps draining the other Components meanwhile.
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
            del executor
            await asyncio.to_thread(_stop_resource_tracker)

    async def build(
        self, job: BatchJob, parts: Sequence[RecipientPart], signers: Sequence[DkimSigner]
    ) -> list[BuildResult]:
        executor = self._executor
        if executor is None:
            raise RuntimeError("ProcessBuilder used outside `async with`")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, build_items, job, list(parts))
        except BrokenProcessPool:
            log.error("envelope build workers died; restarting them, building this chunk inline")
            if self._executor is executor:
                self._executor = self._new_executor()
                executor.shutdown(wait=False, cancel_futures=True)
            return await self._inline.build(job, parts, signers)
