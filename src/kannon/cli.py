"""The `kannon` command: run Components, standalone mode, migrations, version and operator tools.

Configuration errors end the process with exit code 2 and one line naming the key.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from kannon import __version__
from kannon.config import ConfigError, Settings, add_cli_flags, load_settings, require
from kannon.runtime import event_loop
from kannon.runtime.clock import utc_now
from kannon.runtime.logs import setup_logging

log = logging.getLogger("kannon.cli")

EXIT_CONFIG = 2

SELECT_HELP = (
    "no Component selected: pass one or more of --run-api, --run-validator, --run-dispatcher, "
    "--run-sender, --run-smtp, --run-tracker, --run-stats (or K_RUN_API=true ..., or run-api: true "
    "in the config file), or use `kannon standalone` to run them all"
)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_cli_flags(common)
    parser = argparse.ArgumentParser(
        prog="kannon",
        parents=[common],
        description="Kannon: a cloud-native transactional mail sender. Without a subcommand, "
        "runs the Components selected with --run-* flags.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version")
    sub.add_parser(
        "standalone",
        parents=[common],
        help="run every Component in one process with embedded NATS (and PostgreSQL "
        "when no database_url is set)",
    )
    migrate = sub.add_parser("migrate", parents=[common], help="apply database migrations")
    migrate.add_argument("--status", action="store_true", help="list applied and pending ones")
    migrate.add_argument(
        "target",
        nargs="?",
        default="main",
        help="accepted for compatibility with `kannon migrate main`",
    )
    bounce = sub.add_parser("bounce", help="bounce tools")
    bounce_sub = bounce.add_subparsers(dest="bounce_command", metavar="TOOL", required=True)
    parse = bounce_sub.add_parser(
        "parse", help="parse bounce messages, print one JSON line per bounced recipient"
    )
    parse.add_argument("files", nargs="+")
    domain = sub.add_parser("domain", parents=[common], help="Domain tools")
    domain_sub = domain.add_subparsers(dest="domain_command", metavar="TOOL", required=True)
    dns = domain_sub.add_parser(
        "dns", parents=[common], help="print the DNS records to publish for a Domain"
    )
    dns.add_argument("name")
    check = domain_sub.add_parser(
        "check",
        parents=[common],
        help="look the Domain's records up in DNS (sender.dns_servers): ok, missing or wrong; "
        "confirms pending DKIM keys whose record is published",
    )
    check.add_argument("name")
    from kannon.suppression_cli import add_parser as add_suppression_parser

    add_suppression_parser(sub, common)
    return parser


def _settings(ns: argparse.Namespace) -> Settings:
    cli: dict[str, Any] = vars(ns)
    return load_settings(cli, os.environ, config_path=cli.get("config"))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    ns = _parser().parse_args(args)
    if ns.command == "version":
        print(f"kannon {__version__}")
        return 0
    if ns.command == "bounce":
        from kannon.dsn.cli import main as bounce_main

        return bounce_main(ns.files)
    try:
        settings = _settings(ns)
    except ConfigError as exc:
        print(f"kannon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.debug)
    try:
        if ns.command == "migrate":
            return event_loop.run(_migrate(settings, ns.status), settings.event_loop)
        if ns.command == "domain" and ns.domain_command == "check":
            return event_loop.run(_domain_check(settings, ns.name), settings.event_loop)
        if ns.command == "domain":
            return event_loop.run(_domain_dns(settings, ns.name), settings.event_loop)
        if ns.command == "suppression":
            from kannon.suppression_cli import run as run_suppression

            return event_loop.run(run_suppression(settings, ns), settings.event_loop)
        if ns.command == "standalone":
            from kannon.standalone import run_standalone

            return event_loop.run(run_standalone(settings), settings.event_loop)
        names = settings.selected_components()
        if not names:
            print(f"kannon: {SELECT_HELP}", file=sys.stderr)
            return EXIT_CONFIG
        _check_required(settings, names)
        from kannon.app import run_components

        return event_loop.run(run_components(settings, names), settings.event_loop)
    except (ConfigError, event_loop.EventLoopUnavailable) as exc:
        print(f"kannon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _check_required(settings: Settings, names: Sequence[str]) -> None:
    """Fail at boot, naming the key, when a selected Component lacks a required setting."""
    needs_db = {"api", "validator", "dispatcher", "tracker", "stats", "webhooks"}
    needs_nats = {"validator", "dispatcher", "sender", "smtp", "tracker", "stats", "webhooks"}
    if needs_db & set(names):
        require(settings, "database_url")
    if needs_nats & set(names):
        require(settings, "nats_url")
    if "sender" in names and not settings.sender.demo_sender:
        require(settings, "sender.hostname")
    if {"dispatcher", "smtp"} & set(names):
        require(settings, "secret_key")


async def _migrate(settings: Settings, show_status: bool) -> int:
    from kannon.db.migrate import migrate, status

    url = require(settings, "database_url")
    if show_status:
        for entry in await status(url):
            state = (
                f"applied {entry.applied_at:%Y-%m-%d %H:%M:%S}" if entry.applied_at else "pending"
            )
            print(f"{entry.migration.version:04d}_{entry.migration.name}  {state}")
        return 0
    applied = await migrate(url)
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        print("database is up to date")
    return 0


async def _domain_dns(settings: Settings, name: str) -> int:
    from kannon.db.database import open_database
    from kannon.dns_records import records_for_domain_name

    db = await open_database(require(settings, "database_url"), max_size=1)
    try:
        records = await records_for_domain_name(db, settings, name)
    finally:
        await db.close()
    if records is None:
        print(f"kannon: domain {name!r} not found", file=sys.stderr)
        return 1
    for record in records:
        print(f"{record.type:<5} {record.name:<40} {record.value}   ; {record.purpose}")
    return 0


async def _domain_check(settings: Settings, name: str) -> int:
    """Exit 0 when every check is ok, 1 when one is not (or there is no such Domain), 2 when
    the DNS resolvers do not answer."""

    from kannon.db.database import open_database
    from kannon.db.domains import get_domain
    from kannon.dns_records import check_domain_dns
    from kannon.model.errors import Unavailable

    canonical = name.strip().lower().removesuffix(".")
    db = await open_database(require(settings, "database_url"), max_size=1)
    try:
        domain = await get_domain(db, canonical)
        if domain is None:
            print(f"kannon: domain {name!r} not found", file=sys.stderr)
            return 1
        try:
            checks, confirmed = await check_domain_dns(db, settings, domain, utc_now())
        except Unavailable as exc:
            print(f"kannon: {exc}", file=sys.stderr)
            return 2
    finally:
        await db.close()
    for check in checks:
        print(f"{check.status:<8} {check.kind:<10} {check.name}: {check.detail}")
        if check.status != "ok":
            record = check.expected
            print(f"         publish: {record.type} {record.name} {record.value}")
    for key in confirmed:
        print(f"confirmed DKIM key {key.selector} ({key.algorithm}): it signs from now on")
    return 0 if all(c.status == "ok" for c in checks) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
