"""Per-language hashed character and word n-gram sentiment models (no vocabulary stored).

Each language has two logistic regressions over the same hashed features: *polarity*
(negative vs positive, trained on every non-neutral row) and *neutral* (neutral vs not, trained
only on sets that label neutral, so binary sets never teach "not neutral"). Their product gives
negative/neutral/positive probabilities. Features are those of sklearn's ``HashingVectorizer``,
computed without it (``_hashing``: character n-grams inside word boundaries plus word n-grams,
each block L2-normalised): the weights are plain arrays indexed by hash bucket, so nothing of
the training text is kept.

Inference costs one hashing pass and a sparse dot product per text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy import sparse

from models.sentiment._hashing import hashed_ngram_counts
from pipelines._errors import ModelError

if TYPE_CHECKING:
    from models.sentiment._datasets import DatasetSplit

__all__ = [
    "NgramMetadata",
    "NgramModel",
    "class_balanced_weights",
    "fit_ngram_language",
    "hashed_features",
    "ngram_version",
]

_WEIGHT_SUFFIX = ".safetensors"
_METADATA_SUFFIX = ".json"


@dataclass
class NgramMetadata:
    """What the JSON beside the n-gram weights records.

    Attributes:
        version: Version string (part of the stacked model's version).
        char_features: Hash buckets of the character block.
        word_features: Hash buckets of the word block.
        char_ngrams: ``[min, max]`` character n-gram lengths (within word boundaries).
        word_ngrams: ``[min, max]`` word n-gram lengths.
        languages: Language codes with a model.
        training: Regularisation and the rows each language was trained on.
    """

    version: str
    char_features: int = 1 << 17
    word_features: int = 1 << 16
    char_ngrams: list[int] = field(default_factory=lambda: [1, 5])
    word_ngrams: list[int] = field(default_factory=lambda: [1, 2])
    languages: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)


def hashed_features(texts: Sequence[str], metadata: NgramMetadata) -> sparse.csr_matrix:
    """The hashed feature rows of ``texts``.

    Args:
        texts: Analysis texts.
        metadata: Feature settings.

    Returns:
        ``(N, char_features + word_features)`` sparse float64 matrix.
    """
    return hashed_ngram_counts(
        texts,
        (metadata.char_ngrams[0], metadata.char_ngrams[1]),
        metadata.char_features,
        (metadata.word_ngrams[0], metadata.word_ngrams[1]),
        metadata.word_features,
    )


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(values, -40.0, 40.0)))


class NgramModel:
    """Per-language polarity and neutral logistic regressions over hashed n-grams.

    Args:
        weights: Per language ``<lang>.polarity.weight``/``.bias`` and
            ``<lang>.neutral.weight``/``.bias``.
        metadata: Feature settings and provenance.
    """

    def __init__(self, weights: dict[str, np.ndarray], metadata: NgramMetadata) -> None:
        self.metadata = metadata
        self.weights = {
            name: np.asarray(value, dtype=np.float16).astype(np.float32)
            for name, value in weights.items()
        }
        width = metadata.char_features + metadata.word_features
        for lang in metadata.languages:
            for part in ("polarity", "neutral"):
                vector = self.weights.get(f"{lang}.{part}.weight")
                if vector is None or vector.shape != (width,):
                    raise ModelError(
                        f"n-gram model {metadata.version} lacks a {width}-wide {lang}.{part} "
                        "weight; retrain it with `python -m models.sentiment.stack`"
                    )

    @property
    def version(self) -> str:
        """The n-gram model's version."""
        return self.metadata.version

    def predict_proba(self, texts: Sequence[str], langs: Sequence[str | None]) -> np.ndarray:
        """Negative/neutral/positive probabilities; NaN rows for languages without a model.

        Args:
            texts: Analysis texts.
            langs: Their language codes.

        Returns:
            ``(N, 3)`` float64 array.
        """
        result = np.full((len(texts), 3), np.nan)
        known = [index for index, lang in enumerate(langs) if lang in self.metadata.languages]
        if not known:
            return result
        features = hashed_features([texts[index] for index in known], self.metadata)
        known_langs = np.array([langs[index] for index in known])
        for lang in np.unique(known_langs):
            rows = np.flatnonzero(known_langs == lang)
            block = features[rows]
            positive = _sigmoid(
                block @ self.weights[f"{lang}.polarity.weight"]
                + self.weights[f"{lang}.polarity.bias"][0]
            )
            neutral = _sigmoid(
                block @ self.weights[f"{lang}.neutral.weight"]
                + self.weights[f"{lang}.neutral.bias"][0]
            )
            target = np.asarray(known)[rows]
            result[target, 0] = (1.0 - neutral) * (1.0 - positive)
            result[target, 1] = neutral
            result[target, 2] = (1.0 - neutral) * positive
        return result

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<path>.json`` and one ``<path>-<lang>.safetensors`` per language.

        Args:
            path: Target stem.

        Returns:
            The JSON file's path.
        """
        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        for lang in self.metadata.languages:
            save_file(
                {
                    name: np.ascontiguousarray(value, dtype=np.float16)
                    for name, value in self.weights.items()
                    if name.startswith(f"{lang}.")
                },
                _weights_path(stem, lang),
                metadata={"version": self.metadata.version},
            )
        metadata_path = Path(str(stem) + _METADATA_SUFFIX)
        metadata_path.write_text(
            json.dumps(asdict(self.metadata), indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        return metadata_path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NgramModel:
        """Load a model saved by :meth:`save`.

        Args:
            path: The ``.json`` or ``.safetensors`` file, or their stem.

        Returns:
            The model.

        Raises:
            ModelError: A file is missing or invalid.
        """
        stem = _stem(path)
        metadata_path = Path(str(stem) + _METADATA_SUFFIX)
        if not metadata_path.is_file():
            raise ModelError(
                f"n-gram sentiment model {metadata_path} not found; train it with "
                "`python -m models.sentiment.stack`"
            )
        try:
            metadata = NgramMetadata(**json.loads(metadata_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelError(f"{metadata_path} is not valid n-gram metadata: {exc}") from exc
        weights: dict[str, np.ndarray] = {}
        for lang in metadata.languages:
            weights_path = _weights_path(stem, lang)
            if not weights_path.is_file():
                raise ModelError(
                    f"n-gram sentiment model {stem} lacks {weights_path.name}; train it with "
                    "`python -m models.sentiment.stack`"
                )
            weights.update(load_file(str(weights_path)))
        return cls(weights, metadata)


def _weights_path(stem: Path, lang: str) -> Path:
    return Path(f"{stem}-{lang}{_WEIGHT_SUFFIX}")


def _stem(path: str | os.PathLike[str]) -> Path:
    stem = Path(path)
    return stem.with_suffix("") if stem.suffix in (_WEIGHT_SUFFIX, _METADATA_SUFFIX) else stem


def fit_ngram_language(
    texts: Sequence[str],
    labels: np.ndarray,
    has_neutral: np.ndarray,
    weights: np.ndarray,
    metadata: NgramMetadata,
    regularisation: float = 4.0,
) -> dict[str, np.ndarray]:
    """Fit one language's polarity and neutral regressions.

    Args:
        texts: Training texts of the language.
        labels: Gold 0/1/2 (negative/neutral/positive).
        has_neutral: Whether each row's set labels neutral.
        weights: Per-row sample weights (class balance within sets).
        metadata: Feature settings.
        regularisation: Inverse L2 strength ``C``.

    Returns:
        ``{"polarity.weight", "polarity.bias", "neutral.weight", "neutral.bias"}``.
    """
    from sklearn.linear_model import LogisticRegression

    features = hashed_features(texts, metadata)
    result: dict[str, np.ndarray] = {}
    sided = labels != 1
    polarity = LogisticRegression(C=regularisation, max_iter=2000, solver="liblinear")
    polarity.fit(features[sided], labels[sided] == 2, sample_weight=weights[sided])
    result["polarity.weight"] = polarity.coef_[0]
    result["polarity.bias"] = polarity.intercept_.astype(np.float64)
    if not has_neutral.any():
        # No set of the language labels neutral (e.g. its 3-class sets excluded or held out):
        # the model has no opinion on neutral, one in three for every text.
        result["neutral.weight"] = np.zeros(features.shape[1])
        result["neutral.bias"] = np.array([np.log(0.5)])
        return result
    neutral = LogisticRegression(C=regularisation, max_iter=2000, solver="liblinear")
    neutral.fit(features[has_neutral], labels[has_neutral] == 1, sample_weight=weights[has_neutral])
    result["neutral.weight"] = neutral.coef_[0]
    result["neutral.bias"] = neutral.intercept_.astype(np.float64)
    return result


def ngram_version(weights: dict[str, np.ndarray]) -> str:
    """Digest of the weights (as stored, float16).

    Args:
        weights: The model's arrays.

    Returns:
        A 10-hex-digit digest.
    """
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name], dtype=np.float16).tobytes())
    return digest.hexdigest()[:10]


def class_balanced_weights(splits: Sequence[DatasetSplit]) -> np.ndarray:
    """Row weights giving every class of a set the same total weight within that set.

    Args:
        splits: The training splits, in the order their rows are stacked.

    Returns:
        ``(N,)`` weights (mean 1 within each set).
    """
    parts = []
    for split in splits:
        labels = split.labels
        classes, counts = np.unique(labels, return_counts=True)
        per_class = dict(zip(classes, len(labels) / (len(classes) * counts), strict=True))
        parts.append(np.array([per_class[label] for label in labels]))
    return np.concatenate(parts)
