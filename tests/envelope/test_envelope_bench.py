"""The benchmark helper runs and reports every figure ``make bench`` prints."""

from __future__ import annotations

from kannon.envelope.bench import bench_build, sample_html


def test_sample_html_is_realistic() -> None:
    html = sample_html()
    assert 5000 <= len(html.encode()) <= 6000
    assert html.count("<a href=") == 10


def test_bench_build_reports_figures() -> None:
    result = bench_build(3)
    assert set(result) == {
        "n",
        "html_bytes",
        "message_bytes",
        "dkim_sign_ms",
        "dkim_sign_ms_p50",
        "compose_ms_p50",
        "build_ms_mean",
        "build_ms_p50",
        "build_ms_p99",
        "builds_per_s",
    }
    assert result["n"] == 3
    assert all(value > 0 for value in result.values())
