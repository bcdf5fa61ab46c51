"""`kannon standalone` boots with nothing but the package installed (its own nats-server and
PostgreSQL children, each asking for a credential kept in a 0600 file), answers /healthz, prints
its endpoints with credentials masked, and leaves no child process behind after SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from kannon.config import COMPONENTS
from kannon.runtime.processes import free_port
from kannon.standalone import process_groups
from tests.support import nats_refusal

KANNON = str(Path(sys.executable).parent / "kannon")


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def _healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _check_credentials(data: Path, children: dict[int, str]) -> list[str]:
    """The embedded servers' credentials are in 0600 files, on no command line, and required."""
    password_file, nats_conf = data / "postgres.password", data / "nats.conf"
    for path in (password_file, nats_conf, data / "secret_key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    password = password_file.read_text().strip()
    token = re.search(r'token: "([0-9a-f]+)"', nats_conf.read_text())
    assert token is not None
    assert not [cmd for cmd in children.values() if password in cmd or token.group(1) in cmd]
    pg_port = int((data / "postgres" / "postmaster.pid").read_text().splitlines()[3])
    listen = re.search(r'listen: "127.0.0.1:(\d+)"', nats_conf.read_text())
    assert listen is not None
    nats_port = int(listen.group(1))

    async def refused() -> None:
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg_port}/kannon", timeout=10)
        assert "Authorization Violation" in await nats_refusal(f"nats://127.0.0.1:{nats_port}")

    asyncio.run(refused())
    return [password, token.group(1)]


def _start_standalone(data_dir: Path, health_port: int) -> subprocess.Popen[str]:
    """`kannon standalone` on free loopback ports, the SMTPSender in a second process (as
    `auto` does on two cores or more), its output captured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K_")}
    env["HOME"] = str(data_dir)  # no ~/.kannon.yaml from the developer's machine
    argv = [
        KANNON,
        "standalone",
        *("--data-dir", str(data_dir / "data")),
        *("--api-port", str(free_port()), "--api-http-port", str(free_port())),
        *("--tracker-port", str(free_port())),
        *("--smtp-address", f"127.0.0.1:{free_port()}"),
        *("--health-host", "127.0.0.1", "--health-port", str(health_port)),
        *("--sender-demo-sender", "--sender-hostname", "kannon.test"),
        *("--standalone-processes", "api,validator,dispatcher,smtp,tracker,stats,webhooks;sender"),
    ]
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_healthy(proc: subprocess.Popen[str], health_port: int) -> dict[str, object]:
    """Poll /healthz until 200 (90 s at most, or until standalone exits); the body."""
    deadline = time.monotonic() + 90
    status, body = 0, dict[str, object]()
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status, body = _healthz(health_port)
        except OSError:
            status = 0
        if status == 200:
            return body
        time.sleep(0.2)
    raise AssertionError((status, body, proc.poll()))


def _new_data_dir() -> Path:
    data_dir = Path(tempfile.mkdtemp(prefix="kannon-standalone-", dir="/tmp"))
    data_dir.chmod(0o755)  # PostgreSQL runs as an unprivileged user when the tests run as root
    return data_dir


def test_standalone_boots_serves_healthz_and_stops_cleanly() -> None:
    data_dir = _new_data_dir()
    health_port = free_port()
    proc = _start_standalone(data_dir, health_port)
    try:
        body = _wait_healthy(proc, health_port)
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert checks["db"] == "ok" and checks["nats"] == "ok"
        assert checks["process:sender"] == "ok"
        children = {pid: _cmdline(pid) for pid in _descendants(proc.pid)}
        assert len(children) >= 3  # nats-server, postgres and the sender's process
        [sender] = [cmd for cmd in children.values() if cmd.endswith("kannon --run-sender")]
        assert "--run-api" not in sender
        secrets = _check_credentials(data_dir / "data", children)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "kannon standalone: api" in out
        assert "kannon standalone: process  sender (pid " in out
        # The endpoints are printed with their credentials masked.
        assert "kannon standalone: database postgresql://postgres:***@127.0.0.1:" in out
        assert "kannon standalone: nats     nats://***@127.0.0.1:" in out
        assert not [secret for secret in secrets if secret in out]
        leftovers = {pid: cmd for pid, cmd in children.items() if _alive(pid)}
        assert leftovers == {}, f"children still running after SIGINT: {leftovers}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)


def test_auto_puts_the_sender_in_a_process_of_its_own_when_there_are_two_cores() -> None:
    everything = list(COMPONENTS)
    assert process_groups("auto", 1) == [everything]
    assert process_groups("auto", 2) == [[c for c in everything if c != "sender"], ["sender"]]
    assert process_groups("api,stats;sender", 8) == [["api", "stats"], ["sender"]]


def test_a_component_process_that_dies_stops_standalone_with_a_failure() -> None:
    """A child that exits by itself fails standalone as a crashing Component would: everything
    else stops, nothing is left running, the exit code says so."""
    data_dir = _new_data_dir()
    health_port = free_port()
    proc = _start_standalone(data_dir, health_port)
    try:
        _wait_healthy(proc, health_port)
        children = {pid: _cmdline(pid) for pid in _descendants(proc.pid)}
        [sender] = [pid for pid, cmd in children.items() if cmd.endswith("--run-sender")]
        os.kill(sender, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 1, out
        assert "process:sender" in out and "exited with code -9" in out
        leftovers = {pid: cmd for pid, cmd in children.items() if _alive(pid)}
        assert leftovers == {}, f"children still running: {leftovers}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)
