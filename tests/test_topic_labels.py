"""Topic keywords and labels leave out stop words (per language) and the configured brand names."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from pipelines.analysis.topics import TopicSettings, fit_topic_model

TEXTS = {
    "delivery": "Acme kargo ve teslimat çok geç geldi, bir hafta Acme",
    "refund": "Acme iade ve para iadesi hâlâ yok, bu bir rezalet Acme",
}


def _fit(brand_names: list[str], stop_words: dict[str, list[str]] | None = None) -> set[str]:
    rng = np.random.default_rng(7)
    centres = {name: rng.normal(size=64) for name in TEXTS}
    texts, vectors = [], []
    for name, text in TEXTS.items():
        for _ in range(20):
            texts.append(text)
            vectors.append(centres[name] + rng.normal(scale=0.05, size=64))
    embeddings = np.stack(vectors)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    settings = TopicSettings(
        min_topics=2,
        max_topics=2,
        records_per_topic=20,
        brand_names=brand_names,
        extra_stop_words=stop_words or {},
    )
    model = fit_topic_model(
        texts, ["tr"] * len(texts), embeddings, settings, "enc-1", datetime(2026, 11, 2, tzinfo=UTC)
    )
    words = {word for keywords in model.keywords.values() for word in keywords}
    labels = " ".join(model.auto_label(int(topic)) for topic in model.topic_ids)
    return words | set(labels.split(" / "))


def test_brand_names_and_stop_words_never_label_a_topic() -> None:
    unfiltered = _fit([])
    assert "acme" in unfiltered  # the brand is in every record: it would label every topic
    assert "bir" in unfiltered  # not in spaCy's Turkish stop words
    assert not {"ve", "çok", "bu"} & unfiltered  # spaCy's Turkish stop words
    filtered = _fit(["ACME"], {"tr": ["Bir"]})
    assert not any("acme" in word for word in filtered) and "bir" not in filtered
    assert {"kargo", "iade"} <= filtered
