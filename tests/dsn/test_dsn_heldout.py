"""Hand-written bounces in the styles of different MTAs (tests/dsn/heldout/), none of them copied
from the development corpus: a guard against a parser that memorised that corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kannon.dsn import parse_message

HELDOUT = Path(__file__).parent / "heldout"
EXPECTED: dict[str, dict[str, Any]] = json.loads((HELDOUT / "expected.json").read_text())
FIELDS = ("recipient", "action", "status", "reply_code", "reason", "hard_bounce")


def test_every_sample_has_an_expectation() -> None:
    samples = {p.name for p in HELDOUT.glob("*.eml")}
    assert samples == set(EXPECTED)
    assert len(samples) >= 8


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_heldout_sample(name: str) -> None:
    report = parse_message((HELDOUT / name).read_bytes())
    expected = EXPECTED[name]
    got = [{f: getattr(r, f) for f in FIELDS} for r in report.recipients]
    assert report.kind == expected["kind"]
    assert got == expected["recipients"]
