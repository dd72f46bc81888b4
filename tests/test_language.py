"""Language identification on real text (../shared seeds and dev sets) and edge cases."""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipelines.ingest.language import (
    OTHER,
    LanguageGuess,
    LanguageIdentifier,
    detect_language,
    detect_languages,
)
from pipelines.ingest.normalize import normalize_text
from pipelines.text import split_sentences

MIN_LETTERS = 20


def _letters(text: str) -> int:
    return sum(char.isalpha() for char in text)


def test_seed_sentences_get_their_article_language(seed_texts: dict[str, str]) -> None:
    majorities = set()
    for name, article in seed_texts.items():
        sentences = [s for s in split_sentences(article, None) if _letters(s) >= MIN_LETTERS]
        guesses = detect_languages(normalize_text(sentence) for sentence in sentences)
        majority, hits = Counter(guess.lang for guess in guesses).most_common(1)[0]
        assert majority != OTHER, name
        assert hits / len(sentences) >= 0.95, (name, Counter(g.lang for g in guesses))
        majorities.add(majority)
    assert {"tr", "fa", "ro"} <= majorities


def test_accuracy_on_shared_dev_sets(shared_dir: Path) -> None:
    per_language: dict[str, list[str]] = defaultdict(list)
    for path in sorted((shared_dir / "datasets").glob("*/*/data.jsonl")):
        taken = 0
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                if row["split"] == "dev" and taken < 200:
                    per_language[row["lang"]].append(row["text"])
                    taken += 1
    assert set(per_language) == {"tr", "fa", "ro", "en"}
    for lang, texts in per_language.items():
        guesses = detect_languages(normalize_text(text) for text in texts)
        right = sum(guess.lang == lang for guess in guesses) / len(texts)
        assert right >= 0.97, (lang, right)


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("The delivery was late and the box was damaged.", "en"),
        ("Customer service never answered my emails.", "en"),
        ("Telefonul a venit repede si functioneaza foarte bine", "ro"),
        ("Produsul este foarte bun, recomand cu incredere", "ro"),
        ("Livrarea a durat două săptămâni, nu mai comand.", "ro"),
        ("Urunu cok begendim, kargo hizliydi", "tr"),
        ("Ürün kırık geldi, iade etmek istiyorum.", "tr"),
        ("این گوشي خيلي خوب است ولي باتريش ضعيفه", "fa"),  # Arabic yeh
        ("كيفيت غذا عالي بود", "fa"),  # Arabic kaf and yeh
        ("کاش full HD بود", "fa"),  # Persian with a Latin product term
    ],
)
def test_short_texts(text: str, lang: str) -> None:
    guess = detect_language(text)
    assert guess.lang == lang
    assert 0.6 <= guess.confidence <= 1.0


@pytest.mark.parametrize("text", ["👍👍🔥", "12345 !!!", "   ", "...", "Отличный товар", "很好"])
def test_no_letters_or_other_script_is_other(text: str) -> None:
    assert detect_language(text) == LanguageGuess(OTHER, 0.0)


@pytest.mark.parametrize(
    "text",
    [
        "Ich bin mit dem Kundenservice überhaupt nicht zufrieden, niemand hat geantwortet.",
        "La entrega fue un desastre, el paquete llegó roto y nadie responde.",
        "Le produit est arrivé cassé et le service client ne répond pas.",
    ],
)
def test_clear_foreign_sentences_are_other(text: str) -> None:
    guess = detect_language(text)
    assert guess.lang == OTHER
    assert guess.confidence < 0.01


def test_too_short_to_tell_is_other() -> None:
    assert detect_language("ok").lang == OTHER


def test_threshold_is_configurable() -> None:
    permissive = LanguageIdentifier(threshold=0.0)
    assert permissive.detect("ok").lang in {"tr", "ro", "en"}
    strict = LanguageIdentifier(threshold=1.0)
    assert strict.detect("Produsul este foarte bun, recomand").lang == OTHER


def test_rank_is_restricted_and_normalized() -> None:
    ranked, mass = LanguageIdentifier().rank("Produsul este foarte bun")
    assert {code for code, _ in ranked} == {"tr", "ro", "en"}
    assert sum(prob for _, prob in ranked) == pytest.approx(1.0)
    assert 0.0 < mass <= 1.0


def test_invalid_settings_fail_with_fix() -> None:
    with pytest.raises(ValueError, match="threshold"):
        LanguageIdentifier(threshold=1.5)
    with pytest.raises(ValueError, match="ISO 639-1"):
        LanguageIdentifier(languages=("tr", "zz")).detect("merhaba dünya")


def test_a_prefetched_model_answers_the_same_and_its_errors_reach_the_caller(
    capfd: pytest.CaptureFixture[str],
) -> None:
    texts = ["Kargo çok hızlı geldi", "Produsul este foarte bun", "The app keeps crashing"]
    prefetched = LanguageIdentifier()
    prefetched.prefetch()
    assert prefetched.detect_many(texts) == LanguageIdentifier().detect_many(texts)

    unknown = LanguageIdentifier(languages=("tr", "zz"))
    unknown.prefetch()
    for _ in range(2):  # raised where the model is used, every time, not on the thread
        with pytest.raises(ValueError, match="ISO 639-1"):
            unknown.detect("merhaba dünya")
    assert "Traceback" not in capfd.readouterr().err


def test_shared_identifier_is_thread_safe() -> None:
    identifier = LanguageIdentifier()
    texts = ["Kargo çok hızlı geldi, teşekkürler", "The app keeps crashing"] * 20
    expected = [identifier.detect(text) for text in texts]
    results: list[list[LanguageGuess]] = []

    def work() -> None:
        results.append(identifier.detect_many(texts))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4
