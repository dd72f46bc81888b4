"""Churn-intent detection in tr/fa/ro/en from editable phrase patterns.

Patterns live in ``configs/flagging.yaml`` under ``churn_intent``. Each language has patterns per
kind of churn (``never_again``, ``cancellation``, ``competitor_switch``, ``leaving``) and
``not_churn`` guard patterns ("I would never leave", "asla vazgeçmem"): guard matches are masked
out of the text before churn patterns are searched, so a negated phrase never counts.

Text and patterns are compared in a *matching form*: ``casefold_for_matching`` (Turkish dotted
and dotless i, NFKC), then diacritics dropped (``cumpăr`` = ``cumpar``, ``geçiyorum`` =
``geciyorum``), Arabic ي/ك/ى written as Persian ی/ک/ی, the zero-width non-joiner removed and the
Persian verb prefixes ``می``/``نمی`` joined to their verb whether written with ZWNJ, a space or
nothing (``نمی‌کنم`` = ``نمی کنم`` = ``نمیکنم``). Patterns are folded the same way when loaded,
so they may be written with or without diacritics, but must be lower case.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.ingest.normalize import casefold_for_matching

__all__ = [
    "ChurnDetector",
    "ChurnKind",
    "ChurnLanguageRules",
    "ChurnMatch",
    "ChurnRules",
    "matching_form",
]

# Arabic yeh/alef maksura/kaf/teh marbuta and heh-with-yeh written the Persian way.
_ARABIC_TO_PERSIAN = str.maketrans(
    {
        "\u064a": "\u06cc",
        "\u0649": "\u06cc",
        "\u0643": "\u06a9",
        "\u06c0": "\u0647",
        "\u0629": "\u0647",
    }
)
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200c\u200b\u200d\u2060\ufeff"), None)
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018`\u00b4\u02bc", "'"))
_PERSIAN_SPELLING = _ARABIC_TO_PERSIAN | _ZERO_WIDTH | _APOSTROPHES
_PERSIAN_VERB_PREFIX = re.compile(r"(?<!\S)(ن?می)\s+(?=\S)")
_WHITESPACE = re.compile(r"\s+")
_MASK = " \x00 "


class _WithoutCombiningMarks(dict[int, int | None]):
    """A ``str.translate`` table deleting every character with a non-zero combining class,
    filled in per character on first sight (the whole table took ~0.5 s of every start)."""

    def __missing__(self, point: int) -> int | None:
        kept = None if unicodedata.combining(chr(point)) else point
        self[point] = kept
        return kept


_WITHOUT_COMBINING_MARKS = _WithoutCombiningMarks()


@lru_cache(maxsize=64)
def _fold_characters(text: str) -> str:
    """Character folding shared by texts and patterns (safe for regex syntax).

    Cached: ``ChurnDetector.find`` folds a text once per language, and the case folding before
    this step differs only for Turkish.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = decomposed.translate(_WITHOUT_COMBINING_MARKS)
    folded = unicodedata.normalize("NFC", stripped).replace("\u0131", "i")  # dotless i
    folded = folded.translate(_PERSIAN_SPELLING)
    folded = _PERSIAN_VERB_PREFIX.sub(r"\1", folded)
    return _WHITESPACE.sub(" ", folded).strip()


def matching_form(text: str, lang: str | None) -> str:
    """The form of ``text`` that churn patterns are matched against.

    Args:
        text: Normalized (PII-redacted) feedback text.
        lang: ISO 639-1 language code, or None when unknown.

    Returns:
        Case-folded, diacritic-free text with Persian spelling variants unified.
    """
    return _fold_characters(casefold_for_matching(text, lang))


class ChurnKind(StrEnum):
    """Why a text signals churn."""

    NEVER_AGAIN = "never_again"
    CANCELLATION = "cancellation"
    COMPETITOR_SWITCH = "competitor_switch"
    LEAVING = "leaving"


class ChurnLanguageRules(BaseModel):
    """Patterns of one language (regular expressions over the matching form)."""

    model_config = ConfigDict(extra="forbid")

    patterns: dict[ChurnKind, list[str]] = Field(
        description="churn kind -> regexes; any match means churn intent"
    )
    not_churn: list[str] = Field(
        default_factory=list,
        description="regexes of negated/benign phrases masked out before churn patterns run",
    )

    @field_validator("patterns")
    @classmethod
    def _check_patterns(cls, value: dict[ChurnKind, list[str]]) -> dict[ChurnKind, list[str]]:
        for kind, patterns in value.items():
            for pattern in patterns:
                _check_regex(pattern, f"patterns.{kind.value}")
        return value

    @field_validator("not_churn")
    @classmethod
    def _check_guards(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _check_regex(pattern, "not_churn")
        return value


def _check_regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"{where}: {pattern!r} is not a valid regular expression ({exc}); escape special "
            "characters such as ( ) [ ] ? with a backslash"
        ) from exc
    literal_text = re.sub(r"\\.", "", pattern)
    if literal_text != literal_text.lower():
        raise ValueError(
            f"{where}: {pattern!r} contains upper-case letters but texts are case-folded before "
            "matching; write the pattern in lower case"
        )


class ChurnRules(BaseModel):
    """The ``churn_intent`` section of ``flagging.yaml``."""

    model_config = ConfigDict(extra="forbid")

    languages: dict[str, ChurnLanguageRules]

    @model_validator(mode="after")
    def _at_least_one_language(self) -> ChurnRules:
        if not self.languages:
            raise ValueError(
                "churn_intent.languages is empty; add patterns for at least one language"
            )
        return self


@dataclass(frozen=True)
class ChurnMatch:
    """One churn phrase found in a text.

    Attributes:
        kind: Kind of churn signal.
        lang: Language whose pattern matched.
        phrase: The matched span of the matching form (lower case, no diacritics).
    """

    kind: ChurnKind
    lang: str
    phrase: str


@dataclass(frozen=True)
class _CompiledLanguage:
    patterns: tuple[tuple[ChurnKind, re.Pattern[str]], ...]
    not_churn: tuple[re.Pattern[str], ...]


class ChurnDetector:
    """Finds churn intent ("I will never buy again", "cancelling my subscription", switching to
    a competitor) in tr/fa/ro/en texts, honouring negation.

    Args:
        rules: Validated ``churn_intent`` rules.
    """

    def __init__(self, rules: ChurnRules) -> None:
        self._languages = {
            lang: _CompiledLanguage(
                patterns=tuple(
                    (kind, re.compile(_fold_characters(pattern)))
                    for kind, patterns in language.patterns.items()
                    for pattern in patterns
                ),
                not_churn=tuple(re.compile(_fold_characters(p)) for p in language.not_churn),
            )
            for lang, language in rules.languages.items()
        }

    def find(self, text: str, lang: str | None) -> list[ChurnMatch]:
        """All churn phrases in ``text``.

        Args:
            text: Feedback text (normalized or raw; it is folded here).
            lang: Language of the text, or None. Its patterns run first, then every other
                language's: short texts are often mis-detected, and the patterns are
                language-specific phrases that do not fire on other languages.

        Returns:
            The matches, the text's own language first; empty when there is no churn intent.
        """
        if not isinstance(text, str) or not text.strip():
            return []
        languages = sorted(self._languages, key=lambda language: language != lang)
        matches: list[ChurnMatch] = []
        for language in languages:
            compiled = self._languages[language]
            form = matching_form(text, language)
            for guard in compiled.not_churn:
                form = guard.sub(_MASK, form)
            for kind, pattern in compiled.patterns:
                found = pattern.search(form)
                if found:
                    matches.append(
                        ChurnMatch(kind=kind, lang=language, phrase=found.group(0).strip())
                    )
        return matches

    def has_churn_intent(self, text: str, lang: str | None) -> bool:
        """Whether ``text`` expresses churn intent (see ``find``).

        Args:
            text: Feedback text.
            lang: Language of the text, or None.

        Returns:
            True when at least one churn pattern matches outside a negated phrase.
        """
        return bool(self.find(text, lang))
