"""Accuracy of kannon.dsn on a third corpus (tests/dsn/sisimai/): real bounces from the sisimai
project's public samples that are not in `shared/`, with the verdicts sisimai's own test tables give
(ADR 0055). Rules may be written against it; it is a second development corpus beside the tuning
split of `shared/`, so a rule that only fits one MTA's wording in `shared/` shows here.

Run with `-s` to see the figures and the confusions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.dsn.corpus import Score, score

DATA = Path(__file__).parent / "sisimai"
EXPECTED: dict[str, list[dict[str, Any]]] = json.loads((DATA / "expected.json").read_text())

# Measured when the corpus was added (ADR 0055): (a) 82.9 %, (b) 73.2 %, one recipient wrongly
# called hard; after the rules of ADR 0055, written against it and the tuning split: (a) 92.7 %,
# (b) 80.5 %, none. The floors sit just under that, so a regression shows; the 2 % bound on
# wrongly-hard verdicts is the one asserted everywhere (here it allows none).
A_FLOOR = 0.92
B_FLOOR = 0.80


@pytest.fixture(scope="module")
def sisimai() -> Score:
    return score(DATA, EXPECTED, sorted(EXPECTED))


def test_corpus_is_complete() -> None:
    samples = {p.name for p in (DATA / "emails").glob("*.eml")}
    assert samples == set(EXPECTED)
    assert sum(len(v) for v in EXPECTED.values()) == 41


def test_sisimai_corpus(sisimai: Score) -> None:
    sisimai.assert_meets("sisimai corpus", a=A_FLOOR, b=B_FLOOR, worst=10)
