"""Training a candidate head on the shared sets plus the store's own labels.

The store's labels become one more training set, ``store_labels``, beside the shared sets (linked,
never copied), with a loss weight per row: ``HUMAN_WEIGHT`` for people's labels and
``RATING_WEIGHT`` for weak labels from star ratings (``record_rating_labels``), against 1 for the
shared rows; classes stay balanced within the set and every language keeps the same total weight.
Human labels of the held-back slice (``is_held_back``) never train: the gate scores on them.
People label among all three classes, so the store's set trains and is scored over all three
(``**Label choices:**`` in its ``SOURCE.md``) even when nobody chose neutral: a record labelled
negative is not neutral either.
Records in languages the model does not support are left out (they would form a language of
their own and take an equal share of the weight).

When the model in use is a stack (the committed one is), the candidate is one too: the new head,
the n-gram models of every language the store has labels in refitted on that language's shared
train rows plus those labels (same weights), the other languages' n-gram models kept, and every
language's blend chosen again on the dev splits for the new head (kept, the new head's small
drift cost Romanian 1.3 points of dev macro-F1 and the gate refused the candidate).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.encoder import Encoder
from models.sentiment._datasets import (
    DatasetSplit,
    discover_datasets,
    read_split,
    shared_datasets_dir,
)
from models.sentiment._features import FeatureCache
from models.sentiment._head import SentimentHead
from models.sentiment._ngram import (
    NgramMetadata,
    NgramModel,
    class_balanced_weights,
    fit_ngram_language,
    ngram_version,
)
from models.sentiment._stacking import (
    FLAG_NEGATIVE_THRESHOLD,
    NEGATIVE_RECALL_TARGET,
    StackedSentiment,
    StackMetadata,
    stack_version,
)
from models.sentiment.stack import fit_blends
from models.sentiment.store_models import (
    GateDecision,
    ModelScores,
    SentimentModel,
    is_held_back,
    model_head,
    promotion_gate,
    score_model,
)
from models.sentiment.train import (
    DatasetSelection,
    TrainingConfig,
    TrainingResult,
    select_datasets,
    train_head,
)
from pipelines.storage import Store, labelled_texts, record_rating_labels
from pipelines.text import SUPPORTED_LANGUAGES

__all__ = [
    "CUSTOM_STACK_PREFIX",
    "HUMAN_WEIGHT",
    "RATING_WEIGHT",
    "STORE_SET",
    "Candidate",
    "StoreLabelSets",
    "custom_stack",
    "store_label_sets",
    "train_candidate",
    "write_training_folder",
]

# Learning curve (models/cards/sentiment.md): warm-started candidates on 1,000 imported labels
# of an unseen set gained +2.8 points at weight 12 and at 24 (200 labels: +0.9 / +1.7).
HUMAN_WEIGHT = 12.0
RATING_WEIGHT = 0.25
STORE_SET = "store_labels"
CUSTOM_STACK_PREFIX = "sentiment-custom"
_LABEL_INDEX = {"negative": 0, "neutral": 1, "positive": 2}
_KIND_WEIGHT = {"human": HUMAN_WEIGHT, "rating": RATING_WEIGHT}


@dataclass
class StoreLabelSets:
    """The store's labels split for training.

    Attributes:
        train: Rows to train on: ``id, text, label (0/1/2), lang, weight, kind``.
        holdout: Held-back human labels: ``id, text, label, lang``.
    """

    train: pd.DataFrame
    holdout: pd.DataFrame


def store_label_sets(store: Store) -> StoreLabelSets:
    """The store's human and star-rating labels as training rows and the held-back slice.

    Args:
        store: The database (``record_rating_labels`` should have run).

    Returns:
        The two frames.
    """
    frame = labelled_texts(store, kinds=tuple(_KIND_WEIGHT))
    frame = frame[frame["lang"].isin(sorted(SUPPORTED_LANGUAGES))]
    rows = pd.DataFrame(
        {
            "id": frame["record_id"],
            "text": frame["text"],
            "label": frame["sentiment"].map(_LABEL_INDEX).astype("int64"),
            "lang": frame["lang"],
            "weight": frame["kind"].map(_KIND_WEIGHT).astype("float64"),
            "kind": frame["kind"],
        }
    )
    held = (rows["kind"] == "human") & rows["id"].map(is_held_back).astype(bool)
    holdout = rows.loc[held, ["id", "text", "label", "lang"]].reset_index(drop=True)
    return StoreLabelSets(rows[~held].reset_index(drop=True), holdout)


def write_training_folder(
    folder: str | os.PathLike[str], datasets_dir: str | os.PathLike[str], sets: StoreLabelSets
) -> Path:
    """A datasets folder: links to every shared set plus ``store_labels/data.jsonl``.

    Args:
        folder: An empty folder (e.g. temporary).
        datasets_dir: The shared sets.
        sets: The store's labels.

    Returns:
        ``folder``.
    """
    root = Path(folder)
    for info in discover_datasets(datasets_dir):
        target = root / info.name
        target.mkdir(parents=True, exist_ok=True)
        (target / "data.jsonl").symlink_to(info.path.resolve())
        source = info.path.parent / "SOURCE.md"
        if source.is_file():
            (target / "SOURCE.md").symlink_to(source.resolve())
    if not sets.train.empty:
        target = root / STORE_SET
        target.mkdir()
        labels = ("neg", "neu", "pos")
        with (target / "data.jsonl").open("w", encoding="utf-8") as handle:
            for row in sets.train.itertuples(index=False):
                line = {
                    "id": row.id,
                    "text": row.text,
                    "label": labels[row.label],
                    "split": "train",
                    "lang": row.lang,
                    "weight": row.weight,
                }
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        (target / "SOURCE.md").write_text(
            "**Licence (as stated):** the company's own feedback\n"
            "**Label choices:** negative, neutral, positive\n",
            encoding="utf-8",
        )
    return root


@dataclass
class Candidate:
    """A trained candidate and how it compares with the model in use.

    Attributes:
        model: The candidate: its head, or a stack over it when the model in use is a stack.
        training: What ``train_head`` returned (the head carries its metadata).
        scores: The candidate's dev and held-back scores.
        current: The model in use's scores on the same rows.
        gate: The promotion decision.
        trained_rows: Store labels trained on, per kind.
    """

    model: SentimentModel
    training: TrainingResult
    scores: ModelScores
    current: ModelScores
    gate: GateDecision
    trained_rows: dict[str, int]

    @property
    def head(self) -> SentimentHead:
        """The candidate's head."""
        return self.training.head

    def metrics(self) -> dict[str, object]:
        """What the registry records about it."""
        return {
            "candidate": vars(self.scores),
            "current": vars(self.current),
            "gate": {"passed": self.gate.passed, "reasons": self.gate.reasons},
            "store_rows": self.trained_rows,
            "dev": self.head.metadata.metrics,
        }


def _with_store_set(config: TrainingConfig) -> TrainingConfig:
    include = config.datasets.include
    selection = DatasetSelection(
        include=[*include, STORE_SET] if include else [], exclude=config.datasets.exclude
    )
    return config.model_copy(update={"datasets": selection})


def _language_of(split: DatasetSplit) -> str:
    return str(split.frame["lang"].mode().iloc[0])


def _refitted_ngram(
    ngram: NgramModel,
    shared: list[DatasetSplit],
    store: DatasetSplit,
    say: Callable[[str], None],
) -> NgramModel:
    """``ngram`` with every language the store has labels in refitted on its shared rows plus
    those labels (row weights as the head's; the others kept)."""
    weights = dict(ngram.weights)
    settings = ngram.metadata
    regularisation = float(settings.training.get("regularisation_C", 4.0))
    refitted: dict[str, int] = {}
    for lang in settings.languages:
        labelled = store.frame[store.frame["lang"] == lang].reset_index(drop=True)
        if labelled.empty:
            continue
        splits = [split for split in shared if _language_of(split) == lang]
        splits.append(DatasetSplit(store.info, "train", labelled))
        fitted = fit_ngram_language(
            [text for split in splits for text in split.frame["text"]],
            np.concatenate([split.labels for split in splits]),
            np.concatenate([np.full(len(split.frame), split.has_neutral) for split in splits]),
            class_balanced_weights(splits)
            * np.concatenate([split.frame["weight"].to_numpy() for split in splits]),
            settings,
            regularisation,
        )
        weights.update({f"{lang}.{name}": value for name, value in fitted.items()})
        refitted[lang] = len(labelled)
        say(f"n-gram model {lang}: refitted with {len(labelled)} store labels")
    if not refitted:
        return ngram
    metadata = NgramMetadata(**asdict(settings))
    metadata.version = f"sentiment-ngram-{ngram_version(weights)}"
    metadata.training = {**settings.training, "store_labels": refitted}
    return NgramModel(weights, metadata)


def custom_stack(
    current: StackedSentiment,
    head: SentimentHead,
    train: list[DatasetSplit],
    dev: list[DatasetSplit] | None = None,
    dev_features: list[np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
) -> StackedSentiment:
    """The stack over a candidate head, its n-gram models refitted where the store has labels.

    Args:
        current: The stack in use (feature settings, other languages' models, blends).
        head: The candidate head.
        train: Train splits of the selected shared sets plus the store's (``STORE_SET``).
        dev: Dev splits on which every language's blend is chosen again for the new head and
            n-gram models, as ``python -m models.sentiment.stack`` does (None: the current
            blends are kept).
        dev_features: e5 features of ``dev``, same order.
        progress: Called with one line per refitted language or blend.

    Returns:
        The candidate stack.
    """
    say = progress or (lambda _: None)
    shared = [split for split in train if split.info.name != STORE_SET and not split.frame.empty]
    store = next((split for split in train if split.info.name == STORE_SET), None)
    ngram = current.ngram if store is None else _refitted_ngram(current.ngram, shared, store, say)
    blends = current.metadata.languages
    metrics: dict[str, object] = {}
    training = current.metadata.training
    if dev is not None and dev_features is not None:
        blends, operating = fit_blends(
            head,
            ngram,
            dev,
            dev_features,
            float(training.get("negative_threshold", FLAG_NEGATIVE_THRESHOLD)),
            float(training.get("negative_recall_target", NEGATIVE_RECALL_TARGET)),
            say,
        )
        blends = {**current.metadata.languages, **blends}
        metrics = {"negative_operating_point": operating}
    return StackedSentiment(
        head,
        ngram,
        StackMetadata(
            version=stack_version(CUSTOM_STACK_PREFIX, head.version, ngram.version, blends),
            head=current.metadata.head,
            ngram=current.metadata.ngram,
            head_version=head.version,
            ngram_version=ngram.version,
            languages=blends,
            metrics=metrics,
            training={**training, "custom_from": current.version},
        ),
    )


def train_candidate(
    store: Store,
    config: TrainingConfig,
    encoder: Encoder,
    current: SentimentModel,
    datasets_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    cache_root: str | os.PathLike[str] | None = None,
) -> Candidate:
    """Train on the shared sets plus the store's labels, then score against the model in use.

    With ``custom.warm_start`` (the default) the candidate's head continues from ``current``'s
    for a few epochs, so it keeps what ``current`` does on the shared sets and learns the
    store's labels; otherwise it is trained from scratch like ``feedback train sentiment``.
    When ``current`` is a stack the candidate is :func:`custom_stack` over the new head.

    Args:
        store: The database with the labels (weak labels from stars are added first).
        config: Training configuration (``datasets`` selects shared sets; the store's set is
            always added).
        encoder: The encoder (the same version as ``current``'s).
        current: The model in use (promoted in the store, else the committed stack or head).
        datasets_dir: The shared sets; None uses ``shared_datasets_dir()``.
        progress: Called with one line per step.
        cache_root: Feature cache root (None: the default).

    Returns:
        The candidate with its scores and the gate's decision.
    """
    record_rating_labels(store)
    sets = store_label_sets(store)
    if not sets.train.empty:
        config = _with_store_set(config)
    cache = FeatureCache(encoder, cache_root, layers=config.encoder_layers)
    current_head = model_head(current)
    with tempfile.TemporaryDirectory(prefix="feedback-train-") as folder:
        write_training_folder(folder, datasets_dir or shared_datasets_dir(), sets)
        start = current_head if config.custom.warm_start else None
        training = train_head(config, cache, folder, progress, start)
        chosen = select_datasets(discover_datasets(folder), config.datasets)
        dev: list[DatasetSplit] = [
            split for info in chosen if not (split := read_split(info, "dev")).frame.empty
        ]
        model: SentimentModel = training.head
        if isinstance(current, StackedSentiment):
            train = [read_split(info, "train") for info in chosen]
            features = [cache.embeddings(split.frame["text"].tolist()) for split in dev]
            model = custom_stack(current, training.head, train, dev, features, progress)
    current_cache = FeatureCache(encoder, cache_root, layers=current_head.metadata.encoder_layers)
    scores = score_model(model, dev, sets.holdout, cache.embeddings)
    current_scores = score_model(current, dev, sets.holdout, current_cache.embeddings)
    return Candidate(
        model,
        training,
        scores,
        current_scores,
        promotion_gate(scores, current_scores),
        sets.train["kind"].value_counts().to_dict(),
    )
