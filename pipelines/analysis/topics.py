"""Discovered topics with stable ids: fit on a window, assign nightly, refit on schedule.

Fitting follows BERTopic's recipe on our precomputed embeddings: PCA as the dimensionality
reduction and k-means as the clustering (UMAP + HDBSCAN cost minutes on 20,000 records on two
cores and are not deterministic; see models/cards/topics.md for the measurements), and
BERTopic's class-based TF-IDF over spaCy-tokenised, stop-word-filtered text
(``pipelines.text.tokens``) for keywords. Before
clustering every embedding has its language's mean removed, so topics group what is said
rather than the language it is said in.

Stability: a fitted model is a set of unit centroids (in that centred space) with ids. New
records go to the nearest centroid, or to ``-1`` (unassigned) when less similar than the
model's outlier threshold. A refit matches new centroids to the previous model's with the
Hungarian algorithm on cosine similarity; matched topics keep their id, others get fresh ids.
Human labels live in ``topic_labels`` keyed by id, so they survive refits. Models are stored
in ``topic_models`` as JSON + safetensors (never pickle).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from pipelines._errors import ModelError
from pipelines.analysis._embedding_lookup import TextEmbedder
from pipelines.analysis.aspects import normalize_polarity
from pipelines.config import config_path, load_yaml_model
from pipelines.stages import Stage, StageContext, stored_version_rows
from pipelines.storage import (
    Store,
    latest_topic_model_row,
    schema,
    stored_topic_rows,
    topic_exists,
    topic_label_map,
    topic_members,
    window_records,
)
from pipelines.text import SupportedLanguage, tokens

__all__ = [
    "TOPICS_CONFIG",
    "UNASSIGNED",
    "TopicModel",
    "TopicSettings",
    "TopicStage",
    "TopicsConfig",
    "TrendSettings",
    "class_keywords",
    "fit_topic_model",
    "latest_topic_model",
    "list_topics",
    "load_topics_config",
    "rename_topic",
    "save_topic_model",
    "topic_labels",
]

TOPICS_CONFIG = "topics.yaml"
UNASSIGNED = -1
UNASSIGNED_LABEL = "unassigned"
_GLOBAL = "*"
_KMEANS_SEED = 13


class TopicSettings(BaseModel):
    """``topics`` section of ``configs/topics.yaml`` (see the comments there)."""

    model_config = ConfigDict(extra="forbid")

    window_days: int = Field(default=28, ge=1)
    refit_every_days: int = Field(default=7, ge=1)
    min_records_to_fit: int = Field(default=30, ge=2)
    max_fit_records: int = Field(default=10_000, ge=2)
    records_per_topic: int = Field(default=150, ge=2)
    min_topics: int = Field(default=3, ge=1)
    max_topics: int = Field(default=60, ge=1)
    reduced_dimensions: int = Field(default=32, ge=2)
    outlier_quantile: float = Field(default=0.10, ge=0.0, lt=1.0)
    match_min_similarity: float = Field(default=0.5, gt=-1.0, le=1.0)
    keywords_per_topic: int = Field(default=8, ge=1)
    examples_per_topic: int = Field(default=3, ge=0)
    brand_names: list[str] = Field(default_factory=list)
    """Words never used as keywords or labels (the company's and its products' names): they
    are in every topic and tell nothing apart."""
    extra_stop_words: dict[SupportedLanguage, list[str]] = Field(default_factory=dict)
    """Language -> words added to spaCy's stop words for keywords (its Turkish list lacks
    ``bir``, the commonest Turkish word)."""


class TrendSettings(BaseModel):
    """``trends`` section of ``configs/topics.yaml`` (see the comments there)."""

    model_config = ConfigDict(extra="forbid")

    baseline_days: int = Field(default=14, ge=3)
    min_count: int = Field(default=8, ge=1)
    min_ratio: float = Field(default=2.0, ge=1.0)
    max_p_value: float = Field(default=0.001, gt=0.0, lt=1.0)
    emerging_max_baseline: float = Field(default=1.0, ge=0.0)


class TopicsConfig(BaseModel):
    """``configs/topics.yaml``."""

    model_config = ConfigDict(extra="forbid")

    topics: TopicSettings = Field(default_factory=TopicSettings)
    trends: TrendSettings = Field(default_factory=TrendSettings)


def load_topics_config(config_dir: str | os.PathLike[str] | None = None) -> TopicsConfig:
    """Load and validate ``topics.yaml``.

    Args:
        config_dir: Folder holding it (None: ``$FEEDBACK_CONFIG_DIR`` or ``configs/``).

    Returns:
        The configuration.

    Raises:
        ConfigError: Missing file or invalid key.
    """
    return load_yaml_model(config_path(TOPICS_CONFIG, config_dir), TopicsConfig)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass
class TopicModel:
    """A fitted topic model.

    Attributes:
        version: Unique version (fit time + encoder).
        encoder_version: Encoder whose embeddings it expects.
        fitted_at: When it was fitted.
        window_end: Latest record time of the fitting window (refit schedule reference).
        topic_ids: Stable id per centroid row.
        centroids: (k, dim) unit centroids in the language-centred space.
        language_means: Language -> mean embedding removed before comparing (``*``: fallback).
        min_similarity: Records less similar than this to every centroid are unassigned.
        keywords: Topic id -> keywords, best first.
        sizes: Topic id -> records of the window assigned to it.
        next_id: First id never used by this model or its predecessors.
    """

    version: str
    encoder_version: str
    fitted_at: datetime
    window_end: datetime
    topic_ids: np.ndarray
    centroids: np.ndarray
    language_means: dict[str, np.ndarray]
    min_similarity: float
    keywords: dict[int, list[str]]
    sizes: dict[int, int]
    next_id: int
    settings: dict[str, Any] = field(default_factory=dict)

    def centre(self, embeddings: np.ndarray, langs: list[str | None]) -> np.ndarray:
        """Remove each record's language mean and re-normalise.

        Args:
            embeddings: (N, dim) unit vectors.
            langs: Language per row (unknown languages use the overall mean).

        Returns:
            (N, dim) unit vectors in the model's space.
        """
        fallback = self.language_means[_GLOBAL]
        means = [self.language_means.get(lang or _GLOBAL, fallback) for lang in langs]
        return _unit(embeddings - np.asarray(means, dtype=np.float32).reshape(embeddings.shape))

    def transform(
        self, embeddings: np.ndarray, langs: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest topic of each record, or ``-1`` when no centroid is similar enough.

        Args:
            embeddings: (N, dim) unit vectors.
            langs: Language per row.

        Returns:
            ``(topic_ids, similarities)``, both of length N.
        """
        if embeddings.shape[0] == 0 or self.centroids.shape[0] == 0:
            count = embeddings.shape[0]
            return np.full(count, UNASSIGNED, dtype=np.int64), np.zeros(count, dtype=np.float32)
        similarities = self.centre(embeddings, langs) @ self.centroids.T
        nearest = similarities.argmax(axis=1)
        best = similarities[np.arange(len(nearest)), nearest]
        ids = np.where(best >= self.min_similarity, self.topic_ids[nearest], UNASSIGNED)
        return ids.astype(np.int64), best.astype(np.float32)

    def auto_label(self, topic_id: int) -> str:
        """Default label: the three best keywords.

        Args:
            topic_id: Stable id.

        Returns:
            ``"kw1 / kw2 / kw3"`` (or ``topic <id>`` without keywords; ``unassigned`` for -1).
        """
        if topic_id == UNASSIGNED:
            return UNASSIGNED_LABEL
        words = self.keywords.get(topic_id, [])[:3]
        return " / ".join(words) if words else f"topic {topic_id}"

    def to_row(self) -> dict[str, Any]:
        """The ``topic_models`` row: JSON metadata + safetensors arrays."""
        languages = sorted(self.language_means)
        arrays = {
            "topic_ids": self.topic_ids.astype(np.int64),
            "centroids": np.ascontiguousarray(self.centroids, dtype=np.float32),
            "language_means": np.stack([self.language_means[lang] for lang in languages]).astype(
                np.float32
            ),
        }
        meta = {
            "window_end": self.window_end.isoformat(),
            "languages": languages,
            "min_similarity": self.min_similarity,
            "keywords": {str(key): value for key, value in self.keywords.items()},
            "sizes": {str(key): value for key, value in self.sizes.items()},
            "next_id": self.next_id,
            "settings": self.settings,
        }
        return {
            "version": self.version,
            "encoder_version": self.encoder_version,
            "fitted_at": self.fitted_at,
            "meta": meta,
            "arrays": save_arrays(arrays),
        }

    @classmethod
    def from_row(cls, row: Any) -> TopicModel:
        """Rebuild a model from its ``topic_models`` row.

        Args:
            row: Mapping with the table's columns.

        Returns:
            The model.

        Raises:
            ModelError: The stored artifact is corrupt.
        """
        try:
            arrays = load_arrays(bytes(row["arrays"]))
            meta = row["meta"]
            fitted_at = row["fitted_at"]
            return cls(
                version=str(row["version"]),
                encoder_version=str(row["encoder_version"]),
                fitted_at=fitted_at if fitted_at.tzinfo else fitted_at.replace(tzinfo=UTC),
                window_end=datetime.fromisoformat(meta["window_end"]),
                topic_ids=arrays["topic_ids"].astype(np.int64),
                centroids=arrays["centroids"].astype(np.float32),
                language_means=dict(zip(meta["languages"], arrays["language_means"], strict=True)),
                min_similarity=float(meta["min_similarity"]),
                keywords={int(key): list(value) for key, value in meta["keywords"].items()},
                sizes={int(key): int(value) for key, value in meta["sizes"].items()},
                next_id=int(meta["next_id"]),
                settings=dict(meta.get("settings", {})),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(
                f"topic model {row['version']!r} in the store is corrupt ({exc}); delete its "
                "row from topic_models and run the pipeline again to refit."
            ) from exc


def _language_means(embeddings: np.ndarray, langs: list[str | None]) -> dict[str, np.ndarray]:
    means = {_GLOBAL: embeddings.mean(axis=0)}
    frame = pd.Series([lang or _GLOBAL for lang in langs])
    for lang, positions in frame.groupby(frame).indices.items():
        if lang != _GLOBAL:
            means[str(lang)] = embeddings[positions].mean(axis=0)
    return means


def _keyword_documents(
    texts: list[str], langs: list[str | None], settings: TopicSettings
) -> list[str]:
    """Keyword tokens per text, without stop words (spaCy's and ``extra_stop_words``) and
    without the ``brand_names``."""
    banned: dict[str | None, set[str]] = {}
    documents = []
    for text, lang in zip(texts, langs, strict=True):
        if lang not in banned:
            names = [*settings.brand_names, *settings.extra_stop_words.get(lang or "", [])]
            banned[lang] = {word for name in names for word in tokens(name, lang)}
        documents.append(" ".join(t for t in tokens(text, lang) if t not in banned[lang]))
    return documents


def _split_on_spaces(document: str) -> list[str]:
    return document.split()


def _initial_centres(
    reduced: np.ndarray, previous: np.ndarray | None, n_topics: int
) -> np.ndarray | str:
    """Previous centroids first (warm start keeps topics in place), then farthest points."""
    if previous is None or previous.shape[0] == 0:
        return "k-means++"
    centres = list(previous[:n_topics])
    while len(centres) < n_topics:
        distance = np.min(
            np.linalg.norm(reduced[:, None, :] - np.stack(centres)[None, :, :], axis=2), axis=1
        )
        centres.append(reduced[int(distance.argmax())])
    return np.stack(centres)


def _cluster(
    centred: np.ndarray,
    documents: list[str],
    settings: TopicSettings,
    previous_centroids: np.ndarray | None,
) -> tuple[np.ndarray, dict[int, list[str]]]:
    """PCA-reduced vectors clustered with k-means; cluster per row, keywords per cluster."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    count = centred.shape[0]
    n_topics = int(
        np.clip(round(count / settings.records_per_topic), settings.min_topics, settings.max_topics)
    )
    n_topics = max(1, min(n_topics, count // 2))
    dimensions = min(settings.reduced_dimensions, count - 1, centred.shape[1])
    reducer = PCA(n_components=dimensions, random_state=_KMEANS_SEED).fit(centred)
    reduced = reducer.transform(centred)
    initial = _initial_centres(
        reduced,
        reducer.transform(previous_centroids) if previous_centroids is not None else None,
        n_topics,
    )
    clusters = (
        KMeans(
            n_clusters=n_topics,
            init=initial,
            n_init=1 if isinstance(initial, np.ndarray) else 3,
            random_state=_KMEANS_SEED,
        )
        .fit_predict(reduced)
        .astype(np.int64)
    )
    return clusters, class_keywords(documents, clusters, settings.keywords_per_topic)


def class_keywords(
    documents: Sequence[str], clusters: np.ndarray, top_n: int
) -> dict[int, list[str]]:
    """The top words of each cluster by class-based TF-IDF (c-TF-IDF, as BERTopic defines it).

    A cluster's documents are joined into one; a word's weight is its L1-normalised frequency in
    the cluster times ``log(1 + A / f)``, with ``A`` the average number of words per cluster and
    ``f`` the word's frequency over all clusters. (BERTopic's own implementation is not imported:
    it pulls in UMAP, HDBSCAN and numba, ~330 MB and a long JIT, for this one formula.)

    Args:
        documents: Space-separated tokens of each record (see ``tokens``).
        clusters: Cluster of each record.
        top_n: Keywords per cluster.

    Returns:
        Cluster -> keywords, best first (empty when no record of it has a token).
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize

    labels = sorted({int(cluster) for cluster in clusters})
    if not any(documents):
        return {label: [] for label in labels}
    joined = [
        " ".join(doc for doc, cluster in zip(documents, clusters, strict=True) if cluster == label)
        for label in labels
    ]
    vectorizer = CountVectorizer(analyzer=_split_on_spaces)
    counts = vectorizer.fit_transform(joined).astype(np.float64)
    words = vectorizer.get_feature_names_out()
    frequency = np.asarray(counts.sum(axis=0)).ravel()
    average_words = int(counts.sum(axis=1).mean())
    scores = normalize(counts, norm="l1", axis=1).multiply(np.log(average_words / frequency + 1))
    scores = scores.tocsr()
    keywords: dict[int, list[str]] = {}
    for row, label in enumerate(labels):
        start, end = scores.indptr[row], scores.indptr[row + 1]
        values, columns = scores.data[start:end], scores.indices[start:end]
        best = np.argsort(-values, kind="stable")[:top_n]
        keywords[label] = [str(words[columns[i]]) for i in best if values[i] > 0]
    return keywords


def fit_topic_model(
    texts: list[str],
    langs: list[str | None],
    embeddings: np.ndarray,
    settings: TopicSettings,
    encoder_version: str,
    window_end: datetime,
    previous: TopicModel | None = None,
) -> TopicModel:
    """Fit topics on a window of records and give them ids stable w.r.t. ``previous``.

    Args:
        texts: Analysis texts of the window.
        langs: Their languages.
        embeddings: (N, dim) unit passage embeddings.
        settings: Topic settings.
        encoder_version: Version of the encoder behind ``embeddings``.
        window_end: Latest record time in the window.
        previous: The model in use, whose ids matched topics keep.

    Returns:
        The new model (not yet stored).

    Raises:
        ModelError: Fewer than two records.
    """
    if embeddings.shape[0] < 2:
        raise ModelError("a topic model needs at least two records; widen window_days")
    language_means = _language_means(embeddings, langs)
    centred = _unit(embeddings - np.stack([language_means[lang or _GLOBAL] for lang in langs]))
    clusters, cluster_keywords = _cluster(
        centred,
        _keyword_documents(texts, langs, settings),
        settings,
        previous.centroids if previous is not None else None,
    )
    cluster_values = sorted(set(clusters.tolist()), key=lambda c: -int((clusters == c).sum()))
    centroids = _unit(np.stack([centred[clusters == c].mean(axis=0) for c in cluster_values]))
    member_similarity = np.einsum(
        "ij,ij->i", centred, centroids[[cluster_values.index(c) for c in clusters]]
    )
    min_similarity = float(np.quantile(member_similarity, settings.outlier_quantile))
    ids = _stable_ids(centroids, previous, settings.match_min_similarity)
    assigned = np.array([ids[cluster_values.index(c)] for c in clusters])
    assigned = np.where(member_similarity >= min_similarity, assigned, UNASSIGNED)
    fitted_at = datetime.now(UTC)
    next_id = max([*ids, (previous.next_id - 1) if previous else -1]) + 1
    return TopicModel(
        version=f"topics-{fitted_at:%Y%m%dT%H%M%S%f}-{encoder_version[-12:]}",
        encoder_version=encoder_version,
        fitted_at=fitted_at,
        window_end=window_end,
        topic_ids=np.array(ids, dtype=np.int64),
        centroids=centroids.astype(np.float32),
        language_means={key: value.astype(np.float32) for key, value in language_means.items()},
        min_similarity=min_similarity,
        keywords={ids[i]: cluster_keywords.get(c, []) for i, c in enumerate(cluster_values)},
        sizes={topic: int((assigned == topic).sum()) for topic in ids},
        next_id=next_id,
        settings=settings.model_dump(),
    )


def _stable_ids(
    centroids: np.ndarray, previous: TopicModel | None, min_similarity: float
) -> list[int]:
    """Previous id for each centroid matched (Hungarian, cosine >= min), fresh ids otherwise."""
    from scipy.optimize import linear_sum_assignment

    ids: list[int | None] = [None] * centroids.shape[0]
    next_id = 0
    if previous is not None and previous.centroids.shape[0]:
        similarity = centroids @ previous.centroids.T
        rows, cols = linear_sum_assignment(-similarity)
        for row, col in zip(rows, cols, strict=True):
            if similarity[row, col] >= min_similarity:
                ids[row] = int(previous.topic_ids[col])
        next_id = previous.next_id
    result: list[int] = []
    for value in ids:
        if value is None:
            value = next_id
            next_id += 1
        result.append(value)
    return result


def save_topic_model(store: Store, model: TopicModel) -> None:
    """Store the model artifact and its ``topics`` rows.

    Args:
        store: The database.
        model: A fitted model.
    """
    store.upsert(schema.topic_models, [model.to_row()])
    store.upsert(
        schema.topics,
        [
            {
                "model_version": model.version,
                "topic_id": int(topic_id),
                "keywords": model.keywords.get(int(topic_id), []),
                "size": model.sizes.get(int(topic_id), 0),
                "auto_label": model.auto_label(int(topic_id)),
            }
            for topic_id in model.topic_ids
        ],
    )


def latest_topic_model(store: Store, encoder_version: str | None = None) -> TopicModel | None:
    """The most recently fitted model (for ``encoder_version`` when given).

    Args:
        store: The database.
        encoder_version: Restrict to models fitted on this encoder.

    Returns:
        The model, or None when none is stored.
    """
    row = latest_topic_model_row(store, encoder_version)
    return TopicModel.from_row(row) if row is not None else None


def topic_labels(store: Store) -> dict[int, str]:
    """Human labels by topic id.

    Args:
        store: The database.

    Returns:
        Topic id -> label.
    """
    return topic_label_map(store)


def rename_topic(store: Store, topic_id: int, label: str) -> None:
    """Give a topic a human label that survives refits.

    Args:
        store: The database.
        topic_id: Stable topic id (see ``feedback topics``).
        label: New label (stripped; must not be empty).

    Raises:
        ModelError: Unknown topic id or empty label.
    """
    label = label.strip()
    if not label:
        raise ModelError("a topic label cannot be empty; pass the new label in quotes")
    if not topic_exists(store, topic_id):
        raise ModelError(f"no topic with id {topic_id}; list the ids with `feedback topics`")
    store.upsert(
        schema.topic_labels,
        [{"topic_id": topic_id, "label": label, "updated_at": datetime.now(UTC)}],
    )


def _as_of(batch: pd.DataFrame, context: StageContext) -> datetime:
    given = context.options.get("as_of")
    if given is not None:
        moment = pd.Timestamp(given)
    elif "created_at" in batch.columns and batch["created_at"].notna().any():
        moment = pd.to_datetime(batch["created_at"], utc=True).max()
    else:
        return datetime.now(UTC)
    moment = moment.tz_localize(UTC) if moment.tzinfo is None else moment.tz_convert(UTC)
    return moment.to_pydatetime()


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _langs(frame: pd.DataFrame) -> list[str | None]:
    if "lang" not in frame.columns:
        return [None] * len(frame)
    return [lang if isinstance(lang, str) else None for lang in frame["lang"]]


class TopicStage(Stage):
    """Adds ``topic`` ({id, label, keywords}); refits on schedule; stores assignments.

    Args:
        config_dir: Folder with ``topics.yaml``.
        embedder: Embedding provider; None builds one over the run's store.

    Options read from the context: ``as_of`` (the run's reference time; default the newest
    ``created_at`` in the batch) and ``refit_topics`` (True forces a refit). A run that analyses
    in chunks calls ``prepare`` first: the refit, when due, happens there once, on (a sample of)
    the stored window, and every chunk is assigned with that model.
    """

    name = "topics"
    per_record = True

    def __init__(
        self,
        config_dir: str | os.PathLike[str] | None = None,
        embedder: TextEmbedder | None = None,
    ) -> None:
        self.settings = load_topics_config(config_dir).topics
        self.embedder = embedder
        self.model: TopicModel | None = None
        self._fitted_now = False
        self._prepared_for: str | None = None

    @property
    def version(self) -> str:
        """Version of the model used by the last run (``topics-none`` before any fit)."""
        return self.model.version if self.model is not None else "topics-none"

    def _refit_due(self, model: TopicModel | None, as_of: datetime, force: bool) -> bool:
        if model is None or force:
            return True
        return as_of - model.window_end >= timedelta(days=self.settings.refit_every_days)

    def _fit(
        self,
        batch: pd.DataFrame,
        embeddings: np.ndarray | None,
        embedder: TextEmbedder,
        context: StageContext,
        as_of: datetime,
        previous: TopicModel | None,
    ) -> TopicModel | None:
        start = as_of - timedelta(days=self.settings.window_days)
        stored = window_records(
            context.store, start, as_of, self.settings.max_fit_records, _KMEANS_SEED
        )
        stored = stored[~stored["id"].isin(set(batch["id"]))] if "id" in batch.columns else stored
        texts = [_text(value) for value in batch["text"]] + list(stored["text"])
        langs = _langs(batch) + _langs(stored)
        if len(texts) < self.settings.min_records_to_fit:
            return previous
        vectors = embedder.embed(list(stored["text"]))
        if embeddings is not None:
            vectors = np.concatenate([embeddings, vectors], axis=0)
        return fit_topic_model(
            texts, langs, vectors, self.settings, embedder.version, as_of, previous
        )

    def _settle_model(
        self,
        batch: pd.DataFrame,
        embeddings: np.ndarray | None,
        embedder: TextEmbedder,
        context: StageContext,
    ) -> None:
        """Load the latest model, refitting first when due."""
        previous = latest_topic_model(context.store, embedder.version)
        as_of = _as_of(batch, context)
        model = previous
        if self._refit_due(previous, as_of, bool(context.options.get("refit_topics"))):
            model = self._fit(batch, embeddings, embedder, context, as_of, previous)
        self._fitted_now = model is not None and model is not previous
        self.model = model

    def prepare(self, context: StageContext) -> None:
        """Settle the run's model once, before the first chunk (refit on the window when due).

        Args:
            context: Run context (``as_of``: the run's newest ``created_at``).
        """
        embedder = self.embedder or TextEmbedder(store=context.store)
        self._settle_model(pd.DataFrame(columns=["id", "text", "lang"]), None, embedder, context)
        if self._fitted_now and self.model is not None:
            # Stored before any chunk runs: chunk tasks in other processes load this model.
            save_topic_model(context.store, self.model)
            self._fitted_now = False
        self._prepared_for = context.run_id

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Add the ``topic`` column (refitting first when due).

        Args:
            batch: Records (``id``, ``text``, ``lang``, ``created_at``; optional ``embedding``).
            context: Run context.

        Returns:
            The batch with ``topic`` and ``topic_similarity``.
        """
        result = batch.copy()
        embedder = self.embedder or TextEmbedder(store=context.store)
        embeddings = embedder.batch_embeddings(result)
        if self._prepared_for != context.run_id:
            # Once per run: later chunks of the same run (``feedback analyze`` without a store
            # model fits on its first chunk) are assigned with the same model.
            self._settle_model(result, embeddings, embedder, context)
            self._prepared_for = context.run_id
        model = self.model
        if model is None:
            ids = np.full(len(result), UNASSIGNED, dtype=np.int64)
            similarities = np.zeros(len(result), dtype=np.float32)
            labels: dict[int, str] = {}
        else:
            ids, similarities = model.transform(embeddings, _langs(result))
            labels = topic_labels(context.store)
        result["topic"] = [
            {
                "id": int(topic_id),
                "label": labels.get(int(topic_id))
                or (model.auto_label(int(topic_id)) if model else UNASSIGNED_LABEL),
                "keywords": model.keywords.get(int(topic_id), []) if model else [],
            }
            for topic_id in ids
        ]
        result["topic_similarity"] = similarities.astype(float)
        return result

    def save(self, batch: pd.DataFrame, context: StageContext) -> int:
        """Store a freshly fitted model and one ``record_topics`` row per record.

        Args:
            batch: Output of :meth:`run`.
            context: Run context.

        Returns:
            ``record_topics`` rows written.
        """
        if self.model is None or "topic" not in batch.columns:
            return 0
        if self._fitted_now:
            save_topic_model(context.store, self.model)
            self._fitted_now = False
        now = datetime.now(UTC)
        rows = [
            {
                "record_id": record_id,
                "model_version": self.model.version,
                "topic_id": int(topic["id"]),
                "similarity": float(similarity),
                "run_id": context.run_id,
                "created_at": now,
            }
            for record_id, topic, similarity in zip(
                batch["id"], batch["topic"], batch["topic_similarity"], strict=True
            )
        ]
        context.store.upsert(schema.record_topics, rows)
        return len(rows)

    def restore(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Add the stored ``topic`` and ``topic_similarity`` (see ``Stage.restore``); labels
        and keywords as ``run`` gives them, from the run's model.

        Args:
            batch: Records (``id``).
            context: Run context (the stage is prepared for its run).

        Returns:
            The batch with ``topic`` and ``topic_similarity``.
        """
        result = batch.copy()
        ids = [str(record_id) for record_id in result["id"]]
        rows = stored_version_rows(stored_topic_rows(context.store, ids), self.version)
        found = {row.record_id: row for row in rows.itertuples()}
        model = self.model
        labels = topic_labels(context.store) if model is not None else {}
        topics, similarities = [], []
        for record_id in ids:
            row = found.get(record_id)
            topic_id = int(row.topic_id) if row is not None else UNASSIGNED
            topics.append(
                {
                    "id": topic_id,
                    "label": labels.get(topic_id)
                    or (model.auto_label(topic_id) if model else UNASSIGNED_LABEL),
                    "keywords": model.keywords.get(topic_id, []) if model else [],
                }
            )
            similarities.append(float(row.similarity) if row is not None else 0.0)
        result["topic"] = topics
        result["topic_similarity"] = similarities
        return result


def list_topics(store: Store, examples: int = 3) -> pd.DataFrame:
    """Topics of the latest model with size, net sentiment, languages and example texts.

    Size and the rest count each record once, with its latest topic assignment.

    Args:
        store: The database.
        examples: Example texts per topic (most central first).

    Returns:
        Columns ``id, label, size, net_sentiment, languages, examples`` (``-1`` = unassigned),
        largest first; empty when no model was fitted yet.
    """
    columns = ["id", "label", "size", "net_sentiment", "languages", "examples"]
    model = latest_topic_model(store)
    if model is None:
        return pd.DataFrame(columns=columns)
    assignments, sentiments = topic_members(store)
    labels = topic_labels(store)
    assignments = assignments.sort_values("created_at").drop_duplicates("record_id", keep="last")
    sentiments = sentiments.sort_values("created_at").drop_duplicates("record_id", keep="last")
    polarity = dict(zip(sentiments["record_id"], sentiments["label"], strict=True))
    rows = []
    for topic_id in [*model.topic_ids.tolist(), UNASSIGNED]:
        members = assignments[assignments["topic_id"] == topic_id]
        if topic_id == UNASSIGNED and members.empty:
            continue
        signs = [
            {"positive": 1, "negative": -1}.get(normalize_polarity(polarity.get(r)), 0)
            for r in members["record_id"]
            if r in polarity
        ]
        central = members.sort_values("similarity", ascending=False)["text"].head(examples)
        rows.append(
            {
                "id": int(topic_id),
                "label": labels.get(int(topic_id)) or model.auto_label(int(topic_id)),
                "size": len(members),
                "net_sentiment": round(100 * sum(signs) / len(signs)) if signs else None,
                "languages": members["lang"].fillna("?").value_counts().to_dict(),
                "examples": [str(text)[:160] for text in central],
            }
        )
    return pd.DataFrame(rows, columns=columns).sort_values(
        "size", ascending=False, ignore_index=True
    )
