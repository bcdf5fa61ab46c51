"""Accuracy of kannon.dsn over the shared corpus of 310 real bounces, on two splits (tests/dsn/
corpus.py): the tuning split rules were written against, and the held-out split nobody tunes on.
The held-out figure is the honest one; only its aggregate is printed, never which files failed.

Run with `-s` to see the figures.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.dsn.corpus import WRONG_HARD_LIMIT, Score, is_heldout, load_expected, score
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


# What is asserted, on both splits (fixed before the held-out split was scored, ADR 0023):
# - (a) status class + hard/soft of the classifier's verdict, where an unconfident dead-address
#   reason counts as the hard opinion it is (the figure the 88.5 % measured);
# - (b) exact status and reason;
# - at most 2 % of recipients wrongly called hard by `hard_bounce`, the field suppression acts
#   on. The strict (a), judging `hard_bounce` itself, is printed beside them: it is lower by the
#   hard bounces the classifier reports as uncertain instead of acting on.
A_TARGET = 0.95
B_TARGET = 0.85


def test_tuning_split(tuning: Score) -> None:
    tuning.assert_meets("tuning split", a=A_TARGET, b=B_TARGET, worst=8)


# The held-out (a) was 94.3 % after the classifier work of ADR 0023 and is 95.2 % (100 of 105
# recipients) after the rules of ADR 0055, written against the tuning split and the sisimai
# corpus: the target is met, by one recipient, and is now the floor.
HELDOUT_A_FLOOR = A_TARGET


def test_heldout_split(heldout: Score) -> None:
    summary = heldout.summary()
    print(f"\nheld-out split: {summary}")
    (a, b, wrong_hard) = (heldout.a_opinion, heldout.b, heldout.wrong_hard / heldout.total)
    assert a >= HELDOUT_A_FLOOR, summary
    assert b >= B_TARGET, summary
    assert wrong_hard <= WRONG_HARD_LIMIT, summary


def test_no_reason_is_systematically_lost(tuning: Score) -> None:
    # A regression that breaks one whole family (say, every mailboxfull) can hide inside a good
    # average; no single confusion pair may account for more than 2% of the recipients.
    if tuning.confusion:
        (pair, count) = tuning.confusion.most_common(1)[0]
        assert count <= 0.02 * tuning.total, f"{pair[0]} classified as {pair[1]} {count} times"
