"""Sentiment heads over frozen e5 embeddings: labelled sets, embedding cache, the head artifact.

Training lives in :mod:`models.sentiment.train` (imported on demand: it needs torch).

Typical use::

    from models.sentiment import SentimentHead

    head = SentimentHead.load("models/heads/sentiment-e5.json")
    proba = head.predict_proba(embeddings)  # (N, 3) negative/neutral/positive
"""

from __future__ import annotations

from models.sentiment._datasets import (
    LABELS,
    SHARED_DIR_ENV,
    DatasetInfo,
    DatasetSplit,
    analysis_text,
    discover_datasets,
    read_split,
    shared_datasets_dir,
)
from models.sentiment._features import FeatureCache
from models.sentiment._head import HeadMetadata, SentimentHead, binary_proba, softmax
from models.sentiment._ngram import NgramMetadata, NgramModel, hashed_features
from models.sentiment._stacking import LanguageBlend, StackedSentiment, StackMetadata

__all__ = [
    "LABELS",
    "SHARED_DIR_ENV",
    "DatasetInfo",
    "DatasetSplit",
    "FeatureCache",
    "HeadMetadata",
    "LanguageBlend",
    "NgramMetadata",
    "NgramModel",
    "SentimentHead",
    "StackMetadata",
    "StackedSentiment",
    "analysis_text",
    "binary_proba",
    "discover_datasets",
    "hashed_features",
    "read_split",
    "shared_datasets_dir",
    "softmax",
]
