"""The supervisor: a failing Component stops its siblings gracefully, the exit code is non-zero,
stragglers are cancelled after the grace period, and SIGTERM drains in-flight work."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

from kannon.runtime.component import Life
from kannon.runtime.health import HealthRegistry
from kannon.runtime.supervisor import supervise


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.drained = False

    async def run(self, life: Life) -> None:
        life.ready()
        await life.stopping.wait()
        await asyncio.sleep(0)  # pretend to finish in-flight work
        self.drained = True


class Crasher:
    name = "crasher"

    async def run(self, life: Life) -> None:
        life.ready()
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")


class Stubborn:
    name = "stubborn"

    def __init__(self) -> None:
        self.cancelled = False

    async def run(self, life: Life) -> None:
        life.ready()
        try:
            await asyncio.Event().wait()  # ignores life.stopping
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_failure_stops_siblings_and_exits_non_zero() -> None:
    a, b = Worker("a"), Worker("b")
    outcome = await supervise([a, Crasher(), b], install_signals=False, grace=5)
    assert outcome.exit_code == 1
    assert set(outcome.failures) == {"crasher"}
    assert a.drained and b.drained


async def test_requested_stop_drains_and_exits_zero() -> None:
    a = Worker("a")
    stop = asyncio.Event()
    health = HealthRegistry()
    task = asyncio.create_task(supervise([a], stop=stop, health=health, install_signals=False))
    await asyncio.sleep(0.01)
    ok, checks = await health.evaluate()
    assert ok and checks == {"component:a": "ok"}
    stop.set()
    outcome = await task
    assert outcome.exit_code == 0 and a.drained


async def test_straggler_is_cancelled_after_grace() -> None:
    stubborn = Stubborn()
    stop = asyncio.Event()
    stop.set()
    outcome = await supervise([stubborn], stop=stop, install_signals=False, grace=0.05)
    assert stubborn.cancelled
    assert outcome.exit_code == 1


async def test_component_returning_early_is_a_failure() -> None:
    class Quitter:
        name = "quitter"

        async def run(self, life: Life) -> None:
            return None

    outcome = await supervise([Quitter(), Worker("w")], install_signals=False, grace=1)
    assert outcome.exit_code == 1 and "quitter" in outcome.failures


SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from kannon.runtime.component import Life
    from kannon.runtime.supervisor import supervise

    class Slow:
        name = "slow"
        async def run(self, life: Life) -> None:
            life.ready()
            print("ready", flush=True)
            await life.stopping.wait()
            await asyncio.sleep(0.2)   # in-flight work finishing
            print("drained", flush=True)

    sys.exit(asyncio.run(supervise([Slow()], grace=5)).exit_code)
    """
)


def test_sigterm_drains_and_exits_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert "drained" in out
    assert proc.returncode == 0


async def test_run_every_runs_at_once_survives_errors_and_stops() -> None:
    from datetime import timedelta

    from kannon.runtime.component import run_every

    life = Life("housekeeping")
    runs: list[int] = []
    errors: list[BaseException] = []

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        if len(runs) == 3:
            life.stopping.set()

    await asyncio.wait_for(run_every(life, timedelta(0), job, errors.append), timeout=5)
    assert runs == [0, 1, 2]
    assert [str(e) for e in errors] == ["first run fails"]
