"""Flagging rules: flagged/priority/reasons are explainable and honour every signal."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from models.sentiment import LanguageBlend
from models.sentiment.store_models import model_artifact_data
from pipelines._errors import ConfigError
from pipelines.analysis.flagging import (
    FLAG_COLUMNS,
    FlaggingRules,
    FlaggingStage,
    committed_model_thresholds,
    flag_batch,
    load_flagging_rules,
    summarize,
)
from pipelines.config import DEFAULT_CONFIG_DIR
from pipelines.stages import StageContext
from pipelines.storage import Store, register_model, schema
from tests._configs import edited_configs
from tests._tiny_stack import tiny_stack

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def scores(negative: float) -> dict[str, float]:
    rest = (1.0 - negative) / 2
    return {"negative": negative, "neutral": rest, "positive": rest}


def record(**overrides: Any) -> dict[str, Any]:
    """A feedback row with the sentiment columns; a calm neutral review unless overridden."""
    row: dict[str, Any] = {
        "id": "rec-1",
        "source": "shop_reviews",
        "channel": "review",
        "created_at": NOW,
        "text": "The parcel arrived.",
        "rating": None,
        "nps": None,
        "customer_id": None,
        "customer_value": None,
        "author": None,
        "author_followers": None,
        "platform": None,
        "url": None,
        "product": None,
        "store": None,
        "lang": "en",
        "sentiment": "neutral",
        "sentiment_scores": scores(0.1),
        "sentences": [],
    }
    row.update(overrides)
    return row


@pytest.fixture(scope="module")
def rules() -> FlaggingRules:
    return load_flagging_rules()


def test_public_churn_post_from_big_account_is_p1_with_readable_reasons(
    rules: FlaggingRules,
) -> None:
    batch = pd.DataFrame(
        [
            record(
                channel="social",
                platform="twitter",
                author_followers=12_000,
                text="Third outage this week. I'm switching to Acme.",
                sentiment="negative",
                sentiment_scores=scores(0.97),
            )
        ]
    )
    flagged = flag_batch(batch, rules).iloc[0]
    assert flagged["flagged"] and flagged["churn_intent"]
    assert flagged["priority"] == "P1"
    assert summarize(flagged["priority"], flagged["reasons"]) == (
        'P1: churn intent ("switching to acme"), negative 0.97, public post on twitter, '
        "12k followers"
    )


def test_positive_post_from_big_account_is_not_flagged(rules: FlaggingRules) -> None:
    batch = pd.DataFrame(
        [
            record(
                channel="social",
                author_followers=250_000,
                customer_value=50_000.0,
                text="Love the new app, great job!",
                sentiment="positive",
                sentiment_scores={"negative": 0.01, "neutral": 0.04, "positive": 0.95},
            )
        ]
    )
    flagged = flag_batch(batch, rules).iloc[0]
    assert not flagged["flagged"]
    assert flagged["priority"] is None
    assert flagged["reasons"] == []
    assert summarize(flagged["priority"], flagged["reasons"]) == "not flagged"


@pytest.mark.parametrize(
    ("overrides", "priority", "reasons"),
    [
        ({"rating": 1}, "P3", ["rating 1/5"]),
        ({"rating": 3}, None, []),
        ({"nps": 6}, "P3", ["NPS detractor (6)"]),
        ({"nps": 7}, None, []),
        (
            {"rating": 2, "sentiment_scores": scores(0.91), "sentiment": "negative"},
            "P2",
            ["negative 0.91", "rating 2/5"],
        ),
        (
            {"text": "Cancelling my subscription.", "sentiment_scores": scores(0.3)},
            "P2",
            ['churn intent ("cancelling my subscription")'],
        ),
        (
            {
                "sentences": [
                    {
                        "text": "Food was great.",
                        "sentiment": "positive",
                        "sentiment_scores": scores(0.02),
                    },
                    {
                        "text": "The waiter was rude to us.",
                        "sentiment": "negative",
                        "sentiment_scores": scores(0.93),
                    },
                ]
            },
            "P3",
            ['negative sentence 0.93 ("The waiter was rude to us.")'],
        ),
        (
            {"rating": 1, "customer_value": 25_000.0},
            "P2",
            ["top-tier customer (value 25,000)", "rating 1/5"],
        ),
        (
            {"rating": 1, "channel": "social", "author_followers": 150_000},
            "P1",
            ["150k followers", "rating 1/5", "public post"],
        ),
    ],
)
def test_each_signal_adds_its_reason_and_points(
    rules: FlaggingRules, overrides: dict[str, Any], priority: str | None, reasons: list[str]
) -> None:
    flagged = flag_batch(pd.DataFrame([record(**overrides)]), rules).iloc[0]
    assert flagged["priority"] == priority
    assert bool(flagged["flagged"]) == (priority is not None)
    assert flagged["reasons"] == reasons


def test_negative_price_aspect_and_emerging_topic_raise_priority(rules: FlaggingRules) -> None:
    row = record(
        rating=2,
        aspects=[
            {"aspect": "price_value", "polarity": "negative", "score": 0.9},
            {"aspect": "delivery_shipping", "polarity": "positive", "score": 0.8},
        ],
        emerging=["price increase"],
    )
    flagged = flag_batch(pd.DataFrame([row]), rules).iloc[0]
    assert flagged["reasons"] == ["rating 2/5", "price complaint", "emerging topic: price increase"]
    assert flagged["priority"] == "P2"


def test_missing_optional_columns_and_values_do_not_crash(rules: FlaggingRules) -> None:
    batch = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "text": ["Bir daha asla almam!", float("nan"), "fine"],
            "lang": ["tr", None, "en"],
            "rating": [float("nan"), 1, None],
        }
    )
    flagged = flag_batch(batch, rules)
    assert list(flagged.columns[-5:]) == [*FLAG_COLUMNS, "flag_points"]
    assert flagged["flagged"].tolist() == [True, True, False]
    assert flagged["priority"].tolist() == ["P2", "P3", None]
    assert flagged["churn_intent"].tolist() == [True, False, False]
    assert len(flagged) == len(batch)


def _store_negative(store: Store, record_id: str, customer: str, created: datetime) -> None:
    store.insert_ignore(
        schema.feedback,
        [
            {
                "id": record_id,
                "source": "survey",
                "channel": "survey",
                "created_at": created,
                "text": "bad again",
                "customer_id": customer,
                "text_hash": hashlib.sha256(record_id.encode()).hexdigest()[:32],
                "run_id": "earlier-run",
                "ingested_at": created,
            }
        ],
    )
    store.insert_ignore(
        schema.sentiment,
        [
            {
                "record_id": record_id,
                "model_version": "test-model",
                "label": "negative",
                "negative": 0.9,
                "neutral": 0.05,
                "positive": 0.05,
                "run_id": "earlier-run",
                "created_at": created,
            }
        ],
    )


def test_repeat_complainer_is_looked_up_in_the_store(rules: FlaggingRules, store: Store) -> None:
    _store_negative(store, "old-1", "cust-9", NOW - timedelta(days=3))
    _store_negative(store, "old-2", "cust-9", NOW - timedelta(days=20))
    _store_negative(store, "too-old", "cust-9", NOW - timedelta(days=90))
    _store_negative(store, "other", "cust-1", NOW - timedelta(days=1))
    batch = pd.DataFrame(
        [
            record(
                id="new", customer_id="cust-9", sentiment="negative", sentiment_scores=scores(0.8)
            ),
            record(
                id="fresh", customer_id="cust-1", sentiment="negative", sentiment_scores=scores(0.8)
            ),
        ]
    )
    flagged = flag_batch(batch, rules, store)
    assert flagged.loc[0, "reasons"] == [
        "negative 0.80",
        "repeat complainer (3 negatives in 30 days)",
    ]
    assert flagged.loc[0, "priority"] == "P2"
    assert flagged.loc[1, "reasons"] == ["negative 0.80"]
    without_store = flag_batch(batch, rules)
    assert without_store.loc[0, "reasons"] == ["negative 0.80"]


def test_repeat_complainer_counts_negatives_within_the_batch(rules: FlaggingRules) -> None:
    batch = pd.DataFrame(
        [
            record(
                id=f"n{day}",
                customer_id="cust-5",
                created_at=NOW - timedelta(days=day),
                sentiment="negative",
                sentiment_scores=scores(0.75),
            )
            for day in (0, 5, 10)
        ]
    )
    flagged = flag_batch(batch, rules)
    assert "repeat complainer (3 negatives in 30 days)" in flagged.loc[0, "reasons"]
    assert not any("repeat" in reason for reason in flagged.loc[2, "reasons"])


def test_stage_runs_and_upserts_flags(store: Store) -> None:
    stage = FlaggingStage.from_config()
    context = StageContext(store=store, run_id="run-1")
    batch = pd.DataFrame([record(id="x1", rating=1), record(id="x2")])
    result = stage.run(batch, context)
    assert stage.save(result, context) == 2
    assert stage.save(result, context) == 2
    assert store.count(schema.flags) == 2
    assert store.count(schema.flags, flagged=True) == 1
    assert store.count(schema.flags, rules_version=stage.version) == 2


def test_invalid_rules_say_which_key_to_fix(tmp_path: Path) -> None:
    data = yaml.safe_load((DEFAULT_CONFIG_DIR / "flagging.yaml").read_text(encoding="utf-8"))
    data["priority_min_points"] = {"P1": 3, "P2": 5, "P3": 0}
    (tmp_path / "flagging.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"P1 >= P2 >= P3"):
        load_flagging_rules(tmp_path)
    data["priority_min_points"] = {"P1": 8, "P2": 5, "P3": 0}
    data["low_rating"]["max_rating"] = 9
    (tmp_path / "flagging.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"low_rating\.max_rating"):
        load_flagging_rules(tmp_path)


def test_per_language_negative_threshold_overrides_the_general_one(tmp_path: Path) -> None:
    data = yaml.safe_load((DEFAULT_CONFIG_DIR / "flagging.yaml").read_text(encoding="utf-8"))
    data["negative_document"]["min_probability"] = 0.7
    data["negative_document"]["min_probability_by_language"] = {"tr": 0.4}
    (tmp_path / "flagging.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    rules = load_flagging_rules(tmp_path)
    rows = pd.DataFrame(
        [
            record(id="tr-1", lang="tr", sentiment_scores=scores(0.45)),
            record(id="en-1", lang="en", sentiment_scores=scores(0.45)),
            record(id="none-1", lang=None, sentiment_scores=scores(0.45)),
            record(id="en-2", lang="en", sentiment_scores=scores(0.75)),
        ]
    )
    flagged = flag_batch(rows, rules)
    assert flagged["flagged"].tolist() == [True, False, False, True]
    assert flagged["reasons"][0] == ["negative 0.45"]
    data["negative_document"]["min_probability_by_language"] = {"tr": 1.5}
    (tmp_path / "flagging.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="min_probability_by_language"):
        load_flagging_rules(tmp_path)


def _custom_model(store: Store, version: str, thresholds: dict[str, float]) -> None:
    """Register a stack whose stored flag thresholds are ``thresholds``."""
    stack = tiny_stack(LanguageBlend(0.5, 1.0, [0.0, 0.0, 0.0]), version=version)
    stack.metadata.metrics = {
        "negative_operating_point": {
            lang: {"flag_threshold": value, "negative_recall": 0.9}
            for lang, value in thresholds.items()
        }
    }
    weights, metadata = model_artifact_data(stack)
    register_model(
        store,
        version=version,
        kind="sentiment",
        head_metadata=metadata,
        weights=weights,
        metrics={},
        parent_version=None,
    )


def test_document_thresholds_follow_the_model_that_scored_the_record(
    store: Store, tmp_path: Path
) -> None:
    ((committed, committed_thresholds),) = committed_model_thresholds().items()
    shipped = load_flagging_rules().negative_document
    # The shipped fallback values are the committed model's own.
    assert committed_thresholds == {lang: shipped.threshold(lang) for lang in committed_thresholds}
    _custom_model(store, "custom-flags", {"en": 0.30})
    rows = pd.DataFrame(
        [
            record(id="committed", model_version=committed, sentiment_scores=scores(0.40)),
            record(id="custom", model_version="custom-flags", sentiment_scores=scores(0.40)),
            record(id="retired", model_version="retired-model", sentiment_scores=scores(0.40)),
            record(id="ro", lang="ro", model_version="custom-flags", sentiment_scores=scores(0.55)),
        ]
    )
    context = StageContext(store=store, run_id="run-1")
    result = FlaggingStage.from_config().run(rows, context)
    # en: the committed model flags from 0.46, the custom one from its own 0.30; a version the
    # store does not hold, and a language the model stores no value for (ro: 0.52), use the
    # YAML's per-language values.
    assert result["flagged"].tolist() == [False, True, False, True]
    assert result["reasons"][1] == ["negative 0.40"]

    config = edited_configs(
        tmp_path / "configs",
        "flagging.yaml",
        "thresholds_from_model: true",
        "thresholds_from_model: false",
    )
    fixed = FlaggingStage.from_config(config).run(rows, context)
    assert fixed["flagged"].tolist() == [False, False, False, True]
