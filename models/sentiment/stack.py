"""Build the stacked sentiment model: per-language n-gram models blended with the e5 head.

Usage (after ``feedback train sentiment``, which writes the e5 head)::

    python -m models.sentiment.stack [--lodo lodo-old-e5.json lodo-all-stack.json ...]

Fits one hashed n-gram model per language on the train splits of the sets selected in
``configs/training.yaml``, then per language the n-gram weight, temperature and class shift on
their dev splits (negative recall at the flag rules' document threshold >= 0.90 where
reachable), and writes ``models/heads/sentiment-ngram.{safetensors,json}``,
``models/heads/sentiment-stack.json`` and the stack's sections of the model card. ``--lodo``
adds leave-one-dataset-out results written by ``python -m models.sentiment.lodo --out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.evaluate import EvaluationReport, evaluate_splits
from models.sentiment._datasets import DatasetInfo, DatasetSplit, discover_datasets, read_split
from models.sentiment._features import FeatureCache
from models.sentiment._head import SentimentHead
from models.sentiment._ngram import (
    NgramMetadata,
    NgramModel,
    class_balanced_weights,
    fit_ngram_language,
    ngram_version,
)
from models.sentiment._stacking import (
    FLAG_NEGATIVE_THRESHOLD,
    NEGATIVE_RECALL_TARGET,
    StackedSentiment,
    StackMetadata,
    fit_language_blend,
    stack_version,
)

__all__ = ["build_stack", "fit_blends", "main", "stack_card_sections", "stack_splits"]

NGRAM_STEM = "models/heads/sentiment-ngram"
STACK_PATH = "models/heads/sentiment-stack.json"
STACK_PREFIX = "sentiment-stack"


def stack_splits(chosen: list[DatasetInfo]) -> tuple[list[DatasetSplit], list[DatasetSplit]]:
    """The train and dev splits a stack is fitted on: the sets that have both.

    Args:
        chosen: The selected sets.

    Returns:
        (train splits, dev splits), same order.
    """
    pairs = [(read_split(info, "train"), read_split(info, "dev")) for info in chosen]
    kept = [(train, dev) for train, dev in pairs if not train.frame.empty and not dev.frame.empty]
    return [train for train, _ in kept], [dev for _, dev in kept]


def build_stack(
    head: SentimentHead,
    train: list[DatasetSplit],
    dev: list[DatasetSplit],
    dev_features: list[np.ndarray],
    negative_threshold: float,
    negative_recall: float,
    say: Callable[[str], None] = print,
    ngram: NgramModel | None = None,
) -> tuple[StackedSentiment, EvaluationReport]:
    """Fit the n-gram models and the per-language blends.

    Args:
        head: The trained (tempered) e5 head.
        train: Train splits (n-gram training).
        dev: Dev splits (blend, temperature and shift).
        dev_features: e5 features of ``dev``, same order.
        negative_threshold: The flag rules' document negative threshold.
        negative_recall: Negative recall the per-language flag thresholds keep.
        say: Progress callback.
        ngram: Already fitted n-gram models to reuse (None: fit them on ``train``).

    Returns:
        The stack (n-gram path fields still to be set by the caller) and its dev report.
    """
    metadata = NgramMetadata(version="pending")
    langs = sorted({str(split.frame["lang"].mode().iloc[0]) for split in train})
    weights: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for lang in langs if ngram is None else []:
        splits = [s for s in train if str(s.frame["lang"].mode().iloc[0]) == lang]
        texts = [text for split in splits for text in split.frame["text"]]
        say(f"n-gram model {lang}: {len(texts)} rows")
        fitted = fit_ngram_language(
            texts,
            np.concatenate([split.labels for split in splits]),
            np.concatenate([np.full(len(s.frame), s.has_neutral) for s in splits]),
            class_balanced_weights(splits),
            metadata,
        )
        weights.update({f"{lang}.{key}": value for key, value in fitted.items()})
        rows[lang] = len(texts)
    if ngram is None:
        metadata.languages = langs
        metadata.version = f"sentiment-ngram-{ngram_version(weights)}"
        metadata.training = {"regularisation_C": 4.0, "train_rows": rows}
        ngram = NgramModel(weights, metadata)

    blends, operating = fit_blends(
        head, ngram, dev, dev_features, negative_threshold, negative_recall, say
    )
    stack_metadata = StackMetadata(
        version=stack_version(STACK_PREFIX, head.version, ngram.version, blends),
        head="sentiment-e5.json",
        ngram="sentiment-ngram.json",
        head_version=head.version,
        ngram_version=ngram.version,
        languages=blends,
        training={
            "negative_threshold": negative_threshold,
            "negative_recall_target": negative_recall,
            "chosen_on": "dev splits of the training sets",
            "datasets": [
                {
                    "name": split.info.name,
                    "lang": str(split.frame["lang"].mode().iloc[0]),
                    "train_rows": len(split.frame),
                    "binary": not split.has_neutral,
                    "licence": split.info.licence,
                }
                for split in train
            ],
        },
    )
    stack = StackedSentiment(head, ngram, stack_metadata)
    proba = [
        stack.predict_proba(features, split.frame["text"].tolist(), split.frame["lang"].tolist())
        for split, features in zip(dev, dev_features, strict=True)
    ]
    report = evaluate_splits(dev, proba, stack.version)
    stack_metadata.metrics = {
        "dev_mean_macro_f1": float(
            np.mean([entry["scores"].macro_f1 for entry in report.datasets.values()])
        ),
        "languages": {
            lang: {"macro_f1": scores.macro_f1, "accuracy": scores.accuracy}
            for lang, scores in report.languages.items()
        },
        "datasets": {
            name: {"macro_f1": entry["scores"].macro_f1} for name, entry in report.datasets.items()
        },
        "negative_operating_point": operating,
    }
    return stack, report


def fit_blends(
    head: SentimentHead,
    ngram: NgramModel,
    dev: list[DatasetSplit],
    dev_features: list[np.ndarray],
    negative_threshold: float,
    negative_recall: float,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, dict[str, object]], dict[str, dict[str, float]]]:
    """Per language of the n-gram model: the blend of ``head`` and ``ngram`` chosen on dev.

    Args:
        head: The (tempered) e5 head.
        ngram: The n-gram models.
        dev: Dev splits (blend, temperature and shift).
        dev_features: e5 features of ``dev``, same order.
        negative_threshold: The flag rules' document negative threshold.
        negative_recall: Negative recall the per-language flag thresholds keep.
        say: Progress callback.

    Returns:
        (language -> :class:`LanguageBlend` fields, language -> its dev operating point).
    """
    e5 = [head.predict_proba(features) for features in dev_features]
    ngram_dev = [
        ngram.predict_proba(split.frame["text"].tolist(), split.frame["lang"].tolist())
        for split in dev
    ]
    blends: dict[str, dict[str, object]] = {}
    operating: dict[str, dict[str, float]] = {}
    for lang in ngram.metadata.languages:
        members = [i for i, s in enumerate(dev) if str(s.frame["lang"].mode().iloc[0]) == lang]
        if not members:
            continue
        blend, point = fit_language_blend(
            np.log(np.clip(np.concatenate([e5[i] for i in members]), 1e-12, 1.0)),
            np.concatenate([ngram_dev[i] for i in members]),
            np.concatenate([dev[i].labels for i in members]),
            np.concatenate([np.full(len(dev[i].frame), not dev[i].has_neutral) for i in members]),
            np.concatenate([np.full(len(dev[i].frame), i) for i in members]),
            negative_threshold,
            negative_recall,
        )
        blends[lang] = {
            "ngram_weight": blend.ngram_weight,
            "temperature": blend.temperature,
            "bias": blend.bias,
        }
        operating[lang] = point
        say(f"{lang}: {blends[lang]} -> {point}")
    return blends, operating


def stack_card_sections(stack: StackedSentiment, report: EvaluationReport, lodo: list[dict]) -> str:
    """Markdown sections of the model card describing the stack.

    Args:
        stack: The built stack.
        report: Its dev report.
        lodo: Leave-one-dataset-out results (``lodo --out`` JSON files), possibly empty.

    Returns:
        Markdown text.
    """
    meta = stack.metadata
    lines = [
        "## Stacked model (what the pipeline runs)",
        "",
        f"- **Version:** `{meta.version}` (stored with every prediction as `model_version`); "
        f"e5 head `{meta.head_version}`, n-gram models `{meta.ngram_version}`.",
        "- **N-gram models:** per language, hashed character n-grams 1-5 (within word "
        f"boundaries, {stack.ngram.metadata.char_features} buckets) plus word uni/bigrams "
        f"({stack.ngram.metadata.word_features} buckets), L2-normalised; a "
        "polarity logistic regression (negative vs positive, every non-neutral row) and a "
        "neutral one (neutral vs not, only sets that label neutral). No vocabulary is stored.",
        "- **Blend:** per language `softmax(((1 - a) log p_e5 + a log p_ngram) / T + b)`; `a` "
        "maximises the mean dev macro-F1 of the language's sets, `T` the dev likelihood, and "
        "the class shift `b` (the per-language decision thresholds, neutral included) the "
        "pooled dev macro-F1.",
        "- **Flag operating point:** per language, the highest document negative-probability "
        f"threshold (at most the rules' {meta.training['negative_threshold']}) keeping dev "
        f"negative recall >= {meta.training['negative_recall_target']}; set as "
        "`negative_document.min_probability_by_language` in `configs/flagging.yaml`.",
        f"- **Built:** {datetime.now(UTC):%Y-%m-%d} with `python -m models.sentiment.stack`.",
        "",
        "| lang | n-gram weight a | T | shift b (neg / neu / pos) | dev macro-F1 | "
        "flag threshold | neg. recall | neg. precision |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    operating = meta.metrics["negative_operating_point"]
    for lang, blend in meta.languages.items():
        bias = " / ".join(f"{value:+.2f}" for value in blend["bias"])
        point = operating[lang]
        lines.append(
            f"| {lang} | {blend['ngram_weight']:.2f} | {blend['temperature']:.2f} | {bias} | "
            f"{report.languages[lang].macro_f1:.3f} | {point['flag_threshold']:.2f} | "
            f"{point['negative_recall']:.3f} | {point['negative_precision']:.3f} |"
        )
    lines += [
        "",
        "N-gram training data (train splits; the e5 head's sets are listed above):",
        "",
        "| set | lang | train rows | labels | licence (as stated in SOURCE.md) |",
        "|---|---|---:|---|---|",
    ]
    for entry in meta.training.get("datasets", []):
        labels = "neg/pos" if entry["binary"] else "neg/neu/pos"
        lines.append(
            f"| {entry['name']} | {entry['lang']} | {entry['train_rows']} | {labels} | "
            f"{entry['licence']} |"
        )
    lines += [
        "",
        "The recall and precision are measured on document probabilities only (the sentence "
        "rule can only add flags). Parameters are chosen on the same dev rows, so these dev "
        "figures are optimistic; the leave-one-dataset-out table below is not.",
        "",
        "### Dev metrics of the stack",
        "",
        report.to_markdown(),
    ]
    if lodo:
        names = list(lodo[0]["scores"])
        header = " | ".join(f"{entry['recipe']} ({entry['pool']} sets)" for entry in lodo)
        lines += [
            "## Leave-one-dataset-out (LODO)",
            "",
            "For each set X: train on the other sets' train splits (their dev splits choose "
            "epochs, temperature and blend), score X's dev split (macro-F1; binary sets over "
            "negative/positive). Sets outside a recipe's training pool are scored by the model "
            "trained on the whole pool. Reproduce: `python -m models.sentiment.lodo --recipe "
            "RECIPE --pool POOL`.",
            "",
            f"| set | {header} |",
            "|---|" + "---:|" * len(lodo),
        ]
        for name in names:
            values = " | ".join(f"{entry['scores'][name]:.3f}" for entry in lodo)
            lines.append(f"| {name} | {values} |")
        means = " | ".join(f"**{entry['mean']:.3f}**" for entry in lodo)
        lines.append(f"| **mean** | {means} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring).

    Args:
        argv: Arguments (None: ``sys.argv``).

    Returns:
        Exit status.
    """
    from models.encoder import Encoder
    from models.sentiment._datasets import shared_datasets_dir
    from models.sentiment.train import load_training_config, select_datasets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=None)
    parser.add_argument("--lodo", type=Path, nargs="*", default=[])
    parser.add_argument("--recall", type=float, default=NEGATIVE_RECALL_TARGET)
    parser.add_argument(
        "--reuse-ngram", action="store_true", help="keep the saved n-gram models, refit the blend"
    )
    arguments = parser.parse_args(argv)
    config = load_training_config()
    head = SentimentHead.load(config.resolved(config.output))
    cache = FeatureCache(Encoder.load(dtype=config.encoder_dtype), layers=config.encoder_layers)
    chosen = select_datasets(
        discover_datasets(arguments.datasets or shared_datasets_dir()), config.datasets
    )
    train, dev = stack_splits(chosen)
    features = [cache.embeddings(split.frame["text"].tolist()) for split in dev]
    ngram_stem = config.resolved(Path(NGRAM_STEM))
    stack, report = build_stack(
        head,
        train,
        dev,
        features,
        FLAG_NEGATIVE_THRESHOLD,
        arguments.recall,
        ngram=NgramModel.load(ngram_stem) if arguments.reuse_ngram else None,
    )
    stack.ngram.save(ngram_stem)
    stack.save(config.resolved(Path(STACK_PATH)))
    lodo = [json.loads(path.read_text(encoding="utf-8")) for path in arguments.lodo]
    card = config.resolved(config.card)
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    marker = "## Stacked model (what the pipeline runs)"
    text = text.split(marker)[0].rstrip("\n") + "\n\n" + stack_card_sections(stack, report, lodo)
    card.write_text(text, encoding="utf-8")
    print(report.to_markdown())
    thresholds = {
        lang: point["flag_threshold"]
        for lang, point in stack.metadata.metrics["negative_operating_point"].items()
    }
    print(f"stack {stack.version} -> {STACK_PATH}; card {card}")
    print(f"flagging.yaml negative_document.min_probability_by_language: {thresholds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
