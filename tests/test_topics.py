"""Discovered topics: cross-language grouping, stable ids across refits, labels that survive."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.analysis._embedding_lookup import TextEmbedder
from pipelines.analysis.topics import (
    UNASSIGNED,
    TopicStage,
    class_keywords,
    latest_topic_model,
    list_topics,
    rename_topic,
)
from pipelines.ingest.dedupe import text_hash
from pipelines.stages import StageContext
from pipelines.storage import Store, schema
from tests._synthetic_feedback import THEMES, feedback_rows

START = datetime(2024, 2, 1, tzinfo=UTC)
THEME_COUNTS = dict.fromkeys(THEMES, 8)
PROBES = {
    ("delivery", "fa"): "سفارشم دو هفته دیر رسید و هیچکس جواب نمیده",
    ("delivery", "tr"): "Siparişim iki hafta geç geldi, kimse cevap vermiyor",
    ("price", "en"): "Way too expensive, they raised prices again",
    ("app", "ro"): "Aplicația dă eroare când vreau să plătesc",
}


class _MemoisedEncoder:
    """The real encoder, remembering vectors across this module's tests (speed only)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.version: str = encoder.version
        self._vectors: dict[tuple[str, str], np.ndarray] = {}

    def encode(self, texts: list[str], kind: str = "passage", batch_size: int = 64) -> np.ndarray:
        missing = [text for text in dict.fromkeys(texts) if (kind, text) not in self._vectors]
        if missing:
            vectors = self.encoder.encode(missing, kind=kind, batch_size=batch_size)
            self._vectors.update({(kind, t): v for t, v in zip(missing, vectors, strict=True)})
        return np.stack([self._vectors[(kind, text)] for text in texts])


@pytest.fixture(scope="module")
def encoder() -> Iterator[object]:
    from models.encoder import Encoder

    yield _MemoisedEncoder(Encoder.load())


@pytest.fixture
def topic_config(tmp_path: Path) -> Path:
    """Five topics (one per generated theme), weekly refits over a 28-day window."""
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "topics.yaml").write_text(
        "topics:\n  window_days: 28\n  refit_every_days: 7\n  min_topics: 5\n  max_topics: 5\n",
        encoding="utf-8",
    )
    return folder


def _store_window(store: Store, embedder: TextEmbedder, frame: pd.DataFrame) -> None:
    """Records as ingested earlier, with their embeddings cached as the sentiment stage does."""
    now = datetime.now(UTC)
    store.insert_ignore(
        schema.feedback,
        [
            {
                "id": row.id,
                "source": row.source,
                "channel": row.channel,
                "created_at": row.created_at,
                "text": row.text,
                "lang": row.lang,
                "text_hash": row.text_hash,
                "run_id": "earlier",
                "ingested_at": now,
            }
            for row in frame.itertuples(index=False)
        ],
    )
    store.insert_ignore(
        schema.sentiment,
        [
            {
                "record_id": row.id,
                "model_version": "test",
                "label": row.sentiment,
                "negative": 1.0,
                "neutral": 0.0,
                "positive": 0.0,
                "run_id": "earlier",
                "created_at": now,
            }
            for row in frame.itertuples(index=False)
        ],
    )
    embedder.embed(list(frame["text"]))


def _probe_batch(store: Store, day: datetime, embedder: TextEmbedder, suffix: str) -> pd.DataFrame:
    """Tonight's records: ingested (in ``feedback``) and carrying the sentiment stage's columns."""
    frame = pd.DataFrame(
        [
            {
                "id": f"probe-{theme}-{lang}-{suffix}",
                "source": "synthetic",
                "channel": "review",
                "created_at": day,
                "text": text,
                "lang": lang,
                "text_hash": text_hash(text),
                "sentiment": "negative",
            }
            for (theme, lang), text in PROBES.items()
        ]
    )
    _store_window(store, embedder, frame)
    frame["embedding"] = list(embedder.embed(list(frame["text"])))
    return frame


def _topic_of(result: pd.DataFrame, theme: str, lang: str) -> dict:
    return result.loc[result["id"].str.startswith(f"probe-{theme}-{lang}-"), "topic"].iloc[0]


def test_topics_cross_languages_stay_stable_and_keep_labels(
    store: Store, encoder: object, topic_config: Path
) -> None:
    embedder = TextEmbedder(encoder=encoder, store=store)  # type: ignore[arg-type]
    _store_window(store, embedder, feedback_rows(THEME_COUNTS, START, days=28, seed=1))

    # Night 1: no model yet -> fit on the 28-day window, assign the probes.
    day_one = START + timedelta(days=28, hours=1)
    stage = TopicStage(config_dir=topic_config, embedder=embedder)
    context = StageContext(store=store, run_id="night-1")
    first = stage.run(_probe_batch(store, day_one, embedder, "1"), context)
    assert stage.save(first, context) == len(PROBES)
    model_one = latest_topic_model(store)
    assert model_one is not None and len(model_one.topic_ids) == 5

    delivery_fa = _topic_of(first, "delivery", "fa")
    delivery_tr = _topic_of(first, "delivery", "tr")
    assert delivery_fa["id"] != UNASSIGNED
    assert delivery_fa["id"] == delivery_tr["id"]
    assert delivery_fa["keywords"]
    assert _topic_of(first, "price", "en")["id"] not in {delivery_fa["id"], UNASSIGNED}

    rename_topic(store, delivery_fa["id"], "Late deliveries")

    # Two weeks later: new records, overlapping window -> refit with matched ids.
    _store_window(
        store, embedder, feedback_rows(THEME_COUNTS, START + timedelta(days=28), days=14, seed=2)
    )
    day_two = START + timedelta(days=42, hours=1)
    stage_two = TopicStage(config_dir=topic_config, embedder=embedder)
    context_two = StageContext(store=store, run_id="night-2")
    second = stage_two.run(_probe_batch(store, day_two, embedder, "2"), context_two)
    stage_two.save(second, context_two)
    model_two = latest_topic_model(store)
    assert model_two is not None and model_two.version != model_one.version

    assert sorted(model_two.topic_ids.tolist()) == sorted(model_one.topic_ids.tolist())
    for theme, lang in PROBES:
        assert _topic_of(second, theme, lang)["id"] == _topic_of(first, theme, lang)["id"]
    assert _topic_of(second, "delivery", "tr")["label"] == "Late deliveries"

    listing = list_topics(store)
    row = listing[listing["id"] == delivery_fa["id"]].iloc[0]
    assert row["label"] == "Late deliveries"
    assert row["size"] == 4  # the delivery probes of both nights (fa + tr)
    assert row["net_sentiment"] == -100
    assert set(row["languages"]) == {"fa", "tr"}

    runner = CliRunner()
    database = store.url.removeprefix("duckdb:///")
    renamed = runner.invoke(
        app, ["topics", "rename", str(delivery_fa["id"]), "Kargo gecikmesi", "--db", database]
    )
    assert renamed.exit_code == 0, renamed.output
    listed = runner.invoke(app, ["topics", "--db", database], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "Kargo gecikmesi" in listed.output and "-100" in listed.output
    unknown = runner.invoke(app, ["topics", "rename", "999", "x", "--db", database])
    assert unknown.exit_code == 1 and "feedback topics" in unknown.output


def test_nightly_run_between_refits_only_assigns(
    store: Store, encoder: object, topic_config: Path
) -> None:
    embedder = TextEmbedder(encoder=encoder, store=store)  # type: ignore[arg-type]
    _store_window(store, embedder, feedback_rows(THEME_COUNTS, START, days=28, seed=1))
    day = START + timedelta(days=28, hours=1)
    for night, offset in enumerate((0, 2)):
        stage = TopicStage(config_dir=topic_config, embedder=embedder)
        context = StageContext(store=store, run_id=f"night-{night}")
        batch = _probe_batch(store, day + timedelta(days=offset), embedder, str(night))
        stage.save(stage.run(batch, context), context)
    assert store.count(schema.topic_models) == 1
    assert store.count(schema.record_topics) == 2 * len(PROBES)


def test_unrelated_text_is_unassigned_and_empty_batch_is_fine(
    store: Store, encoder: object, topic_config: Path
) -> None:
    embedder = TextEmbedder(encoder=encoder, store=store)  # type: ignore[arg-type]
    _store_window(store, embedder, feedback_rows(THEME_COUNTS, START, days=28, seed=1))
    stage = TopicStage(config_dir=topic_config, embedder=embedder)
    context = StageContext(store=store, run_id="n")
    day = START + timedelta(days=28, hours=1)
    stage.save(stage.run(_probe_batch(store, day, embedder, "1"), context), context)
    batch = pd.DataFrame(
        [
            {
                "id": "odd",
                "created_at": day + timedelta(days=1),
                "text": "دیروز یک کتاب خوب درباره تاریخ خوندم",
                "lang": "fa",
            }
        ]
    )
    result = stage.run(batch, context)
    assert result["topic"].iloc[0]["id"] == UNASSIGNED
    assert result["topic"].iloc[0]["label"] == "unassigned"
    empty = stage.run(batch.iloc[:0], context)
    assert "topic" in empty.columns and empty.empty
    assert np.isfinite(result["topic_similarity"]).all()


def test_rename_unknown_topic_says_how_to_fix(store: Store) -> None:
    from pipelines._errors import ModelError

    with pytest.raises(ModelError, match="feedback topics"):
        rename_topic(store, 99, "x")


def test_class_keywords_follow_the_c_tf_idf_formula() -> None:
    # Cluster 0 joins to "kargo kargo geç" (3 words), cluster 1 to "kargo iade iade iade" (4):
    # A = int(mean(3, 4)) = 3; f(kargo) = 3, f(geç) = 1, f(iade) = 3.
    # Cluster 0: kargo 2/3 * log(1 + 3/3) = 0.462, geç 1/3 * log(1 + 3/1) = 0.462 (a tie, kept in
    # vocabulary order); cluster 1: iade 3/4 * log 2 = 0.520 before kargo 1/4 * log 2 = 0.173.
    documents = ["kargo geç", "kargo", "iade iade", "kargo iade", ""]
    clusters = np.array([0, 0, 1, 1, 1])
    assert class_keywords(documents, clusters, top_n=5) == {
        0: ["geç", "kargo"],
        1: ["iade", "kargo"],
    }
    assert class_keywords(documents, clusters, top_n=1) == {0: ["geç"], 1: ["iade"]}
    assert class_keywords(["", ""], np.array([3, 4]), top_n=5) == {3: [], 4: []}
