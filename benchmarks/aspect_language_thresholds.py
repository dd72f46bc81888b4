"""Measure per-language aspect thresholds against the shipped per-aspect ones (dev macro-F1).

Usage::

    python benchmarks/aspect_language_thresholds.py [--shared ../shared]

Trains the aspect heads as ``python -m models.aspects_train`` does (cached features) and keeps
each aspect's out-of-fold training scores, the ones its threshold is tuned on. Then, for every
language with at least N train positives of an aspect (N = 30, 50, 100), that language's rows
get a threshold tuned on its own out-of-fold scores; other languages keep the aspect's. With
"keep configured" an aspect whose threshold ``aspects.yaml`` sets (delivery 0.22, chosen for
recall of angry complaints) keeps it everywhere. Prints the dev F1 per aspect and their mean.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models.aspects_train as aspects_train
from pipelines.analysis.aspects import load_aspect_config

_MIN_POSITIVES = (30, 50, 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared"
    )
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    config = load_aspect_config(None)
    names = [aspect.name for aspect in config.detectable]
    inputs = aspects_train.load_training_inputs(arguments.shared, config)
    rows, embeddings, example_vectors = inputs.rows, inputs.embeddings, inputs.example_vectors
    tuned_on: list[tuple[np.ndarray, np.ndarray]] = []
    best_threshold = aspects_train._best_threshold

    def keeping_scores(truth: np.ndarray, scores: np.ndarray) -> float:
        tuned_on.append((truth.copy(), scores.copy()))
        return best_threshold(truth, scores)

    aspects_train._best_threshold = keeping_scores
    try:
        heads = aspects_train.train(
            rows, embeddings, example_vectors, config, inputs.encoder_version
        )
    finally:
        aspects_train._best_threshold = best_threshold
    train_rows = rows.splits == "train"
    truth = rows.gold[train_rows]
    with_head = [
        name
        for column, name in enumerate(names)
        if truth[:, column].sum() >= aspects_train.MIN_HEAD_POSITIVES
    ]
    out_of_fold = dict(zip(with_head, tuned_on, strict=True))
    detector = aspects_train.build_detector(config, heads, example_vectors)
    probabilities = detector.probabilities(embeddings, rows.analysis_texts, list(rows.langs))
    shipped = np.asarray(detector.thresholds, dtype=float)
    train_langs = rows.langs[train_rows]

    def report(label: str, thresholds: np.ndarray) -> None:
        scores = aspects_train.evaluate(probabilities >= thresholds, rows, names)["all"]
        per_aspect = " ".join(f"{name} {entry['f1']:.3f}" for name, entry in scores.items())
        mean = np.mean([entry["f1"] for entry in scores.values()])
        print(f"{label}: macro-F1 {mean:.4f} ({per_aspect})")

    report("shipped (per aspect, configured overrides)", np.tile(shipped, (len(rows.langs), 1)))
    for min_positives in _MIN_POSITIVES:
        for keep_configured in (True, False):
            thresholds = np.tile(shipped, (len(rows.langs), 1))
            tuned = {}
            for column, aspect in enumerate(config.detectable):
                if aspect.name not in out_of_fold or (
                    keep_configured and aspect.threshold is not None
                ):
                    continue
                gold, scores = out_of_fold[aspect.name]
                for lang in np.unique(train_langs):
                    mine = train_langs == lang
                    if gold[mine].sum() >= min_positives:
                        tuned[f"{aspect.name}/{lang}"] = best_threshold(gold[mine], scores[mine])
                        thresholds[rows.langs == lang, column] = tuned[f"{aspect.name}/{lang}"]
            report(
                f"per language (>= {min_positives} positives, keep configured {keep_configured})",
                thresholds,
            )
            print(f"    {tuned}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
