"""Models kept in the store's model registry: their bytes, their scores and the promotion gate.

A registered model is a head alone or a stack (the head blended with per-language n-gram
models, :class:`~models.sentiment.StackedSentiment`); a stack's n-gram weights travel in the
same safetensors bytes (names prefixed ``ngram.``) and its n-gram and blend metadata under the
``stack`` key of the head's JSON.

A candidate trained by ``feedback train sentiment --db`` is promoted only if the gate passes:

* no language's dev macro-F1 drops more than ``MAX_LANGUAGE_DROP`` (1 point) below the model in
  use, scored on the same dev rows;
* it beats the model in use (strictly higher macro-F1) on the held-back slice of the store's
  human labels: one record in ``HOLDOUT_EVERY``, chosen by a hash of its id, so the slice stays
  the same from one training to the next and no candidate ever trains on it.

Plain numpy (no torch): the analysis stage loads promoted heads with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from safetensors.numpy import load, save

from models.evaluate import evaluate_splits, score_predictions
from models.sentiment._datasets import DatasetSplit
from models.sentiment._head import HeadMetadata, SentimentHead
from models.sentiment._ngram import NgramMetadata, NgramModel
from models.sentiment._stacking import StackedSentiment, StackMetadata
from pipelines.storage import ModelArtifact

__all__ = [
    "HOLDOUT_EVERY",
    "MAX_LANGUAGE_DROP",
    "MODEL_KIND",
    "GateDecision",
    "ModelScores",
    "SentimentModel",
    "flag_thresholds",
    "is_held_back",
    "model_artifact_data",
    "model_from_artifact",
    "model_head",
    "model_proba",
    "promotion_gate",
    "score_model",
]

SentimentModel: TypeAlias = SentimentHead | StackedSentiment

MODEL_KIND = "sentiment"
MAX_LANGUAGE_DROP = 0.01
HOLDOUT_EVERY = 5
_NGRAM_PREFIX = "ngram."
_STACK_KEY = "stack"


def is_held_back(record_id: str) -> bool:
    """Whether a human label of this record belongs to the held-back slice (never trained on).

    Args:
        record_id: The store's record id.

    Returns:
        True for about one record in ``HOLDOUT_EVERY``.
    """
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HOLDOUT_EVERY == 0


def model_head(model: SentimentModel) -> SentimentHead:
    """The e5 head of a model (itself for a head alone).

    Args:
        model: A head or a stack.

    Returns:
        The head.
    """
    return model.head if isinstance(model, StackedSentiment) else model


def flag_thresholds(model: SentimentModel | StackMetadata | ModelArtifact) -> dict[str, float]:
    """Per language, the highest negative probability threshold that keeps the model's dev
    negative recall at its target (0.90), as chosen when it was built.

    Args:
        model: A head or a stack (or a stack's metadata alone), or a registry row holding one.

    Returns:
        Language -> threshold; empty for a head alone (it records none).
    """
    if isinstance(model, StackedSentiment):
        metrics = model.metadata.metrics
    elif isinstance(model, StackMetadata):
        metrics = model.metrics
    elif isinstance(model, ModelArtifact):
        stack = model.head_metadata.get(_STACK_KEY)
        metrics = stack["blend"].get("metrics", {}) if stack else {}
    else:
        metrics = {}
    operating = metrics.get("negative_operating_point", {})
    return {lang: float(point["flag_threshold"]) for lang, point in sorted(operating.items())}


def model_proba(
    model: SentimentModel, features: np.ndarray, texts: Sequence[str], langs: Sequence[str | None]
) -> np.ndarray:
    """Negative/neutral/positive probabilities of a head or a stack.

    Args:
        model: The model.
        features: ``(N, input_dim)`` e5 features of ``texts``.
        texts: The analysis texts (the stack's n-gram models read them).
        langs: Their language codes.

    Returns:
        ``(N, 3)`` probabilities.
    """
    if isinstance(model, StackedSentiment):
        return model.predict_proba(features, texts, langs)
    return model.predict_proba(features)


def model_artifact_data(model: SentimentModel) -> tuple[bytes, dict[str, Any]]:
    """A model as registry data.

    Args:
        model: A head or a stack.

    Returns:
        (safetensors bytes of its float16 weights, its JSON metadata).
    """
    head = model_head(model)
    weights = {
        name: np.ascontiguousarray(value, dtype=np.float16) for name, value in head.weights.items()
    }
    metadata = asdict(head.metadata)
    if isinstance(model, StackedSentiment):
        weights |= {
            _NGRAM_PREFIX + name: np.ascontiguousarray(value, dtype=np.float16)
            for name, value in model.ngram.weights.items()
        }
        metadata[_STACK_KEY] = {
            "ngram": asdict(model.ngram.metadata),
            "blend": asdict(model.metadata),
        }
    return save(weights, metadata={"version": model.version}), metadata


def model_from_artifact(artifact: ModelArtifact) -> SentimentModel:
    """The head or stack a registry row holds.

    Args:
        artifact: From ``pipelines.storage.model_artifact``.

    Returns:
        The model.
    """
    tensors = load(artifact.weights)
    metadata = dict(artifact.head_metadata)
    stack = metadata.pop(_STACK_KEY, None)
    head = SentimentHead(
        {name: value for name, value in tensors.items() if not name.startswith(_NGRAM_PREFIX)},
        HeadMetadata(**metadata),
    )
    if stack is None:
        return head
    ngram = NgramModel(
        {
            name.removeprefix(_NGRAM_PREFIX): value
            for name, value in tensors.items()
            if name.startswith(_NGRAM_PREFIX)
        },
        NgramMetadata(**stack["ngram"]),
    )
    return StackedSentiment(head, ngram, StackMetadata(**stack["blend"]))


@dataclass
class ModelScores:
    """What the gate compares.

    Attributes:
        version: The model's version.
        languages: Dev macro-F1 per language.
        holdout_macro_f1: Macro-F1 on the held-back human labels (None without any).
        holdout_rows: Held-back labels scored.
    """

    version: str
    languages: dict[str, float] = field(default_factory=dict)
    holdout_macro_f1: float | None = None
    holdout_rows: int = 0


def score_model(
    model: SentimentModel,
    dev_splits: Sequence[DatasetSplit],
    holdout: pd.DataFrame,
    features: Callable[[list[str]], np.ndarray],
) -> ModelScores:
    """Score a head or a stack on dev splits and the held-back labels.

    Args:
        model: The model.
        dev_splits: Non-empty dev splits.
        holdout: Held-back rows with ``text``, ``lang`` and ``label`` (0/1/2).
        features: Texts -> the head's input features (e.g. ``FeatureCache.embeddings``).

    Returns:
        Its scores.
    """

    def proba(frame: pd.DataFrame) -> np.ndarray:
        texts = frame["text"].tolist()
        return model_proba(model, features(texts), texts, frame["lang"].tolist())

    probabilities = [proba(split.frame) for split in dev_splits]
    report = evaluate_splits(dev_splits, probabilities, model.version)
    scores = ModelScores(
        model.version, {lang: value.macro_f1 for lang, value in report.languages.items()}
    )
    if not holdout.empty:
        held = proba(holdout)
        scores.holdout_macro_f1 = score_predictions(holdout["label"].to_numpy(), held).macro_f1
        scores.holdout_rows = len(holdout)
    return scores


@dataclass
class GateDecision:
    """Whether a candidate may replace the model in use.

    Attributes:
        passed: True when every check passed.
        reasons: What failed, one line each (empty when passed).
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)


def promotion_gate(
    candidate: ModelScores, current: ModelScores, max_drop: float = MAX_LANGUAGE_DROP
) -> GateDecision:
    """Compare a candidate with the model in use (see the module docstring).

    Args:
        candidate: The candidate's scores.
        current: The scores of the model in use, on the same rows.
        max_drop: Largest dev macro-F1 drop allowed in any language.

    Returns:
        The decision with its reasons.
    """
    reasons = []
    for lang, before in sorted(current.languages.items()):
        after = candidate.languages.get(lang)
        if after is None:
            reasons.append(f"{lang}: no dev rows scored for the candidate")
        elif after < before - max_drop:
            reasons.append(
                f"{lang} dev macro-F1 drops {before - after:.3f} ({before:.3f} -> {after:.3f}; "
                f"at most {max_drop:.3f} allowed)"
            )
    if candidate.holdout_macro_f1 is None or current.holdout_macro_f1 is None:
        reasons.append(
            "no held-back human labels to compare on (one labelled record in "
            f"{HOLDOUT_EVERY} is held back: label more records with `feedback label` or "
            "`feedback labels import`)"
        )
    elif candidate.holdout_macro_f1 <= current.holdout_macro_f1:
        reasons.append(
            f"held-back human labels: macro-F1 {candidate.holdout_macro_f1:.3f} does not beat "
            f"{current.holdout_macro_f1:.3f} ({candidate.holdout_rows} labels)"
        )
    return GateDecision(not reasons, reasons)
