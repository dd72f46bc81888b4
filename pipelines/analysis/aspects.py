"""Aspect detection: what each record (and each of its sentences) is about, with a polarity.

Scoring, for a sentence embedding ``e`` and an aspect ``a`` of ``configs/aspects.yaml``:

* **prototype score**: mean cosine of ``e`` to its ``top_k`` nearest example phrases of ``a``
  minus the mean of that quantity over all aspects (centring removes the encoder's baseline
  similarity), mapped to a probability by one aspect-agnostic logistic calibration learnt on the
  annotated data sets. Any aspect with examples gets this score, so adding an aspect to the
  YAML needs no code change and no retraining.
* **head score**: a logistic head per aspect (``models/heads/aspects.safetensors``) trained by
  ``python -m models.aspects_train`` on the mapped data sets plus the YAML examples (weighted,
  every language); aspects no data set has (returns, loyalty) learn from the examples alone.
  Where a head exists it replaces the prototype score; an aspect added to the YAML later has
  none until the next training. The heads read the pooled vectors of several encoder layers
  (``AspectHeads.encoder_layers``, the sentiment head's: that stage hands them over in the
  batch, so aspects cost no second encoder pass); the prototypes read the last layer's block,
  the E5 embedding. Heads trained on data also have an n-gram part: a logistic regression over
  the text's hashed character and word n-grams (the sentiment stack's features), whose logit
  is blended into the head's (``AspectHeads.ngram_blend``).

An aspect is reported when its probability reaches its threshold (tuned out-of-fold on the
training split where the data has the aspect, 0.5 for example-only heads, the calibrated
prototype threshold for head-less aspects; overridable per aspect in the YAML). Its polarity is
the sentiment of the sentence that scored highest for it (from the sentiment stage's
``sentences`` column), else the record's sentiment, else ``neutral``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors.numpy import load_file, save_file

from pipelines._errors import ModelError
from pipelines.analysis._embedding_lookup import (
    TextEmbedder,
    cached_phrase_vectors,
    e5_embeddings,
    embedding_columns,
)
from pipelines.config import config_path, load_yaml_model
from pipelines.stages import Stage, StageContext, stored_version_rows
from pipelines.storage import record_aspects as stored_aspects
from pipelines.storage import schema
from pipelines.text import split_sentences

if TYPE_CHECKING:
    from models.sentiment import NgramMetadata

__all__ = [
    "ASPECTS_CONFIG",
    "DEFAULT_HEADS_DIR",
    "OTHER_ASPECT",
    "AspectConfig",
    "AspectDefinition",
    "AspectDetector",
    "AspectHeads",
    "AspectStage",
    "load_aspect_config",
    "normalize_polarity",
    "record_aspects",
]

ASPECTS_CONFIG = "aspects.yaml"
OTHER_ASPECT = "other"
LANGUAGES = ("tr", "fa", "ro", "en")
DEFAULT_HEADS_DIR = Path(__file__).resolve().parents[2] / "models" / "heads"
HEADS_STEM = "aspects"
# One file per aspect's n-gram part (float16, ~0.4 MB each): every committed file stays small.
_NGRAM_FILE = "aspects-ngram-{name}.safetensors"
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
_POLARITY_ALIASES = {
    "neg": "negative",
    "negative": "negative",
    "neu": "neutral",
    "neutral": "neutral",
    "pos": "positive",
    "positive": "positive",
}


def normalize_polarity(value: object) -> str:
    """Map a sentiment label (``neg``/``negative``/...) onto negative|neutral|positive.

    Args:
        value: Any label; unknown values and missing ones give ``neutral``.

    Returns:
        ``negative``, ``neutral`` or ``positive``.
    """
    return _POLARITY_ALIASES.get(str(value).strip().lower(), "neutral") if value else "neutral"


class AspectDefinition(BaseModel):
    """One aspect of the taxonomy.

    Attributes:
        name: Stable snake_case key stored with every result.
        labels: Display label per language (tr, fa, ro and en required).
        examples: Short example phrases per language; they define the aspect for the detector.
        threshold: Optional probability threshold overriding the tuned one.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    labels: dict[str, str]
    examples: dict[str, list[str]] = Field(default_factory=dict)
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0)

    @field_validator("name")
    @classmethod
    def _snake_case(cls, value: str) -> str:
        if not _NAME_PATTERN.match(value):
            raise ValueError("use snake_case letters, digits and '_' (e.g. 'delivery_shipping')")
        return value

    @field_validator("labels")
    @classmethod
    def _all_languages(cls, value: dict[str, str]) -> dict[str, str]:
        missing = [lang for lang in LANGUAGES if not value.get(lang)]
        if missing:
            raise ValueError(f"add a label for {', '.join(missing)}")
        return value

    @property
    def example_phrases(self) -> list[str]:
        """All example phrases, every language, in file order."""
        return [phrase for phrases in self.examples.values() for phrase in phrases if phrase]


class AspectConfig(BaseModel):
    """``configs/aspects.yaml``.

    Attributes:
        max_aspects_per_sentence: Most aspects reported for one sentence (best first).
        max_sentences_per_record: Sentences scored one by one per record; the whole record is
            always scored too, so later sentences still count through it.
        prototype_top_k: Nearest example phrases averaged in the prototype score.
        aspects: The taxonomy; must contain ``other`` (the fallback, no examples).
        dataset_mapping: Data-set category -> aspect (``null``: not ours), per data set;
            keys may use ``*`` wildcards, first match wins.
    """

    model_config = ConfigDict(extra="forbid")

    max_aspects_per_sentence: int = Field(default=3, ge=1)
    max_sentences_per_record: int = Field(default=20, ge=1)
    prototype_top_k: int = Field(default=3, ge=1)
    aspects: list[AspectDefinition]
    dataset_mapping: dict[str, dict[str, str | None]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> AspectConfig:
        names = [aspect.name for aspect in self.aspects]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"aspect names must be unique; repeated: {duplicates}")
        if OTHER_ASPECT not in names:
            raise ValueError(f"add the fallback aspect '{OTHER_ASPECT}' (labels, no examples)")
        for aspect in self.aspects:
            if aspect.name != OTHER_ASPECT and not aspect.example_phrases:
                raise ValueError(f"aspect '{aspect.name}' needs example phrases")
        for dataset, mapping in self.dataset_mapping.items():
            unknown = sorted({t for t in mapping.values() if t is not None and t not in names})
            if unknown:
                raise ValueError(f"dataset_mapping.{dataset} maps onto unknown aspects {unknown}")
        return self

    @property
    def detectable(self) -> list[AspectDefinition]:
        """Aspects the detector scores (every aspect but ``other``)."""
        return [aspect for aspect in self.aspects if aspect.name != OTHER_ASPECT]

    def map_category(self, dataset: str, category: str) -> str | None:
        """Our aspect for a data-set category.

        Args:
            dataset: Key of ``dataset_mapping``.
            category: The category as annotated (``FOOD#PRICES``, ``Late Flight``...).

        Returns:
            The aspect name, or None when the category is not one of ours or is not listed.
        """
        for pattern, target in self.dataset_mapping.get(dataset, {}).items():
            if fnmatchcase(category, pattern):
                return target
        return None

    def fingerprint(self) -> str:
        """Short hash of what changes detection (names, examples, thresholds, limits)."""
        payload = self.model_dump(exclude={"dataset_mapping"})
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8"))
        return digest.hexdigest()[:8]


def load_aspect_config(config_dir: str | os.PathLike[str] | None = None) -> AspectConfig:
    """Load and validate ``aspects.yaml``.

    Args:
        config_dir: Folder holding ``aspects.yaml`` (None: ``$FEEDBACK_CONFIG_DIR`` or the
            defaults in ``configs/``).

    Returns:
        The taxonomy.

    Raises:
        ConfigError: Missing file or invalid key (the message names it and the fix).
    """
    return load_yaml_model(config_path(ASPECTS_CONFIG, config_dir), AspectConfig)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(values, -30.0, 30.0)))


@dataclass
class AspectHeads:
    """Trained parameters of the detector (``models/heads/aspects.{safetensors,json}``).

    Attributes:
        version: Head version (training date + data fingerprint).
        encoder_version: Encoder the heads were trained on; must match at load.
        encoder_layers: Encoder layers whose pooled vectors the heads read, concatenated (see
            ``Encoder.encode``; they end with the last layer, whose block is the E5 embedding);
            None: the E5 embedding alone.
        prototype_slope: Calibration slope of the centred prototype similarity.
        prototype_intercept: Calibration intercept.
        prototype_threshold: Probability threshold for aspects scored by prototype only.
        weights: Aspect -> logistic head weight vector (dim,).
        biases: Aspect -> head bias.
        thresholds: Aspect -> tuned probability threshold of its head.
        metrics: Evaluation figures written by training (documentation only).
        ngram: Hashed n-gram feature settings of the n-gram parts (None: heads without them).
        ngram_weights: Aspect -> n-gram logistic weights (``ngram``'s feature width).
        ngram_biases: Aspect -> n-gram bias.
        ngram_blend: Weight ``a`` of the n-gram logit: an aspect's logit is
            ``(1 - a) * head + a * n-gram`` where it has both.
        ngram_languages: Aspect -> languages its n-gram part scores (those it learnt from
            data); texts of other languages get the head alone.
    """

    version: str
    encoder_version: str
    encoder_layers: tuple[int, ...] | None
    prototype_slope: float
    prototype_intercept: float
    prototype_threshold: float
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    biases: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    ngram: NgramMetadata | None = None
    ngram_weights: dict[str, np.ndarray] = field(default_factory=dict)
    ngram_biases: dict[str, float] = field(default_factory=dict)
    ngram_blend: float = 0.0
    ngram_languages: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``aspects.safetensors`` (head weights), ``aspects-ngram-<aspect>.safetensors``
        (each n-gram part, float16; those of aspects without one now are removed) and
        ``aspects.json`` (the rest).

        Args:
            directory: Target folder (created if needed).
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{name}.weight": np.ascontiguousarray(weight, dtype=np.float32)
            for name, weight in self.weights.items()
        } | {
            f"{name}.bias": np.array([bias], dtype=np.float32) for name, bias in self.biases.items()
        }
        save_file(tensors, str(folder / f"{HEADS_STEM}.safetensors"))
        kept = {_NGRAM_FILE.format(name=name) for name in self.ngram_weights}
        for stale in folder.glob(_NGRAM_FILE.format(name="*")):
            if stale.name not in kept:
                stale.unlink()
        for name, weight in self.ngram_weights.items():
            save_file(
                {
                    "weight": np.ascontiguousarray(weight, dtype=np.float16),
                    "bias": np.array([self.ngram_biases[name]], dtype=np.float32),
                },
                str(folder / _NGRAM_FILE.format(name=name)),
            )
        meta = {
            "version": self.version,
            "encoder_version": self.encoder_version,
            "encoder_layers": None if self.encoder_layers is None else list(self.encoder_layers),
            "prototype": {
                "slope": self.prototype_slope,
                "intercept": self.prototype_intercept,
                "threshold": self.prototype_threshold,
            },
            "thresholds": self.thresholds,
            "metrics": self.metrics,
            "ngram": None
            if self.ngram is None
            else {"blend": self.ngram_blend, "languages": self.ngram_languages}
            | _ngram_settings(self.ngram),
        }
        (folder / f"{HEADS_STEM}.json").write_text(
            json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str] | None = None) -> AspectHeads:
        """Read heads written by :meth:`save`.

        Args:
            directory: Folder; None uses ``models/heads``.

        Returns:
            The heads.

        Raises:
            ModelError: Files missing or unreadable, or layers that do not end with the last.
        """
        from models.encoder import LAST_LAYER

        folder = Path(directory) if directory is not None else DEFAULT_HEADS_DIR
        meta_file = folder / f"{HEADS_STEM}.json"
        tensor_file = folder / f"{HEADS_STEM}.safetensors"
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            tensors = load_file(str(tensor_file))
            prototype = meta["prototype"]
            names = sorted(
                key.removesuffix(".weight") for key in tensors if key.endswith(".weight")
            )
            layers = meta["encoder_layers"]
            if layers is not None and (not layers or layers[-1] != LAST_LAYER):
                raise ValueError(f"encoder_layers {layers} must end with {LAST_LAYER}")
            ngram_meta = meta.get("ngram")
            ngram = None if ngram_meta is None else _ngram_metadata(ngram_meta, meta["version"])
            ngram_blend = 0.0 if ngram_meta is None else float(ngram_meta["blend"])
            if not 0.0 <= ngram_blend <= 1.0:
                raise ValueError(f"n-gram blend {ngram_blend} is not within [0, 1]")
            ngram_languages = {
                str(name): tuple(str(lang) for lang in langs)
                for name, langs in ({} if ngram_meta is None else ngram_meta["languages"]).items()
            }
            ngram_parts = {
                name: load_file(str(folder / _NGRAM_FILE.format(name=name)))
                for name in ngram_languages
            }
            ngram_weights = {
                name: part["weight"].astype(np.float32) for name, part in ngram_parts.items()
            }
            if ngram is not None:
                width = ngram.char_features + ngram.word_features
                for name, weight in ngram_weights.items():
                    if weight.shape != (width,):
                        raise ValueError(f"{name}'s n-gram weight is not {width} wide")
            return cls(
                version=str(meta["version"]),
                encoder_version=str(meta["encoder_version"]),
                encoder_layers=None if layers is None else tuple(int(x) for x in layers),
                prototype_slope=float(prototype["slope"]),
                prototype_intercept=float(prototype["intercept"]),
                prototype_threshold=float(prototype["threshold"]),
                weights={name: tensors[f"{name}.weight"] for name in names},
                biases={name: float(tensors[f"{name}.bias"][0]) for name in names},
                thresholds={str(k): float(v) for k, v in meta.get("thresholds", {}).items()},
                metrics=meta.get("metrics", {}),
                ngram=ngram,
                ngram_weights=ngram_weights,
                ngram_biases={name: float(part["bias"][0]) for name, part in ngram_parts.items()},
                ngram_blend=ngram_blend,
                ngram_languages=ngram_languages,
            )
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ModelError(
                f"aspect heads in {folder} are missing or unreadable ({exc}). Train them with "
                "`python -m models.aspects_train` (needs ../shared/datasets)."
            ) from exc


def _ngram_settings(metadata: NgramMetadata) -> dict[str, Any]:
    return {
        "char_ngrams": list(metadata.char_ngrams),
        "char_features": metadata.char_features,
        "word_ngrams": list(metadata.word_ngrams),
        "word_features": metadata.word_features,
    }


def _ngram_metadata(settings: dict[str, Any], version: str) -> NgramMetadata:
    from models.sentiment import NgramMetadata

    return NgramMetadata(
        version=version,
        char_ngrams=[int(n) for n in settings["char_ngrams"]],
        char_features=int(settings["char_features"]),
        word_ngrams=[int(n) for n in settings["word_ngrams"]],
        word_features=int(settings["word_features"]),
    )


def prototype_similarity(
    embeddings: np.ndarray, examples: Sequence[np.ndarray], top_k: int
) -> np.ndarray:
    """Centred top-k example similarity of each embedding to each aspect.

    Args:
        embeddings: (N, dim) unit-norm vectors.
        examples: Per aspect, its (n_examples, dim) unit-norm example vectors.
        top_k: Nearest examples averaged per aspect.

    Returns:
        (N, len(examples)) similarities minus their row mean.
    """
    columns = []
    for vectors in examples:
        similarities = embeddings @ vectors.T
        k = min(top_k, vectors.shape[0])
        nearest = np.partition(similarities, similarities.shape[1] - k, axis=1)[:, -k:]
        columns.append(nearest.mean(axis=1))
    raw = np.stack(columns, axis=1)
    return raw - raw.mean(axis=1, keepdims=True)


class AspectDetector:
    """Scores texts' features (``heads.encoder_layers``) against the taxonomy.

    Args:
        config: The taxonomy.
        heads: Trained heads and calibration.
        embed: Function returning the features the heads read for texts (used for the example
            phrases, once).
        encoder_version: Version of the encoder behind ``embed``; must match the heads'.

    Raises:
        ModelError: The heads were trained on another encoder, or ``embed`` gives features of
            another size than the heads read.
    """

    def __init__(
        self,
        config: AspectConfig,
        heads: AspectHeads,
        embed: Callable[[list[str]], np.ndarray],
        encoder_version: str,
    ) -> None:
        if heads.encoder_version != encoder_version:
            raise ModelError(
                f"aspect heads were trained on encoder {heads.encoder_version} but the pipeline "
                f"uses {encoder_version}; retrain with `python -m models.aspects_train`."
            )
        self.config = config
        self.heads = heads
        self.names = [aspect.name for aspect in config.detectable]
        example_features = [embed(aspect.example_phrases) for aspect in config.detectable]
        self._examples = [e5_embeddings(features) for features in example_features]
        self.thresholds = np.array(
            [
                aspect.threshold
                if aspect.threshold is not None
                else heads.thresholds.get(aspect.name, heads.prototype_threshold)
                for aspect in config.detectable
            ],
            dtype=np.float32,
        )
        self._headed = [index for index, name in enumerate(self.names) if name in heads.weights]
        self._head_matrix = (
            np.stack([heads.weights[self.names[i]] for i in self._headed], axis=1)
            if self._headed
            else np.zeros((0, 0), dtype=np.float32)
        )
        self._head_bias = np.array([heads.biases[self.names[i]] for i in self._headed])
        # Positions within the head columns that blend in an n-gram part, and its languages.
        self._ngram_columns = [
            position
            for position, index in enumerate(self._headed)
            if self.names[index] in heads.ngram_weights
        ]
        ngram_names = [self.names[self._headed[position]] for position in self._ngram_columns]
        self._ngram_column_languages = [heads.ngram_languages[name] for name in ngram_names]
        self._ngram_matrix = (
            np.stack([heads.ngram_weights[name] for name in ngram_names], axis=1)
            if ngram_names
            else None
        )
        self._ngram_bias = np.array([heads.ngram_biases[name] for name in ngram_names])
        self._ngram_languages = sorted(
            {lang for languages in self._ngram_column_languages for lang in languages}
        )
        read = self._head_matrix.shape[0]
        if self._headed and (given := example_features[0].shape[1]) != read:
            raise ModelError(
                f"aspect heads read {read}-d features (encoder layers {heads.encoder_layers}) "
                f"but the embedder gives {given}-d ones; embed with "
                "TextEmbedder(layers=heads.encoder_layers)"
            )

    @property
    def version(self) -> str:
        """Model version stored with every result: heads version + taxonomy fingerprint."""
        return f"aspects-{self.heads.version}-{self.config.fingerprint()}"

    def probabilities(
        self, features: np.ndarray, texts: Sequence[str], langs: Sequence[str | None]
    ) -> np.ndarray:
        """Probability of each aspect for each text.

        Args:
            features: (N, dim) features of ``heads.encoder_layers``.
            texts: The N analysis texts behind them (for the heads' n-gram parts).
            langs: Their language codes (an n-gram part scores only its languages).

        Returns:
            (N, len(names)) probabilities, columns in ``names`` order.
        """
        if not len(texts) == len(langs) == features.shape[0]:
            raise ValueError(
                f"{features.shape[0]} feature rows for {len(texts)} texts and {len(langs)} "
                "languages"
            )
        if features.shape[0] == 0:
            return np.zeros((0, len(self.names)), dtype=np.float32)
        centred = prototype_similarity(
            e5_embeddings(features), self._examples, self.config.prototype_top_k
        )
        probabilities = _sigmoid(
            self.heads.prototype_slope * centred + self.heads.prototype_intercept
        )
        if self._headed:
            logits = features @ self._head_matrix + self._head_bias
            if self._ngram_matrix is not None and self.heads.ngram is not None:
                from models.sentiment import hashed_features

                blend = self.heads.ngram_blend
                row_langs = np.array([str(lang) for lang in langs])
                hashed = np.flatnonzero(np.isin(row_langs, self._ngram_languages))
                ngram_logits = np.zeros((len(texts), len(self._ngram_columns)))
                if len(hashed):
                    ngram_logits[hashed] = (
                        hashed_features([texts[row] for row in hashed], self.heads.ngram)
                        @ self._ngram_matrix
                        + self._ngram_bias
                    )
                for position, (column, languages) in enumerate(
                    zip(self._ngram_columns, self._ngram_column_languages, strict=True)
                ):
                    scored = np.isin(row_langs, languages)
                    logits[scored, column] = (1.0 - blend) * logits[
                        scored, column
                    ] + blend * ngram_logits[scored, position]
            probabilities[:, self._headed] = _sigmoid(logits)
        return probabilities.astype(np.float32)

    def detect(self, probabilities: np.ndarray) -> list[list[tuple[str, float]]]:
        """Aspects above threshold per row of :meth:`probabilities`, best first, at most
        ``max_aspects_per_sentence``.

        Args:
            probabilities: (N, len(names)) output of :meth:`probabilities`.

        Returns:
            Per row, ``(aspect, probability)`` pairs (empty when nothing passes).
        """
        limit = self.config.max_aspects_per_sentence
        found: list[list[tuple[str, float]]] = []
        for row in probabilities:
            passing = np.flatnonzero(row >= self.thresholds)
            best = passing[np.argsort(-row[passing])][:limit]
            found.append([(self.names[i], float(row[i])) for i in best])
        return found


def _sentence_texts_and_polarities(
    row: pd.Series, max_sentences: int, record_polarity: str
) -> tuple[list[str], list[str]]:
    given = row.get("sentences")
    if isinstance(given, list | tuple) and given:
        items = [item for item in given if isinstance(item, dict)]
        texts = [str(item.get("text") or "") for item in items]
        polarities = [normalize_polarity(item.get("sentiment")) for item in items]
    else:
        text, lang = row.get("text"), row.get("lang")
        texts = (
            split_sentences(text, lang if isinstance(lang, str) else None)
            if isinstance(text, str)
            else []
        )
        polarities = [record_polarity] * len(texts)
    kept = [pair for pair in zip(texts, polarities, strict=True) if pair[0].strip()]
    return [text for text, _ in kept[:max_sentences]], [p for _, p in kept[:max_sentences]]


def record_aspects(
    batch: pd.DataFrame,
    detector: AspectDetector,
    doc_features: np.ndarray,
    embed_sentences: Callable[[list[str]], np.ndarray],
) -> list[list[dict[str, Any]]]:
    """Aspects of every record: union of its sentences' aspects and the whole record's.

    Args:
        batch: Records with ``text`` and ``lang``; optional ``sentences`` (sentiment stage:
            ``[{text, sentiment, ...}]``), sentence features of the heads' layers in the column
            ``embedding_columns(layers)`` names (arrays aligned with ``sentences``) and
            ``sentiment`` (record label).
        detector: The aspect detector.
        doc_features: (len(batch), dim) record features of the heads' layers.
        embed_sentences: Embeds sentence texts (cache-backed) for multi-sentence records
            without sentence features.

    Returns:
        Per record, ``[{aspect, polarity, score, evidence}]`` best first, where ``evidence`` is
        the sentence that scored highest (None when only the whole record did); a record with
        no aspect gets ``[{aspect: "other", ...}]`` with score 1 - its best probability.
    """
    record_polarity = (
        [normalize_polarity(value) for value in batch["sentiment"]]
        if "sentiment" in batch.columns
        else ["neutral"] * len(batch)
    )
    sentences = [
        _sentence_texts_and_polarities(
            row, detector.config.max_sentences_per_record, record_polarity[index]
        )
        for index, (_, row) in enumerate(batch.iterrows())
    ]
    sentence_column = embedding_columns(detector.heads.encoder_layers)[1]
    given = list(batch[sentence_column]) if sentence_column in batch.columns else None
    # Single-sentence records are scored through their record embedding only.
    blocks: list[np.ndarray | None] = []
    to_embed: list[str] = []
    for index, (texts, _) in enumerate(sentences):
        vectors = given[index] if given is not None else None
        if len(texts) <= 1:
            blocks.append(np.zeros((0, doc_features.shape[1]), dtype=np.float32))
        elif isinstance(vectors, list | tuple | np.ndarray) and len(vectors) >= len(texts):
            blocks.append(np.asarray(list(vectors)[: len(texts)], dtype=np.float32))
        else:
            blocks.append(None)
            to_embed.extend(texts)
    embedded = embed_sentences(to_embed) if to_embed else None
    offset = 0
    for index, (texts, _) in enumerate(sentences):
        if blocks[index] is None and embedded is not None:
            blocks[index] = embedded[offset : offset + len(texts)]
            offset += len(texts)
    stacked = np.concatenate([doc_features, *[b for b in blocks if b is not None]], axis=0)
    stacked_texts = [text if isinstance(text, str) else "" for text in batch["text"]]
    record_langs = [
        lang if isinstance(lang, str) else None
        for lang in (batch["lang"] if "lang" in batch.columns else [None] * len(batch))
    ]
    stacked_langs = list(record_langs)
    for index, (texts, _) in enumerate(sentences):
        stacked_texts.extend(texts[: len(blocks[index])])  # type: ignore[arg-type]
        stacked_langs.extend([record_langs[index]] * len(blocks[index]))  # type: ignore[arg-type]
    probabilities = detector.probabilities(stacked, stacked_texts, stacked_langs)
    detected = detector.detect(probabilities)
    results: list[list[dict[str, Any]]] = []
    position = len(batch)
    for index, (texts, polarities) in enumerate(sentences):
        single = len(texts) == 1
        candidates: list[dict[str, Any]] = [
            {
                "aspect": aspect,
                "polarity": polarities[0] if single else record_polarity[index],
                "score": round(score, 4),
                "evidence": texts[0] if single else None,
            }
            for aspect, score in detected[index]
        ]
        for offset_in_record in range(len(blocks[index])):  # type: ignore[arg-type]
            candidates.extend(
                {
                    "aspect": aspect,
                    "polarity": polarities[offset_in_record],
                    "score": round(score, 4),
                    "evidence": texts[offset_in_record],
                }
                for aspect, score in detected[position + offset_in_record]
            )
        position += len(blocks[index])  # type: ignore[arg-type]
        best: dict[str, dict[str, Any]] = {}
        for candidate in candidates:
            current = best.get(candidate["aspect"])
            if current is None or (candidate["score"], candidate["evidence"] is not None) > (
                current["score"],
                current["evidence"] is not None,
            ):
                best[candidate["aspect"]] = candidate
        if best:
            results.append(sorted(best.values(), key=lambda item: -item["score"]))
            continue
        top = float(probabilities[index].max()) if probabilities.shape[1] else 0.0
        results.append(
            [
                {
                    "aspect": OTHER_ASPECT,
                    "polarity": record_polarity[index],
                    "score": round(1.0 - top, 4),
                    "evidence": None,
                }
            ]
        )
    return results


class AspectStage(Stage):
    """Adds ``aspects`` ([{aspect, polarity, score, evidence}]) and stores the ``aspects`` table.

    Args:
        config_dir: Folder with ``aspects.yaml`` (None: default resolution).
        heads_dir: Folder with the trained heads (None: ``models/heads``).
        embedder: Provider of the heads' features (its ``layers`` must be the heads'
            ``encoder_layers``); None builds one over the run's store (cache) that loads the
            encoder only if some text is not cached.
        phrase_cache: Folder caching the example phrases' embeddings between runs; None: the
            default (see :func:`cached_phrase_vectors`).
    """

    name = "aspects"
    per_record = True

    def __init__(
        self,
        config_dir: str | os.PathLike[str] | None = None,
        heads_dir: str | os.PathLike[str] | None = None,
        embedder: TextEmbedder | None = None,
        phrase_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = load_aspect_config(config_dir)
        self.heads = AspectHeads.load(heads_dir)
        if embedder is not None and embedder.layers != self.heads.encoder_layers:
            raise ModelError(
                f"the aspect heads read encoder layers {self.heads.encoder_layers} but the "
                f"embedder gives {embedder.layers}; pass "
                "TextEmbedder(layers=AspectHeads.load().encoder_layers)"
            )
        self.embedder = embedder
        self._phrase_cache = Path(phrase_cache) if phrase_cache is not None else None
        self._detector: AspectDetector | None = None

    @property
    def version(self) -> str:
        """Heads version + taxonomy fingerprint."""
        return f"aspects-{self.heads.version}-{self.config.fingerprint()}"

    def detector(self, embedder: TextEmbedder) -> AspectDetector:
        """The detector, built on first use (example phrase features from the disk cache).

        Args:
            embedder: Provider of the heads' features for the example phrases.

        Returns:
            The detector.
        """
        if self._detector is None:
            groups = [tuple(aspect.example_phrases) for aspect in self.config.detectable]
            vectors = cached_phrase_vectors(groups, embedder, self._phrase_cache)
            vectors_of = dict(zip(groups, vectors, strict=True))
            self._detector = AspectDetector(
                self.config,
                self.heads,
                lambda texts: vectors_of[tuple(texts)],
                embedder.encoder_version,
            )
        return self._detector

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Add the ``aspects`` column (see :func:`record_aspects`).

        Args:
            batch: Records (``id``, ``text``, ``lang``; optional sentiment columns and the
                heads' features, see :func:`record_aspects`).
            context: Run context; its store caches features.

        Returns:
            The batch with ``aspects``.
        """
        result = batch.copy()
        if result.empty:
            result["aspects"] = pd.Series([], dtype=object)
            return result
        embedder = self.embedder or TextEmbedder(
            store=context.store, layers=self.heads.encoder_layers
        )
        detector = self.detector(embedder)
        doc_features = embedder.batch_embeddings(result)
        result["aspects"] = record_aspects(result, detector, doc_features, embedder.embed)
        return result

    def save(self, batch: pd.DataFrame, context: StageContext) -> int:
        """Upsert one ``aspects`` row per (record, aspect).

        Args:
            batch: Output of :meth:`run`.
            context: Run context.

        Returns:
            Rows written.
        """
        if "aspects" not in batch.columns:
            return 0
        now = datetime.now(UTC)
        rows = [
            {
                "record_id": record_id,
                "aspect": item["aspect"],
                "model_version": self.version,
                "polarity": item["polarity"],
                "score": float(item["score"]),
                "run_id": context.run_id,
                "created_at": now,
            }
            for record_id, items in zip(batch["id"], batch["aspects"], strict=True)
            if isinstance(items, list)
            for item in items
        ]
        context.store.upsert(schema.aspects, rows)
        return len(rows)

    def restore(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Add the stored ``aspects`` (``evidence`` is not stored: None; see ``Stage.restore``).

        Args:
            batch: Records (``id``).
            context: Run context.

        Returns:
            The batch with ``aspects``, highest score first.
        """
        result = batch.copy()
        ids = [str(record_id) for record_id in result["id"]]
        rows = stored_version_rows(stored_aspects(context.store, ids), self.version)
        found: dict[str, list[dict[str, Any]]] = {}
        for row in rows.sort_values(["score", "aspect"], ascending=[False, True]).itertuples():
            found.setdefault(row.record_id, []).append(
                {
                    "aspect": row.aspect,
                    "polarity": row.polarity,
                    "score": float(row.score),
                    "evidence": None,
                }
            )
        result["aspects"] = [found.get(record_id, []) for record_id in ids]
        return result
