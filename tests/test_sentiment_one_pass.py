"""One encoder pass for documents and their sentences (issue 14) gives the two-pass results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.encoder import Encoder, load_encoder
from models.sentiment import SentimentHead, StackedSentiment
from pipelines.analysis.sentiment import E5HeadBackend, SentimentStage
from pipelines.stages import StageContext
from pipelines.storage import Store
from pipelines.text import split_sentences

REPO_ROOT = Path(__file__).resolve().parent.parent
HEADS = REPO_ROOT / "models" / "heads"
RECORDS = [
    ("tr", "Kargo çok geç geldi. Ürün kırık çıktı. İade istiyorum!"),
    ("tr", "Harika bir ürün, çok memnun kaldım."),
    ("fa", "غذا سرد بود. ولی پیک مودب بود و سریع رسید."),
    ("ro", "Produs excelent. Livrarea a durat însă două săptămâni."),
    ("en", "Great flight. Lost my bag though. Great flight."),
    ("en", "Great flight."),  # equal to a sentence above: encoded once
    ("en", ""),
]


@pytest.fixture(scope="module")
def backend() -> E5HeadBackend:
    """Committed head and stack over the torch fp32 encoder (deterministic reference)."""
    head = SentimentHead.load(HEADS / "sentiment-e5.json")
    stack_path = HEADS / "sentiment-stack.json"
    stack = StackedSentiment.load(stack_path) if stack_path.is_file() else None
    return E5HeadBackend(load_encoder(dtype="fp32", engine="torch"), head, None, stack)


def _counting(encoder: Encoder, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real = encoder.encode

    def encode(texts: Sequence[str], *args: object, **kwargs: object) -> np.ndarray:
        calls.append(list(texts))
        return real(texts, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(encoder, "encode", encode)
    return calls


def test_one_pass_equals_two_passes(
    backend: E5HeadBackend, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = pd.DataFrame(
        {
            "id": [f"r{index}" for index in range(len(RECORDS))],
            "lang": [lang for lang, _ in RECORDS],
            "text": [text for _, text in RECORDS],
        }
    )
    texts = list(batch["text"])
    langs = list(batch["lang"])
    stage = SentimentStage(backend)

    # Two passes, as before issue 14: documents, then the sentences of multi-sentence texts.
    doc_proba, doc_vectors = backend.predict_documents(texts, langs, None)
    pending = [
        (index, sentence)
        for index, text in enumerate(texts)
        for sentence in split_sentences(text, langs[index])
        if split_sentences(text, langs[index]) != [text]
    ]
    sentence_proba, sentence_vectors = backend.predict_with_embeddings(
        [sentence for _, sentence in pending], [langs[index] for index, _ in pending]
    )

    calls = _counting(backend.encoder, monkeypatch)
    result = stage.run(batch, StageContext(store, "run-1"))
    assert len(calls) == 1, "documents and sentences must share one encode call"
    encoded = calls[0]
    assert len(encoded) == len(set(encoded)) < len(texts) + len(pending)
    assert "Great flight." in encoded

    np.testing.assert_allclose(
        np.array(
            [
                [s[label] for label in ("negative", "neutral", "positive")]
                for s in result["sentiment_scores"]
            ]
        ),
        doc_proba,
        atol=1e-5,
    )
    np.testing.assert_allclose(np.stack(result["embedding"]), doc_vectors, atol=1e-5)
    flat = [
        (entry, vectors[position])
        for index, (entries, vectors) in enumerate(
            zip(result["sentences"], result["sentence_embeddings"], strict=True)
        )
        if [entry["text"] for entry in entries] != [texts[index]]
        for position, entry in enumerate(entries)
    ]
    assert [entry["text"] for entry, _ in flat] == [sentence for _, sentence in pending]
    np.testing.assert_allclose(
        [
            [entry["sentiment_scores"][label] for label in ("negative", "neutral", "positive")]
            for entry, _ in flat
        ],
        sentence_proba,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        np.stack([vector for _, vector in flat]), sentence_vectors, atol=1e-5
    )
    assert list(result["sentiment"]) == [
        ("negative", "neutral", "positive")[index] for index in doc_proba.argmax(axis=1)
    ]

    # Cached documents are not encoded again; their sentences still are, in one call.
    calls.clear()
    again = stage.run(batch, StageContext(store, "run-2"))
    assert len(calls) == 1 and set(calls[0]) == {sentence for _, sentence in pending}
    assert list(again["sentiment"]) == list(result["sentiment"])
