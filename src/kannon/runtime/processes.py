"""Child server processes (PostgreSQL, nats-server) started by standalone mode and test fixtures.

Children are stopped by their own PID, and on Linux are told to die with their parent
(PR_SET_PDEATHSIG, via util-linux `setpriv`) so a killed Kannon leaves no orphan server behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by this user only (0600) from the first byte
    (credentials and server configurations holding them)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def child_argv(argv: Sequence[str], *, uid: int | None = None, gid: int | None = None) -> list[str]:
    """Wrap `argv` so the child dies with its parent and, when asked, runs as uid/gid.

    Uses util-linux `setpriv` rather than a Python `preexec_fn`: a `preexec_fn` forces a real
    fork(), whose at-fork handlers crash when gRPC threads are running in this process.
    `--pdeathsig` is restored by setpriv after the credential change (which clears it).
    """
    setpriv = shutil.which("setpriv") or (
        "/usr/bin/setpriv" if os.path.exists("/usr/bin/setpriv") else None
    )
    if setpriv is None:
        if uid is not None:
            raise RuntimeError("setpriv (util-linux) is needed to run a server as another user")
        return list(argv)
    wrapped = [setpriv, "--pdeathsig", "TERM"]
    if uid is not None and gid is not None:
        wrapped += ["--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
    return [*wrapped, "--", *argv]


@dataclass
class ChildProcess:
    """A server process we started; `stop()` signals exactly this PID and waits for it."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_child(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    uid: int | None = None,
    gid: int | None = None,
    stop_signal: int = signal.SIGTERM,
    env: dict[str, str] | None = None,
) -> ChildProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            child_argv(argv, uid=uid, gid=gid),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own session: a Ctrl-C in the terminal reaches Kannon only, which then stops its
            # children in order instead of having them die underneath it.
            start_new_session=True,
            env=env,
        )
    return ChildProcess(name, popen, log_path, stop_signal)


def wait_until(child: ChildProcess, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `ready` until it holds; fail with the child's log when it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not child.alive():
            raise RuntimeError(
                f"{child.name} exited with code {child.popen.returncode} before {what}:\n"
                f"{child.log_tail()}"
            )
        time.sleep(0.02)
    child.stop()
    raise RuntimeError(
        f"{child.name} did not become ready ({what}) in {timeout:.0f}s:\n{child.log_tail()}"
    )
