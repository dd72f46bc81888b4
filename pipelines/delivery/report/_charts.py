"""Charts as inline SVG: no JavaScript, no CDN, readable offline and in any browser."""

from __future__ import annotations

import math
from datetime import date
from xml.sax.saxutils import escape

import pandas as pd

__all__ = ["net_bars", "trend_chart"]

POSITIVE = "#2e7d32"
NEGATIVE = "#c62828"
VOLUME = "#90a4ae"
HIGHLIGHT = "#1565c0"
GRID = "#e0e0e0"
INK = "#37474f"
_FONT = "font-family=\"'DejaVu Sans', 'Noto Sans', Tahoma, Arial, sans-serif\""


def _text(x: float, y: float, content: str, size: int = 11, **attributes: str) -> str:
    extra = " ".join(f'{name.replace("_", "-")}="{value}"' for name, value in attributes.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{INK}" {_FONT} {extra}>'
        f"{escape(content)}</text>"
    )


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def trend_chart(daily: pd.DataFrame, day: date, width: int = 960, height: int = 240) -> str:
    """Daily volume (bars, left axis) and net sentiment (line, right axis -100..100).

    Args:
        daily: ``day``, ``volume``, ``net`` per day, oldest first.
        day: The report day (highlighted).
        width: Pixel width.
        height: Pixel height.

    Returns:
        An ``<svg>`` element.
    """
    left, right, top, bottom = 44, 48, 16, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    count = max(len(daily), 1)
    step = plot_w / count
    peak = max(int(daily["volume"].max()) if len(daily) else 0, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        "<title>Daily volume and net sentiment</title>",
    ]
    has_net = bool(daily["net"].notna().any())
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
        )
        parts.append(_text(left - 6, y + 4, f"{peak * fraction:.0f}", text_anchor="end"))
        if has_net:
            parts.append(_text(left + plot_w + 6, y + 4, f"{-100 + 200 * fraction:+.0f}"))
    points = []
    for index, row in enumerate(daily.to_dict(orient="records")):
        x = left + index * step
        bar_h = plot_h * row["volume"] / peak
        colour = HIGHLIGHT if row["day"] == day else VOLUME
        parts.append(
            f'<rect x="{x + step * 0.15:.1f}" y="{top + plot_h - bar_h:.1f}" '
            f'width="{step * 0.7:.1f}" height="{bar_h:.1f}" fill="{colour}">'
            f"<title>{row['day']}: {row['volume']} records</title></rect>"
        )
        if not _missing(row["net"]):
            y = top + plot_h * (1 - (float(row["net"]) + 100) / 200)
            points.append(f"{x + step / 2:.1f},{y:.1f}")
        if index % 7 == len(daily) % 7 - 1 or row["day"] == day:
            parts.append(
                _text(x + step / 2, height - 14, f"{row['day']:%m-%d}", text_anchor="middle")
            )
    if has_net:
        zero = top + plot_h / 2
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{zero:.1f}" y2="{zero:.1f}" '
            f'stroke="{INK}" stroke-dasharray="3 3" stroke-width="0.6"/>'
        )
    if len(points) > 1:
        parts.append(
            f'<polyline points="{" ".join(points)}" fill="none" stroke="{NEGATIVE}" '
            'stroke-width="2"/>'
        )
    for point in points:
        x, y = point.split(",")
        parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{NEGATIVE}"/>')
    parts.append(_text(left, height - 2, "bars: records per day (left)", size=10))
    if has_net:
        parts.append(
            _text(
                width - right, height - 2, "line: net sentiment (right)", size=10, text_anchor="end"
            )
        )
    parts.append("</svg>")
    return "".join(parts)


def net_bars(rows: pd.DataFrame, title: str, limit: int = 12, width: int = 960) -> str:
    """Net sentiment per key as bars around zero, the previous 28 days as a tick, volume beside.

    Without any net sentiment (no sentiment results), bars show volume instead.

    Args:
        rows: A breakdown's rows (``key``, ``volume``, ``net``, ``net_28d``...).
        title: Accessible title of the chart.
        limit: Most rows drawn (the largest by volume).
        width: Pixel width.

    Returns:
        An ``<svg>`` element.
    """
    shown = rows.head(limit)
    label_w, value_w, row_h, top = 200, 130, 24, 22
    height = top + row_h * len(shown) + 8
    plot_w = width - label_w - value_w
    has_net = shown["net"].notna().any() or shown["net_28d"].notna().any()
    centre = label_w + plot_w / 2 if has_net else label_w
    peak = max(float(shown["volume"].max()), float(shown["volume_7d"].max()), 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{escape(title)}</title>",
        _text(
            label_w,
            14,
            "net sentiment on the day (bar) and over the previous 28 days (tick)"
            if has_net
            else "records on the day (bar) and daily average over the previous 7 days (tick)",
            size=10,
        ),
        f'<line x1="{centre:.1f}" x2="{centre:.1f}" y1="{top}" y2="{height - 6}" '
        f'stroke="{INK}" stroke-width="0.8"/>',
    ]
    for index, row in enumerate(shown.to_dict(orient="records")):
        y = top + index * row_h
        parts.append(_text(label_w - 8, y + 16, str(row["key"])[:32], size=12, text_anchor="end"))
        if has_net:
            value, tick = row["net"], row["net_28d"]
            scale = (plot_w / 2) / 100
        else:
            value, tick = row["volume"], row["volume_7d"]
            scale = plot_w / peak
        if not _missing(value):
            length = float(value) * scale
            colour = (POSITIVE if value >= 0 else NEGATIVE) if has_net else VOLUME
            x = centre if length >= 0 else centre + length
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 5}" width="{abs(length):.1f}" height="{row_h - 10}" '
                f'fill="{colour}"><title>{escape(str(row["key"]))}: {value}</title></rect>'
            )
        if not _missing(tick):
            x = centre + float(tick) * scale
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y + 2}" y2="{y + row_h - 2}" '
                f'stroke="{INK}" stroke-width="2"/>'
            )
        net_text = "–" if _missing(row["net"]) else f"{row['net']:+.0f}"
        parts.append(
            _text(label_w + plot_w + 10, y + 16, f"n={row['volume']}  net {net_text}", size=11)
        )
    parts.append("</svg>")
    return "".join(parts)
