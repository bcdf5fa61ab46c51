"""The `kannon` command as an operator meets it: version, errors naming keys, component selection,
migrations, the bounce tool and the DNS commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kannon.db.database import Database
from tests.dsn.test_dsn_cli import KEYS
from tests.shared_data import bounce_testdata
from tests.support import store_domain

KANNON = str(Path(sys.executable).parent / "kannon")
BOUNCES = bounce_testdata() / "emails"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("K_")}
    base["HOME"] = "/nonexistent-kannon-home"
    base.update(env or {})
    return subprocess.run(
        [KANNON, *args], capture_output=True, text=True, env=base, timeout=60, check=False
    )


def test_version() -> None:
    result = run("version")
    assert result.returncode == 0
    assert result.stdout.startswith("kannon ")


def test_no_component_selected_says_how_to_select() -> None:
    result = run()
    assert result.returncode == 2
    assert "--run-api" in result.stderr and "standalone" in result.stderr


def test_bad_value_names_the_key() -> None:
    result = run("--run-api", "--smtp-read-timeout", "ten")
    assert result.returncode == 2
    assert "smtp.read_timeout" in result.stderr and '"ten"' in result.stderr
    assert result.stderr.count("\n") == 1


def test_missing_required_key_names_it() -> None:
    result = run("--run-dispatcher", env={"K_NATS_URL": "nats://127.0.0.1:1"})
    assert result.returncode == 2
    assert "database_url" in result.stderr and "K_DATABASE_URL" in result.stderr


def test_explicit_config_file_must_exist() -> None:
    result = run("--config", "/nonexistent/kannon.yaml", "--run-api")
    assert result.returncode == 2
    assert "/nonexistent/kannon.yaml" in result.stderr


def test_migrate_and_status(empty_database_url: str) -> None:
    status = run("migrate", "--status", "--database-url", empty_database_url)
    assert status.returncode == 0, status.stderr
    assert "pending" in status.stdout and "applied" not in status.stdout
    first = run("migrate", "--database-url", empty_database_url)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial_schema" in first.stdout
    again = run("migrate", env={"K_DATABASE_URL": empty_database_url})
    assert again.returncode == 0 and "up to date" in again.stdout
    status = run("migrate", "--status", "--database-url", empty_database_url)
    assert "pending" not in status.stdout


def test_bounce_parse_prints_one_json_line_per_recipient() -> None:
    files = sorted(BOUNCES.glob("*.eml"))[:5]
    result = run("bounce", "parse", *map(str, files))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert {line["file"] for line in lines} == {str(f) for f in files}
    for line in lines:
        assert set(line) >= KEYS


async def test_domain_dns_prints_the_records_to_publish(
    database_url: str, pool: Database, dkim_keypair: tuple[str, str]
) -> None:
    private, public = dkim_keypair
    await store_domain(pool, "mail.example.com", private_key=private, public_key=public)
    result = run(
        "domain",
        "dns",
        "mail.example.com",
        "--database-url",
        database_url,
        "--sender-hostname",
        "kannon.example.com",
        "--smtp-domain",
        "kannon.example.com",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("TXT")
        and "smtp._domainkey.mail.example.com" in line
        and f"p={public}" in line
        for line in lines
    ), lines
    assert any(
        line.startswith("TXT") and "v=spf1 a:kannon.example.com -all" in line for line in lines
    ), lines
    assert any(line.startswith("MX") and "kannon.example.com" in line for line in lines), lines
    missing = run("domain", "dns", "nope.example.com", "--database-url", database_url)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_unreachable_database_at_boot_is_one_line_and_exit_1() -> None:
    from kannon.runtime.processes import free_port

    url = f"postgresql://kannon@127.0.0.1:{free_port()}/kannon"
    result = run("--run-api", "--database-url", url, "--health-port", "0")
    assert result.returncode == 1
    assert "cannot start component" in result.stderr and "api" in result.stderr
    assert "Traceback" not in result.stderr


async def test_domain_check_with_silent_resolvers_exits_2(
    database_url: str, pool: Database, dkim_keypair: tuple[str, str]
) -> None:
    """No DNS answer at all is not a verdict on the records: one line, exit code 2."""
    import socket

    private, public = dkim_keypair
    await store_domain(pool, "silent.example.com", private_key=private, public_key=public)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, so no ICMP refusal: it just never answers
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        result = run(
            "domain",
            "check",
            "silent.example.com",
            "--database-url",
            database_url,
            "--sender-dns-servers",
            server,
            "--sender-hostname",
            "kannon.example.com",
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "did not answer" in result.stderr and result.stdout == ""
