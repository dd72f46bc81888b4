"""A tiny stacked sentiment model (n-gram models fitted on nine sentences) for tests."""

from __future__ import annotations

import numpy as np

from models.sentiment import (
    HeadMetadata,
    LanguageBlend,
    NgramMetadata,
    NgramModel,
    SentimentHead,
    StackedSentiment,
    StackMetadata,
)
from models.sentiment._ngram import fit_ngram_language

__all__ = ["TINY_TEXTS", "tiny_head", "tiny_ngram", "tiny_stack"]

TINY_TEXTS = {
    0: ["terrible service, never again", "awful, it broke", "bad support and rude staff"],
    1: ["the parcel came on tuesday", "i ordered two of them", "the shop opens at nine"],
    2: ["wonderful, works perfectly", "great support, thank you", "lovely staff, great food"],
}


def tiny_ngram(lang: str = "en") -> NgramModel:
    """N-gram models of one language fitted on :data:`TINY_TEXTS`."""
    texts = [text for label in (0, 1, 2) for text in TINY_TEXTS[label]]
    labels = np.repeat([0, 1, 2], 3)
    metadata = NgramMetadata(version="ngram-test", char_features=1 << 10, word_features=1 << 8)
    fitted = fit_ngram_language(
        texts, labels, np.ones(len(texts), dtype=bool), np.ones(len(texts)), metadata, 10.0
    )
    metadata.languages = [lang]
    return NgramModel({f"{lang}.{name}": value for name, value in fitted.items()}, metadata)


def tiny_head() -> SentimentHead:
    """A linear head of random weights over 384-d features."""
    generator = np.random.default_rng(3)
    weights = {"out.weight": generator.normal(size=(3, 384)), "out.bias": np.zeros(3)}
    return SentimentHead(weights, HeadMetadata(version="head-test", encoder_version="enc"))


def tiny_stack(
    blend: LanguageBlend, head: SentimentHead | None = None, version: str = "stack-test"
) -> StackedSentiment:
    """``head`` (default :func:`tiny_head`) blended with :func:`tiny_ngram` for English."""
    head = head or tiny_head()
    ngram = tiny_ngram()
    metadata = StackMetadata(
        version=version,
        head="h.json",
        ngram="n.json",
        head_version=head.version,
        ngram_version=ngram.version,
        languages={"en": blend.__dict__},
    )
    return StackedSentiment(head, ngram, metadata)
