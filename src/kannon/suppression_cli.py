"""`kannon suppression list|get|add|remove|import`: a Domain's suppression list from the shell.

Talks to the database directly (`database_url`), as `kannon domain dns` does: an operator on the
machine needs no API token, and the rules are the same code the Suppression API runs (the
`kannon.model.suppression` checks, the `kannon.db.suppressions` writes). Each Suppression is
printed as one JSON line in the API's JSON form (what `buf curl` shows for the same entry).

Exit codes: 0 done, 1 refused (unknown Domain, not suppressed, already suppressed, bad
argument: one line on stderr naming the problem), 2 configuration errors (from `kannon.cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from kannon.config import Settings, require
from kannon.db import domains, suppressions
from kannon.db.database import Database, open_database
from kannon.model.address import canonical_recipient
from kannon.model.domain import canonical_domain_name
from kannon.model.errors import InvalidArgument, KannonError, NotFound
from kannon.model.suppression import (
    REASONS,
    Suppression,
    check_expiry,
    check_note,
    check_reason,
    manual,
    manual_imports,
)
from kannon.runtime.clock import utc_now
from kannon.wire.api import suppression_json

LIST_PAGE = 100


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `kannon suppression ...` on the top-level parser."""
    top = sub.add_parser(
        "suppression", parents=[common], help="a Domain's suppression list (database_url)"
    )
    tools = top.add_subparsers(dest="suppression_command", metavar="TOOL", required=True)
    listing = tools.add_parser(
        "list", parents=[common], help="print a Domain's suppressed addresses, one JSON line each"
    )
    listing.add_argument("domain")
    listing.add_argument("--reason", default="", help=f"only this reason ({', '.join(REASONS)})")
    listing.add_argument("--prefix", default="", help="only addresses starting with this")
    listing.add_argument("--skip", type=int, default=0)
    listing.add_argument("--take", type=int, default=LIST_PAGE, help="0 = all")
    for name, text in (
        ("get", "print one suppressed address"),
        ("remove", "stop suppressing an address (prints what was removed)"),
    ):
        tool = tools.add_parser(name, parents=[common], help=text)
        tool.add_argument("domain")
        tool.add_argument("address")
    add = tools.add_parser("add", parents=[common], help="suppress an address (reason manual)")
    add.add_argument("domain")
    add.add_argument("address")
    _manual_options(add)
    bulk = tools.add_parser(
        "import",
        parents=[common],
        help="suppress every address of a file (one per line, or a CSV's first column; "
        "'-' reads stdin)",
    )
    bulk.add_argument("domain")
    bulk.add_argument("file")
    _manual_options(bulk)


def _manual_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expires-at",
        default=None,
        help="ISO 8601 time the suppression ends (default: never), e.g. 2030-01-31T00:00:00Z",
    )
    parser.add_argument("--note", default="", help="why (kept with the entry)")


def _expiry(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"--expires-at: {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _read(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")


def addresses_in(lines: Iterable[str]) -> list[str]:
    """The addresses of an import file: one per line, or the first column of a CSV (a header
    line without an @ is skipped); blank lines and `#` comments are ignored."""
    found: list[str] = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        first = text.split(",", 1)[0].strip().strip('"').strip()
        if "@" not in first and not found:
            continue  # a CSV header such as "email,reason"
        found.append(first)
    return found


def _print(item: Suppression, out: TextIO) -> None:
    out.write(json.dumps(suppression_json(item), ensure_ascii=False) + "\n")


async def run(settings: Settings, ns: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    db = await open_database(require(settings, "database_url"), max_size=1)
    try:
        return await _run(db, ns, out)
    except KannonError as exc:
        print(f"kannon: {exc}", file=sys.stderr)
        return 1
    finally:
        await db.close()


async def _run(db: Database, ns: argparse.Namespace, out: TextIO) -> int:
    domain = canonical_domain_name(ns.domain)
    if await domains.get_domain(db, domain) is None:
        raise NotFound(f"domain {domain!r} not found")
    now = utc_now()
    command = ns.suppression_command
    if command == "list":
        await _list(db, domain, ns, now, out)
    elif command in ("get", "remove"):
        address = canonical_recipient(ns.address.strip())
        if command == "get":
            found = await suppressions.get(db, domain, address, now)
        else:
            found = await suppressions.remove(db, domain, address)
        if found is None:
            raise NotFound(f"{address!r} is not suppressed for {domain!r}")
        _print(found, out)
    else:
        expires_at = _expiry(ns.expires_at)
        check_expiry(expires_at, now, "--expires-at")
        check_note(ns.note)
        if command == "add":
            item = manual(domain, ns.address, now, expires_at=expires_at, note=ns.note)
            _print(await suppressions.add(db, item, now), out)
        else:
            await _import(db, domain, ns, now, out, expires_at=expires_at)
    return 0


async def _list(
    db: Database, domain: str, ns: argparse.Namespace, now: datetime, out: TextIO
) -> None:
    """Every matching entry from `--skip` on, `--take` at most (0: all), a page at a time."""
    reason = check_reason(ns.reason, "--reason", allow_empty=True)
    take = ns.take if ns.take > 0 else None
    skip = max(ns.skip, 0)
    shown, total = 0, 0
    while True:
        limit = LIST_PAGE if take is None else min(LIST_PAGE, take - shown)
        page, total = await suppressions.list_suppressions(
            db, domain, now, reason=reason, prefix=ns.prefix, offset=skip, limit=limit
        )
        for item in page:
            _print(item, out)
        shown += len(page)
        skip += len(page)
        if len(page) < limit or (take is not None and shown >= take):
            break
    print(f"{shown} of {total} suppressed addresses of {domain}", file=sys.stderr)


async def _import(
    db: Database,
    domain: str,
    ns: argparse.Namespace,
    now: datetime,
    out: TextIO,
    *,
    expires_at: datetime | None,
) -> None:
    try:
        text = await asyncio.to_thread(_read, ns.file)
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{ns.file}: cannot read it ({exc})") from None
    items, refused = manual_imports(
        domain,
        addresses_in(text.splitlines()),
        now,
        expires_at=expires_at,
        note=ns.note,
        field="address",
    )
    for entry in refused:
        print(f"kannon: entry {entry.position + 1}: {entry.reason}", file=sys.stderr)
    counts = await suppressions.import_suppressions(db, domain, items)
    summary = {"added": counts.added, "alreadySuppressed": counts.present, "rejected": len(refused)}
    out.write(json.dumps(summary) + "\n")
