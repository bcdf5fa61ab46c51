"""Micro-benchmark of Envelope building and DKIM signing, for ``make bench``.

A timing helper, not a pure module: it reads the performance counter and generates a throwaway
DKIM key. It measures on the calling thread only (one core), with a realistic transactional mail:
~5 KB of HTML with 10 links, 3 Recipient fields, tracking on, no attachments.

Run: ``python -m kannon.envelope.bench [N]`` prints the result dict as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from kannon.envelope.build import BatchSpec, RecipientPart, build_envelope, compose_message
from kannon.envelope.dkim import DkimSigner, generate_dkim_keypair
from kannon.envelope.tokens import TrackingKey

T = TypeVar("T")

_PARAGRAPH = (
    '<p style="font-family:Helvetica,Arial,sans-serif;font-size:15px;line-height:22px;'
    'color:#333333;margin:0 0 16px 0">Thanks for your order, {{ name }}. Your package is being '
    "prepared and will ship within two business days. You can follow every step of its journey "
    "from your account page, where you will also find your invoice.</p>\n"
)


def sample_html(links: int = 10, target_bytes: int = 5000) -> str:
    """Return a ~``target_bytes`` HTML mail with ``links`` distinct tracked links."""
    anchors = "".join(
        f'<a href="https://shop.example.com/orders/{{{{ order }}}}?utm_source=mail&amp;item={i}"'
        f' style="color:#0066cc;text-decoration:underline">Item {i}</a><br/>\n'
        for i in range(links)
    )
    head = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Your order</title></head>\n'
        '<body style="margin:0;padding:0;background:#f4f4f4">\n<table width="100%">'
        "<tr><td>\n"
    )
    tail = "</td></tr></table>\n</body></html>\n"
    body = anchors
    while len(head) + len(body) + len(tail) < target_bytes:
        body += _PARAGRAPH
    return head + body + tail


def _batch(html: str, now: datetime) -> BatchSpec:
    return BatchSpec(
        batch_id="msg_k9x2m4p7q1w8e5r3t6y0u2i4@shop.example.com",
        domain="shop.example.com",
        sender_email="orders@shop.example.com",
        sender_alias="Example Shop",
        subject="Your order {{ order }} is confirmed",
        html=html,
        tracker_base_url="https://stats.{domain}",
        tracking_key=TrackingKey("key_bench", b"0123456789abcdef0123456789abcdef"),
        token_expires_at=now + timedelta(days=90),
        bounce_secret=b"fedcba9876543210fedcba9876543210",
        now=now,
    )


def _part(i: int) -> RecipientPart:
    return RecipientPart(
        recipient=f"customer{i}@example.org",
        fields={"name": f"Customer {i}", "order": f"A{i:06d}", "email": f"customer{i}@example.org"},
        boundary_seed=i.to_bytes(8, "big"),
    )


def bench_build(n: int = 2000) -> dict[str, float]:
    """Time ``n`` Envelope builds and ``n`` bare DKIM signatures; return the figures.

    Keys: ``dkim_sign_ms`` / ``dkim_sign_ms_p50`` (DKIM signature of a built message: mean and
    median; the median is the figure to trust on a busy machine), ``compose_ms_p50`` (everything
    but the signature), ``build_ms_mean`` / ``build_ms_p50`` / ``build_ms_p99`` (whole build),
    ``builds_per_s`` (one core, wall clock), ``html_bytes``, ``message_bytes``, ``n``.
    """
    if n < 1:
        raise ValueError("n must be positive")
    private_b64, _ = generate_dkim_keypair()
    signer = DkimSigner("shop.example.com", "smtp", private_b64)
    html = sample_html()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    batch = _batch(html, now)
    parts = [_part(i) for i in range(n)]
    build_envelope(batch, parts[0], signer)  # warm caches (regex, mimetypes) outside the timing

    build_times, total = _timed(lambda part: build_envelope(batch, part, signer), parts)
    last = build_envelope(batch, parts[-1], signer)
    unsigned = compose_message(batch, parts[0])
    compose_times, _ = _timed(lambda part: compose_message(batch, part), parts)
    sign_times, _ = _timed(lambda _: signer.sign(unsigned.headers, unsigned.body, now), parts)

    return {
        "n": float(n),
        "html_bytes": float(len(html.encode())),
        "message_bytes": float(len(last.body)),
        "dkim_sign_ms": statistics.fmean(sign_times) * 1000,
        "dkim_sign_ms_p50": _pct(sign_times, 0.5) * 1000,
        "compose_ms_p50": _pct(compose_times, 0.5) * 1000,
        "build_ms_mean": statistics.fmean(build_times) * 1000,
        "build_ms_p50": _pct(build_times, 0.5) * 1000,
        "build_ms_p99": _pct(build_times, 0.99) * 1000,
        "builds_per_s": n / total,
    }


def _timed(fn: Callable[[T], object], items: Sequence[T]) -> tuple[list[float], float]:
    """Per-call durations (seconds) and the wall time of the whole loop."""
    durations: list[float] = []
    clock = time.perf_counter
    started = clock()
    for item in items:
        t0 = clock()
        fn(item)
        durations.append(clock() - t0)
    return durations, clock() - started


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 2000
    print(json.dumps(bench_build(n), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
