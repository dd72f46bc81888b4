"""The stacked sentiment model: the e5 head blended with per-language n-gram models.

Per language ``L`` the scores are ``softmax(((1 - a_L) log p_e5 + a_L log p_ngram) / T_L + b_L)``
where ``a_L`` (n-gram weight), ``T_L`` (temperature) and ``b_L`` (class log-prior shift: the
per-language decision thresholds, neutral included) are chosen on the dev splits: ``a_L`` for
the best mean dev macro-F1 of the language's sets, ``T_L`` for the dev log-likelihood, ``b_L``
for the best pooled dev macro-F1. The per-language flag threshold on the negative probability
(:func:`flag_threshold`, written to ``configs/flagging.yaml``) is then the highest one keeping
negative recall at the target. Languages
without an n-gram model use the e5 head alone (with their shift when one was fitted).

``sentiment-stack.json`` names the head and the n-gram files and holds these parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.sentiment._head import SentimentHead, binary_proba, softmax
from models.sentiment._ngram import NgramModel
from pipelines._errors import ModelError

__all__ = [
    "FLAG_NEGATIVE_THRESHOLD",
    "NEGATIVE_RECALL_TARGET",
    "LanguageBlend",
    "StackMetadata",
    "StackedSentiment",
    "blend_log_proba",
    "fit_language_blend",
    "flag_threshold",
]

FLAG_NEGATIVE_THRESHOLD = 0.70
"""The flag rules' negative probability threshold (``negative_document.min_probability``)."""
NEGATIVE_RECALL_TARGET = 0.90
"""Dev negative recall that a language's flag threshold keeps (its operating point)."""

_NGRAM_GRID = np.round(np.arange(0.0, 0.951, 0.05), 2)
_TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.3), np.log(3.0), 61))
# Class shifts, smallest first: of shifts that score the same the smallest is kept. Rows of
# binary sets alone cannot tell neutral shifts apart (they are scored over negative/positive),
# so for a language tuned on them the order alone sets the neutral shift: 0 this way.
_BIAS_GRID = np.array(sorted(np.round(np.arange(-1.0, 3.001, 0.1), 2), key=lambda v: (abs(v), v)))
_NEUTRAL_BIAS_GRID = np.array(
    sorted(np.round(np.arange(-1.5, 1.001, 0.25), 2), key=lambda v: (abs(v), v))
)


@dataclass
class LanguageBlend:
    """One language's stacking parameters.

    Attributes:
        ngram_weight: ``a_L`` in [0, 1).
        temperature: ``T_L``.
        bias: ``b_L``, added to the negative/neutral/positive log-scores.
    """

    ngram_weight: float = 0.0
    temperature: float = 1.0
    bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


@dataclass
class StackMetadata:
    """``sentiment-stack.json``.

    Attributes:
        version: Version stored with every prediction.
        head: The e5 head's JSON, relative to this file's folder.
        ngram: The n-gram model's JSON, relative to this file's folder.
        head_version: Version of that head (checked at load).
        ngram_version: Version of that n-gram model (checked at load).
        languages: Language code -> :class:`LanguageBlend` fields.
        metrics: Dev and leave-one-dataset-out figures measured when it was built.
        training: How the parameters were chosen.
    """

    version: str
    head: str
    ngram: str
    head_version: str
    ngram_version: str
    languages: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> StackMetadata:
        """Read ``sentiment-stack.json`` alone (not the models it names).

        Args:
            path: The stack's JSON.

        Returns:
            Its metadata.

        Raises:
            ModelError: The file is missing or invalid.
        """
        file = Path(path)
        if not file.is_file():
            raise ModelError(
                f"sentiment stack {file} not found; build it with `python -m "
                "models.sentiment.stack` or remove `stack:` from sentiment.yaml"
            )
        try:
            return cls(**json.loads(file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelError(f"{file} is not valid stack metadata: {exc}") from exc


def blend_log_proba(
    e5_log_proba: np.ndarray, ngram_proba: np.ndarray, blend: LanguageBlend
) -> np.ndarray:
    """Blended, tempered and shifted probabilities of rows of one language.

    Args:
        e5_log_proba: ``(N, 3)`` log-probabilities of the (tempered) e5 head.
        ngram_proba: ``(N, 3)`` n-gram probabilities (NaN rows: e5 alone).
        blend: The language's parameters.

    Returns:
        ``(N, 3)`` probabilities.
    """
    ngram_log = np.log(np.clip(ngram_proba, 1e-9, 1.0))
    mixed = (1.0 - blend.ngram_weight) * e5_log_proba + blend.ngram_weight * ngram_log
    mixed = np.where(np.isnan(ngram_log).any(axis=1, keepdims=True), e5_log_proba, mixed)
    return softmax(mixed / blend.temperature + np.asarray(blend.bias))


def _macro_f1(gold: np.ndarray, predicted: np.ndarray) -> float:
    scores = []
    for label in np.unique(gold):
        true_positive = np.sum((gold == label) & (predicted == label))
        total = np.sum(gold == label) + np.sum(predicted == label)
        scores.append(2.0 * true_positive / total)
    return float(np.mean(scores))


def _pooled_macro_f1(proba: np.ndarray, gold: np.ndarray, binary: np.ndarray) -> float:
    scored = np.where(binary[:, None], binary_proba(proba), proba)
    return _macro_f1(gold, scored.argmax(axis=1))


def _sets_macro_f1(
    proba: np.ndarray, gold: np.ndarray, binary: np.ndarray, owners: np.ndarray
) -> float:
    scored = np.where(binary[:, None], binary_proba(proba), proba)
    predicted = scored.argmax(axis=1)
    return float(
        np.mean([_macro_f1(gold[owners == o], predicted[owners == o]) for o in np.unique(owners)])
    )


def fit_language_blend(
    e5_log_proba: np.ndarray,
    ngram_proba: np.ndarray,
    gold: np.ndarray,
    binary: np.ndarray,
    owners: np.ndarray,
    negative_threshold: float,
    negative_recall: float,
    fit_bias: bool = True,
) -> tuple[LanguageBlend, dict[str, float]]:
    """Choose one language's n-gram weight, temperature and class shift on its dev rows.

    Args:
        e5_log_proba: ``(N, 3)`` tempered e5 log-probabilities.
        ngram_proba: ``(N, 3)`` n-gram probabilities.
        gold: Gold 0/1/2.
        binary: Whether each row's set is binary (scored over negative/positive).
        owners: Set index of each row (the weight maximises the mean of per-set macro-F1).
        negative_threshold: The flag rules' general document threshold (the ceiling of the
            per-language flag threshold).
        negative_recall: Negative recall the per-language flag threshold must keep.
        fit_bias: Whether to fit the class shift (else zero).

    Returns:
        The parameters and ``{macro_f1, negative_recall, negative_precision, flag_threshold}``
        on these rows, recall and precision at ``flag_threshold``: the highest negative
        probability threshold (at most ``negative_threshold``) that keeps ``negative_recall``.
    """
    best_weight, best_score = 0.0, -1.0
    for weight in _NGRAM_GRID:
        proba = blend_log_proba(e5_log_proba, ngram_proba, LanguageBlend(float(weight)))
        score = _sets_macro_f1(proba, gold, binary, owners)
        if score > best_score + 1e-9:
            best_weight, best_score = float(weight), score
    blend = LanguageBlend(best_weight)
    rows = np.arange(len(gold))
    best_nll = np.inf
    for temperature in _TEMPERATURE_GRID:
        candidate = LanguageBlend(best_weight, float(temperature))
        proba = blend_log_proba(e5_log_proba, ngram_proba, candidate)
        scored = np.where(binary[:, None], binary_proba(proba), proba)
        nll = -np.log(np.maximum(scored[rows, gold], 1e-12)).mean()
        if nll < best_nll:
            best_nll, blend = nll, candidate
    if fit_bias:
        blend = _fit_bias(e5_log_proba, ngram_proba, gold, binary, blend)
    proba = blend_log_proba(e5_log_proba, ngram_proba, blend)
    threshold = flag_threshold(proba[:, 0], gold, negative_threshold, negative_recall)
    return blend, _operating_point(proba, gold, binary, threshold) | {"flag_threshold": threshold}


def _operating_point(
    proba: np.ndarray, gold: np.ndarray, binary: np.ndarray, threshold: float
) -> dict[str, float]:
    flagged = proba[:, 0] >= threshold
    negatives = gold == 0
    return {
        "macro_f1": _pooled_macro_f1(proba, gold, binary),
        "negative_recall": float(flagged[negatives].mean()) if negatives.any() else 0.0,
        "negative_precision": float(negatives[flagged].mean()) if flagged.any() else 0.0,
    }


def _fit_bias(
    e5_log_proba: np.ndarray,
    ngram_proba: np.ndarray,
    gold: np.ndarray,
    binary: np.ndarray,
    blend: LanguageBlend,
) -> LanguageBlend:
    """The class shift with the best pooled dev macro-F1 (the smallest shift on ties)."""
    best = (
        _pooled_macro_f1(blend_log_proba(e5_log_proba, ngram_proba, blend), gold, binary),
        blend,
    )
    for neutral in _NEUTRAL_BIAS_GRID:
        for negative in _BIAS_GRID:
            candidate = LanguageBlend(
                blend.ngram_weight, blend.temperature, [float(negative), float(neutral), 0.0]
            )
            score = _pooled_macro_f1(
                blend_log_proba(e5_log_proba, ngram_proba, candidate), gold, binary
            )
            if score > best[0] + 1e-9:
                best = (score, candidate)
    return best[1]


def flag_threshold(negative: np.ndarray, gold: np.ndarray, ceiling: float, recall: float) -> float:
    """Highest negative-probability threshold (at most ``ceiling``) keeping negative recall.

    Args:
        negative: Negative probabilities.
        gold: Gold 0/1/2.
        ceiling: The flag rules' general threshold (never raised).
        recall: Share of gold negatives that must reach the threshold.

    Returns:
        The threshold, rounded down to 0.01 (0.01 at least).
    """
    scores = np.sort(negative[gold == 0])
    if len(scores) == 0:
        return ceiling
    # The k-th smallest score still flags len - k of them.
    allowed = int(np.floor(len(scores) * (1.0 - recall) + 1e-9))
    threshold = np.floor(scores[allowed] * 100.0) / 100.0
    return float(np.clip(threshold, 0.01, ceiling))


class StackedSentiment:
    """The e5 head plus per-language n-gram models, blended per language.

    Args:
        head: The e5 head.
        ngram: The n-gram model.
        metadata: Stacking parameters and provenance.

    Raises:
        ModelError: The head or n-gram model is not the one the stack was fitted with.
    """

    def __init__(self, head: SentimentHead, ngram: NgramModel, metadata: StackMetadata) -> None:
        if head.version != metadata.head_version or ngram.version != metadata.ngram_version:
            raise ModelError(
                f"sentiment stack {metadata.version} was fitted on head {metadata.head_version} "
                f"and n-grams {metadata.ngram_version}, found {head.version} and "
                f"{ngram.version}; rerun `python -m models.sentiment.stack`"
            )
        self.head = head
        self.ngram = ngram
        self.metadata = metadata
        self.blends = {lang: LanguageBlend(**values) for lang, values in metadata.languages.items()}

    @property
    def version(self) -> str:
        """The stack's version (pins head and n-gram versions)."""
        return self.metadata.version

    def predict_proba(
        self, features: np.ndarray, texts: Sequence[str], langs: Sequence[str | None]
    ) -> np.ndarray:
        """Negative/neutral/positive probabilities.

        Args:
            features: ``(N, input_dim)`` e5 features of ``texts``.
            texts: The analysis texts.
            langs: Their language codes (None or unknown: the e5 head alone).

        Returns:
            ``(N, 3)`` float64 probabilities.
        """
        e5 = self.head.predict_proba(features)
        result = e5.copy()
        if len(texts) == 0:
            return result
        ngram = self.ngram.predict_proba(texts, langs)
        log_e5 = np.log(np.clip(e5, 1e-12, 1.0))
        codes = np.array([lang if lang in self.blends else "" for lang in langs])
        for lang in np.unique(codes):
            if not lang:
                continue
            rows = np.flatnonzero(codes == lang)
            result[rows] = blend_log_proba(log_e5[rows], ngram[rows], self.blends[lang])
        return result

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StackedSentiment:
        """Load ``sentiment-stack.json`` and the files it names.

        Args:
            path: The stack's JSON.

        Returns:
            The model.

        Raises:
            ModelError: A file is missing or invalid.
        """
        file = Path(path)
        metadata = StackMetadata.read(file)
        head = SentimentHead.load(file.parent / metadata.head)
        ngram = NgramModel.load(file.parent / metadata.ngram)
        return cls(head, ngram, metadata)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the stack's JSON (the head and n-gram files are saved by their owners).

        Args:
            path: Target JSON path.

        Returns:
            The path.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            json.dumps(asdict(self.metadata), indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        return target


def stack_version(prefix: str, head_version: str, ngram_version: str, blends: dict) -> str:
    """Version string of a stack: prefix plus a digest of its parts.

    Args:
        prefix: E.g. ``sentiment-stack``.
        head_version: The e5 head's version.
        ngram_version: The n-gram model's version.
        blends: Language code -> parameters (JSON-ready).

    Returns:
        ``<prefix>-<10 hex digits>``.
    """
    digest = hashlib.sha256(
        json.dumps([head_version, ngram_version, blends], sort_keys=True).encode()
    )
    return f"{prefix}-{digest.hexdigest()[:10]}"
