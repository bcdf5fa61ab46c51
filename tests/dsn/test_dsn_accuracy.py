"""Accuracy of kannon.dsn over the shared corpus of 310 real bounces (sisimai's set-of-emails).

Recipients are matched by the `index` of each expected entry. Two figures, as in the issue:
(a) share of expected recipients found with the expected status class and hard-bounce verdict;
(b) share with the exact status and reason, where sisimai's internal "X.0.9xx" codes (the reason's
    pseudo-code when a report carries no status) count as class-only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

import pytest

from kannon.dsn import parse_message
from tests.shared_data import bounce_testdata

DATA = bounce_testdata()
_PSEUDO_STATUS = re.compile(r"^[245]\.0\.9\d\d$")


@dataclass
class Score:
    total: int
    class_and_hard: int
    exact: int
    confusion: Counter[tuple[str, str]]

    @property
    def a(self) -> float:
        return self.class_and_hard / self.total

    @property
    def b(self) -> float:
        return self.exact / self.total


def _status_matches(expected: str, got: str) -> bool:
    if _PSEUDO_STATUS.match(expected):
        return got[:1] == expected[:1]
    return got == expected


@pytest.fixture(scope="module")
def score() -> Score:
    expected_path = DATA / "expected.json"
    expected = json.loads(expected_path.read_text())
    result = Score(0, 0, 0, Counter())
    for name, entries in sorted(expected.items()):
        report = parse_message((DATA / "emails" / name).read_bytes())
        for entry in entries:
            result.total += 1
            index = entry["index"] - 1
            got = report.recipients[index] if index < len(report.recipients) else None
            if got is None:
                result.confusion[(entry["reason"], "<missing>")] += 1
                continue
            if got.status[:1] == entry["status"][:1] and got.hard_bounce == entry["hard_bounce"]:
                result.class_and_hard += 1
            if _status_matches(entry["status"], got.status) and got.reason == entry["reason"]:
                result.exact += 1
            elif got.reason != entry["reason"]:
                result.confusion[(entry["reason"], got.reason)] += 1
    return result


def test_corpus_is_the_expected_size(score: Score) -> None:
    # Guards the figures below against a silently shrunken corpus.
    assert score.total >= 300


def test_status_class_and_hard_bounce(score: Score) -> None:
    print(f"\n(a) status class + hard_bounce: {score.a:.1%} of {score.total}")
    assert score.a >= 0.95, f"(a) = {score.a:.3f}"


def test_exact_status_and_reason(score: Score) -> None:
    worst = ", ".join(f"{e}->{g} x{n}" for (e, g), n in score.confusion.most_common(8))
    print(f"\n(b) exact status + reason: {score.b:.1%} of {score.total}; confusions: {worst}")
    assert score.b >= 0.85, f"(b) = {score.b:.3f}; confusions: {worst}"


def test_no_reason_is_systematically_lost(score: Score) -> None:
    # A regression that breaks one whole family (say, every mailboxfull) can hide inside a good
    # average; no single confusion pair may account for more than 2% of the recipients.
    if score.confusion:
        (pair, count) = score.confusion.most_common(1)[0]
        assert count <= 0.02 * score.total, f"{pair[0]} classified as {pair[1]} {count} times"
