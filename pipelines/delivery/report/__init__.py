"""Daily reports people want to read: one self-contained HTML file per day, plus artifacts.

``build_report(store, day, timezone)`` gathers the figures (volume and net sentiment per channel,
language, aspect and topic with 7/28-day trends, emerging topics, negative examples per aspect,
P1/P2 items, alerts and response times per lead); ``write_html`` writes
``<reports_dir>/<day>.html`` with inline SVG charts (no scripts, no CDN); ``report_markdown``
and ``priority_rows`` feed the Prefect artifacts. ``generate_report`` does all of it for a day.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pipelines.analysis.topics import TOPICS_CONFIG, TrendSettings, load_topics_config
from pipelines.config import config_path
from pipelines.delivery.report._charts import net_bars, trend_chart
from pipelines.delivery.report._data import (
    HISTORY_DAYS,
    Breakdown,
    DailyReport,
    NegativeExample,
    build_report,
    default_report_date,
    net_sentiment,
)
from pipelines.delivery.report._render import (
    priority_rows,
    render_html,
    report_markdown,
    write_html,
)
from pipelines.settings import PipelineSettings, reports_dir_for
from pipelines.storage import Store

__all__ = [
    "HISTORY_DAYS",
    "Breakdown",
    "DailyReport",
    "GeneratedReport",
    "NegativeExample",
    "build_report",
    "default_report_date",
    "generate_report",
    "net_bars",
    "net_sentiment",
    "priority_rows",
    "render_html",
    "report_markdown",
    "trend_chart",
    "write_html",
]


@dataclass(frozen=True)
class GeneratedReport:
    """A report written to disk.

    Attributes:
        report: Its figures.
        path: The HTML file.
    """

    report: DailyReport
    path: Path


def generate_report(
    store: Store,
    settings: PipelineSettings,
    day: date | None = None,
    reports_dir: str | os.PathLike[str] | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> GeneratedReport:
    """Build and write the HTML report of one day.

    Args:
        store: The database.
        settings: Pipeline settings (timezone, ``reports_dir``).
        day: Report day in the settings' timezone; default ``default_report_date``.
        reports_dir: Destination folder; default ``reports_dir_for(settings, store.url)``
            (pipeline.yaml's ``reports_dir``, else ``reports/`` beside the database).
        config_dir: Configuration folder; its ``topics.yaml`` sets the spike thresholds (the
            defaults when the folder has none).

    Returns:
        The figures and the written file.
    """
    chosen = day or default_report_date(store, settings.timezone)
    has_topics_config = config_path(TOPICS_CONFIG, config_dir).exists()
    trends = load_topics_config(config_dir).trends if has_topics_config else TrendSettings()
    report = build_report(store, chosen, settings.timezone, trends)
    path = write_html(report, reports_dir or reports_dir_for(settings, store.url))
    return GeneratedReport(report, path)
