"""Spike and emerging-topic detection on negative volumes (no encoder needed)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from pipelines.analysis.trends import TrendStage, daily_negative_counts, detect_spikes
from pipelines.stages import StageContext
from pipelines.storage import Store, schema

RUN_DAY = date(2024, 3, 20)


def _calm_counts(seed: int = 7) -> pd.DataFrame:
    """14 calm days: delivery ~4/day (busier Mondays), price ~2/day, topic 3 ~3/day."""
    generator = np.random.default_rng(seed)
    rows = []
    for offset in range(14, 0, -1):
        day = RUN_DAY - timedelta(days=offset)
        monday_boost = 1.5 if day.weekday() == 0 else 1.0
        rows += [
            ("aspect", "delivery_shipping", day, int(generator.poisson(4 * monday_boost))),
            ("aspect", "price_value", day, int(generator.poisson(2))),
            ("topic", "3", day, int(generator.poisson(3))),
        ]
    return pd.DataFrame(rows, columns=["kind", "key", "day", "count"])


def _with_day(counts: pd.DataFrame, rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    today = pd.DataFrame(
        [(kind, key, RUN_DAY, count) for kind, key, count in rows],
        columns=["kind", "key", "day", "count"],
    )
    return pd.concat([counts, today], ignore_index=True)


def test_forty_delivery_complaints_are_a_spike() -> None:
    counts = _with_day(
        _calm_counts(), [("aspect", "delivery_shipping", 40), ("aspect", "price_value", 3)]
    )
    spikes = detect_spikes(counts, RUN_DAY)
    assert list(spikes["key"]) == ["delivery_shipping"]
    spike = spikes.iloc[0]
    assert spike["count"] == 40
    assert 2 <= spike["baseline"] <= 8
    assert spike["score"] > 10
    assert not spike["emerging"]


def test_calm_day_raises_nothing() -> None:
    counts = _with_day(
        _calm_counts(),
        [("aspect", "delivery_shipping", 6), ("aspect", "price_value", 3), ("topic", "3", 4)],
    )
    assert detect_spikes(counts, RUN_DAY).empty


def test_many_calm_days_raise_nothing() -> None:
    generator = np.random.default_rng(1)
    history = _calm_counts(seed=2)
    for _ in range(30):
        today = [
            ("aspect", "delivery_shipping", int(generator.poisson(4))),
            ("aspect", "price_value", int(generator.poisson(2))),
            ("topic", "3", int(generator.poisson(3))),
        ]
        assert detect_spikes(_with_day(history, today), RUN_DAY).empty


def test_new_topic_with_volume_is_emerging() -> None:
    counts = _with_day(_calm_counts(), [("topic", "17", 15)])
    spikes = detect_spikes(counts, RUN_DAY)
    assert list(spikes["key"]) == ["17"]
    assert bool(spikes.iloc[0]["emerging"])


def test_weekday_effect_lowers_the_bar_on_busy_weekdays() -> None:
    busy_weekday = RUN_DAY - timedelta(days=7)
    rows = []
    for offset in range(14, 0, -1):
        day = RUN_DAY - timedelta(days=offset)
        rows.append(
            (
                "aspect",
                "delivery_shipping",
                day,
                10 if day.weekday() == busy_weekday.weekday() else 4,
            )
        )
    counts = _with_day(
        pd.DataFrame(rows, columns=["kind", "key", "day", "count"]),
        [("aspect", "delivery_shipping", 11)],
    )
    assert detect_spikes(counts, RUN_DAY).empty


def test_daily_counts_count_a_record_once() -> None:
    events = pd.DataFrame(
        [
            ("r1", "aspect", "delivery_shipping", RUN_DAY),
            ("r1", "aspect", "delivery_shipping", RUN_DAY),
            ("r2", "aspect", "delivery_shipping", RUN_DAY),
        ],
        columns=["record_id", "kind", "key", "day"],
    )
    counts = daily_negative_counts(events)
    assert counts["count"].tolist() == [2]


def _store_history(store: Store) -> None:
    """14 calm days of stored records with 3 negative delivery mentions a day."""
    now = datetime.now(UTC)
    feedback_rows, aspect_rows = [], []
    for offset in range(14, 0, -1):
        day = datetime.combine(RUN_DAY - timedelta(days=offset), datetime.min.time(), UTC)
        for index in range(3):
            record_id = f"h{offset}-{index}"
            feedback_rows.append(
                {
                    "id": record_id,
                    "source": "s",
                    "channel": "review",
                    "created_at": day + timedelta(hours=9 + index),
                    "text": "late",
                    "text_hash": record_id,
                    "run_id": "r0",
                    "ingested_at": now,
                }
            )
            aspect_rows.append(
                {
                    "record_id": record_id,
                    "aspect": "delivery_shipping",
                    "model_version": "v",
                    "polarity": "negative",
                    "score": 0.9,
                    "run_id": "r0",
                    "created_at": now,
                }
            )
    store.insert_ignore(schema.feedback, feedback_rows)
    store.insert_ignore(schema.aspects, aspect_rows)


def test_stage_marks_records_of_a_spike(store: Store) -> None:
    _store_history(store)
    day = datetime.combine(RUN_DAY, datetime.min.time(), UTC)
    batch = pd.DataFrame(
        [
            {
                "id": f"today-{index}",
                "created_at": day + timedelta(minutes=index),
                "sentiment": "negative",
                "aspects": [{"aspect": "delivery_shipping", "polarity": "negative", "score": 0.9}],
                "topic": {"id": -1, "label": "unassigned", "keywords": []},
            }
            for index in range(40)
        ]
        + [
            {
                "id": "calm",
                "created_at": day,
                "sentiment": "positive",
                "aspects": [{"aspect": "price_value", "polarity": "positive", "score": 0.8}],
                "topic": {"id": -1, "label": "unassigned", "keywords": []},
            }
        ]
    )
    stage = TrendStage()
    result = stage.run(batch, StageContext(store=store, run_id="r1"))
    assert result.loc[result["id"] == "today-0", "emerging"].iloc[0] == ["aspect:delivery_shipping"]
    assert result.loc[result["id"] == "calm", "emerging"].iloc[0] == []
    assert stage.spikes.iloc[0]["baseline"] == 3


def test_stage_on_a_calm_day_marks_nothing(store: Store) -> None:
    _store_history(store)
    day = datetime.combine(RUN_DAY, datetime.min.time(), UTC)
    batch = pd.DataFrame(
        [
            {
                "id": f"today-{index}",
                "created_at": day + timedelta(minutes=index),
                "sentiment": "negative",
                "aspects": [{"aspect": "delivery_shipping", "polarity": "negative", "score": 0.9}],
                "topic": {"id": -1, "label": "unassigned", "keywords": []},
            }
            for index in range(4)
        ]
    )
    result = TrendStage().run(batch, StageContext(store=store, run_id="r1"))
    assert all(names == [] for names in result["emerging"])
