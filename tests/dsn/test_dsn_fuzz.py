"""`parse_message` must never raise: random bytes, truncated and bit-flipped real bounces all come
back as a `DsnReport` whose fields have the promised types and vocabulary."""

from __future__ import annotations

import random
from pathlib import Path

from kannon.dsn import REASONS, DsnReport, parse_message
from tests.shared_data import bounce_testdata

HELDOUT = Path(__file__).parent / "heldout"
CORPUS = bounce_testdata() / "emails"
KINDS = {"bounce", "feedback", "vacation", "delivered", "delayed", "unknown"}


def _samples() -> list[bytes]:
    paths = sorted(HELDOUT.glob("*.eml"))
    if CORPUS.is_dir():
        paths += sorted(CORPUS.glob("*.eml"))[::7]
    return [p.read_bytes() for p in paths]


def _check(report: DsnReport) -> None:
    assert report.kind in KINDS
    assert isinstance(report.notes, list)
    for r in report.recipients:
        assert r.reason in REASONS
        assert r.recipient == r.recipient.lower()
        assert isinstance(r.hard_bounce, bool)
        assert r.permanent == r.status.startswith("5")


def test_random_bytes() -> None:
    rng = random.Random(20260301)
    for _ in range(300):
        raw = rng.randbytes(rng.randrange(0, 4000))
        report = parse_message(raw)
        _check(report)


def test_random_bytes_behind_bounce_headers() -> None:
    # Garbage that claims to be a multipart report reaches the deepest code paths.
    rng = random.Random(7)
    header = (
        b"From: MAILER-DAEMON@example.net\nSubject: Undelivered Mail\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n--b\n'
        b"Content-Type: message/delivery-status\n\nFinal-Recipient: rfc822; "
    )
    for _ in range(200):
        _check(parse_message(header + rng.randbytes(rng.randrange(0, 2000))))


def test_truncated_and_corrupted_real_bounces() -> None:
    rng = random.Random(42)
    samples = _samples()
    assert samples
    for raw in samples:
        for cut in sorted({0, 1, len(raw) // 3, len(raw) // 2, len(raw) - 1}):
            _check(parse_message(raw[:cut]))
        flipped = bytearray(raw)
        for _ in range(max(1, len(raw) // 50)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        _check(parse_message(bytes(flipped)))


def test_non_bytes_input_is_unknown() -> None:
    report = parse_message("not bytes")  # type: ignore[arg-type]  # a caller breaking the contract
    assert report.kind == "unknown"
    assert report.notes
