"""A daily report as one self-contained HTML file and as Prefect artifact content."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from pipelines.delivery.report._charts import net_bars, trend_chart
from pipelines.delivery.report._data import EMERGING_MIN_GROWTH, EMERGING_MIN_RECORDS, DailyReport

__all__ = ["priority_rows", "render_html", "report_markdown", "write_html"]

_ENVIRONMENT = Environment(
    loader=PackageLoader("pipelines.delivery.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _signed(value: Any) -> str:
    return "–" if _missing(value) else f"{float(value):+.0f}"


def _hours(value: Any) -> str:
    return "–" if _missing(value) else f"{float(value):.1f}"


def _share(value: Any) -> str:
    return "–" if _missing(value) else f"{100 * float(value):.0f}%"


def _trend(value: Any, baseline: Any, label: str) -> str:
    if _missing(value) or _missing(baseline):
        return f"– vs {label}"
    delta = float(value) - float(baseline)
    arrow = "▲" if delta > 0 else "▼" if delta < 0 else "="
    return f"{arrow} {delta:+.1f} vs {label} ({float(baseline):.1f})"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dict(orient="records")


def render_html(report: DailyReport) -> str:
    """The report as a self-contained HTML page (inline CSS and SVG, no scripts, no CDN).

    Args:
        report: The day's figures.

    Returns:
        The HTML text.
    """
    breakdowns = [
        {
            "breakdown": breakdown,
            "rows": _records(breakdown.rows),
            "svg": net_bars(breakdown.rows, f"By {breakdown.dimension}")
            if not breakdown.rows.empty
            else "",
        }
        for breakdown in report.breakdowns
    ]
    items = report.priority_items
    alerts = report.alerts_by_lead
    return _ENVIRONMENT.get_template("report.html.j2").render(
        report=report,
        trend_svg=trend_chart(report.daily, report.day),
        breakdowns=breakdowns,
        p1=int(((items["priority"] == "P1") & (items["day"] == report.day)).sum()),
        p2=int(((items["priority"] == "P2") & (items["day"] == report.day)).sum()),
        week_items=len(items),
        alerts_sent=int(alerts["sent_today"].sum()) if not alerts.empty else 0,
        leads=int(alerts.loc[alerts["sent_today"] > 0, "lead"].nunique())
        if not alerts.empty
        else 0,
        emerging_min=EMERGING_MIN_RECORDS,
        emerging_growth=EMERGING_MIN_GROWTH,
        signed=_signed,
        hours=_hours,
        share=_share,
        trend=_trend,
        records=_records,
    )


def write_html(report: DailyReport, reports_dir: str | Path) -> Path:
    """Write ``<reports_dir>/<day>.html`` (replacing an earlier version of the same day).

    Args:
        report: The day's figures.
        reports_dir: Destination folder (created when missing).

    Returns:
        Path of the written file.
    """
    folder = Path(reports_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report.day.isoformat()}.html"
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(render_html(report), encoding="utf-8")
    temporary.replace(path)
    return path


def _markdown_table(frame: pd.DataFrame, columns: dict[str, str]) -> list[str]:
    lines = [
        "| " + " | ".join(columns.values()) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in _records(frame):
        cells = []
        for name in columns:
            value = row[name]
            if name.startswith("net"):
                value = _signed(value)
            elif isinstance(value, float):
                value = f"{value:.1f}"
            cells.append(str(value).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report_markdown(report: DailyReport, html_path: Path | None = None) -> str:
    """The markdown summary artifact of a daily report.

    Args:
        report: The day's figures.
        html_path: Where the HTML report was written, mentioned when given.

    Returns:
        Markdown text.
    """
    items = report.priority_items
    lines = [
        f"# Customer feedback {report.day.isoformat()} ({report.timezone})",
        "",
        f"- records: **{report.volume}** ({_trend(report.volume, report.volume_7d, '7-day avg')})",
        f"- net sentiment: **{_signed(report.net)}** "
        f"({_trend(report.net, report.net_28d, 'previous 28 days')})",
        f"- P1/P2 items of the last 7 days: **{len(items)}**",
    ]
    if html_path is not None:
        lines.append(f"- full report: `{html_path}`")
    lines += [f"> {note}" for note in report.notes]
    columns = {"key": "", "volume": "records", "volume_7d": "7-day avg", "net": "net"}
    columns["net_28d"] = "net 28 days"
    for breakdown in report.breakdowns:
        lines += ["", f"## By {breakdown.dimension}", ""]
        if breakdown.rows.empty:
            lines.append(f"No data. {breakdown.note}")
        else:
            named = {**columns, "key": breakdown.dimension}
            lines += _markdown_table(breakdown.rows.head(10), named)
    lines += ["", "## Emerging topics", ""]
    if report.emerging.empty:
        lines.append("None.")
    else:
        lines += _markdown_table(
            report.emerging,
            {"topic": "topic", "last_7d": "last 7 days", "growth": "growth"},
        )
    return "\n".join(lines)


def priority_rows(report: DailyReport) -> list[dict[str, Any]]:
    """The P1/P2 items as rows for a Prefect table artifact.

    Args:
        report: The day's figures.

    Returns:
        One dict per item (priority, created, channel, lang, source, reasons, alert, text).
    """
    return _records(report.priority_items.drop(columns="day"))
