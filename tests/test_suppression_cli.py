"""`kannon suppression list|get|add|remove|import` as an operator runs it, against a real
PostgreSQL: the same rules as the Suppression API, JSON lines in the API's JSON form, one line
on stderr and exit 1 for what the operator must fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kannon.db.database import open_database
from kannon.db.domains import insert_domain
from kannon.suppression_cli import addresses_in
from tests.test_cli import run

A = "a.example.com"
B = "b.example.com"


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


async def test_round_trip(database_url: str, tmp_path: Path) -> None:
    pool = await open_database(database_url)
    try:
        for name in (A, B):
            await insert_domain(
                pool,
                name=name,
                dkim_private_key="k",
                dkim_public_key="p",
                dkim_selector="smtp",
                now=datetime.now(UTC),
            )
    finally:
        await pool.close()

    def kannon(*args: str) -> Any:
        return run("suppression", *args, "--database-url", database_url)

    added = kannon(
        "add",
        A,
        "Ada@Example.ORG",
        "--note",
        "asked by phone",
        "--expires-at",
        "2099-01-01T00:00:00Z",
    )
    assert added.returncode == 0, added.stderr
    [entry] = lines(added.stdout)
    assert entry == {
        "domain": A,
        "address": "Ada@example.org",
        "reason": "manual",
        "note": "asked by phone",
        "createdAt": entry["createdAt"],
        "expiresAt": "2099-01-01T00:00:00Z",
    }
    again = kannon("add", A, "ada@example.org")
    assert again.returncode == 1
    assert (
        again.stderr.strip()
        == f"kannon: address: 'ada@example.org' is already suppressed for '{A}'"
    )

    export = tmp_path / "bounces.csv"
    export.write_text(
        "email,reason\n# exported from the old provider\nbob@x.org,hard\n\nnot-an-address\n"
        '"cy@x.org",complaint\nBOB@x.org\n',
        encoding="utf-8",
    )
    imported = kannon("import", B, str(export), "--note", "migration")
    assert imported.returncode == 0, imported.stderr
    assert lines(imported.stdout) == [{"added": 2, "alreadySuppressed": 1, "rejected": 1}]
    assert "entry 2: address: 'not-an-address' is not a valid email address" in imported.stderr

    listed = kannon("list", B)
    assert [e["address"] for e in lines(listed.stdout)] == ["bob@x.org", "cy@x.org"]
    assert {e["note"] for e in lines(listed.stdout)} == {"migration"}
    assert listed.stderr.strip() == f"2 of 2 suppressed addresses of {B}"
    assert [e["address"] for e in lines(kannon("list", B, "--prefix", "C").stdout)] == ["cy@x.org"]
    assert lines(kannon("list", B, "--reason", "complaint").stdout) == []
    assert [e["address"] for e in lines(kannon("list", A).stdout)] == ["Ada@example.org"]

    got = kannon("get", B, "BOB@x.org")
    assert got.returncode == 0 and lines(got.stdout)[0]["address"] == "bob@x.org"
    removed = kannon("remove", B, "bob@x.org")
    assert removed.returncode == 0 and lines(removed.stdout)[0]["address"] == "bob@x.org"
    assert [e["address"] for e in lines(kannon("list", B).stdout)] == ["cy@x.org"]

    for args, message in [
        (("get", B, "bob@x.org"), f"kannon: 'bob@x.org' is not suppressed for '{B}'"),
        (("remove", B, "bob@x.org"), f"kannon: 'bob@x.org' is not suppressed for '{B}'"),
        (("list", "nope.example.com"), "kannon: domain 'nope.example.com' not found"),
        (("list", B, "--reason", "spam"), "kannon: --reason: 'spam' is not one of"),
        (("add", B, "x@x.org", "--expires-at", "soon"), "kannon: --expires-at: 'soon' is not"),
        (("add", B, "x@x.org", "--expires-at", "2001-01-01"), "kannon: --expires-at: must be in"),
        (("import", B, str(tmp_path / "missing.txt")), "kannon: "),
    ]:
        result = kannon(*args)
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr.startswith(message), (args, result.stderr)


def test_import_files_are_one_address_per_line_or_a_csv_first_column() -> None:
    assert addresses_in(
        ["Email Address,Reason", "a@x.org,bounce", " # note", "", '"b@x.org",x', "c@x.org"]
    ) == ["a@x.org", "b@x.org", "c@x.org"]
    # After the first address, a line without @ is an entry (to be refused), not a header.
    assert addresses_in(["a@x.org", "oops"]) == ["a@x.org", "oops"]
