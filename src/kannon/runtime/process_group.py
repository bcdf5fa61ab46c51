"""`ProcessGroup`: a Component that runs other Components in a child `kannon` process.

`kannon standalone` uses it to spread its Components over several processes (ADR 0040): each
child is exactly what fleet mode runs — `kannon --run-<a> --run-<b>` — configured through `K_`
variables (`config.environment_of`), with its own health port on loopback. To the supervisor of
the standalone process a child is one Component:

* `run` starts it, is ready once the child's `/healthz` answers 200, and then watches it: a
  child that exits by itself is a failure, which stops the whole of standalone (as a crashing
  Component would);
* on stop it sends the child SIGTERM — the child drains its own Components — and waits for it to
  exit (SIGKILL after `grace`), so standalone never exits before its children;
* `check` is the child's health, part of the standalone process's `/healthz`.

Children share the standalone process's stderr (one log stream), run in their own session (a
Ctrl-C reaches standalone, which stops them in order) and die with it if it is killed
(PR_SET_PDEATHSIG through `setpriv`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from kannon.runtime.component import Life
from kannon.runtime.processes import child_argv, free_port

log = logging.getLogger("kannon.standalone")

READY_TIMEOUT = 120.0
_HEALTHZ_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
POLL = 0.1


def kannon_command() -> list[str]:
    """The `kannon` command of this installation (beside the interpreter, as pip puts it)."""
    beside = Path(sys.executable).parent / "kannon"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "import sys; from kannon.cli import main; sys.exit(main())"]


class ChildExited(RuntimeError):
    """A child process ended without being asked to."""


class ProcessGroup:
    def __init__(
        self,
        components: Sequence[str],
        environ: Mapping[str, str],
        *,
        grace: float = 30.0,
        health_port: int | None = None,
    ) -> None:
        self.components = tuple(components)
        self.name = "process:" + "+".join(self.components)
        self.health_port = health_port or free_port()
        self.grace = grace
        self._environ = dict(environ)
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def argv(self) -> list[str]:
        return [*kannon_command(), *(f"--run-{name}" for name in self.components)]

    def env(self) -> dict[str, str]:
        # Ours without K_ variables (the child's configuration is exactly `environ`), then its
        # own health endpoint on loopback.
        env = {k: v for k, v in os.environ.items() if not k.startswith("K_")}
        env.update(self._environ)
        env["K_HEALTH_HOST"] = "127.0.0.1"
        env["K_HEALTH_PORT"] = str(self.health_port)
        env["K_CONFIG"] = os.devnull  # no ~/.kannon.yaml: everything comes from the environment
        return env

    async def run(self, life: Life) -> None:
        proc = await asyncio.create_subprocess_exec(
            *child_argv(self.argv()),
            env=self.env(),
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        self._proc = proc
        log.info(
            "process started",
            extra={"kv": {"group": self.name, "pid": proc.pid, "health_port": self.health_port}},
        )
        exited = asyncio.create_task(proc.wait())
        try:
            await self._wait_ready(exited, life)
            if life.stopping.is_set():
                return
            life.ready()
            stopping = asyncio.create_task(life.stopping.wait())
            try:
                await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if exited.done():
                raise ChildExited(
                    f"{self.name} (pid {proc.pid}) exited with code {proc.returncode}"
                )
        finally:
            await self._stop(proc, exited)

    async def _wait_ready(self, exited: asyncio.Task[int], life: Life) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while not life.stopping.is_set():
            if exited.done():
                raise ChildExited(f"{self.name} exited with code {exited.result()} while starting")
            if await self._healthz() == 200:
                return
            if loop.time() > deadline:
                raise ChildExited(f"{self.name} not healthy after {READY_TIMEOUT:.0f}s")
            await asyncio.sleep(POLL)

    async def _stop(self, proc: asyncio.subprocess.Process, exited: asyncio.Task[int]) -> None:
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), self.grace)
            except TimeoutError:
                log.error("process ignored SIGTERM; killing it", extra={"kv": {"group": self.name}})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await exited

    async def _healthz(self) -> int:
        """Status of the child's /healthz (0: no answer)."""
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.health_port)
                try:
                    writer.write(
                        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                    )
                    await writer.drain()
                    status_line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return 0
        parts = status_line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

    async def check(self) -> None:
        """Health check: the child answers /healthz with 200."""
        status = await self._healthz()
        if status != 200:
            raise RuntimeError(f"{self.name}: /healthz answered {status or 'nothing'}")
