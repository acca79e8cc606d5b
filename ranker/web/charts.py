"""Small charts as inline SVG, drawn on the server: no script, nothing loaded from elsewhere.

Text in a chart goes through :func:`markupsafe.escape` (feature names and labels come from users' data).
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 600, 170
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 12, 28


def _number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


def line_chart(
    title: str,
    points: Sequence[tuple[str, float | None]],
    low: float | None = None,
    high: float | None = None,
    bars: bool = False,
) -> Markup:
    """A line (or bar) chart of ``(label, value)`` points, left to right; None leaves a gap. ``low``/``high``
    fix the y-axis, else it spans the values. The values are also written out as the chart's description."""
    values = [v for _, v in points if v is not None]
    if not values:
        return Markup('<p class="empty">{}: no data yet.</p>').format(title)
    lo = min(values) if low is None else low
    hi = max(values) if high is None else high
    if bars:
        lo = min(lo, 0.0)
    if hi <= lo:
        hi = lo + 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(points) - 1) if not bars else plot_w / max(1, len(points))

    def x(i: int) -> float:
        return LEFT + (i + 0.5) * step if bars else LEFT + (i * step if len(points) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{escape(_number(hi))}</text>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">{escape(_number(lo))}</text>',
    ]
    if bars:
        width = max(1.0, step * 0.7)
        for i, (_, v) in enumerate(points):
            if v is not None:
                top, bottom = y(max(v, 0.0)), y(min(v, 0.0))
                parts.append(
                    f'<rect class="bar" x="{x(i) - width / 2:.1f}" y="{top:.1f}" width="{width:.1f}" '
                    f'height="{max(0.5, bottom - top):.1f}"/>'
                )
    else:
        run: list[str] = []
        for i, (_, v) in enumerate(points):
            if v is None:
                if len(run) > 1:
                    parts.append(f'<polyline class="line" points="{" ".join(run)}"/>')
                run = []
                continue
            run.append(f"{x(i):.1f},{y(v):.1f}")
            parts.append(f'<circle class="dot" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5"/>')
        if len(run) > 1:
            parts.append(f'<polyline class="line" points="{" ".join(run)}"/>')
    first, last = points[0][0], points[-1][0]
    parts.append(f'<text class="tick" x="{LEFT}" y="{HEIGHT - 8}">{escape(first)}</text>')
    parts.append(f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end">{escape(last)}</text>')
    described = "; ".join(f"{label}: {'none' if v is None else _number(v)}" for label, v in points)
    return Markup(
        '<figure class="chart"><figcaption>{title}</figcaption>'
        '<svg class="chart" viewBox="0 0 {w} {h}" role="img" preserveAspectRatio="xMidYMid meet">'
        "<title>{title}</title><desc>{desc}</desc>{body}</svg></figure>"
    ).format(w=WIDTH, h=HEIGHT, title=title, desc=described, body=Markup("".join(parts)))
