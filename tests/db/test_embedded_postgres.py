"""The embedded PostgreSQL asks every connection for the superuser password, which lives only in
a 0600 file beside the data directory; a data directory made with trust authentication (older
Kannon) is upgraded in place, its data kept."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from kannon.db.embedded import HBA_CONF, EmbeddedPostgres, password_file, start_postgres
from tests.support import scratch_dir


@pytest.fixture
def root() -> Iterator[Path]:
    with scratch_dir("kannon-test-pgauth-", shared=True) as path:
        yield path


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _refused(url: str) -> str:
    with pytest.raises(asyncpg.InvalidPasswordError) as caught:
        await asyncpg.connect(url, timeout=10)
    return str(caught.value)


async def _check_locked(server: EmbeddedPostgres) -> None:
    base = f"127.0.0.1:{server.port}/postgres"
    assert "password authentication failed" in await _refused(f"postgresql://postgres@{base}")
    await _refused(f"postgresql://postgres:wrong@{base}")
    await _refused(f"postgresql://nobody@{base}")
    conn = await asyncpg.connect(server.url(), timeout=10)
    try:
        assert await conn.fetchval("SELECT current_user") == "postgres"
    finally:
        await conn.close()


async def test_connections_need_the_password_kept_in_a_0600_file(root: Path) -> None:
    server = start_postgres(root / "data", fast=True)
    try:
        secret = password_file(root / "data")
        assert _mode(secret) == 0o600
        assert secret.stat().st_uid == os.geteuid()
        assert server.password == secret.read_text().strip()
        assert len(server.password) >= 32
        assert _mode(root / "data.log") == 0o600
        assert (root / "data" / "pg_hba.conf").read_text() == HBA_CONF
        # Not on the server's command line, which every local user can read.
        assert server.password.encode() not in _cmdline(server.process.pid)
        await _check_locked(server)
        assert server.password not in repr(server)
    finally:
        server.stop()
    # A restart keeps the same password.
    again = start_postgres(root / "data", fast=True)
    try:
        assert again.password == server.password
        await _check_locked(again)
    finally:
        again.stop()


async def test_a_data_directory_made_with_trust_is_upgraded_and_keeps_its_data(
    root: Path,
) -> None:
    server = start_postgres(root / "data", fast=True)
    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
    finally:
        await conn.close()
    server.stop()
    # What an older Kannon left behind: `initdb --auth=trust`, and no password file.
    hba = root / "data" / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    password_file(root / "data").unlink()

    upgraded = start_postgres(root / "data", fast=True)
    try:
        assert upgraded.password != server.password
        assert _mode(password_file(root / "data")) == 0o600
        assert hba.read_text() == HBA_CONF
        await _check_locked(upgraded)
        conn = await asyncpg.connect(upgraded.url())
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "still here"
        finally:
            await conn.close()
    finally:
        upgraded.stop()


def test_a_password_file_with_lax_permissions_is_tightened(root: Path) -> None:
    server = start_postgres(root / "data", fast=True)
    server.stop()
    secret = password_file(root / "data")
    secret.chmod(0o644)
    again = start_postgres(root / "data", fast=True)
    again.stop()
    assert _mode(secret) == 0o600
    # The single-user step that sets the password leaves no server behind.
    assert subprocess.run(["pgrep", "-f", str(root / "data")], check=False).returncode == 1
