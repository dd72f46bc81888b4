"""Measure two more sentiment levers on the dev splits: n-gram model variants and head seeds.

Usage::

    python benchmarks/sentiment_dev_levers.py ngram --langs fa [--zwnj keep|space|drop]
    python benchmarks/sentiment_dev_levers.py seeds --seeds 13 1 2

``ngram``: for each language, n-gram models of other settings than the committed one (inverse
regularisation C, naive-Bayes log-count-ratio scaling of the features as in NBSVM, word
1-3-grams, the zero-width non-joiner kept, made a space or dropped) are fitted on the train
splits and blended with the committed e5 head as ``python -m models.sentiment.stack`` blends
(weight, temperature and class shift chosen on dev). The NB scaling folds into the weights
(``w * r``), so a winner would cost nothing at inference.

``seeds``: e5 heads of the committed recipe trained with other seeds, alone and averaged (mean
of log-probabilities), each blended with the committed n-gram models. Needs the cached e5
features of every set (``FeatureCache``; a first run encodes them).

Both print the pooled dev macro-F1 per language (the figure of the model card). Every
parameter is chosen on the same dev rows, so only differences between rows mean something.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.encoder import Encoder
from models.sentiment._datasets import DatasetSplit, discover_datasets, shared_datasets_dir
from models.sentiment._features import FeatureCache
from models.sentiment._head import SentimentHead
from models.sentiment._ngram import (
    NgramMetadata,
    NgramModel,
    class_balanced_weights,
    hashed_features,
)
from models.sentiment._stacking import (
    FLAG_NEGATIVE_THRESHOLD,
    NEGATIVE_RECALL_TARGET,
    fit_language_blend,
)
from models.sentiment.stack import stack_splits
from models.sentiment.train import (
    TrainingConfig,
    load_training_config,
    select_datasets,
    train_head,
)

LANGS = ("en", "fa", "ro", "tr")
ZWNJ = "\u200c"
# name -> (feature settings, C, NB scaling)
NGRAM_VARIANTS: dict[str, tuple[dict[str, list[int]], float, bool]] = {
    "committed (C=4)": ({}, 4.0, False),
    "C=2": ({}, 2.0, False),
    "C=8": ({}, 8.0, False),
    "C=16": ({}, 16.0, False),
    "NB scaling, C=1": ({}, 1.0, True),
    "NB scaling, C=4": ({}, 4.0, True),
    "NB scaling, C=16": ({}, 16.0, True),
    "word 1-3, C=4": ({"word_ngrams": [1, 3]}, 4.0, False),
    "word 1-3, NB scaling, C=4": ({"word_ngrams": [1, 3]}, 4.0, True),
}


def _lang(split: DatasetSplit) -> str:
    return str(split.frame["lang"].mode().iloc[0])


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(values, -40.0, 40.0)))


def _nb_ratio(features: sparse.csr_matrix, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """NBSVM's log-count ratio of every feature (binarised counts, add-one smoothing)."""
    present = features.copy()
    present.data[:] = 1.0
    positive = 1.0 + np.asarray(present[target].T @ weights[target]).ravel()
    negative = 1.0 + np.asarray(present[~target].T @ weights[~target]).ravel()
    return np.log((positive / positive.sum()) / (negative / negative.sum()))


def _fit_part(
    features: sparse.csr_matrix,
    target: np.ndarray,
    weights: np.ndarray,
    regularisation: float,
    nb_scaling: bool,
) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    ratio = _nb_ratio(features, target, weights) if nb_scaling else np.ones(features.shape[1])
    model = LogisticRegression(C=regularisation, max_iter=2000, solver="liblinear")
    model.fit(features @ sparse.diags(ratio), target, sample_weight=weights)
    return model.coef_[0] * ratio, float(model.intercept_[0])


def _pooled_blend_f1(
    dev: Sequence[DatasetSplit], e5_proba: Sequence[np.ndarray], ngram_proba: Sequence[np.ndarray]
) -> tuple[float, float]:
    """(pooled dev macro-F1, n-gram weight) of the blend chosen on ``dev``."""
    blend, point = fit_language_blend(
        np.log(np.clip(np.concatenate(e5_proba), 1e-12, 1.0)),
        np.concatenate(ngram_proba),
        np.concatenate([split.labels for split in dev]),
        np.concatenate([np.full(len(split.frame), not split.has_neutral) for split in dev]),
        np.concatenate([np.full(len(split.frame), index) for index, split in enumerate(dev)]),
        FLAG_NEGATIVE_THRESHOLD,
        NEGATIVE_RECALL_TARGET,
    )
    return point["macro_f1"], blend.ngram_weight


def ngram_variants(
    langs: Sequence[str],
    zwnj: str,
    train: list[DatasetSplit],
    dev: list[DatasetSplit],
    e5_proba: list[np.ndarray],
) -> None:
    """Print the pooled dev macro-F1 of every n-gram variant blended with the head."""
    replacement = {"keep": ZWNJ, "space": " ", "drop": ""}[zwnj]
    for lang in langs:
        members = [index for index, split in enumerate(dev) if _lang(split) == lang]
        splits = [split for split in train if _lang(split) == lang]
        texts = [text.replace(ZWNJ, replacement) for s in splits for text in s.frame["text"]]
        labels = np.concatenate([split.labels for split in splits])
        has_neutral = np.concatenate([np.full(len(s.frame), s.has_neutral) for s in splits])
        weights = class_balanced_weights(splits)
        for name, (settings, regularisation, nb_scaling) in NGRAM_VARIANTS.items():
            started = time.perf_counter()
            metadata = NgramMetadata(version="variant", **settings)
            features = hashed_features(texts, metadata)
            sided = labels != 1
            polarity = _fit_part(
                features[sided], labels[sided] == 2, weights[sided], regularisation, nb_scaling
            )
            neutral = _fit_part(
                features[has_neutral],
                labels[has_neutral] == 1,
                weights[has_neutral],
                regularisation,
                nb_scaling,
            )
            ngram_proba = []
            for index in members:
                rows = hashed_features(
                    [text.replace(ZWNJ, replacement) for text in dev[index].frame["text"]],
                    metadata,
                )
                positive = _sigmoid(rows @ polarity[0] + polarity[1])
                neutral_p = _sigmoid(rows @ neutral[0] + neutral[1])
                ngram_proba.append(
                    np.stack(
                        [(1 - neutral_p) * (1 - positive), neutral_p, (1 - neutral_p) * positive],
                        axis=1,
                    )
                )
            score, weight = _pooled_blend_f1(
                [dev[index] for index in members],
                [e5_proba[index] for index in members],
                ngram_proba,
            )
            print(
                f"{lang} zwnj={zwnj} {name:28s} pooled dev macro-F1 {score:.3f} "
                f"(n-gram weight {weight:.2f}; {time.perf_counter() - started:.0f} s)",
                flush=True,
            )


def seed_heads(
    config: TrainingConfig,
    seeds: Sequence[int],
    cache: FeatureCache,
    dev: list[DatasetSplit],
    features: list[np.ndarray],
) -> None:
    """Print the pooled dev macro-F1 per language of heads of other seeds and of their mean."""
    ngram = NgramModel.load(config.resolved(Path("models/heads/sentiment-ngram")))
    ngram_proba = [
        ngram.predict_proba(split.frame["text"].tolist(), split.frame["lang"].tolist())
        for split in dev
    ]
    log_proba: dict[str, list[np.ndarray]] = {}
    committed = SentimentHead.load(config.resolved(config.output))
    for seed in seeds:
        started = time.perf_counter()
        result = train_head(config.model_copy(update={"seed": seed}), cache)
        print(f"seed {seed}: best epoch {result.best_epoch}, {time.perf_counter() - started:.0f} s")
        log_proba[f"seed {seed}"] = [
            np.log(np.clip(result.head.predict_proba(block), 1e-12, 1.0)) for block in features
        ]
    mean = [np.mean([rows[i] for rows in log_proba.values()], axis=0) for i in range(len(dev))]
    log_proba[f"mean of seeds {list(seeds)}"] = [
        rows - np.log(np.exp(rows).sum(axis=1, keepdims=True)) for rows in mean
    ]
    log_proba = {
        "committed head": [
            np.log(np.clip(committed.predict_proba(block), 1e-12, 1.0)) for block in features
        ]
    } | log_proba
    for name, rows in log_proba.items():
        cells = []
        for lang in LANGS:
            members = [index for index, split in enumerate(dev) if _lang(split) == lang]
            score, weight = _pooled_blend_f1(
                [dev[i] for i in members],
                [np.exp(rows[i]) for i in members],
                [ngram_proba[i] for i in members],
            )
            cells.append(f"{lang} {score:.3f} (a={weight:.2f})")
        print(f"{name:28s} " + " | ".join(cells), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ngram = commands.add_parser("ngram")
    ngram.add_argument("--langs", nargs="+", default=list(LANGS))
    ngram.add_argument("--zwnj", choices=["keep", "space", "drop"], default="keep")
    seeds = commands.add_parser("seeds")
    seeds.add_argument("--seeds", type=int, nargs="+", default=[13, 1, 2])
    arguments = parser.parse_args()

    config = load_training_config()
    cache = FeatureCache(Encoder.load(dtype=config.encoder_dtype), layers=config.encoder_layers)
    chosen = select_datasets(discover_datasets(shared_datasets_dir()), config.datasets)
    train, dev = stack_splits(chosen)
    features = [cache.embeddings(split.frame["text"].tolist()) for split in dev]
    print(f"encoder features: {cache.encoder.dtype}")
    if arguments.command == "ngram":
        head = SentimentHead.load(config.resolved(config.output))
        e5_proba = [head.predict_proba(block) for block in features]
        ngram_variants(arguments.langs, arguments.zwnj, train, dev, e5_proba)
    else:
        seed_heads(config, arguments.seeds, cache, dev, features)
    return 0


if __name__ == "__main__":
    sys.exit(main())
