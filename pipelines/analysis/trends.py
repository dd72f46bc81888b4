"""Emerging topics and spikes: a day's negative volume per aspect/topic against its baseline.

For each key (an aspect name, or a topic id) the expected negative count on day ``d`` is the
median of its daily counts over the ``baseline_days`` before ``d`` (missing days count 0),
times a weekday factor: how much busier ``d``'s weekday was than the average day over the same
baseline, all keys pooled (pooling keeps the factor stable for small keys), clipped to
[0.5, 2]. The day's count is then scored by its Poisson upper tail: ``score = -log10 P(X >=
count)`` with ``X ~ Poisson(max(expected, 0.5))``. A spike needs ``count >= min_count``,
``count >= min_ratio * expected`` and ``P <= max_p_value``; it is *emerging* when the key was
nearly absent before (baseline mean below ``emerging_max_baseline``), e.g. a new topic.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
from scipy.stats import poisson

from pipelines.analysis.aspects import normalize_polarity
from pipelines.analysis.topics import UNASSIGNED, TrendSettings, load_topics_config
from pipelines.stages import Stage, StageContext
from pipelines.storage import Store, window_results

__all__ = [
    "SPIKE_COLUMNS",
    "TrendStage",
    "daily_negative_counts",
    "detect_spikes",
    "negative_events",
    "spike_name",
]

SPIKE_COLUMNS = ["kind", "key", "day", "count", "baseline", "score", "emerging"]
_WEEKDAY_FACTOR_RANGE = (0.5, 2.0)
_MIN_EXPECTED = 0.5


def spike_name(kind: str, key: str) -> str:
    """Name used in the ``emerging`` column and alerts: ``aspect:<name>`` or ``topic:<id>``.

    Args:
        kind: ``aspect`` or ``topic``.
        key: Aspect name or topic id.

    Returns:
        The name.
    """
    return f"{kind}:{key}"


def daily_negative_counts(events: pd.DataFrame) -> pd.DataFrame:
    """Negative records per (kind, key, day).

    Args:
        events: One row per (record, kind, key) with columns ``record_id, kind, key, day``
            (``day`` a date), negative mentions only.

    Returns:
        Columns ``kind, key, day, count``.
    """
    if events.empty:
        return pd.DataFrame(columns=["kind", "key", "day", "count"])
    unique = events.drop_duplicates(["record_id", "kind", "key"])
    return unique.groupby(["kind", "key", "day"]).size().rename("count").reset_index()


def detect_spikes(
    counts: pd.DataFrame, day: date, settings: TrendSettings | None = None
) -> pd.DataFrame:
    """Spikes of negative volume on ``day`` (see the module docstring for the method).

    Args:
        counts: Columns ``kind, key, day, count`` (output of :func:`daily_negative_counts`),
            covering ``day`` and the ``baseline_days`` before it.
        day: The day to test.
        settings: Thresholds (defaults of ``configs/topics.yaml``'s ``trends``).

    Returns:
        One row per spike: ``kind, key, day, count, baseline, score, emerging``, highest score
        first (empty when the day is calm).
    """
    settings = settings or TrendSettings()
    if counts.empty:
        return pd.DataFrame(columns=SPIKE_COLUMNS)
    frame = counts.copy()
    frame["day"] = pd.to_datetime(frame["day"]).dt.date
    baseline_days = [
        day - timedelta(days=offset) for offset in range(settings.baseline_days, 0, -1)
    ]
    history = frame[frame["day"].isin(baseline_days)]
    today = frame[frame["day"] == day]
    totals = history.groupby("day")["count"].sum().reindex(baseline_days, fill_value=0)
    same_weekday = [d for d in baseline_days if d.weekday() == day.weekday()]
    mean_daily_total = float(totals.mean())
    weekday_factor = (
        float(np.clip(totals.loc[same_weekday].mean() / mean_daily_total, *_WEEKDAY_FACTOR_RANGE))
        if mean_daily_total > 0 and same_weekday
        else 1.0
    )
    rows = []
    for (kind, key), group in today.groupby(["kind", "key"]):
        count = int(group["count"].sum())
        past = (
            history[(history["kind"] == kind) & (history["key"] == key)]
            .groupby("day")["count"]
            .sum()
            .reindex(baseline_days, fill_value=0)
        )
        expected = float(np.median(past.to_numpy())) * weekday_factor
        p_value = float(poisson.sf(count - 1, max(expected, _MIN_EXPECTED)))
        if (
            count >= settings.min_count
            and count >= settings.min_ratio * expected
            and p_value <= settings.max_p_value
        ):
            rows.append(
                {
                    "kind": kind,
                    "key": str(key),
                    "day": day,
                    "count": count,
                    "baseline": round(expected, 3),
                    "score": round(min(-np.log10(max(p_value, 1e-300)), 300.0), 2),
                    "emerging": bool(past.mean() < settings.emerging_max_baseline),
                }
            )
    spikes = pd.DataFrame(rows, columns=SPIKE_COLUMNS)
    return spikes.sort_values("score", ascending=False, ignore_index=True)


def _day(value: object) -> date:
    moment = pd.Timestamp(value)
    return (moment.tz_convert(UTC) if moment.tzinfo else moment).date()


def negative_events(store: Store, start: datetime, end: datetime) -> pd.DataFrame:
    """Stored negative aspect mentions and negative records' topics between two times.

    The latest stored result per record wins (re-runs and model versions do not double count).

    Args:
        store: The database.
        start: Inclusive lower bound on the record's ``created_at``.
        end: Exclusive upper bound.

    Returns:
        Columns ``record_id, kind, key, day``.
    """
    stored = window_results(store, start, end)
    aspects, topics, sentiments = stored.aspects, stored.topics, stored.sentiments
    events = []
    if not aspects.empty:
        aspects = aspects[aspects["polarity"].map(normalize_polarity) == "negative"]
        events.append(
            pd.DataFrame(
                {
                    "record_id": aspects["record_id"],
                    "kind": "aspect",
                    "key": aspects["aspect"],
                    "day": aspects["created_at"].map(_day),
                }
            )
        )
    if not topics.empty and not sentiments.empty:
        latest_topic = topics.sort_values("stored_at").drop_duplicates("record_id", keep="last")
        latest_label = sentiments.sort_values("stored_at").drop_duplicates("record_id", keep="last")
        negative = set(
            latest_label.loc[
                latest_label["label"].map(normalize_polarity) == "negative", "record_id"
            ]
        )
        latest_topic = latest_topic[
            latest_topic["record_id"].isin(negative) & (latest_topic["topic_id"] != UNASSIGNED)
        ]
        events.append(
            pd.DataFrame(
                {
                    "record_id": latest_topic["record_id"],
                    "kind": "topic",
                    "key": latest_topic["topic_id"].astype(str),
                    "day": latest_topic["created_at"].map(_day),
                }
            )
        )
    if not events:
        return pd.DataFrame(columns=["record_id", "kind", "key", "day"])
    return pd.concat(events, ignore_index=True)


def _batch_events(batch: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, record in batch.iterrows():
        day = _day(record["created_at"])
        for item in record.get("aspects") or []:
            if normalize_polarity(item.get("polarity")) == "negative":
                rows.append((record["id"], "aspect", str(item["aspect"]), day))
        topic = record.get("topic")
        if (
            isinstance(topic, dict)
            and int(topic.get("id", UNASSIGNED)) != UNASSIGNED
            and normalize_polarity(record.get("sentiment")) == "negative"
        ):
            rows.append((record["id"], "topic", str(topic["id"]), day))
    return pd.DataFrame(rows, columns=["record_id", "kind", "key", "day"])


class TrendStage(Stage):
    """Adds ``emerging``: names (``aspect:<name>``, ``topic:<id>``) of the spikes a record is
    part of, for the alerting stage; ``spikes`` holds the spike table of the last run.

    Args:
        config_dir: Folder with ``topics.yaml`` (its ``trends`` section).
    """

    name = "trends"

    def __init__(self, config_dir: str | os.PathLike[str] | None = None) -> None:
        self.settings = load_topics_config(config_dir).trends
        self.spikes = pd.DataFrame(columns=SPIKE_COLUMNS)

    @property
    def version(self) -> str:
        """Method version + settings."""
        values = self.settings.model_dump()
        return "trends-1-" + "-".join(f"{values[name]}" for name in sorted(values))

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Detect spikes on each day present in the batch (stored history + the batch).

        Args:
            batch: Records with ``id``, ``created_at``, ``aspects``, ``topic``, ``sentiment``.
            context: Run context.

        Returns:
            The batch with ``emerging`` (list of names, empty when calm).
        """
        result = batch.copy()
        if result.empty or "created_at" not in result.columns:
            result["emerging"] = [[] for _ in range(len(result))]
            return result
        batch_events = _batch_events(result)
        days = sorted({_day(value) for value in result["created_at"]})
        start = datetime.combine(
            days[0] - timedelta(days=self.settings.baseline_days), datetime.min.time(), UTC
        )
        end = datetime.combine(days[-1] + timedelta(days=1), datetime.min.time(), UTC)
        stored = negative_events(context.store, start, end)
        stored = stored[~stored["record_id"].isin(set(result["id"]))]
        counts = daily_negative_counts(pd.concat([stored, batch_events], ignore_index=True))
        spikes = [detect_spikes(counts, day, self.settings) for day in days]
        self.spikes = pd.concat(spikes, ignore_index=True) if spikes else self.spikes
        spiking = {(row.kind, row.key, row.day) for row in self.spikes.itertuples(index=False)}
        names: dict[str, list[str]] = {record_id: [] for record_id in result["id"]}
        for event in batch_events.itertuples(index=False):
            if (event.kind, event.key, event.day) in spiking:
                names[event.record_id].append(spike_name(event.kind, event.key))
        result["emerging"] = [sorted(set(names[record_id])) for record_id in result["id"]]
        return result
