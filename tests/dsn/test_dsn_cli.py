"""The operator tool `kannon bounce parse FILE...` (kannon.dsn.cli.main)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from kannon.dsn.cli import main

HELDOUT = Path(__file__).parent / "heldout"
KEYS = {
    "file",
    "recipient",
    "action",
    "status",
    "reply_code",
    "reason",
    "hard_bounce",
    "confident",
}


def _run(*args: str) -> tuple[int, list[dict[str, object]], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return code, lines, err.getvalue()


def test_one_line_per_bounced_recipient() -> None:
    path = str(HELDOUT / "exim-two-recipients.eml")
    code, lines, err = _run(path)
    assert (code, err) == (0, "")
    assert [
        (line["recipient"], line["reason"], line["hard_bounce"], line["confident"])
        for line in lines
    ] == [
        ("carol@mx.receiver.example", "userunknown", True, True),
        ("dan@mx.receiver.example", "mailboxfull", False, True),
    ]
    assert all(set(line) >= KEYS and line["file"] == path for line in lines)


def test_non_bounces_print_one_line_with_their_reason() -> None:
    code, lines, _ = _run(
        str(HELDOUT / "arf-complaint.eml"), str(HELDOUT / "vacation-out-of-office.eml")
    )
    assert code == 0
    assert [line["reason"] for line in lines] == ["feedback", "vacation"]


def test_unknown_message_still_prints_a_line(tmp_path: Path) -> None:
    plain = tmp_path / "plain.eml"
    plain.write_bytes(b"From: a@example.org\nSubject: hi\n\nhello\n")
    code, lines, _ = _run(str(plain))
    assert code == 0
    assert [(line["recipient"], line["reason"], line["kind"]) for line in lines] == [
        ("", "undefined", "unknown")
    ]


def test_unreadable_file_exits_2_and_still_prints_the_rest(tmp_path: Path) -> None:
    missing = tmp_path / "missing.eml"
    code, lines, err = _run(str(missing), str(HELDOUT / "sendmail-hostunknown.eml"))
    assert code == 2
    assert "cannot read" in err and str(missing) in err
    assert [line["reason"] for line in lines] == ["hostunknown"]


def test_no_arguments_prints_usage_and_exits_2() -> None:
    code, lines, err = _run()
    assert (code, lines) == (2, [])
    assert "usage" in err
