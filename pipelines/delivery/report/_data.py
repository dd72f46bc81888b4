"""The numbers of a daily report, read from the database.

Every analysis table is optional: a stage that is not configured (or has not run yet) leaves its
section empty, and the report says so instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from pipelines.analysis.topics import TrendSettings
from pipelines.analysis.trends import daily_negative_counts, detect_spikes, negative_events
from pipelines.delivery.alerts import response_times
from pipelines.storage import (
    Store,
    alert_states,
    flagged_results,
    latest_created_before,
    list_models,
    period_records,
    record_aspects,
    record_sentiments,
    record_topic_assignments,
    sent_alerts_of_records,
    stored_topics,
    topic_label_map,
)

__all__ = [
    "HISTORY_DAYS",
    "Breakdown",
    "DailyReport",
    "NegativeExample",
    "build_report",
    "default_report_date",
    "net_sentiment",
]

HISTORY_DAYS = 28
"""Days before the report day used for trends (the 7-day trend uses the last 7 of them)."""
EMERGING_LOOKBACK_DAYS = 7
EMERGING_MIN_RECORDS = 3
EMERGING_MIN_GROWTH = 2.0
EXAMPLES_PER_ASPECT = 3
_SNIPPET_CHARS = 280


def net_sentiment(labels: pd.Series) -> float | None:
    """Net sentiment on -100..100: ``100 * (positive - negative) / n``.

    Args:
        labels: ``negative``/``neutral``/``positive`` per record (missing values ignored).

    Returns:
        The score, or None when no label is known.
    """
    known = labels.dropna()
    if known.empty:
        return None
    positive = int((known == "positive").sum())
    negative = int((known == "negative").sum())
    return round(100.0 * (positive - negative) / len(known), 1)


@dataclass
class Breakdown:
    """Volume and net sentiment per value of one dimension (channel, language, aspect, topic).

    Attributes:
        dimension: What the rows are (``channel``...).
        rows: Columns ``key``, ``volume``, ``net``, ``volume_7d`` and ``volume_28d`` (average
            per day over the previous 7/28 days), ``net_7d``, ``net_28d``; sorted by volume.
        note: Why the breakdown is empty, when it is.
    """

    dimension: str
    rows: pd.DataFrame
    note: str = ""


@dataclass
class NegativeExample:
    """One negative mention of an aspect, with its (already PII-redacted) text."""

    aspect: str
    text: str
    lang: str
    channel: str
    created_at: datetime
    score: float


@dataclass
class DailyReport:
    """Everything the HTML report and the Prefect artifacts show for one local day.

    Attributes:
        day: The report day, in ``timezone``.
        timezone: IANA zone days are cut in.
        generated_at: When the report was built (UTC).
        volume: Records created on the day.
        net: Net sentiment of the day (None without sentiment results).
        volume_7d: Average records per day over the 7 days before.
        volume_28d: Average records per day over the 28 days before.
        net_7d: Net sentiment over the 7 days before.
        net_28d: Net sentiment over the 28 days before.
        daily: One row per day of the last 29 (``day``, ``volume``, ``net``).
        breakdowns: Per channel, language, aspect and topic.
        emerging: Topics growing fastest over the last 7 days (``topic``, ``keywords``,
            ``last_7d``, ``weekly_before``, ``growth``).
        spikes: Spikes of negative feedback on the day per aspect and topic, as the alerting
            sees them (``pipelines.analysis.trends``; ``kind``, ``name``, ``count``, ``baseline``,
            ``score``, ``emerging``).
        negative_examples: Aspect -> its most negative mentions of the last 7 days.
        priority_items: P1/P2 records of the last 7 days, newest first (``priority``, ``day``,
            ``created``, ``channel``, ``lang``, ``source``, ``reasons``, ``alert``, ``text``).
        alerts_by_lead: Per lead and priority: ``sent_today`` (alerts sent about the day's
            records), then ``response_times`` (totals, hours to ack/resolve, SLA).
        model_versions: Analysis versions the figures come from.
        notes: What is missing and how to get it.
    """

    day: date
    timezone: str
    generated_at: datetime
    volume: int
    net: float | None
    volume_7d: float
    volume_28d: float
    net_7d: float | None
    net_28d: float | None
    daily: pd.DataFrame
    breakdowns: list[Breakdown]
    emerging: pd.DataFrame
    spikes: pd.DataFrame
    negative_examples: dict[str, list[NegativeExample]]
    priority_items: pd.DataFrame
    alerts_by_lead: pd.DataFrame
    model_versions: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _utc_bounds(first: date, last: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    start = datetime.combine(first, time.min, zone).astimezone(UTC)
    end = datetime.combine(last + timedelta(days=1), time.min, zone).astimezone(UTC)
    return start, end


def default_report_date(store: Store, timezone: str, now: datetime | None = None) -> date:
    """The day a nightly report covers: yesterday, or the last earlier day with feedback.

    Args:
        store: The database.
        timezone: IANA zone days are cut in.
        now: The current instant (default: now).

    Returns:
        Yesterday (local) when it has feedback or nothing older exists; otherwise the latest
        earlier local day that has feedback.
    """
    zone = ZoneInfo(timezone)
    yesterday = (now or datetime.now(UTC)).astimezone(zone).date() - timedelta(days=1)
    _, end = _utc_bounds(yesterday, yesterday, zone)
    latest = latest_created_before(store, end)
    if latest is None:
        return yesterday
    moment = latest if latest.tzinfo else latest.replace(tzinfo=UTC)
    return min(yesterday, moment.astimezone(zone).date())


def _latest_version(frame: pd.DataFrame, version_column: str, keys: list[str]) -> pd.DataFrame:
    """Keep, per key, the rows of the most recently written version."""
    if frame.empty:
        return frame
    ordered = frame.sort_values("created_at", kind="stable")
    newest = ordered.groupby(keys)[version_column].transform("last")
    return ordered[ordered[version_column] == newest]


def _polarity(label: Any) -> str | None:
    if label is None or (isinstance(label, float) and pd.isna(label)):
        return None
    text = str(label).strip().lower()
    if text.startswith("neg"):
        return "negative"
    if text.startswith("pos"):
        return "positive"
    return "neutral"


def _load_records(store: Store, start: datetime, end: datetime, zone: ZoneInfo) -> pd.DataFrame:
    records = period_records(store, start, end)
    if records.empty:
        return records.assign(day=pd.Series(dtype=object), sentiment=pd.Series(dtype=object))
    created = pd.to_datetime(records["created_at"], utc=True)
    records["created_at"] = created
    records["day"] = created.dt.tz_convert(zone).dt.date
    records["lang"] = records["lang"].fillna("other")
    return records


def _attach_sentiment(
    store: Store, records: pd.DataFrame, versions: dict[str, list[str]]
) -> pd.DataFrame:
    rows = record_sentiments(store, records["id"].tolist())
    if rows.empty:
        return records.assign(sentiment=None)
    rows = _latest_version(rows, "model_version", ["record_id"])
    versions["sentiment"] = sorted(rows["model_version"].unique().tolist())
    labels = rows.set_index("record_id")["label"].map(_polarity)
    return records.assign(sentiment=records["id"].map(labels))


def _breakdown(
    dimension: str,
    frame: pd.DataFrame,
    key: str,
    label: str,
    day: date,
    note: str,
) -> Breakdown:
    """Volume and net per key on ``day`` and over the 7/28 days before (daily averages)."""
    if frame.empty:
        return Breakdown(dimension, pd.DataFrame(), note)
    windows = {
        "": frame[frame["day"] == day],
        "_7d": frame[(frame["day"] < day) & (frame["day"] >= day - timedelta(days=7))],
        "_28d": frame[frame["day"] < day],
    }
    table = pd.DataFrame(index=pd.Index(sorted(frame[key].dropna().unique()), name="key"))
    for suffix, rows in windows.items():
        days = {"": 1, "_7d": 7, "_28d": HISTORY_DAYS}[suffix]
        grouped = rows.groupby(key)
        table[f"volume{suffix}"] = grouped.size().reindex(table.index).fillna(0) / days
        table[f"net{suffix}"] = grouped[label].apply(net_sentiment).reindex(table.index)
    table = table[(table["volume"] > 0) | (table["volume_7d"] > 0)]
    table["volume"] = table["volume"].astype(int)
    table = table.sort_values(["volume", "volume_7d"], ascending=False).reset_index()
    return Breakdown(dimension, table, "" if not table.empty else note)


def _aspect_mentions(
    store: Store, records: pd.DataFrame, versions: dict[str, list[str]]
) -> pd.DataFrame:
    rows = record_aspects(store, records["id"].tolist())
    if rows.empty:
        return pd.DataFrame()
    rows = _latest_version(rows, "model_version", ["record_id"])
    versions["aspects"] = sorted(rows["model_version"].unique().tolist())
    rows["polarity"] = rows["polarity"].map(_polarity)
    merged = rows.drop(columns="created_at").merge(
        records.drop(columns="sentiment"), left_on="record_id", right_on="id"
    )
    return merged


def _topic_assignments(
    store: Store, records: pd.DataFrame, versions: dict[str, list[str]]
) -> pd.DataFrame:
    rows = record_topic_assignments(store, records["id"].tolist())
    if rows.empty:
        return pd.DataFrame()
    rows = _latest_version(rows, "model_version", ["record_id"])
    rows = rows[rows["topic_id"] >= 0]
    versions["topics"] = sorted(rows["model_version"].unique().tolist())
    topics = stored_topics(store)
    names: dict[int, str] = {}
    keywords: dict[int, str] = {}
    if not topics.empty:
        newest = topics[topics["model_version"].isin(versions["topics"])]
        for topic in newest.to_dict(orient="records"):
            names[int(topic["topic_id"])] = topic["auto_label"]
            keywords[int(topic["topic_id"])] = ", ".join(_keywords(topic["keywords"]))
    names.update(topic_label_map(store))
    rows["topic"] = [names.get(int(i), f"topic {int(i)}") for i in rows["topic_id"]]
    rows["keywords"] = [keywords.get(int(i), "") for i in rows["topic_id"]]
    return rows.drop(columns="created_at").merge(records, left_on="record_id", right_on="id")


def _keywords(value: Any, limit: int = 6) -> list[str]:
    """Topic keywords as words (stored either as words or as ``[word, weight]`` pairs)."""
    words = [item[0] if isinstance(item, list | tuple) else item for item in value or []]
    return [str(word) for word in words[:limit]]


def _emerging(topics: pd.DataFrame, day: date) -> pd.DataFrame:
    """Topics with at least ``EMERGING_MIN_RECORDS`` in the last 7 days and at least
    ``EMERGING_MIN_GROWTH`` times their weekly rate over the 28 days before (or new)."""
    columns = ["topic", "keywords", "last_7d", "weekly_before", "growth"]
    if topics.empty:
        return pd.DataFrame(columns=columns)
    recent_start = day - timedelta(days=EMERGING_LOOKBACK_DAYS - 1)
    recent = topics[topics["day"] >= recent_start].groupby(["topic", "keywords"]).size()
    before = topics[topics["day"] < recent_start].groupby(["topic", "keywords"]).size()
    weeks_before = (HISTORY_DAYS - EMERGING_LOOKBACK_DAYS + 1) / 7
    table = pd.DataFrame({"last_7d": recent})
    table["weekly_before"] = (before.reindex(table.index).fillna(0) / weeks_before).round(1)
    table["growth"] = (table["last_7d"] / table["weekly_before"].clip(lower=0.5)).round(1)
    table = table[
        (table["last_7d"] >= EMERGING_MIN_RECORDS) & (table["growth"] >= EMERGING_MIN_GROWTH)
    ]
    return table.sort_values("growth", ascending=False).reset_index()[columns]


def _spikes(store: Store, day: date, topics: pd.DataFrame, settings: TrendSettings) -> pd.DataFrame:
    """``pipelines.analysis.trends`` spikes of the day (days cut in UTC there), topics named."""
    start = datetime.combine(day - timedelta(days=settings.baseline_days), time.min, UTC)
    end = datetime.combine(day + timedelta(days=1), time.min, UTC)
    spikes = detect_spikes(daily_negative_counts(negative_events(store, start, end)), day, settings)
    names = {}
    if not topics.empty:
        names = dict(zip(topics["topic_id"].astype(str), topics["topic"], strict=True))
    spikes["name"] = [
        names.get(key, f"topic {key}") if kind == "topic" else key
        for kind, key in zip(spikes["kind"], spikes["key"], strict=True)
    ]
    return spikes[["kind", "name", "count", "baseline", "score", "emerging"]]


def _negative_examples(aspects: pd.DataFrame, day: date) -> dict[str, list[NegativeExample]]:
    if aspects.empty:
        return {}
    recent = aspects[
        (aspects["polarity"] == "negative")
        & (aspects["day"] > day - timedelta(days=EMERGING_LOOKBACK_DAYS))
        & (aspects["day"] <= day)
    ].sort_values("score", ascending=False)
    examples: dict[str, list[NegativeExample]] = {}
    for aspect, rows in recent.groupby("aspect", sort=True):
        examples[str(aspect)] = [
            NegativeExample(
                aspect=str(aspect),
                text=_snippet(row["text"]),
                lang=str(row["lang"]),
                channel=str(row["channel"]),
                created_at=row["created_at"],
                score=float(row["score"]),
            )
            for row in rows.head(EXAMPLES_PER_ASPECT).to_dict(orient="records")
        ]
    return dict(sorted(examples.items(), key=lambda item: -len(item[1])))


def _snippet(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"


def _priority_items(
    store: Store, records: pd.DataFrame, day: date, versions: dict[str, list[str]]
) -> pd.DataFrame:
    """P1/P2 records created in the last 7 days up to ``day``, with their alert's state."""
    columns = ["priority", "day", "created", "channel", "lang", "source", "reasons", "alert"]
    columns.append("text")
    if records.empty:
        return pd.DataFrame(columns=columns)
    week = records[(records["day"] <= day) & (records["day"] > day - timedelta(days=7))]
    rows = flagged_results(store, week["id"].tolist())
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = _latest_version(rows, "rules_version", ["record_id"])
    versions["flagging"] = sorted(rows["rules_version"].unique().tolist())
    rows = rows[rows["priority"].isin(["P1", "P2"])]
    alert_rows = alert_states(store, rows["record_id"].tolist())
    status = {
        row["record_id"]: (
            "resolved"
            if pd.notna(row["resolved_at"])
            else "acked"
            if pd.notna(row["acked_at"])
            else row["status"]
        )
        for row in alert_rows.to_dict(orient="records")
    }
    merged = rows.drop(columns="created_at").merge(week, left_on="record_id", right_on="id")
    items = pd.DataFrame(
        {
            "priority": merged["priority"],
            "day": merged["day"],
            "created": merged["created_at"].dt.strftime("%Y-%m-%d %H:%M UTC"),
            "channel": merged["channel"],
            "lang": merged["lang"],
            "source": merged["source"],
            "reasons": ["; ".join(map(str, r or [])) for r in merged["reasons"]],
            "alert": [status.get(i, "none") for i in merged["record_id"]],
            "text": [_snippet(t) for t in merged["text"]],
        }
    )
    items = items.sort_values(["priority", "created"], ascending=[True, False])
    return items.reset_index(drop=True)[columns]


def _alerts_by_lead(store: Store, records: pd.DataFrame, day: date) -> pd.DataFrame:
    """Response times per lead and priority, with the alerts about the day's records."""
    times = response_times(store)
    if times.empty:
        return times
    ids = records.loc[records["day"] == day, "id"].tolist() if not records.empty else []
    sent = sent_alerts_of_records(store, ids)
    if sent.empty:
        times["sent_today"] = 0
    else:
        per_lead = sent.explode("recipients").groupby(["recipients", "priority"]).size()
        keys = list(zip(times["lead"], times["priority"], strict=True))
        times["sent_today"] = [int(per_lead.get(key, 0)) for key in keys]
    return times


def _model_changes(store: Store, start: datetime, end: datetime, zone: ZoneInfo) -> list[str]:
    """A note per sentiment model promoted in ``[start, end)`` (``feedback models``)."""
    notes = []
    for model in sorted(list_models(store, "sentiment"), key=lambda m: m.promoted_at or end):
        promoted = model.promoted_at
        if promoted is None:
            continue
        promoted = promoted if promoted.tzinfo else promoted.replace(tzinfo=UTC)
        if start <= promoted < end:
            notes.append(
                f"The sentiment model changed on {promoted.astimezone(zone):%Y-%m-%d}: "
                f"{model.version} was promoted, trained with this company's labels (`feedback "
                "models list`). Records analysed before then keep the earlier model's results "
                "unless `feedback rerun --reanalyze` recomputed them."
            )
    return notes


def build_report(
    store: Store, day: date, timezone: str, trend_settings: TrendSettings | None = None
) -> DailyReport:
    """Gather a day's figures.

    Args:
        store: The database.
        day: Report day, local to ``timezone``.
        timezone: IANA zone days are cut in.
        trend_settings: Spike thresholds (``trends`` of topics.yaml; its defaults when None).

    Returns:
        The report's data; sections without data carry a note instead.
    """
    zone = ZoneInfo(timezone)
    start, end = _utc_bounds(day - timedelta(days=HISTORY_DAYS), day, zone)
    versions: dict[str, list[str]] = {}
    notes: list[str] = []
    records = _load_records(store, start, end, zone)
    if not records.empty:
        records = _attach_sentiment(store, records, versions)
    if "sentiment" not in versions:
        notes.append(
            "No sentiment results in this period: net sentiment is not shown. Add `sentiment` "
            "to `stages` in pipeline.yaml, then `feedback rerun --since <first day>`."
        )
    notes += _model_changes(store, start, end, zone)
    aspects = _aspect_mentions(store, records, versions) if not records.empty else pd.DataFrame()
    topics = _topic_assignments(store, records, versions) if not records.empty else pd.DataFrame()

    days = [day - timedelta(days=offset) for offset in range(HISTORY_DAYS, -1, -1)]
    if records.empty:
        daily = pd.DataFrame({"day": days, "volume": 0, "net": None})
    else:
        grouped = records.groupby("day")
        daily = pd.DataFrame(
            {
                "day": days,
                "volume": grouped.size().reindex(days).fillna(0).astype(int).to_numpy(),
                "net": grouped["sentiment"].apply(net_sentiment).reindex(days).to_numpy(),
            }
        )
    today = records[records["day"] == day] if not records.empty else records
    before_7 = (
        records[(records["day"] < day) & (records["day"] >= day - timedelta(days=7))]
        if not records.empty
        else records
    )
    before_28 = records[records["day"] < day] if not records.empty else records
    no_aspects = "No aspect results in this period (stage `aspects` not run)."
    no_topics = "No topic assignments in this period (stage `topics` not run)."
    breakdowns = [
        _breakdown("channel", records, "channel", "sentiment", day, "No feedback in this period."),
        _breakdown("language", records, "lang", "sentiment", day, "No feedback in this period."),
        _breakdown("aspect", aspects, "aspect", "polarity", day, no_aspects),
        _breakdown("topic", topics, "topic", "sentiment", day, no_topics),
    ]
    return DailyReport(
        day=day,
        timezone=timezone,
        generated_at=datetime.now(UTC),
        volume=len(today),
        net=net_sentiment(today["sentiment"]) if "sentiment" in today else None,
        volume_7d=round(len(before_7) / 7, 1),
        volume_28d=round(len(before_28) / HISTORY_DAYS, 1),
        net_7d=net_sentiment(before_7["sentiment"]) if "sentiment" in before_7 else None,
        net_28d=net_sentiment(before_28["sentiment"]) if "sentiment" in before_28 else None,
        daily=daily,
        breakdowns=breakdowns,
        emerging=_emerging(topics, day),
        spikes=_spikes(store, day, topics, trend_settings or TrendSettings()),
        negative_examples=_negative_examples(aspects, day),
        priority_items=_priority_items(store, records, day, versions),
        alerts_by_lead=_alerts_by_lead(store, records, day),
        model_versions=versions,
        notes=notes,
    )
