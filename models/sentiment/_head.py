"""The sentiment head: a small classifier over frozen e5 features, saved as safetensors + JSON.

Its input is the concatenation of unit-norm mean-pooled hidden states of the encoder layers
listed in the metadata (``encoder_layers``; ``[12]`` is the plain E5 embedding), all taken from
one forward pass (``Encoder.encode(texts, layers=head.encoder_layers)``).

Inference is plain numpy (a linear layer, or one ReLU hidden layer, then a temperature-scaled
softmax), so loading a head costs milliseconds and needs no torch. Weights are held at float16
precision, the precision the safetensors file stores (half the size; on dev the probabilities
move by at most 2.5e-4), so what is scored, versioned and saved is the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from models.encoder import LAST_LAYER
from models.sentiment._datasets import LABELS
from pipelines._errors import ModelError

__all__ = ["HeadMetadata", "SentimentHead", "binary_proba", "softmax"]

_LAYER_DIM = 384
_WEIGHT_SUFFIX = ".safetensors"
_METADATA_SUFFIX = ".json"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (numerically stable).

    Args:
        logits: ``(N, K)`` array.

    Returns:
        ``(N, K)`` float64 probabilities, rows summing to 1.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def binary_proba(proba: np.ndarray) -> np.ndarray:
    """Negative/positive probabilities renormalised without neutral (for binary-labelled sets).

    Args:
        proba: ``(N, 3)`` negative/neutral/positive probabilities.

    Returns:
        ``(N, 3)`` with neutral set to 0 and the other two summing to 1.
    """
    sides = proba[:, [0, 2]]
    total = np.maximum(sides.sum(axis=1, keepdims=True), 1e-12)
    sides = sides / total
    return np.stack([sides[:, 0], np.zeros(len(proba)), sides[:, 1]], axis=1)


@dataclass
class HeadMetadata:
    """What the JSON beside the weights records.

    Attributes:
        version: Head version string (stored with every prediction).
        encoder_version: Encoder whose embeddings the head was trained on.
        labels: Output order (negative, neutral, positive).
        input_dim: Feature dimension (384 per entry of ``encoder_layers``).
        hidden_dim: Hidden units; 0 for a linear (logistic-regression) head.
        encoder_layers: Encoder hidden states pooled into the features (12 = E5's last layer).
        temperature: Softmax temperature tuned on dev.
        datasets: Training sets: ``{name, lang, licence, train_rows, binary}``.
        metrics: Dev metrics measured after training.
        training: Hyperparameters used.
    """

    version: str
    encoder_version: str
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    input_dim: int = 384
    hidden_dim: int = 0
    encoder_layers: list[int] = field(default_factory=lambda: [12])
    temperature: float = 1.0
    datasets: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


class SentimentHead:
    """A trained head: weights plus metadata.

    Args:
        weights: ``out.weight`` (3, H) and ``out.bias`` (3,), plus ``hidden.weight`` (H, D) and
            ``hidden.bias`` (H,) for an MLP head.
        metadata: Versions, dimensions, temperature and training provenance.
    """

    def __init__(self, weights: dict[str, np.ndarray], metadata: HeadMetadata) -> None:
        with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
            self.weights = {
                name: np.asarray(value, dtype=np.float16).astype(np.float32)
                for name, value in weights.items()
            }
        self.metadata = metadata
        unstorable = sorted(
            name for name, value in self.weights.items() if not np.isfinite(value).all()
        )
        if unstorable:
            raise ModelError(
                f"head weights {unstorable} exceed the float16 range they are stored in; "
                "retrain with `feedback train sentiment` (more weight_decay)"
            )
        expected = {"out.weight", "out.bias"}
        if metadata.hidden_dim:
            expected |= {"hidden.weight", "hidden.bias"}
        if set(self.weights) != expected:
            raise ModelError(
                f"head weights hold {sorted(self.weights)}, expected {sorted(expected)}; "
                "retrain with `feedback train sentiment`"
            )
        if not metadata.encoder_layers or metadata.encoder_layers[-1] != LAST_LAYER:
            raise ModelError(
                f"head encoder_layers {metadata.encoder_layers} must end with {LAST_LAYER}, the "
                "layer whose pooled vector is the E5 embedding; retrain with "
                "`feedback train sentiment`"
            )
        if metadata.input_dim != _LAYER_DIM * len(metadata.encoder_layers):
            raise ModelError(
                f"head input_dim {metadata.input_dim} does not match encoder_layers "
                f"{metadata.encoder_layers} ({_LAYER_DIM} each); retrain with "
                "`feedback train sentiment`"
            )

    @property
    def version(self) -> str:
        """Head version string."""
        return self.metadata.version

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Raw (untempered) class scores.

        Args:
            embeddings: ``(N, input_dim)`` array.

        Returns:
            ``(N, 3)`` float32 logits.
        """
        features = np.asarray(embeddings, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.metadata.input_dim:
            raise ModelError(
                f"head expects (N, {self.metadata.input_dim}) embeddings, got {features.shape}; "
                f"use the encoder {self.metadata.encoder_version}"
            )
        if self.metadata.hidden_dim:
            features = features @ self.weights["hidden.weight"].T + self.weights["hidden.bias"]
            features = np.maximum(features, 0.0)
        return features @ self.weights["out.weight"].T + self.weights["out.bias"]

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Calibrated negative/neutral/positive probabilities.

        Args:
            embeddings: ``(N, input_dim)`` array.

        Returns:
            ``(N, 3)`` float64 probabilities, rows summing to 1.
        """
        return softmax(self.logits(embeddings).astype(np.float64) / self.metadata.temperature)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` (``path`` without suffix).

        Args:
            path: Target path stem, e.g. ``models/heads/sentiment-e5``.

        Returns:
            The JSON file's path (what :meth:`load` takes).
        """
        stem = Path(path)
        stem = stem.with_suffix("") if stem.suffix in (_WEIGHT_SUFFIX, _METADATA_SUFFIX) else stem
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                name: np.ascontiguousarray(value, dtype=np.float16)
                for name, value in self.weights.items()
            },
            str(stem) + _WEIGHT_SUFFIX,
            metadata={"version": self.metadata.version},
        )
        metadata_path = Path(str(stem) + _METADATA_SUFFIX)
        metadata_path.write_text(
            json.dumps(asdict(self.metadata), indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        return metadata_path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SentimentHead:
        """Load a head saved by :meth:`save`.

        Args:
            path: The ``.json`` or ``.safetensors`` file, or their common stem.

        Returns:
            The head.

        Raises:
            ModelError: A file is missing or does not match the metadata.
        """
        stem = Path(path)
        stem = stem.with_suffix("") if stem.suffix in (_WEIGHT_SUFFIX, _METADATA_SUFFIX) else stem
        metadata_path = Path(str(stem) + _METADATA_SUFFIX)
        weights_path = Path(str(stem) + _WEIGHT_SUFFIX)
        if not metadata_path.is_file() or not weights_path.is_file():
            raise ModelError(
                f"sentiment head {stem} needs {metadata_path.name} and {weights_path.name}; "
                "train one with `feedback train sentiment` or fix the path in sentiment.yaml"
            )
        try:
            metadata = HeadMetadata(**json.loads(metadata_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelError(f"{metadata_path} is not valid head metadata: {exc}") from exc
        if tuple(metadata.labels) != LABELS:
            raise ModelError(f"{metadata_path} labels {metadata.labels} must be {list(LABELS)}")
        return cls(load_file(str(weights_path)), metadata)
