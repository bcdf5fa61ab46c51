"""Where the shared real-world test data lives: `KANNON_BOUNCE_TESTDATA`, else the `shared/`
folder beside the checkout (how CI lays it out), else `/work/shared`. A missing corpus fails the
tests that need it: it is never silently skipped."""

from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = [
    Path(__file__).resolve().parents[2] / "shared" / "testdata" / "bounces",
    Path("/work/shared/testdata/bounces"),
]


def bounce_testdata() -> Path:
    configured = os.environ.get("KANNON_BOUNCE_TESTDATA")
    if configured:
        return Path(configured)
    for candidate in _CANDIDATES:
        if (candidate / "expected.json").is_file():
            return candidate
    raise FileNotFoundError(
        "bounce test data not found: set KANNON_BOUNCE_TESTDATA or put shared/ beside the checkout"
    )
