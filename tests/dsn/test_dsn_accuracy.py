"""Accuracy of kannon.dsn over the shared corpus of 310 real bounces, on two splits (tests/dsn/
corpus.py): the tuning split rules were written against, and the held-out split nobody tunes on.
The held-out figure is the honest one; only its aggregate is printed, never which files failed.

Run with `-s` to see the figures.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.dsn.corpus import Score, is_heldout, load_expected, score
from tests.shared_data import bounce_testdata

DATA = bounce_testdata()
EXPECTED = load_expected(DATA)
HELDOUT = sorted(n for n in EXPECTED if is_heldout(n))
TUNING = sorted(n for n in EXPECTED if not is_heldout(n))
# The held-out file list, frozen: a change of salt, threshold or corpus must be a visible decision.
HELDOUT_DIGEST = "d39be97539d684fe04fe77892701945a7ee319d90772c36d116b80bfe091c495"


@pytest.fixture(scope="module")
def tuning() -> Score:
    return score(DATA, EXPECTED, TUNING)


@pytest.fixture(scope="module")
def heldout() -> Score:
    return score(DATA, EXPECTED, HELDOUT)


def test_split_is_the_frozen_one() -> None:
    assert len(EXPECTED) == 310, "the shared corpus changed size"
    assert len(HELDOUT) == 97
    assert hashlib.sha256("\n".join(HELDOUT).encode()).hexdigest() == HELDOUT_DIGEST


def test_tuning_split(tuning: Score) -> None:
    worst = ", ".join(f"{e}->{g} x{n}" for (e, g), n in tuning.confusion.most_common(8))
    print(f"\ntuning split: {tuning.summary()}; confusions: {worst}")
    assert tuning.a >= 0.95, tuning.summary()
    assert tuning.b >= 0.85, tuning.summary()


def test_heldout_split(heldout: Score) -> None:
    summary = heldout.summary()
    print(f"\nheld-out split: {summary}")
    (a, b) = (heldout.a, heldout.b)
    assert a >= 0.95, summary
    assert b >= 0.85, summary


def test_no_reason_is_systematically_lost(tuning: Score) -> None:
    # A regression that breaks one whole family (say, every mailboxfull) can hide inside a good
    # average; no single confusion pair may account for more than 2% of the recipients.
    if tuning.confusion:
        (pair, count) = tuning.confusion.most_common(1)[0]
        assert count <= 0.02 * tuning.total, f"{pair[0]} classified as {pair[1]} {count} times"
