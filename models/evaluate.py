"""Sentiment evaluation: accuracy, macro-F1, per-class F1, confusion matrix and calibration (ECE).

Works on any folder of ``data.jsonl`` files in the ../shared/datasets format, per dataset and
per language. Sets without neutral gold labels are scored by argmax over negative/positive
(probabilities renormalised without neutral), so a 3-class model is not punished for a label
those sets cannot have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from models.sentiment._datasets import (
    LABELS,
    DatasetSplit,
    discover_datasets,
    read_split,
)
from models.sentiment._head import binary_proba

__all__ = [
    "EvaluationReport",
    "Scores",
    "evaluate_folder",
    "evaluate_splits",
    "expected_calibration_error",
    "print_report",
    "score_predictions",
    "scored_proba",
    "write_report",
]

ProbaFunction = Callable[[Sequence[str], Sequence[str]], np.ndarray]
_ECE_BINS = 15


def expected_calibration_error(proba: np.ndarray, gold: np.ndarray, bins: int = _ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence, with equal-width bins.

    ECE = sum over bins of (bin size / N) * |accuracy in bin - mean confidence in bin|.

    Args:
        proba: ``(N, K)`` probabilities.
        gold: ``(N,)`` gold class indices.
        bins: Number of equal-width confidence bins over [0, 1].

    Returns:
        The ECE in [0, 1]; 0.0 for no rows.
    """
    if len(gold) == 0:
        return 0.0
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == gold).astype(np.float64)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; confidence 0 falls in the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for bin_index in range(bins):
        members = index == bin_index
        if members.any():
            gap = abs(correct[members].mean() - confidence[members].mean())
            total += members.sum() / len(gold) * gap
    return float(total)


@dataclass
class Scores:
    """Metrics of one group of predictions.

    Attributes:
        rows: Number of rows scored.
        accuracy: Share of correct argmax predictions.
        macro_f1: Mean F1 over the classes present in the gold labels.
        per_class_f1: F1 per label name (classes absent from gold and predictions are left out).
        confusion: 3x3 counts, rows = gold, columns = predicted, order negative/neutral/positive.
        ece: Expected calibration error (15 bins).
        classes: Label names the macro-F1 averages over.
    """

    rows: int
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: list[list[int]]
    ece: float
    classes: list[str]


def score_predictions(gold: np.ndarray, proba: np.ndarray) -> Scores:
    """Score probabilities against gold labels.

    Args:
        gold: ``(N,)`` indices into negative/neutral/positive.
        proba: ``(N, 3)`` probabilities as scored (already renormalised for binary rows).

    Returns:
        The metrics.
    """
    gold = np.asarray(gold, dtype=np.int64)
    predicted = proba.argmax(axis=1) if len(gold) else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((3, 3), dtype=np.int64)
    np.add.at(confusion, (gold, predicted), 1)
    present = [index for index in range(3) if confusion[index].sum() > 0]
    per_class: dict[str, float] = {}
    for index in range(3):
        true_positive = confusion[index, index]
        gold_count = confusion[index].sum()
        predicted_count = confusion[:, index].sum()
        if gold_count == 0 and predicted_count == 0:
            continue
        per_class[LABELS[index]] = float(2 * true_positive / (gold_count + predicted_count))
    macro = float(np.mean([per_class[LABELS[index]] for index in present])) if present else 0.0
    return Scores(
        rows=len(gold),
        accuracy=float((predicted == gold).mean()) if len(gold) else 0.0,
        macro_f1=macro,
        per_class_f1=per_class,
        confusion=confusion.tolist(),
        ece=expected_calibration_error(proba, gold),
        classes=[LABELS[index] for index in present],
    )


def scored_proba(proba: np.ndarray, has_neutral: bool) -> np.ndarray:
    """The probabilities a split is scored with: renormalised over negative/positive if binary.

    Args:
        proba: ``(N, 3)`` model probabilities.
        has_neutral: Whether the split's gold labels include neutral.

    Returns:
        ``(N, 3)`` probabilities.
    """
    return proba if has_neutral else binary_proba(proba)


@dataclass
class EvaluationReport:
    """Per-dataset and per-language scores of one model on one split.

    Attributes:
        model_version: Version of the model evaluated.
        split: Split scored (``dev``).
        datasets: Name -> ``{"lang", "binary", "scores"}``.
        languages: Language code -> scores over every scored row in that language.
        skipped: Data files that had no rows in the split, with the reason.
        bad_lines: Data file name -> count of unusable lines.
    """

    model_version: str
    split: str
    datasets: dict[str, dict[str, object]] = field(default_factory=dict)
    languages: dict[str, Scores] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    bad_lines: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready dict."""
        return {
            "model_version": self.model_version,
            "split": self.split,
            "datasets": {
                name: {**entry, "scores": asdict(entry["scores"])}  # type: ignore[call-overload]
                for name, entry in self.datasets.items()
            },
            "languages": {lang: asdict(scores) for lang, scores in self.languages.items()},
            "skipped": self.skipped,
            "bad_lines": self.bad_lines,
        }

    def to_markdown(self) -> str:
        """Markdown tables: per dataset and per language."""
        lines = [
            f"Model `{self.model_version}`, split `{self.split}`.",
            "",
            "| dataset | lang | classes | rows | accuracy | macro-F1 | F1 neg / neu / pos | ECE |",
            "|---|---|---|---:|---:|---:|---|---:|",
        ]
        for name, entry in self.datasets.items():
            scores: Scores = entry["scores"]  # type: ignore[assignment]
            classes = "neg/pos" if entry["binary"] else "neg/neu/pos"
            lines.append(
                f"| {name} | {entry['lang']} | {classes} | {scores.rows} | "
                f"{scores.accuracy:.3f} | {scores.macro_f1:.3f} | {_f1_triplet(scores)} | "
                f"{scores.ece:.3f} |"
            )
        lines += [
            "",
            "| lang | rows | accuracy | macro-F1 | F1 neg / neu / pos | ECE |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for lang, scores in self.languages.items():
            lines.append(
                f"| {lang} | {scores.rows} | {scores.accuracy:.3f} | {scores.macro_f1:.3f} | "
                f"{_f1_triplet(scores)} | {scores.ece:.3f} |"
            )
        return "\n".join(lines) + "\n"


def _f1_triplet(scores: Scores) -> str:
    return " / ".join(
        f"{scores.per_class_f1[label]:.3f}" if label in scores.per_class_f1 else "-"
        for label in LABELS
    )


def evaluate_splits(
    splits: Sequence[DatasetSplit],
    probabilities: Sequence[np.ndarray],
    model_version: str,
) -> EvaluationReport:
    """Score already computed probabilities of several splits.

    Args:
        splits: The labelled splits.
        probabilities: ``(N_i, 3)`` model probabilities per split, same order.
        model_version: Recorded in the report.

    Returns:
        Per-dataset and per-language scores.
    """
    report = EvaluationReport(model_version, splits[0].split if splits else "dev")
    by_language: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for split, proba in zip(splits, probabilities, strict=True):
        if split.bad_lines:
            report.bad_lines[split.info.name] = len(split.bad_lines)
        if split.frame.empty:
            report.skipped.append(f"{split.info.name}: no rows in split {split.split!r}")
            continue
        scored = scored_proba(proba, split.has_neutral)
        languages = split.frame["lang"].to_numpy()
        main_language = str(split.frame["lang"].mode().iloc[0])
        report.datasets[split.info.name] = {
            "lang": main_language,
            "binary": not split.has_neutral,
            "licence": split.info.licence,
            "scores": score_predictions(split.labels, scored),
        }
        for lang in np.unique(languages):
            members = languages == lang
            gold_parts, proba_parts = by_language.setdefault(str(lang), ([], []))
            gold_parts.append(split.labels[members])
            proba_parts.append(scored[members])
    for lang in sorted(by_language):
        gold_parts, proba_parts = by_language[lang]
        report.languages[lang] = score_predictions(
            np.concatenate(gold_parts), np.concatenate(proba_parts)
        )
    return report


def evaluate_folder(
    path: str | os.PathLike[str],
    predict_proba: ProbaFunction,
    model_version: str,
    split: str = "dev",
) -> EvaluationReport:
    """Evaluate a model on every ``data.jsonl`` under ``path``.

    Args:
        path: Folder searched recursively for ``data.jsonl`` files.
        predict_proba: ``(texts, langs) -> (N, 3)`` negative/neutral/positive probabilities.
        model_version: Recorded in the report.
        split: Which split of each file to score.

    Returns:
        Per-dataset and per-language scores.

    Raises:
        ConfigError: ``path`` is not a folder or holds no ``data.jsonl``.
    """
    splits = [read_split(info, split) for info in discover_datasets(path)]
    probabilities = [
        predict_proba(item.frame["text"].tolist(), item.frame["lang"].tolist())
        if not item.frame.empty
        else np.zeros((0, 3))
        for item in splits
    ]
    report = evaluate_splits(splits, probabilities, model_version)
    report.split = split
    return report


def print_report(report: EvaluationReport, console: Console) -> None:
    """Print the per-dataset and per-language tables.

    Args:
        report: What :func:`evaluate_folder` returned.
        console: Where to print.
    """
    dataset_table = Table(title=f"Sentiment, {report.split} split, {report.model_version}")
    dataset_table.add_column("dataset", no_wrap=True)
    for column in ("lang", "classes", "rows", "acc", "macro-F1", "F1 n/u/p", "ECE"):
        dataset_table.add_column(column, justify="right" if column in {"rows", "acc"} else "left")
    for name, entry in report.datasets.items():
        scores: Scores = entry["scores"]  # type: ignore[assignment]
        dataset_table.add_row(
            name,
            str(entry["lang"]),
            "neg/pos" if entry["binary"] else "3-class",
            str(scores.rows),
            f"{scores.accuracy:.3f}",
            f"{scores.macro_f1:.3f}",
            _f1_triplet(scores),
            f"{scores.ece:.3f}",
        )
    console.print(dataset_table)
    language_table = Table(title="Per language")
    for column in ("lang", "rows", "acc", "macro-F1", "F1 n/u/p", "ECE"):
        language_table.add_column(column)
    for lang, scores in report.languages.items():
        language_table.add_row(
            lang,
            str(scores.rows),
            f"{scores.accuracy:.3f}",
            f"{scores.macro_f1:.3f}",
            _f1_triplet(scores),
            f"{scores.ece:.3f}",
        )
    console.print(language_table)
    for line in report.skipped:
        console.print(f"[yellow]skipped[/] {line}")
    for name, count in report.bad_lines.items():
        console.print(f"[yellow]{name}[/]: {count} unusable line(s) skipped")


def write_report(report: EvaluationReport, path: str | os.PathLike[str]) -> Path:
    """Write the report as JSON (``.json``) or markdown (any other suffix).

    Args:
        report: The report.
        path: Target file.

    Returns:
        The written path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() == ".json":
        target.write_text(
            json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    else:
        target.write_text(report.to_markdown(), encoding="utf-8")
    return target
