"""spaCy helpers (blank pipelines only, nothing is downloaded): sentences and keyword tokens.

``tr``, ``fa``, ``ro`` and ``en`` get their own blank spaCy language (tokenizer exceptions and
stop words); any other code falls back to the multi-language ``xx`` pipeline, which has no
stop words. spaCy is imported on the first pipeline built, so importing this module stays cheap
for commands that never split text, and without torch (see :func:`_import_spacy`).
"""

from __future__ import annotations

import re
import sys
import threading
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

from pipelines.ingest.normalize import casefold_for_matching

if TYPE_CHECKING:
    from spacy.language import Language

__all__ = [
    "SUPPORTED_LANGUAGES",
    "SupportedLanguage",
    "sentencizer",
    "split_sentences",
    "tokens",
]

SUPPORTED_LANGUAGES: frozenset[str] = frozenset({"tr", "fa", "ro", "en"})
_FALLBACK_LANGUAGE = "xx"


def _supported(code: str) -> str:
    if code not in SUPPORTED_LANGUAGES:
        raise ValueError(
            f"unknown language {code!r}; use one of {', '.join(sorted(SUPPORTED_LANGUAGES))}"
        )
    return code


SupportedLanguage = Annotated[str, AfterValidator(_supported)]
"""A language code of ``SUPPORTED_LANGUAGES``, for configuration keys (fails closed)."""
_MIN_TOKEN_LENGTH = 2

_PERSIAN_DIGITS = str.maketrans(
    {chr(0x06F0 + value): str(value) for value in range(10)}
    | {chr(0x0660 + value): str(value) for value in range(10)}
)
# spaCy's tokenizer keeps "بود.کیفیت" and "خوبی؟من" as one token, so no sentence boundary is
# seen; a space is inserted after the punctuation before an Arabic-script letter.
_GLUED_ARABIC_SENTENCE_END = re.compile(r"[.!?؟](?=[\u0620-\u064a\u066e-\u06d3\u06fa-\u06ff])")
_LINE_BREAKS = re.compile(r"\s*\n\s*")
# Every character the sentencizer may end a sentence after is in this class (checked against
# spaCy's list in tests/test_text.py): anything but word characters, spaces and punctuation that
# never ends a sentence. A line with none of them before its closing run of common sentence
# ends is one sentence.
_MAYBE_SENTENCE_END = re.compile(
    r"[^\w\s,;:'\"()\[\]{}\-\u2013\u2014\u00ab\u00bb\u201c\u201d\u201e\u2018\u2019/&%+*#@…]"
)
_CLOSING_SENTENCE_ENDS = re.compile(r"[!.?\u061f\u06d4\u3002\uff01\uff1f\s]+$")
# Placeholders written by normalize/redact ("[URL:example.com]", "[EMAIL]", "@user").
_PLACEHOLDER = re.compile(r"\[[A-Z_]+(?::[^\]\s]*)?\]|(?<!\w)@user\b")

_pipelines_lock = threading.Lock()


def _pipeline_language(lang: str | None) -> str:
    return lang if lang in SUPPORTED_LANGUAGES else _FALLBACK_LANGUAGE


def _import_spacy() -> ModuleType:
    """spaCy, imported without torch when torch is not loaded yet.

    thinc (under spaCy) imports torch when it is installed, for layers blank pipelines never
    use: about 180 MB and a second or more on two cores, for a process whose encoder runs on
    OpenVINO. Marking torch absent while spaCy loads makes thinc record that it has no torch;
    torch itself stays importable afterwards.
    """
    if "spacy" in sys.modules or "torch" in sys.modules:
        import spacy

        return spacy
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import spacy
    finally:
        if sys.modules.get("torch") is None:
            del sys.modules["torch"]
    return spacy


@lru_cache(maxsize=8)
def _cached_sentencizer(pipeline_lang: str) -> Language:
    nlp = _import_spacy().blank(pipeline_lang)
    nlp.add_pipe("sentencizer")
    return nlp


def sentencizer(lang: str | None) -> Language:
    """Blank spaCy pipeline with a rule-based ``sentencizer`` for ``lang``, built once.

    Args:
        lang: ``tr``, ``fa``, ``ro`` or ``en``; anything else (or None) gives ``xx``.

    Returns:
        The cached pipeline (shared, do not modify).
    """
    with _pipelines_lock:
        return _cached_sentencizer(_pipeline_language(lang))


@lru_cache(maxsize=8)
def _stop_words(pipeline_lang: str) -> frozenset[str]:
    words = sentencizer(pipeline_lang).Defaults.stop_words
    return frozenset(casefold_for_matching(word, pipeline_lang) for word in words)


def _prepared_with_origins(line: str) -> tuple[str, list[int]]:
    """Persian digits as ASCII and spaces after glued sentence ends, with original offsets."""
    translated = line.translate(_PERSIAN_DIGITS)
    insert_after = {match.start() for match in _GLUED_ARABIC_SENTENCE_END.finditer(translated)}
    chars: list[str] = []
    origins: list[int] = []
    for index, char in enumerate(translated):
        chars.append(char)
        origins.append(index)
        if index in insert_after:
            chars.append(" ")
            origins.append(index)
    return "".join(chars), origins


def split_sentences(text: str, lang: str | None) -> list[str]:
    """Split ``text`` into sentences.

    Line breaks always end a sentence (titles and list items often have no final
    punctuation); within a line spaCy's sentencizer splits after ``.``, ``!``, ``?``, ``؟``
    and the other terminal punctuation it knows. Persian sentences glued to the next one
    (``بود.کیفیت``) are split as well, and decimals written in Persian digits are not.

    Args:
        text: Raw or normalized text.
        lang: Language code (see :func:`sentencizer`).

    Returns:
        The sentences as substrings of ``text``, stripped, empty ones left out.
    """
    sentences: list[str] = []
    for line in _LINE_BREAKS.split(text):
        stripped = line.strip()
        if not stripped:
            continue
        if not _MAYBE_SENTENCE_END.search(_CLOSING_SENTENCE_ENDS.sub("", stripped)):
            sentences.append(stripped)
            continue
        prepared, origins = _prepared_with_origins(line)
        for sentence in sentencizer(lang)(prepared).sents:
            start = origins[sentence.start_char]
            end = origins[sentence.end_char - 1] + 1
            piece = line[start:end].strip()
            if piece:
                sentences.append(piece)
    return sentences


def tokens(text: str, lang: str | None) -> list[str]:
    """Keyword tokens of ``text``: lowercased, without stop words, punctuation or numbers.

    Lowercasing is language-aware (Turkish ``I`` -> dotless i); stop words are spaCy's list for
    the language (none for other languages), matched after the same folding. Tokens without
    a letter, shorter than two characters, and pipeline placeholders (``[EMAIL]``,
    ``[URL:host]``, ``@user``) are left out.

    Args:
        text: Raw or normalized text.
        lang: Language code (see :func:`sentencizer`).

    Returns:
        The tokens in text order (repeats kept).
    """
    pipeline_lang = _pipeline_language(lang)
    stop_words = _stop_words(pipeline_lang)
    doc = sentencizer(pipeline_lang).make_doc(_PLACEHOLDER.sub(" ", text))
    kept: list[str] = []
    for token in doc:
        folded = casefold_for_matching(token.text, pipeline_lang)
        if (
            len(folded) >= _MIN_TOKEN_LENGTH
            and any(char.isalpha() for char in folded)
            and folded not in stop_words
        ):
            kept.append(folded)
    return kept
