"""Train and evaluate the aspect heads on the annotated data sets of ../shared/datasets.

Usage::

    python -m models.aspects_train [--shared ../shared] [--out models/heads]

Data: the sets of ``ANNOTATED_SETS`` with their categories mapped onto ``configs/aspects.yaml``
by its ``dataset_mapping`` (airline tweets: negative ones only, the complaint reason being
annotated only for them) plus the YAML example phrases (weight ``EXAMPLE_WEIGHT`` each).
Train split -> heads, prototype calibration and thresholds (4-fold out-of-fold F1 on train for
aspects with at least ``MIN_HEAD_POSITIVES`` mapped rows; ``EXAMPLE_ONLY_THRESHOLD`` for heads
learnt from the examples alone); dev split -> the per-aspect figures written into the heads'
JSON and printed as the Markdown table of ``models/cards/aspects.md``. The heads read the pooled
vectors of ``ENCODER_LAYERS`` (the prototypes their last block, the E5 embedding); heads of
aspects with data also get an n-gram part over the analysis text's hashed n-grams, blended with
weight ``NGRAM_BLEND`` for the languages with at least ``MIN_HEAD_POSITIVES`` of the aspect's
train rows. No text is written anywhere; features are cached under the encoder cache folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import fbeta_score, precision_recall_fscore_support
from sklearn.model_selection import KFold

from models.sentiment import NgramMetadata, analysis_text, hashed_features
from pipelines.analysis._embedding_lookup import E5_DIM, e5_embeddings
from pipelines.analysis.aspects import (
    DEFAULT_HEADS_DIR,
    AspectConfig,
    AspectDetector,
    AspectHeads,
    load_aspect_config,
    prototype_similarity,
)

__all__ = [
    "ANNOTATED_SETS",
    "EARLY_LAYER_SCALE",
    "ENCODER_LAYERS",
    "NGRAM_BLEND",
    "AnnotatedRows",
    "TrainingInputs",
    "build_detector",
    "cached_features",
    "evaluate",
    "load_annotated",
    "load_training_inputs",
    "main",
    "train",
]

# (language folder, data set, key of ``dataset_mapping``)
ANNOTATED_SETS: tuple[tuple[str, str, str], ...] = (
    ("tr", "semeval16_restaurants_tr", "semeval16_restaurants"),
    ("en", "semeval16_restaurants_en", "semeval16_restaurants"),
    ("en", "semeval16_laptops_en", "semeval16_laptops"),
    ("en", "twitter_us_airline_sentiment_en", "twitter_us_airline_sentiment"),
    ("fa", "parsinlu_food_reviews_fa", "parsinlu_food_reviews"),
)
_NEGATIVE_ONLY = {"twitter_us_airline_sentiment_en"}
MIN_HEAD_POSITIVES = 50
_THRESHOLD_GRID = np.round(np.arange(0.30, 0.951, 0.01), 2)
_HEAD_C = 4.0
# The sentiment head's layers: the sentiment stage hands their features to the aspects stage,
# so the heads cost no second encoder pass.
ENCODER_LAYERS: tuple[int, ...] = (4, 6, 8, 10, 12)
# Scale of the layers before the last in head training (a stronger L2 penalty on them; folded
# into the saved weights, so inference reads plain features). Dev macro F1 / generated
# multilingual complaints found (RESULTS.md "Aspect heads over layers 4-12"): last layer alone
# 0.554 / 0.858, scale 0.5 0.573 / 0.877, 1.0 0.586 / 0.811 (Romanian 0.62, greetings given
# aspects): the early layers carry language more than meaning.
EARLY_LAYER_SCALE = 0.5
# Weight of one YAML example phrase in head training: the data sets are airline tweets and
# restaurant/laptop reviews; weighted examples keep the heads general (retail, tr/fa/ro).
EXAMPLE_WEIGHT = 20.0
# Weight of the n-gram logit in an aspect's score, (1 - a) * head + a * n-gram (the sentiment
# stack's hashed char 1-5 + word 1-2 features; C=4), in the languages of the aspect's data. Dev
# macro F1 / generated complaints found / angry delivery complaints found at the YAML delivery
# threshold (RESULTS.md "Aspect heads with an n-gram part"): 0 (delivery 0.30) 0.571 / 0.894 /
# 25 of 32; 0.2 (delivery 0.22) 0.588 / 0.923 / 26; 0.3 (delivery 0.30) 0.599 / 0.923 / 24:
# higher weights gain on the English-dominated dev sets and lose short angry complaints.
NGRAM_BLEND = 0.2
_NGRAM_C = 4.0
# Threshold of heads learnt from the YAML examples only (no data set has the aspect): the
# balanced logistic head's natural midpoint; override per aspect in the YAML.
EXAMPLE_ONLY_THRESHOLD = 0.5


@dataclass
class AnnotatedRows:
    """Mapped rows of the annotated sets (texts stay in memory only)."""

    texts: list[str]
    datasets: np.ndarray
    splits: np.ndarray
    gold: np.ndarray  # (N, A) bool, columns = config.detectable order
    langs: np.ndarray

    @cached_property
    def analysis_texts(self) -> list[str]:
        """The texts as the pipeline analyses them (normalized, redacted): the n-gram input."""
        return [analysis_text(text) for text in self.texts]


def load_annotated(shared_dir: Path, config: AspectConfig) -> AnnotatedRows:
    """Read the annotated sets and map their categories onto the taxonomy.

    Args:
        shared_dir: The ../shared folder.
        config: The taxonomy with its ``dataset_mapping``.

    Returns:
        The rows.
    """
    names = [aspect.name for aspect in config.detectable]
    texts: list[str] = []
    datasets: list[str] = []
    splits: list[str] = []
    gold: list[list[bool]] = []
    for lang, dataset, mapping in ANNOTATED_SETS:
        with (shared_dir / "datasets" / lang / dataset / "data.jsonl").open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if dataset in _NEGATIVE_ONLY and row["label"] != "neg":
                    continue
                mapped = {config.map_category(mapping, a["category"]) for a in row["aspects"]}
                texts.append(row["text"])
                datasets.append(dataset)
                splits.append(row["split"])
                gold.append([name in mapped for name in names])
    lang_of = {dataset: lang for lang, dataset, _ in ANNOTATED_SETS}
    return AnnotatedRows(
        texts,
        np.array(datasets),
        np.array(splits),
        np.array(gold, dtype=bool),
        np.array([lang_of[dataset] for dataset in datasets]),
    )


def cached_features(texts: list[str], kind_note: str) -> tuple[np.ndarray, str]:
    """Features of ``ENCODER_LAYERS`` for ``texts``, cached on disk by encoder and text digest.

    Args:
        texts: Texts to encode (``passage:`` prefix).
        kind_note: Cache file prefix.

    Returns:
        ``(features, encoder version)``.
    """
    from models.encoder import default_cache_root
    from pipelines.analysis._embedding_lookup import shared_encoder

    encoder = shared_encoder()
    digest = hashlib.sha256("\x1f".join(texts).encode("utf-8")).hexdigest()[:16]
    layers = "-".join(map(str, ENCODER_LAYERS))
    cache = (
        default_cache_root() / "training" / f"{kind_note}-{encoder.version}-{layers}-{digest}.npy"
    )
    if cache.is_file():
        return np.load(cache), encoder.version
    vectors = encoder.encode(texts, kind="passage", layers=ENCODER_LAYERS)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors, encoder.version


@dataclass
class TrainingInputs:
    """What training and its benchmarks read: the annotated rows and the cached features.

    Attributes:
        rows: Mapped annotated rows.
        embeddings: Their features of ``ENCODER_LAYERS``.
        example_vectors: Per detectable aspect, its example phrases' features.
        encoder_version: Encoder behind the features.
    """

    rows: AnnotatedRows
    embeddings: np.ndarray
    example_vectors: list[np.ndarray]
    encoder_version: str


def load_training_inputs(shared_dir: Path, config: AspectConfig) -> TrainingInputs:
    """Read the annotated sets and their features (encoded once, then from the cache).

    Args:
        shared_dir: The ../shared folder.
        config: The taxonomy.

    Returns:
        The inputs of :func:`train`.
    """
    rows = load_annotated(shared_dir, config)
    embeddings, encoder_version = cached_features(rows.texts, "aspects-annotated")
    example_vectors = [
        cached_features(aspect.example_phrases, "aspects-examples")[0]
        for aspect in config.detectable
    ]
    return TrainingInputs(rows, embeddings, example_vectors, encoder_version)


def _best_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    f1 = [
        precision_recall_fscore_support(truth, scores >= t, average="binary", zero_division=0)[2]
        for t in _THRESHOLD_GRID
    ]
    return float(_THRESHOLD_GRID[int(np.argmax(f1))])


def _fit(
    features: np.ndarray | sparse.csr_matrix,
    examples: np.ndarray | sparse.csr_matrix,
    labels: np.ndarray,
    example_labels: np.ndarray,
    ngram: bool,
) -> LogisticRegression:
    """One aspect's head (e5 features) or n-gram part (hashed n-grams) on rows + YAML examples."""
    stack = sparse.vstack if ngram else np.vstack
    model = LogisticRegression(
        C=_NGRAM_C if ngram else _HEAD_C,
        max_iter=3000,
        class_weight="balanced",
        solver="liblinear" if ngram else "lbfgs",
    )
    return model.fit(
        stack([features, examples]),
        np.concatenate([labels, example_labels]),
        sample_weight=np.concatenate(
            [np.ones(features.shape[0]), np.full(examples.shape[0], EXAMPLE_WEIGHT)]
        ),
    )


def _logit(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(probabilities, 1e-7, 1.0 - 1e-7)
    return np.log(clipped / (1.0 - clipped))


def train(
    rows: AnnotatedRows,
    embeddings: np.ndarray,
    example_vectors: list[np.ndarray],
    config: AspectConfig,
    encoder_version: str,
    ngram_blend: float = NGRAM_BLEND,
) -> AspectHeads:
    """Fit the prototype calibration, the heads and their thresholds on the train split.

    Args:
        rows: Mapped annotated rows.
        embeddings: Their features of ``ENCODER_LAYERS``.
        example_vectors: Per detectable aspect, its example phrases' features.
        config: The taxonomy.
        encoder_version: Encoder behind the features.
        ngram_blend: Weight of the n-gram parts' logits (0: heads without them).

    Returns:
        The heads (not yet evaluated or saved).
    """
    names = [aspect.name for aspect in config.detectable]
    train_rows = rows.splits == "train"
    centred = prototype_similarity(
        e5_embeddings(embeddings[train_rows]),
        [e5_embeddings(vectors) for vectors in example_vectors],
        config.prototype_top_k,
    )
    scale = np.full(embeddings.shape[1], EARLY_LAYER_SCALE, dtype=np.float32)
    scale[-E5_DIM:] = 1.0
    train_features = embeddings[train_rows] * scale
    examples = np.vstack(example_vectors) * scale
    truth = rows.gold[train_rows]
    calibration = LogisticRegression(max_iter=1000, class_weight="balanced").fit(
        centred.reshape(-1, 1), truth.reshape(-1)
    )
    slope = float(calibration.coef_[0, 0])
    intercept = float(calibration.intercept_[0])
    pooled = 1.0 / (1.0 + np.exp(-(slope * centred + intercept)))
    # Prototype-only aspects are new or without data: favour precision (macro F0.5).
    supported = np.flatnonzero(truth.any(axis=0))
    macro_f_half = [
        np.mean(
            [
                fbeta_score(truth[:, column], pooled[:, column] >= t, beta=0.5, zero_division=0)
                for column in supported
            ]
        )
        for t in _THRESHOLD_GRID
    ]
    prototype_threshold = float(_THRESHOLD_GRID[int(np.argmax(macro_f_half))])
    ngram = NgramMetadata(version="aspects") if ngram_blend > 0 else None
    if ngram is not None:
        train_ngrams = hashed_features(
            [text for text, kept in zip(rows.analysis_texts, train_rows, strict=True) if kept],
            ngram,
        )
        phrases = [phrase for aspect in config.detectable for phrase in aspect.example_phrases]
        if len(phrases) != len(examples):
            raise ValueError(f"{len(examples)} example vectors for {len(phrases)} YAML phrases")
        example_ngrams = hashed_features([analysis_text(phrase) for phrase in phrases], ngram)
    heads = AspectHeads(
        version="",
        encoder_version=encoder_version,
        encoder_layers=ENCODER_LAYERS,
        prototype_slope=slope,
        prototype_intercept=intercept,
        prototype_threshold=prototype_threshold,
        ngram=ngram,
        ngram_blend=ngram_blend if ngram is not None else 0.0,
    )
    train_langs = rows.langs[train_rows]
    folds = list(KFold(4, shuffle=True, random_state=13).split(train_features))
    example_aspect = np.concatenate([np.full(len(v), i) for i, v in enumerate(example_vectors)])
    for column, name in enumerate(names):
        positives = truth[:, column]
        example_labels = example_aspect == column
        head = _fit(train_features, examples, positives, example_labels, ngram=False)
        heads.weights[name] = (head.coef_[0] * scale).astype(np.float32)
        heads.biases[name] = float(head.intercept_[0])
        if positives.sum() < MIN_HEAD_POSITIVES:
            heads.thresholds[name] = EXAMPLE_ONLY_THRESHOLD
            continue
        # The n-gram part scores only languages whose words it learnt from data (the examples
        # alone would teach it a few phrases): elsewhere it would pull every score down.
        languages = sorted(
            str(lang)
            for lang in np.unique(train_langs)
            if positives[train_langs == lang].sum() >= MIN_HEAD_POSITIVES
        )
        blended = np.isin(train_langs, languages)
        # Out-of-fold scores of heads (and n-gram parts) trained like the final ones, examples
        # included, so the threshold fits the final score's scale.
        out_of_fold = np.zeros(len(positives))
        for fitted, held in folds:
            fold_head = _fit(
                train_features[fitted], examples, positives[fitted], example_labels, ngram=False
            )
            logits = _logit(fold_head.predict_proba(train_features[held])[:, 1])
            if ngram is not None and languages:
                fold_ngram = _fit(
                    train_ngrams[fitted],
                    example_ngrams,
                    positives[fitted],
                    example_labels,
                    ngram=True,
                )
                ngram_logits = _logit(fold_ngram.predict_proba(train_ngrams[held])[:, 1])
                logits = np.where(
                    blended[held], (1.0 - ngram_blend) * logits + ngram_blend * ngram_logits, logits
                )
            out_of_fold[held] = 1.0 / (1.0 + np.exp(-logits))
        heads.thresholds[name] = _best_threshold(positives, out_of_fold)
        if ngram is not None and languages:
            heads.ngram_languages[name] = tuple(languages)
            part = _fit(train_ngrams, example_ngrams, positives, example_labels, ngram=True)
            # Stored in float16: round now, so that the dev figures are the shipped model's.
            heads.ngram_weights[name] = part.coef_[0].astype(np.float16).astype(np.float32)
            heads.ngram_biases[name] = float(part.intercept_[0])
    # Training date + a digest of the labels and every weight: another recipe, another version.
    digest = hashlib.sha256(rows.gold.tobytes())
    digest.update(json.dumps(heads.ngram_languages, sort_keys=True).encode())
    for weights in (heads.weights, heads.ngram_weights):
        for name in sorted(weights):
            digest.update(name.encode())
            digest.update(weights[name].tobytes())
    heads.version = f"{datetime.now(UTC):%Y%m%d}-{digest.hexdigest()[:6]}"
    if ngram is not None:
        ngram.version = heads.version
    return heads


def evaluate(
    predicted: np.ndarray, rows: AnnotatedRows, names: list[str], split: str = "dev"
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-aspect precision/recall/F1/support on one split, overall and per data set.

    Args:
        predicted: (N, A) bool predictions for every row.
        rows: The annotated rows.
        names: Aspect names (columns).
        split: Split to score.

    Returns:
        ``{scope: {aspect: {precision, recall, f1, support}}}``; scope ``all`` or a data set.
    """
    selected = rows.splits == split
    scopes = {"all": selected} | {
        dataset: selected & (rows.datasets == dataset) for dataset in np.unique(rows.datasets)
    }
    report: dict[str, dict[str, dict[str, float]]] = {}
    for scope, mask in scopes.items():
        report[scope] = {}
        for column, name in enumerate(names):
            truth = rows.gold[mask, column]
            if truth.sum() == 0:
                continue
            precision, recall, f1, _ = precision_recall_fscore_support(
                truth, predicted[mask, column], average="binary", zero_division=0
            )
            report[scope][name] = {
                "precision": round(float(precision), 3),
                "recall": round(float(recall), 3),
                "f1": round(float(f1), 3),
                "support": int(truth.sum()),
            }
    return report


def _markdown(report: dict[str, dict[str, dict[str, float]]], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| scope | aspect | precision | recall | F1 | support |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scope, aspects in report.items():
        for name, figures in aspects.items():
            lines.append(
                f"| {scope} | {name} | {figures['precision']:.2f} | {figures['recall']:.2f} | "
                f"{figures['f1']:.2f} | {figures['support']} |"
            )
    return "\n".join(lines)


def build_detector(
    config: AspectConfig, heads: AspectHeads, example_vectors: list[np.ndarray]
) -> AspectDetector:
    """The detector of ``heads`` over already-encoded example phrases.

    Args:
        config: The taxonomy.
        heads: Trained heads.
        example_vectors: Per detectable aspect, its example phrases' features.

    Returns:
        The detector.
    """
    vectors_of = {
        tuple(aspect.example_phrases): vectors
        for aspect, vectors in zip(config.detectable, example_vectors, strict=True)
    }
    return AspectDetector(
        config, heads, lambda texts: vectors_of[tuple(texts)], heads.encoder_version
    )


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring).

    Args:
        argv: Arguments (None: ``sys.argv``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_HEADS_DIR)
    parser.add_argument("--config-dir", type=Path, default=None)
    arguments = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    config = load_aspect_config(arguments.config_dir)
    names = [aspect.name for aspect in config.detectable]
    inputs = load_training_inputs(arguments.shared, config)
    rows, embeddings, example_vectors = inputs.rows, inputs.embeddings, inputs.example_vectors
    heads = train(rows, embeddings, example_vectors, config, inputs.encoder_version)
    detector = build_detector(config, heads, example_vectors)
    probabilities = detector.probabilities(embeddings, rows.analysis_texts, list(rows.langs))
    final = probabilities >= detector.thresholds
    centred = prototype_similarity(
        e5_embeddings(embeddings),
        [e5_embeddings(vectors) for vectors in example_vectors],
        config.prototype_top_k,
    )
    prototype_only = (
        1.0 / (1.0 + np.exp(-(heads.prototype_slope * centred + heads.prototype_intercept)))
        >= heads.prototype_threshold
    )
    heads.metrics = {
        "dev_detector": evaluate(final, rows, names),
        "dev_prototype_only": evaluate(prototype_only, rows, names),
        "rows": {split: int((rows.splits == split).sum()) for split in ("train", "dev")},
    }
    heads.save(arguments.out)
    print(
        _markdown(
            heads.metrics["dev_detector"], "Detector (heads where trained, else prototype), dev"
        )
    )
    print()
    print(_markdown(heads.metrics["dev_prototype_only"], "Prototype only (no heads), dev"))
    print()
    print(
        f"heads: {sorted(heads.weights)}; thresholds: {heads.thresholds}; "
        f"prototype threshold: {heads.prototype_threshold}; rows: {heads.metrics['rows']}"
    )


if __name__ == "__main__":
    main()
