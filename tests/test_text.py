"""Sentence splitting and keyword tokens with blank spaCy pipelines."""

from __future__ import annotations

import pytest

from pipelines.text import sentencizer, split_sentences, tokens


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        (
            "Ürün çok iyi. Kargo geç geldi! Neden?",
            "tr",
            ["Ürün çok iyi.", "Kargo geç geldi!", "Neden?"],
        ),
        (
            "سلام. غذا سرد بود؟ پیک دیر رسید!",
            "fa",
            ["سلام.", "غذا سرد بود؟", "پیک دیر رسید!"],
        ),
        (
            "غذا سرد بود.کیفیت خوب نبود؟بله",
            "fa",
            ["غذا سرد بود.", "کیفیت خوب نبود؟", "بله"],
        ),
        ("قیمت ۱۲.۵ تومان بود. گران است", "fa", ["قیمت ۱۲.۵ تومان بود.", "گران است"]),
        (
            "Produsul e bun. Livrarea a întârziat!",
            "ro",
            ["Produsul e bun.", "Livrarea a întârziat!"],
        ),
        (
            "Great phone. Battery costs 12.5 dollars? Yes",
            "en",
            ["Great phone.", "Battery costs 12.5 dollars?", "Yes"],
        ),
        ("Title line\nSentence one. Two", "de", ["Title line", "Sentence one.", "Two"]),
        ("", "en", []),
    ],
)
def test_split_sentences(text: str, lang: str, expected: list[str]) -> None:
    assert split_sentences(text, lang) == expected


def test_lines_without_inner_punctuation_skip_spacy_and_agree_with_it() -> None:
    """The shortcut for one-sentence lines returns what spaCy's sentencizer would."""
    from spacy.pipeline import Sentencizer

    from pipelines.text import _CLOSING_SENTENCE_ENDS, _MAYBE_SENTENCE_END

    punct_chars = Sentencizer.default_punct_chars
    assert all(_MAYBE_SENTENCE_END.fullmatch(char) for char in punct_chars)
    closing = [
        chr(point) for point in range(0x10000) if _CLOSING_SENTENCE_ENDS.fullmatch(chr(point))
    ]
    assert all(char.isspace() or char in punct_chars for char in closing)
    lines = [
        "Ürün çok iyi",
        "Kargo geç geldi!!",
        "  پیک دیر رسید؟ ",
        "می‌خواهم پس بدهم",
        "Livrarea a intarziat...",
        "the app keeps crashing at checkout 😡",
        "Great phone. Battery dies",
        "nu merge!! deloc",
        "quoted 'word' inside",
        "why?!",
        "ok!😀",
        "Kötü, çok kötü; (gerçekten) “berbat” - 5/10 %50",
        "nu, nu merge: deloc",
    ]
    for line in lines:
        for lang in ("tr", "fa", "ro", "en", None):
            spacy_pieces = [sentence.text.strip() for sentence in sentencizer(lang)(line).sents]
            assert split_sentences(line, lang) == [piece for piece in spacy_pieces if piece]


def test_sentencizer_is_cached_and_falls_back_to_xx() -> None:
    assert sentencizer("fa") is sentencizer("fa")
    assert sentencizer("de").lang == "xx"
    assert sentencizer(None) is sentencizer("de")
    assert sentencizer("tr").lang == "tr"


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("KARGO ve IŞIK sorunu [EMAIL] @user 123", "tr", ["kargo", "\u0131ş\u0131k", "sorunu"]),
        ("The battery is not good at all", "en", ["battery", "good"]),
        ("Bateria şi ecranul sunt foarte slabe", "ro", ["bateria", "ecranul", "slabe"]),
        ("من این گوشي را مي\u200cخواهم", "fa", ["گوشی", "می\u200cخواهم"]),
        ("See [URL:example.com] now!", "en", []),
    ],
)
def test_tokens(text: str, lang: str, expected: list[str]) -> None:
    assert tokens(text, lang) == expected
