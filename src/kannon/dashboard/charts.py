"""Server-rendered SVG line charts (pure): no JavaScript, no chart library, nothing fetched.

One chart is a set of named series over the same hourly x axis; every point is drawn as a
polyline vertex and the legend names each series with its total (ADR 0043).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

WIDTH = 760
HEIGHT = 220
PAD = 36
COLOURS = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#4b5563")


def line_chart(title: str, labels: Sequence[str], series: Mapping[str, Sequence[int]]) -> str:
    """An SVG document fragment; `labels` name the x positions, each series has one value each."""
    top = max((max(values, default=0) for values in series.values()), default=0) or 1
    n = max(len(labels), 1)
    step = (WIDTH - 2 * PAD) / max(n - 1, 1)

    def x(i: int) -> float:
        return PAD + i * step

    def y(v: int) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * v / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT + 20 * len(series)}"'
        f' role="img" aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'stroke="#999"/>',
        f'<text x="4" y="{PAD}" font-size="11">{top}</text>',
        f'<text x="4" y="{HEIGHT - PAD}" font-size="11">0</text>',
    ]
    if labels:
        parts.append(
            f'<text x="{PAD}" y="{HEIGHT - PAD + 16}" font-size="11">{escape(labels[0])}</text>'
        )
        parts.append(
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 16}" font-size="11" '
            f'text-anchor="end">{escape(labels[-1])}</text>'
        )
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        if points:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
            )
        legend_y = HEIGHT + 14 + 20 * index
        parts.append(
            f'<rect x="{PAD}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{PAD + 18}" y="{legend_y}" font-size="12">'
            f"{escape(name)} ({sum(values)})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
