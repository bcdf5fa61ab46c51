"""The SMTPSender never reaches the database layer: statically (import-linter contract over
every import, lazy ones included) and at runtime (what importing the Component loads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_import_linter_contracts_are_kept() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The SMTPSender never imports the database layer KEPT" in result.stdout


def test_importing_the_sender_loads_no_database_module() -> None:
    probe = (
        "import sys, kannon.smtp_sender.component\n"
        "bad = sorted(m for m in sys.modules if m == 'asyncpg' or m.startswith('asyncpg.')"
        " or m == 'kannon.db' or m.startswith('kannon.db.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == ""
