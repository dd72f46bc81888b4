"""Sentiment stage: document- and sentence-level negative/neutral/positive probabilities.

The model behind it is a pluggable :class:`SentimentBackend` chosen in ``configs/sentiment.yaml``:

* ``e5_head`` (default): our multilingual-e5-small encoder plus the small trained head in
  ``models/heads/``, or the head promoted in the store's model registry when there is one
  (``feedback train sentiment --db``, ``feedback models``); document embeddings are cached in the
  store's ``embeddings`` table and handed to later stages in the ``embedding`` column.
* ``hf_sequence_classification``: any local Hugging Face sequence-classification folder, with
  the mapping of its labels to ours in the config; loaded with ``local_files_only=True``.

Columns added by :meth:`SentimentStage.run`: ``sentiment`` (label), ``sentiment_scores``
(``{negative, neutral, positive}`` summing to 1), ``sentences`` (``[{text, sentiment,
sentiment_scores}]``), ``model_version``, and with the e5 backend ``embedding`` (document vector)
and ``sentence_embeddings`` (one vector per entry of ``sentences``); when the head reads several
encoder layers, their features too, in the columns ``embedding_columns(layers)`` names (the
aspects stage reads them instead of encoding again).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines._errors import ModelError
from pipelines.analysis._embedding_lookup import (
    TextEmbedder,
    e5_embeddings,
    embedding_columns,
    shared_encoder,
)
from pipelines.config import config_path, load_yaml_model
from pipelines.stages import Stage, StageContext, stored_version_rows
from pipelines.storage import schema, stored_sentiment_rows
from pipelines.text import split_sentences

if TYPE_CHECKING:
    from models.encoder import Encoder
    from models.sentiment import SentimentHead, StackedSentiment
    from pipelines.storage import Store

__all__ = [
    "LABELS",
    "E5HeadBackend",
    "HFSequenceClassificationBackend",
    "SentimentBackend",
    "SentimentConfig",
    "SentimentStage",
    "build_backend",
    "load_sentiment_config",
]

LABELS: tuple[str, str, str] = ("negative", "neutral", "positive")
Label = Literal["negative", "neutral", "positive"]
_REPO_ROOT = Path(__file__).resolve().parents[2]
_HASHED_PREFIX_BYTES = 1 << 20


def _repo_path(path: Path) -> Path:
    return path if path.is_absolute() else _REPO_ROOT / path


class E5HeadSettings(BaseModel):
    """The ``e5_head`` backend: encoder + trained head."""

    model_config = ConfigDict(extra="forbid")

    head: Path = Field(Path("models/heads/sentiment-e5.json"), description="relative to repo")
    stack: Path | None = Field(
        None,
        description="sentiment-stack.json blending the head with per-language n-gram models "
        "(relative to repo); it names its own head, which must be ``head``",
    )
    encoder_path: Path | None = Field(None, description="None: the converted default encoder")
    encoder_dtype: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    engine: Literal["auto", "torch", "openvino"] = Field(
        "auto", description="auto: the fastest engine faithful to fp32 on this CPU"
    )
    batch_size: int | None = Field(None, ge=1, description="None: the engine's tuned size")

    @model_validator(mode="after")
    def _engine_supports_dtype(self) -> E5HeadSettings:
        if self.engine == "openvino" and self.encoder_dtype == "int8":
            raise ValueError("engine openvino has no int8 mode; use encoder_dtype auto/fp32/bf16")
        return self

    @property
    def head_path(self) -> Path:
        """The committed head's path, resolved against the repository root."""
        return _repo_path(self.head)

    @property
    def stack_path(self) -> Path | None:
        """The committed stack's path, resolved against the repository root (None: no stack)."""
        return _repo_path(self.stack) if self.stack else None


class HFSettings(BaseModel):
    """The ``hf_sequence_classification`` backend: a local HF folder."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    labels: dict[str, Label] = Field(
        description="model label name (its config id2label) -> negative|neutral|positive"
    )
    max_length: int = Field(256, ge=8)
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _covers_both_sides(self) -> HFSettings:
        missing = {"negative", "positive"} - set(self.labels.values())
        if missing:
            raise ValueError(f"labels must map some model label to {sorted(missing)}")
        return self


class SentencesSettings(BaseModel):
    """Sentence-level scoring."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_per_document: int = Field(64, ge=1, description="longer texts: first N sentences")


class SentimentConfig(BaseModel):
    """``configs/sentiment.yaml``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["e5_head", "hf_sequence_classification"] = "e5_head"
    e5_head: E5HeadSettings = Field(default_factory=E5HeadSettings)
    hf_sequence_classification: HFSettings | None = None
    sentences: SentencesSettings = Field(default_factory=SentencesSettings)

    @model_validator(mode="after")
    def _backend_configured(self) -> SentimentConfig:
        if self.backend == "hf_sequence_classification" and self.hf_sequence_classification is None:
            raise ValueError(
                "backend hf_sequence_classification needs a hf_sequence_classification section "
                "with path and labels"
            )
        return self


def load_sentiment_config(config_dir: str | os.PathLike[str] | None = None) -> SentimentConfig:
    """Load ``sentiment.yaml``.

    Args:
        config_dir: Folder with the YAML files; None uses ``$FEEDBACK_CONFIG_DIR`` or the defaults.

    Returns:
        The validated configuration.
    """
    return load_yaml_model(config_path("sentiment.yaml", config_dir), SentimentConfig)


class SentimentBackend(ABC):
    """A model giving negative/neutral/positive probabilities for texts."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def version(self) -> str:
        """Model version, stored with every prediction."""

    @property
    def feature_layers(self) -> tuple[int, ...] | None:
        """Encoder layers of the vectors :meth:`predict_documents_and_sentences` returns when
        they are more than the E5 embedding (which is then their last block); None: the vectors,
        if any, are E5 embeddings."""
        return None

    @abstractmethod
    def predict_proba(self, texts: Sequence[str], langs: Sequence[str | None]) -> np.ndarray:
        """Probabilities of ``texts``.

        Args:
            texts: Analysis texts.
            langs: Their language codes (None when unknown); backends may ignore them.

        Returns:
            ``(N, 3)`` float array in the order negative, neutral, positive; rows sum to 1.
        """

    def predict_documents(
        self, texts: Sequence[str], langs: Sequence[str | None], store: Store | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Document probabilities plus document embeddings where the backend has them.

        Args:
            texts: Analysis texts.
            langs: Their language codes.
            store: Store for caching document embeddings; None disables caching.

        Returns:
            ``(probabilities (N, 3), embeddings (N, D) or None)``.
        """
        return self.predict_proba(texts, langs), None

    def predict_with_embeddings(
        self, texts: Sequence[str], langs: Sequence[str | None]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities plus embeddings (when the backend has them), without caching.

        Args:
            texts: Analysis texts (e.g. sentences).
            langs: Their language codes.

        Returns:
            ``(probabilities (N, 3), embeddings (N, D) or None)``.
        """
        return self.predict_proba(texts, langs), None

    def predict_documents_and_sentences(
        self,
        texts: Sequence[str],
        langs: Sequence[str | None],
        store: Store | None,
        sentences: Sequence[str],
        sentence_langs: Sequence[str | None],
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """Documents (as :meth:`predict_documents`) and sentences (as
        :meth:`predict_with_embeddings`) together; backends may share one encoder pass.

        Args:
            texts: Analysis texts.
            langs: Their language codes.
            store: Store for caching document embeddings; None disables caching.
            sentences: Sentences to score (not cached).
            sentence_langs: Their language codes.

        Returns:
            ``(document probabilities, document vectors or None, sentence probabilities,
            sentence vectors or None)``; vectors are E5 embeddings, or the features of
            :attr:`feature_layers` when it is set.
        """
        doc_proba, doc_vectors = self.predict_documents(texts, langs, store)
        if not sentences:
            return doc_proba, doc_vectors, np.zeros((0, 3)), None
        return (doc_proba, doc_vectors, *self.predict_with_embeddings(sentences, sentence_langs))


class E5HeadBackend(SentimentBackend):
    """Our e5 encoder plus a trained head.

    Args:
        encoder: The loaded encoder.
        head: The trained head (its ``encoder_version`` must match the encoder).
        batch_size: Encoder batch size; None: the engine's tuned size.
        stack: Optional stacked model over ``head`` (per-language n-gram blend and decision
            shifts); its version is then the model version.

    Raises:
        ModelError: The head was trained on another encoder version, or the stack was fitted
            on another head.
    """

    kind = "e5_head"

    def __init__(
        self,
        encoder: Encoder,
        head: SentimentHead,
        batch_size: int | None = None,
        stack: StackedSentiment | None = None,
    ) -> None:
        if stack is not None and stack.head.version != head.version:
            raise ModelError(
                f"sentiment stack {stack.version} blends head {stack.head.version}, but the "
                f"configured head is {head.version}; point e5_head.head at the stack's head or "
                "rebuild the stack with `python -m models.sentiment.stack`"
            )
        if head.metadata.encoder_version != encoder.version:
            raise ModelError(
                f"sentiment head {head.version} was trained on encoder "
                f"{head.metadata.encoder_version}, but the encoder is {encoder.version}; "
                "retrain it with `feedback train sentiment`"
            )
        self.encoder = encoder
        self.head = head
        self.batch_size = batch_size
        self.stack = stack
        self.committed_head = head
        self.committed_stack = stack

    def use_store_model(self, store: Store) -> None:
        """Use the model promoted in ``store`` (``feedback models``), else the committed one.

        A promoted model is a head alone or a stack over its own head (``feedback train
        sentiment --db`` trains a stack when the model in use is one).

        Args:
            store: The database whose registry to read.

        Raises:
            ModelError: The promoted model was trained on another encoder version.
        """
        from models.sentiment import StackedSentiment
        from models.sentiment.store_models import MODEL_KIND, model_from_artifact, model_head
        from pipelines.storage import model_artifact, promoted_model

        promoted = promoted_model(store, MODEL_KIND)
        if promoted is None:
            self.head = self.committed_head
            self.stack = self.committed_stack
        elif promoted.version != self.version:
            model = model_from_artifact(model_artifact(store, promoted.version))
            head = model_head(model)
            if head.metadata.encoder_version != self.encoder.version:
                raise ModelError(
                    f"promoted sentiment model {model.version} was trained on encoder "
                    f"{head.metadata.encoder_version}, but the encoder is {self.encoder.version}; "
                    "run `feedback models rollback` or train a new one with "
                    "`feedback train sentiment --db`"
                )
            self.head = head
            self.stack = model if isinstance(model, StackedSentiment) else None

    @classmethod
    def from_settings(cls, settings: E5HeadSettings) -> E5HeadBackend:
        """Load the encoder and head named in the config.

        Args:
            settings: The ``e5_head`` section.

        Returns:
            The backend.
        """
        from models.sentiment import SentimentHead, StackedSentiment

        head = SentimentHead.load(settings.head_path)
        stack = StackedSentiment.load(settings.stack_path) if settings.stack_path else None
        encoder = shared_encoder(settings.encoder_path, settings.encoder_dtype, settings.engine)
        return cls(encoder, head, settings.batch_size, stack)

    @property
    def version(self) -> str:
        """The stack's version when there is one, else the head's (both pin the encoder)."""
        return self.stack.version if self.stack is not None else self.head.version

    @property
    def feature_layers(self) -> tuple[int, ...] | None:
        """The head's encoder layers when it reads more than the last one."""
        layers = tuple(self.head.metadata.encoder_layers)
        return layers if len(layers) > 1 else None

    def scores(
        self, features: np.ndarray, texts: Sequence[str], langs: Sequence[str | None]
    ) -> np.ndarray:
        """Probabilities from encoder features: the head's, or the stack's blend.

        Args:
            features: ``(N, input_dim)`` features of ``texts``.
            texts: The analysis texts.
            langs: Their language codes.

        Returns:
            ``(N, 3)`` probabilities.
        """
        if self.stack is None:
            return self.head.predict_proba(features)
        return self.stack.predict_proba(features, texts, langs)

    def predict_proba(self, texts: Sequence[str], langs: Sequence[str | None]) -> np.ndarray:
        """See :meth:`SentimentBackend.predict_proba`."""
        return self.predict_with_embeddings(texts, langs)[0]

    def predict_with_embeddings(
        self, texts: Sequence[str], langs: Sequence[str | None]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """See :meth:`SentimentBackend.predict_with_embeddings`."""
        features = self.encoder.encode(
            list(texts),
            kind="passage",
            batch_size=self.batch_size,
            layers=self.head.metadata.encoder_layers,
        )
        # The last block is the last layer's pooled vector: the E5 embedding.
        return self.scores(features, texts, langs), features[:, -self.encoder.dim :]

    def predict_documents(
        self, texts: Sequence[str], langs: Sequence[str | None], store: Store | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """See :meth:`SentimentBackend.predict_documents`; vectors cached in ``store``.

        A head over several layers reads features cached under their own key; the E5
        embedding (their last block) is cached too, for the stages after this one.
        """
        embedder = TextEmbedder(self.encoder, store)
        layers = self.head.metadata.encoder_layers
        if len(layers) == 1:  # the last layer alone (the head validates it ends with it)
            vectors = embedder.embed(list(texts))
            return self.scores(vectors, texts, langs), vectors
        features = TextEmbedder(self.encoder, store, layers).embed(list(texts))
        vectors = features[:, -self.encoder.dim :]
        embedder.remember(list(texts), vectors)
        return self.scores(features, texts, langs), vectors

    def predict_documents_and_sentences(
        self,
        texts: Sequence[str],
        langs: Sequence[str | None],
        store: Store | None,
        sentences: Sequence[str],
        sentence_langs: Sequence[str | None],
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """See :meth:`SentimentBackend.predict_documents_and_sentences`: ONE encoder pass.

        The documents not cached in ``store`` and the distinct sentences are encoded in a
        single length-sorted ``encode`` call (same vectors as two calls, fewer half-empty
        batches); document features are cached exactly as :meth:`predict_documents` does. The
        vectors returned are the head's features (E5 embeddings for a last-layer head).
        """
        layers = self.head.metadata.encoder_layers
        single = len(layers) == 1  # the last layer alone: features are the E5 embeddings
        features, sentence_features = TextEmbedder(
            self.encoder, store, None if single else layers
        ).embed_with(list(texts), list(sentences), self.batch_size)
        vectors = features[:, -self.encoder.dim :]
        if not single:
            TextEmbedder(self.encoder, store).remember(list(texts), vectors)
        if not sentences:
            return self.scores(features, texts, langs), features, np.zeros((0, 3)), None
        return (
            self.scores(features, texts, langs),
            features,
            self.scores(sentence_features, sentences, sentence_langs),
            sentence_features,
        )


class HFSequenceClassificationBackend(SentimentBackend):
    """Any local Hugging Face sequence-classification model.

    Args:
        settings: Folder, label mapping, truncation length and batch size.

    Raises:
        ModelError: The folder cannot be loaded or a model label has no mapping.
    """

    kind = "hf_sequence_classification"

    def __init__(self, settings: HFSettings) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        folder = _repo_path(settings.path)
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"{folder} is not a Hugging Face model folder (no config.json); fix "
                "hf_sequence_classification.path in sentiment.yaml"
            )
        progress_bar_was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                folder, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the sentiment model in {folder}: {exc}") from exc
        finally:
            if progress_bar_was_enabled:
                hf_logging.enable_progress_bar()
        self.model.eval()
        self._torch = torch
        self.settings = settings
        id2label = {int(index): str(name) for index, name in self.model.config.id2label.items()}
        unmapped = sorted(name for name in id2label.values() if name not in settings.labels)
        if unmapped:
            raise ModelError(
                f"model labels {unmapped} of {folder} have no mapping; add them to "
                f"hf_sequence_classification.labels in sentiment.yaml (model labels: "
                f"{sorted(id2label.values())})"
            )
        # Column j of the model's output adds to our class target[j].
        self._targets = np.array(
            [LABELS.index(settings.labels[id2label[index]]) for index in range(len(id2label))]
        )
        self._version = f"hf-{folder.name}-{_folder_digest(folder)}"

    @property
    def version(self) -> str:
        """``hf-<folder name>-<digest of config and weights>``."""
        return self._version

    def predict_proba(self, texts: Sequence[str], langs: Sequence[str | None]) -> np.ndarray:
        """See :meth:`SentimentBackend.predict_proba`."""
        torch = self._torch
        result = np.zeros((len(texts), 3), dtype=np.float64)
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        size = self.settings.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), size):
                rows = order[start : start + size]
                inputs = self.tokenizer(
                    [texts[index] for index in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.settings.max_length,
                    return_tensors="pt",
                )
                proba = torch.softmax(self.model(**inputs).logits.float(), dim=-1).numpy()
                mapped = np.zeros((len(rows), 3), dtype=np.float64)
                for column, target in enumerate(self._targets):
                    mapped[:, target] += proba[:, column]
                result[rows] = mapped
        return result


def _folder_digest(folder: Path) -> str:
    """Digest of a model folder: config files in full, weight files by size and first MiB."""
    digest = hashlib.sha256()
    for file in sorted(path for path in folder.iterdir() if path.is_file()):
        digest.update(file.name.encode())
        if file.suffix in {".json", ".txt", ".model"}:
            digest.update(file.read_bytes())
        else:
            digest.update(str(file.stat().st_size).encode())
            with file.open("rb") as stream:
                digest.update(stream.read(_HASHED_PREFIX_BYTES))
    return digest.hexdigest()[:10]


def build_backend(config: SentimentConfig) -> SentimentBackend:
    """Instantiate the backend the config chooses.

    Args:
        config: The validated ``sentiment.yaml``.

    Returns:
        The loaded backend.
    """
    if config.backend == "hf_sequence_classification":
        assert config.hf_sequence_classification is not None  # ensured by validation
        return HFSequenceClassificationBackend(config.hf_sequence_classification)
    return E5HeadBackend.from_settings(config.e5_head)


def _scores(row: np.ndarray) -> dict[str, float]:
    return {label: float(value) for label, value in zip(LABELS, row, strict=True)}


def _present_lang(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class SentimentStage(Stage):
    """Document- and sentence-level sentiment.

    Args:
        backend: The model.
        sentences: Sentence-level settings.
    """

    name = "sentiment"
    per_record = True

    def __init__(
        self, backend: SentimentBackend, sentences: SentencesSettings | None = None
    ) -> None:
        self.backend = backend
        self.sentences = sentences or SentencesSettings()

    @classmethod
    def from_config(cls, config_dir: str | os.PathLike[str] | None = None) -> SentimentStage:
        """Build the stage from ``sentiment.yaml``.

        Args:
            config_dir: Folder with the YAML files.

        Returns:
            The stage with its backend loaded.
        """
        config = load_sentiment_config(config_dir)
        return cls(build_backend(config), config.sentences)

    @property
    def version(self) -> str:
        """The backend's model version."""
        return self.backend.version

    def prepare(self, context: StageContext) -> None:
        """Take the sentiment head promoted in the run's store, if any (before cache keys).

        Args:
            context: Its store holds the model registry.
        """
        self._use_store_model(context)

    def _use_store_model(self, context: StageContext) -> None:
        if isinstance(self.backend, E5HeadBackend):
            self.backend.use_store_model(context.store)

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Add the sentiment columns (see the module docstring).

        Args:
            batch: Records with ``text`` and optionally ``lang``.
            context: Its store caches document embeddings unless
                ``context.options["cache_embeddings"]`` is False.

        Returns:
            The batch with the sentiment columns.
        """
        self._use_store_model(context)
        result = batch.copy()
        texts = ["" if pd.isna(text) else str(text) for text in result["text"]]
        langs = (
            [_present_lang(lang) for lang in result["lang"]]
            if "lang" in result.columns
            else [None] * len(texts)
        )
        store = context.store if context.options.get("cache_embeddings", True) else None
        pieces, pending = self._pending_sentences(texts, langs)
        if texts:
            doc_proba, doc_vectors, proba, vectors = self.backend.predict_documents_and_sentences(
                texts,
                langs,
                store,
                [sentence for _, sentence in pending],
                [langs[index] for index, _ in pending],
            )
        else:
            doc_proba, doc_vectors, proba, vectors = np.zeros((0, 3)), None, np.zeros((0, 3)), None
        sentences, sentence_vectors = self._sentences(
            texts, pieces, pending, (doc_proba, doc_vectors), (proba, vectors)
        )
        result["sentiment"] = [LABELS[int(index)] for index in doc_proba.argmax(axis=1)]
        result["sentiment_scores"] = [_scores(row) for row in doc_proba]
        result["sentences"] = sentences
        result["model_version"] = self.version
        if doc_vectors is not None:
            for column, values in _vector_columns(
                self.backend.feature_layers, doc_vectors, sentence_vectors
            ).items():
                result[column] = values
        return result

    def _pending_sentences(
        self, texts: list[str], langs: list[str | None]
    ) -> tuple[list[list[str]] | None, list[tuple[int, str]]]:
        """Each document's sentences (None when disabled) and the ``(document, sentence)``
        pairs to score; a document that is one sentence reuses its document prediction."""
        if not self.sentences.enabled:
            return None, []
        pieces = [
            split_sentences(text, lang)[: self.sentences.max_per_document]
            for text, lang in zip(texts, langs, strict=True)
        ]
        pending = [
            (index, sentence)
            for index, document in enumerate(pieces)
            if not (len(document) == 1 and document[0] == texts[index])
            for sentence in document
        ]
        return pieces, pending

    def _sentences(
        self,
        texts: list[str],
        pieces: list[list[str]] | None,
        pending: list[tuple[int, str]],
        documents: tuple[np.ndarray, np.ndarray | None],
        predicted: tuple[np.ndarray, np.ndarray | None],
    ) -> tuple[list[list[dict[str, Any]]], list[np.ndarray | None]]:
        """Per document its scored sentences (and their vectors)."""
        if pieces is None:
            empty: list[list[dict[str, Any]]] = [[] for _ in texts]
            return empty, [None] * len(texts)
        (doc_proba, doc_vectors), (proba, vectors) = documents, predicted
        scored: list[list[dict[str, Any]]] = [[] for _ in texts]
        sentence_vectors: list[list[np.ndarray]] = [[] for _ in texts]
        for position, (index, sentence) in enumerate(pending):
            scored[index].append(_sentence_entry(sentence, proba[position]))
            if vectors is not None:
                sentence_vectors[index].append(vectors[position])
        for index, document in enumerate(pieces):
            if len(document) == 1 and document[0] == texts[index]:
                scored[index] = [_sentence_entry(document[0], doc_proba[index])]
                if doc_vectors is not None:
                    sentence_vectors[index] = [doc_vectors[index]]
        stacked = [np.stack(vectors) if vectors else None for vectors in sentence_vectors]
        return scored, stacked

    def save(self, batch: pd.DataFrame, context: StageContext) -> int:
        """Upsert one ``sentiment`` row per record, with the model version.

        Args:
            batch: Output of :meth:`run` (needs ``id``).
            context: Run context.

        Returns:
            Rows written.
        """
        if "sentiment" not in batch.columns or batch.empty:
            return 0
        now = datetime.now(UTC)
        rows = [
            {
                "record_id": record_id,
                "model_version": self.version,
                "label": label,
                "negative": scores["negative"],
                "neutral": scores["neutral"],
                "positive": scores["positive"],
                "sentences": sentences,
                "run_id": context.run_id,
                "created_at": now,
            }
            for record_id, label, scores, sentences in zip(
                batch["id"],
                batch["sentiment"],
                batch["sentiment_scores"],
                batch["sentences"],
                strict=True,
            )
        ]
        context.store.upsert(schema.sentiment, rows)
        return len(rows)

    def restore(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Add the stored ``sentiment``, ``sentiment_scores``, ``sentences`` and
        ``model_version`` (see ``Stage.restore``; embeddings are not restored).

        Args:
            batch: Records (``id``).
            context: Run context.

        Returns:
            The batch with the sentiment columns.
        """
        result = batch.copy()
        ids = [str(record_id) for record_id in result["id"]]
        rows = stored_version_rows(stored_sentiment_rows(context.store, ids), self.version)
        by_id = {row["record_id"]: row for row in rows.to_dict("records")}
        found = [by_id.get(record_id) for record_id in ids]
        result["sentiment"] = [row["label"] if row else None for row in found]
        result["sentiment_scores"] = [
            {label: float(row[label]) for label in LABELS} if row else None for row in found
        ]
        result["sentences"] = [(row["sentences"] or []) if row else [] for row in found]
        result["model_version"] = [row["model_version"] if row else None for row in found]
        return result


def _vector_columns(
    layers: tuple[int, ...] | None,
    doc_vectors: np.ndarray,
    sentence_vectors: list[np.ndarray | None],
) -> dict[str, list[Any]]:
    """The batch's vector columns: E5 embeddings, plus the layer features they came from."""
    doc_column, sentence_column = embedding_columns()
    if layers is None:
        return {doc_column: list(doc_vectors), sentence_column: sentence_vectors}
    doc_features, sentence_features = embedding_columns(layers)
    return {
        doc_column: list(e5_embeddings(doc_vectors)),
        sentence_column: [
            None if block is None else e5_embeddings(block) for block in sentence_vectors
        ],
        doc_features: list(doc_vectors),
        sentence_features: sentence_vectors,
    }


def _sentence_entry(text: str, proba: np.ndarray) -> dict[str, Any]:
    return {
        "text": text,
        "sentiment": LABELS[int(np.argmax(proba))],
        "sentiment_scores": _scores(proba),
    }
