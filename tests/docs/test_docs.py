"""The docs describe the code: the README's configuration table is generated from the settings
model, and ARCHITECTURE.md names every package, NATS subject, durable consumer and table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from kannon.bus import subjects
from kannon.db.migrate import load_migrations

ROOT = Path(__file__).resolve().parents[2]


def test_readme_config_table_is_generated_from_the_settings_model() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_table.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_architecture_names_every_package() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    src = ROOT / "src" / "kannon"
    packages = sorted(p.name for p in src.iterdir() if (p / "__init__.py").exists())
    missing = [name for name in packages if f"`{name}/`" not in text]
    assert missing == [], f"ARCHITECTURE.md does not describe: {missing}"


def test_architecture_names_every_subject_consumer_and_table() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    names = [
        v
        for k, v in vars(subjects).items()
        if k.isupper() and isinstance(v, str) and not k.endswith("PREFIX")
    ]
    tables = set()
    for migration in load_migrations():
        tables |= set(re.findall(r"CREATE TABLE (\w+)", migration.up))
    missing = [n for n in [*names, *sorted(tables)] if f"`{n}`" not in text]
    assert missing == [], f"ARCHITECTURE.md does not mention: {missing}"
