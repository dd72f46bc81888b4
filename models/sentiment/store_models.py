"""Heads kept in the store's model registry: their bytes, their scores and the promotion gate.

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
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load, save

from models.evaluate import evaluate_splits, score_predictions
from models.sentiment._datasets import DatasetSplit
from models.sentiment._head import HeadMetadata, SentimentHead
from pipelines.storage import ModelArtifact

__all__ = [
    "HOLDOUT_EVERY",
    "MAX_LANGUAGE_DROP",
    "MODEL_KIND",
    "GateDecision",
    "ModelScores",
    "head_artifact",
    "head_from_artifact",
    "is_held_back",
    "promotion_gate",
    "score_head",
]

MODEL_KIND = "sentiment"
MAX_LANGUAGE_DROP = 0.01
HOLDOUT_EVERY = 5


def is_held_back(record_id: str) -> bool:
    """Whether a human label of this record belongs to the held-back slice (never trained on).

    Args:
        record_id: The store's record id.

    Returns:
        True for about one record in ``HOLDOUT_EVERY``.
    """
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HOLDOUT_EVERY == 0


def head_artifact(head: SentimentHead) -> tuple[bytes, dict[str, Any]]:
    """A head as registry data.

    Args:
        head: The head.

    Returns:
        (safetensors bytes of its float16 weights, its JSON metadata).
    """
    weights = {
        name: np.ascontiguousarray(value, dtype=np.float16) for name, value in head.weights.items()
    }
    return save(weights, metadata={"version": head.version}), asdict(head.metadata)


def head_from_artifact(artifact: ModelArtifact) -> SentimentHead:
    """The head a registry row holds.

    Args:
        artifact: From ``pipelines.storage.model_artifact``.

    Returns:
        The head.
    """
    return SentimentHead(load(artifact.weights), HeadMetadata(**artifact.head_metadata))


@dataclass
class ModelScores:
    """What the gate compares.

    Attributes:
        version: The head's version.
        languages: Dev macro-F1 per language.
        holdout_macro_f1: Macro-F1 on the held-back human labels (None without any).
        holdout_rows: Held-back labels scored.
    """

    version: str
    languages: dict[str, float] = field(default_factory=dict)
    holdout_macro_f1: float | None = None
    holdout_rows: int = 0


def score_head(
    head: SentimentHead,
    dev_splits: Sequence[DatasetSplit],
    holdout: pd.DataFrame,
    features: Callable[[list[str]], np.ndarray],
) -> ModelScores:
    """Score a head on dev splits and the held-back labels.

    Args:
        head: The head.
        dev_splits: Non-empty dev splits.
        holdout: Held-back rows with ``text`` and ``label`` (0/1/2).
        features: Texts -> the head's input features (e.g. ``FeatureCache.embeddings``).

    Returns:
        Its scores.
    """
    probabilities = [
        head.predict_proba(features(split.frame["text"].tolist())) for split in dev_splits
    ]
    report = evaluate_splits(dev_splits, probabilities, head.version)
    scores = ModelScores(
        head.version, {lang: value.macro_f1 for lang, value in report.languages.items()}
    )
    if not holdout.empty:
        proba = head.predict_proba(features(holdout["text"].tolist()))
        scores.holdout_macro_f1 = score_predictions(holdout["label"].to_numpy(), proba).macro_f1
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
