"""The daily report: its figures, its self-contained HTML, a real headless-Chromium screenshot,
the CLI that regenerates it and the Prefect artifacts the nightly flow publishes."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    TaskRunFilter,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.runtime import flow_run
from typer.testing import CliRunner

from flows.cli import app
from flows.nightly import write_report
from pipelines.analysis.topics import TrendSettings
from pipelines.delivery.report import (
    HISTORY_DAYS,
    build_report,
    default_report_date,
    net_sentiment,
    priority_rows,
    render_html,
    report_markdown,
    write_html,
)
from pipelines.delivery.report._charts import NEGATIVE, POSITIVE
from pipelines.settings import PipelineSettings
from pipelines.storage import Store, promote_model, register_model, schema

DAY = date(2026, 11, 10)
ZONE = "Europe/Istanbul"
PERSIAN = "بسته دو هفته دیر رسید و پشتیبانی هیچ جوابی نداد، واقعاً ناامید شدم"


def _record(
    number: int,
    created_at: datetime,
    channel: str = "review",
    lang: str = "en",
    text: str | None = None,
) -> dict[str, Any]:
    return {
        "id": f"{number:032d}",
        "source": "reviews" if channel == "review" else "posts",
        "channel": channel,
        "created_at": created_at,
        "text": text or f"Feedback number {number} about the delivery [EMAIL]",
        "text_hash": f"{number:032x}",
        "lang": lang,
        "run_id": "run-1",
        "ingested_at": created_at,
    }


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _populate(store: Store) -> None:
    """28 days of history plus a report day with every analysis table filled."""
    now = datetime(2026, 11, 11, 6, tzinfo=UTC)
    records, sentiment, aspects, topics = [], [], [], []
    labels = ["positive", "negative", "neutral"]
    for offset in range(1, HISTORY_DAYS + 1):
        for slot in range(2):
            number = offset * 10 + slot
            records.append(_record(number, _at(DAY - timedelta(days=offset), 9 + slot)))
            sentiment.append((number, labels[(offset + slot) % 3]))
            topics.append((number, 1))
    today = [
        # 22:30 UTC on the 9th is 01:30 on the 10th in Istanbul: it belongs to the report day.
        (1, datetime(2026, 11, 9, 22, 30, tzinfo=UTC), "review", "en", None, "positive"),
        (2, _at(DAY, 8), "review", "tr", "Teslimat çok hızlıydı, teşekkürler", "positive"),
        (
            3,
            _at(DAY, 9),
            "review",
            "ro",
            "Coletul a ajuns deteriorat, scrieți-mi la [EMAIL]",
            "negative",
        ),
        (4, _at(DAY, 10), "social", "fa", PERSIAN, "negative"),
    ]
    for number, created, channel, lang, text, label in today:
        records.append(_record(number, created, channel, lang, text))
        sentiment.append((number, label))
        aspects.append((number, "delivery", "negative" if label == "negative" else "positive"))
        topics.append((number, 7))
    records.append(_record(5, _at(DAY, 11), "social", "en", "Refund still missing"))
    topics += [(5, 7)]
    store.upsert(schema.feedback, records)
    store.upsert(
        schema.sentiment,
        [
            {
                "record_id": f"{n:032d}",
                "model_version": "sent-1",
                "label": label,
                "negative": 0.1,
                "neutral": 0.1,
                "positive": 0.8,
                "sentences": [],
                "run_id": "run-1",
                "created_at": now,
            }
            for n, label in sentiment
        ],
    )
    store.upsert(
        schema.aspects,
        [
            {
                "record_id": f"{n:032d}",
                "aspect": aspect,
                "model_version": "asp-1",
                "polarity": polarity,
                "score": 0.9 if n == 4 else 0.7,
                "run_id": "run-1",
                "created_at": now,
            }
            for n, aspect, polarity in aspects
        ],
    )
    store.upsert(
        schema.record_topics,
        [
            {
                "record_id": f"{n:032d}",
                "model_version": "top-1",
                "topic_id": topic,
                "similarity": 0.8,
                "run_id": "run-1",
                "created_at": now,
            }
            for n, topic in topics
        ],
    )
    store.upsert(
        schema.topics,
        [
            {
                "model_version": "top-1",
                "topic_id": 1,
                "keywords": ["price"],
                "size": 20,
                "auto_label": "price",
            },
            {
                "model_version": "top-1",
                "topic_id": 7,
                "keywords": [["late", 0.4], ["courier", 0.2]],
                "size": 5,
                "auto_label": "late courier",
            },
        ],
    )
    store.upsert(
        schema.topic_labels, [{"topic_id": 7, "label": "Late deliveries", "updated_at": now}]
    )
    store.upsert(
        schema.flags,
        [
            {
                "record_id": f"{n:032d}",
                "rules_version": "rules-1",
                "flagged": True,
                "priority": priority,
                "points": 9,
                "reasons": reasons,
                "churn_intent": False,
                "run_id": "run-1",
                "created_at": now,
            }
            for n, priority, reasons in (
                (4, "P1", ["public post", "negative 0.97"]),
                (3, "P2", ["damaged parcel"]),
                (5, "P3", ["refund"]),
            )
        ],
    )
    store.upsert(
        schema.alerts,
        [
            {
                "record_id": f"{4:032d}",
                "route": "fa",
                "kind": "p1",
                "alert_id": "a1",
                "priority": "P1",
                "recipients": ["fa-lead@example.com"],
                "status": "sent",
                "attempts": 1,
                "last_error": None,
                "next_attempt_at": None,
                "generation": 0,
                "payload": {},
                "sla_hours": 4.0,
                "respond_by": now + timedelta(hours=4),
                "message_id": "<m1@example.com>",
                "created_at": now,
                "updated_at": now,
                "claimed_at": None,
                "sent_at": now,
                "acked_at": now + timedelta(hours=1),
                "resolved_at": None,
                "resolution": None,
            }
        ],
    )


@pytest.fixture
def populated(store: Store) -> Store:
    _populate(store)
    return store


def test_net_sentiment_is_positive_minus_negative_share() -> None:
    labels = pd.Series(["positive", "positive", "negative", "neutral", None])
    assert net_sentiment(labels) == 25.0
    assert net_sentiment(pd.Series([], dtype=object)) is None


def test_report_figures_per_dimension_trend_and_sections(populated: Store) -> None:
    report = build_report(populated, DAY, ZONE)

    assert report.volume == 5 and report.volume_7d == 2.0
    assert report.net == 0.0  # 2 positive, 2 negative, 1 without sentiment
    by = {b.dimension: b.rows.set_index("key") for b in report.breakdowns}
    assert by["channel"].loc["review", "volume"] == 3
    assert by["channel"].loc["review", "net"] == pytest.approx(33.3)
    assert by["channel"].loc["social", "net"] == -100.0
    assert by["language"].loc["fa", "volume"] == 1
    assert by["aspect"].loc["delivery", "volume"] == 4
    assert by["aspect"].loc["delivery", "net"] == 0.0
    assert by["topic"].loc["Late deliveries", "volume"] == 5  # human label wins
    assert by["channel"].loc["review", "volume_7d"] == 2.0
    assert by["topic"].loc["price", "volume"] == 0 and by["topic"].loc["price", "volume_7d"] == 2.0

    assert report.emerging["topic"].tolist() == ["Late deliveries"]
    assert report.spikes.empty  # two negative records: below the default min_count of 8
    sensitive = build_report(populated, DAY, ZONE, TrendSettings(min_count=2, max_p_value=0.5))
    spikes = sensitive.spikes.set_index("name")
    assert spikes.loc["Late deliveries", "kind"] == "topic"
    assert bool(spikes.loc["Late deliveries", "emerging"])
    assert spikes.loc["delivery", "count"] == 2
    examples = report.negative_examples["delivery"]
    assert examples[0].text == PERSIAN and examples[0].lang == "fa"
    items = report.priority_items
    assert items["priority"].tolist() == ["P1", "P2"]
    assert items.set_index("priority").loc["P1", "alert"] == "acked"
    lead = report.alerts_by_lead.set_index("lead").loc["fa-lead@example.com"]
    assert lead["sent_today"] == 1 and lead["median_hours_to_ack"] == pytest.approx(1.0)
    assert report.model_versions["sentiment"] == ["sent-1"]
    assert report.notes == []

    markdown = report_markdown(report)
    assert "## By channel" in markdown and "Late deliveries" in markdown
    assert [row["priority"] for row in priority_rows(report)] == ["P1", "P2"]


def test_report_notes_a_sentiment_model_promoted_in_its_period(populated: Store) -> None:
    # Promoted before the report's 28 days of history, then on the day itself.
    for version, promoted in (
        ("custom-old", _at(DAY - timedelta(days=40), 9)),
        ("custom-new", _at(DAY, 9)),
    ):
        register_model(
            populated,
            version=version,
            kind="sentiment",
            head_metadata={},
            weights=b"",
            metrics={},
            parent_version=None,
        )
        promote_model(populated, version, at=promoted)
    report = build_report(populated, DAY, ZONE)
    [note] = report.notes
    assert note.startswith("The sentiment model changed on 2026-11-10: custom-new was promoted")
    assert "feedback rerun --reanalyze" in note
    assert "model changed on 2026-11-10: custom-new" in render_html(report)


def test_empty_database_gives_a_report_that_says_no_data(store: Store) -> None:
    now = datetime(2026, 11, 23, 1, tzinfo=UTC)  # 04:00 in Istanbul
    day = default_report_date(store, ZONE, now)
    assert day == date(2026, 11, 22)
    html = render_html(build_report(store, day, ZONE))
    assert html.count("No data.") == 9  # 4 breakdowns, spikes, growth, examples, P1/P2, alerts
    assert "No sentiment results" in html


def test_default_report_date_falls_back_to_the_last_day_with_feedback(populated: Store) -> None:
    assert default_report_date(populated, ZONE, datetime(2026, 12, 5, tzinfo=UTC)) == DAY
    assert default_report_date(populated, ZONE, datetime(2026, 11, 10, 12, tzinfo=UTC)) == date(
        2026, 11, 9
    )


def test_html_is_self_contained_with_charts_and_rtl_examples(populated: Store) -> None:
    html = render_html(build_report(populated, DAY, ZONE))

    assert html.count("<svg") == 5  # daily trend + channel, language, aspect, topic
    assert "<script" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert f'dir="auto" lang="fa">{PERSIAN}</div>' in html
    assert "[EMAIL]" in html  # stored text is already redacted; shown as stored


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_report_renders_in_headless_chromium(populated: Store, tmp_path: Path) -> None:
    chromium = _find_chromium()
    if chromium is None:
        pytest.skip(
            "chromium not found: install it (apt-get install -y chromium, as .ci/run does) to "
            "render the report to PNG"
        )
    from PIL import Image

    path = write_html(build_report(populated, DAY, ZONE), tmp_path / "reports")
    screenshot = tmp_path / "report.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1280,2000",
        path.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)

    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, cards and charts, not a blank page
    background = max(colours)[0] / (1280 * 2000)
    assert background < 0.9
    counts = {colour: count for count, colour in colours}

    def rgb(hex_colour: str) -> tuple[int, int, int]:
        return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]

    assert counts.get(rgb(POSITIVE), 0) > 200  # green bars of the net-sentiment charts
    assert counts.get(rgb(NEGATIVE), 0) > 200  # red bars and the trend line


def test_cli_report_regenerates_a_day(populated: Store, tmp_path: Path) -> None:
    config = tmp_path / "configs"
    config.mkdir()
    (config / "pipeline.yaml").write_text(f"timezone: {ZONE}\nstages: []\n", encoding="utf-8")
    url = populated.url
    populated.close()
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["report", "--date", "2026-11-10", "--db", url, "--config", str(config), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "5 records" in result.output and "2026-11-10" in result.output
    assert (out / "2026-11-10.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_nightly_report_task_publishes_artifacts(
    prefect_harness: None, populated: Store, tmp_path: Path
) -> None:
    settings = PipelineSettings(timezone=ZONE, reports_dir=tmp_path / "reports")

    @flow
    def publish() -> tuple[Path, str]:
        return write_report(populated, settings).path, str(flow_run.get_id())

    path, run_id = publish()
    assert path == tmp_path / "reports" / f"{DAY.isoformat()}.html" and path.exists()
    by_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)]))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=by_run,
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.KEY_ASC,
            limit=10,
            offset=0,
        )
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert "Customer feedback 2026-11-10" in str(by_key["daily-report"].data)
    assert by_key["p1-p2-items"].type == "table"
    assert "P1" in str(by_key["p1-p2-items"].data)
