"""Time the aspect, topic and trend stages on 20,000 records whose embeddings are given.

Usage::

    python benchmarks/aspects_topics_speed.py [--records 20000]

Records are generated multilingual complaints (tests/_synthetic_feedback.py); each distinct
text is encoded once (the aspect heads' layer features) and the 20,000 record vectors are those
plus small noise, as the sentiment stage would hand them over: features in the
``embedding@layers-...`` columns, their last block (the E5 embedding) in ``embedding``. A
quarter of the records have two sentences, given with ``sentences`` and the sentence vector
columns (their record vector is the normalised mean of the two: only the timing matters here).
The store is a fresh DuckDB file. Prints one Markdown table row per step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.analysis._embedding_lookup import (
    E5_DIM,
    TextEmbedder,
    e5_embeddings,
    embedding_columns,
)
from pipelines.analysis.aspects import AspectHeads, AspectStage
from pipelines.analysis.topics import TopicStage
from pipelines.analysis.trends import TrendStage
from pipelines.stages import StageContext
from pipelines.storage import Store, schema
from tests._synthetic_feedback import THEMES, feedback_rows

_NOISE = 0.02


def _unit(vector: np.ndarray) -> np.ndarray:
    """Each 384-wide block of ``vector`` (one per encoder layer) scaled to unit norm."""
    blocks = vector.reshape(-1, E5_DIM)
    return (blocks / np.linalg.norm(blocks, axis=1, keepdims=True)).reshape(-1)


def build_batch(records: int, embedder: TextEmbedder) -> pd.DataFrame:
    """``records`` generated records over 28 days with vectors, sentences and sentiment."""
    per_language = max(1, records // (len(THEMES) * 4))
    frame = feedback_rows(dict.fromkeys(THEMES, per_language), datetime(2024, 5, 1, tzinfo=UTC), 28)
    frame = frame.head(records).reset_index(drop=True)
    generator = np.random.default_rng(0)
    firsts = frame["text"].to_numpy()
    seconds = frame["text"].sample(frac=1.0, random_state=1).to_numpy()
    two_sentences = generator.random(len(frame)) < 0.25
    distinct = sorted(set(firsts))
    print(f"encoding {len(distinct)} distinct texts once...", file=sys.stderr)
    base = dict(zip(distinct, embedder.embed(distinct), strict=True))

    def noisy(vector: np.ndarray) -> np.ndarray:
        return _unit(vector + generator.normal(0, _NOISE, vector.shape))

    texts, embeddings, sentences, sentence_vectors = [], [], [], []
    for first, second, both in zip(firsts, seconds, two_sentences, strict=True):
        if both:
            pair = [noisy(base[first]), noisy(base[second])]
            texts.append(f"{first}. {second}")
            embeddings.append(_unit(pair[0] + pair[1]))
            sentences.append(
                [
                    {"text": first, "sentiment": "negative"},
                    {"text": second, "sentiment": "negative"},
                ]
            )
            sentence_vectors.append(pair)
        else:
            texts.append(first)
            embeddings.append(noisy(base[first]))
            sentences.append([{"text": first, "sentiment": "negative"}])
            sentence_vectors.append(None)
    frame["text"] = texts
    frame["sentences"] = sentences
    doc_column, sentence_column = embedding_columns(embedder.layers)
    frame[doc_column] = embeddings
    frame[sentence_column] = sentence_vectors
    if embedder.layers is not None:
        frame["embedding"] = list(e5_embeddings(np.stack(embeddings)))
        frame["sentence_embeddings"] = [
            None if pair is None else e5_embeddings(np.stack(pair)) for pair in sentence_vectors
        ]
    frame["text_hash"] = [f"bench{index:08d}" for index in range(len(frame))]
    return frame


def _store_records(store: Store, frame: pd.DataFrame) -> None:
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
                "run_id": "bench",
                "ingested_at": now,
            }
            for row in frame.itertuples(index=False)
        ],
    )


def main() -> None:
    """Run the benchmark and print the timings as Markdown rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "bench.duckdb") as store:
        embedder = TextEmbedder(store=store, layers=AspectHeads.load().encoder_layers)
        batch = build_batch(arguments.records, embedder)
        _store_records(store, batch)
        context = StageContext(store=store, run_id="bench-1")
        timings: list[tuple[str, float]] = []

        def timed(label: str, step):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            value = step()
            timings.append((label, time.perf_counter() - start))
            return value

        aspects = AspectStage(embedder=embedder)
        result = timed("aspects: run", lambda: aspects.run(batch, context))
        timed("aspects: save", lambda: aspects.save(result, context))
        topics = TopicStage(embedder=TextEmbedder(store=store))
        fitted = timed(
            "topics: run with refit (fit 20k window + assign)", lambda: topics.run(result, context)
        )
        timed("topics: save (model + record_topics)", lambda: topics.save(fitted, context))
        nightly = TopicStage(embedder=TextEmbedder(store=store))
        later = result.assign(created_at=result["created_at"] + timedelta(days=1))
        assigned = timed(
            "topics: run without refit (assign only)", lambda: nightly.run(later, context)
        )
        timed("topics: save (record_topics)", lambda: nightly.save(assigned, context))
        trends = TrendStage()
        timed("trends: run", lambda: trends.run(assigned, context))
        seconds_of = dict(timings)
        common = ["aspects: run", "aspects: save", "trends: run"]
        nightly_total = sum(
            seconds_of[label]
            for label in [
                *common,
                "topics: run without refit (assign only)",
                "topics: save (record_topics)",
            ]
        )
        refit_total = sum(
            seconds_of[label]
            for label in [
                *common,
                "topics: run with refit (fit 20k window + assign)",
                "topics: save (model + record_topics)",
            ]
        )
    print(f"| step ({arguments.records} records, embeddings given) | seconds |")
    print("|---|---:|")
    for label, seconds in timings:
        print(f"| {label} | {seconds:.1f} |")
    saves = "saves included"
    print(f"| **nightly total** (aspects + assign + trends, {saves}) | **{nightly_total:.1f}** |")
    print(f"| **refit-night total** (aspects + refit + trends, {saves}) | **{refit_total:.1f}** |")


if __name__ == "__main__":
    main()
