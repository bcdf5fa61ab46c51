"""`kannon bounce parse FILE...`: the operator's view of what the bounce parser makes of saved
messages, one JSON object per line. The only module of `kannon.dsn` that touches files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from kannon.dsn.model import BouncedRecipient, DsnReport
from kannon.dsn.parser import parse_message

USAGE = "usage: kannon bounce parse FILE..."


def report_lines(path: str, report: DsnReport) -> list[dict[str, Any]]:
    """The JSON objects printed for one file: one per recipient, or one for a report without any."""
    recipients = report.recipients or [BouncedRecipient(recipient="", reason=_kind_reason(report))]
    return [
        {
            "file": path,
            "recipient": r.recipient,
            "action": r.action,
            "status": r.status,
            "reply_code": r.reply_code,
            "reason": r.reason,
            "hard_bounce": r.hard_bounce,
            "confident": r.confident,
            "kind": report.kind,
        }
        for r in recipients
    ]


def _kind_reason(report: DsnReport) -> str:
    return report.kind if report.kind in ("feedback", "vacation", "delivered") else "undefined"


def main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Parse each FILE and print its recipients. Exit 0, or 2 when a file cannot be read (the
    readable ones are still printed, so one bad path does not hide the rest)."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=stderr if not argv else stdout)
        return 2 if not argv else 0
    status = 0
    for path in argv:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            print(f"kannon bounce parse: cannot read {path}: {reason}", file=stderr)
            status = 2
            continue
        for line in report_lines(path, parse_message(raw)):
            print(json.dumps(line, ensure_ascii=False), file=stdout)
    return status


if __name__ == "__main__":  # pragma: no cover - convenience for `python -m kannon.dsn.cli`
    raise SystemExit(main(sys.argv[1:]))
