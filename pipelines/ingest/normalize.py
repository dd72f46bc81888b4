"""Text normalization for analysis (not for storage of the original): one canonical form per text.

What ``normalize_text`` does, in order:

1. Unicode NFC.
2. HTML: comments and tags (``<b>``, ``</p>``, ``<br/>``...) are replaced by a space, then
   entities (``&amp;``, ``&#1740;``) are unescaped. Only things shaped like tags are removed, so
   ``a < b`` and ``<3`` survive.
3. URLs (``http(s)://...`` and ``www....``) become ``[URL:host]``: the host is kept (lowercased,
   without ``www.``) because which site a customer mentions can matter, the path and query are
   dropped (tracking ids, tokens, sometimes e-mail addresses). The bracket form cannot be taken
   for an HTML tag, so normalizing twice gives the same text.
4. @mentions become ``@user`` (the handle is a person's name, not content); e-mail addresses
   are left for :mod:`pipelines.ingest.redact`.
5. Invisible characters are removed: control characters, zero-width space, bidi marks and
   isolates, BOM, soft hyphen. ZWNJ (U+200C) is kept where Persian needs it, i.e. between
   two letters; doubled ZWNJ becomes one and a ZWNJ at a word edge is removed. ZWJ is kept
   (emoji sequences).
6. Persian/Arabic: Arabic yeh ``ي`` and alef maksura ``ى`` -> Farsi yeh ``ی``, Arabic kaf
   ``ك`` -> keheh ``ک``, tatweel removed, Persian and Arabic-Indic digits and the Arabic decimal
   and thousands separators -> ASCII.
7. Romanian: s/t with cedilla -> s/t with comma below, but only for Romanian text, because
   Turkish ``ş`` is the same code point as the Romanian cedilla form (see ``normalize_text``).
8. Whitespace runs (newlines included) become one space; the ends are stripped.
"""

from __future__ import annotations

import html
import re
import unicodedata

__all__ = ["URL_PLACEHOLDER_PREFIX", "casefold_for_matching", "normalize_text"]

URL_PLACEHOLDER_PREFIX = "[URL:"
_MENTION_PLACEHOLDER = "@user"
_ZWNJ = "\u200c"

_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'\[\]]+", re.IGNORECASE)
_URL_TRAILING_PUNCT = ".,;:!?)»\u201d\u2019'\""
_MENTION = re.compile(r"(?<![\w.@])@\w[\w.]*\w|(?<![\w.@])@\w")
_WHITESPACE = re.compile(r"\s+")
_ZWNJ_RUN = re.compile(_ZWNJ + "{2,}")

_INVISIBLE = dict.fromkeys(
    [
        0x00AD,  # soft hyphen
        0x200B,  # zero-width space
        0x200E,  # left-to-right mark
        0x200F,  # right-to-left mark
        0x2060,  # word joiner
        0xFEFF,  # byte order mark / zero-width no-break space
        0x0640,  # Arabic tatweel (kashida)
        *range(0x202A, 0x202F),  # bidi embeddings and overrides
        *range(0x2066, 0x206A),  # bidi isolates
    ]
)

_PERSIAN_LETTERS = str.maketrans({"\u064a": "\u06cc", "\u0649": "\u06cc", "\u0643": "\u06a9"})
_DIGITS = str.maketrans(
    {
        **{chr(0x06F0 + value): str(value) for value in range(10)},
        **{chr(0x0660 + value): str(value) for value in range(10)},
        "\u066b": ".",  # Arabic decimal separator
        "\u066c": ",",  # Arabic thousands separator
    }
)
_ROMANIAN_COMMA_BELOW = str.maketrans(
    {"\u015f": "\u0219", "\u015e": "\u0218", "\u0163": "\u021b", "\u0162": "\u021a"}
)
_ROMANIAN_ONLY_LETTERS = frozenset("ăĂţŢșȘțȚ")
_TURKISH_ONLY_LETTERS = frozenset("ğĞ\u0131İçÇöÖüÜ")
_DOTLESS_TURKIC = frozenset({"tr", "az"})
_DOTLESS_I = "\u0131"


def _replace_url(match: re.Match[str]) -> str:
    url = match.group(0)
    stripped = url.rstrip(_URL_TRAILING_PUNCT)
    trailing = url[len(stripped) :]
    without_scheme = re.sub(r"^https?://", "", stripped, flags=re.IGNORECASE)
    host = re.split(r"[/?#]", without_scheme, maxsplit=1)[0]
    host = host.rsplit("@", 1)[-1].split(":", 1)[0].lower()
    host = host.removeprefix("www.")
    return f"{URL_PLACEHOLDER_PREFIX}{host}]{trailing}" if host else trailing


def _strip_html(text: str) -> str:
    without_tags = _HTML_TAG.sub(" ", _HTML_COMMENT.sub(" ", text))
    return html.unescape(without_tags)


def _remove_invisible(text: str) -> str:
    text = text.translate(_INVISIBLE)
    return "".join(char for char in text if char.isspace() or unicodedata.category(char) != "Cc")


def _is_letter_or_mark(char: str) -> bool:
    return unicodedata.category(char)[0] in "LM"


def _clean_zwnj(text: str) -> str:
    if _ZWNJ not in text:
        return text
    text = _ZWNJ_RUN.sub(_ZWNJ, text)
    kept: list[str] = []
    for index, char in enumerate(text):
        if char == _ZWNJ:
            before = text[index - 1] if index > 0 else ""
            after = text[index + 1] if index + 1 < len(text) else ""
            if not (before and after and _is_letter_or_mark(before) and _is_letter_or_mark(after)):
                continue
        kept.append(char)
    return "".join(kept)


def _looks_romanian(text: str) -> bool:
    letters = set(text)
    return bool(letters & _ROMANIAN_ONLY_LETTERS) and not letters & _TURKISH_ONLY_LETTERS


def normalize_text(text: str, lang: str | None = None) -> str:
    """Return the canonical analysis form of ``text`` (see the module docstring for the steps).

    Pure and idempotent: ``normalize_text(normalize_text(t)) == normalize_text(t)``.

    Args:
        text: Raw feedback text, possibly with HTML, URLs, mentions and mixed scripts.
        lang: Language code when already known. Cedilla ``ş``/``ţ`` are turned into the
            Romanian comma-below letters only when ``lang == "ro"``, or when ``lang`` is None and
            the text has a Romanian-only letter (``ă``, ``ţ``, ``ș``, ``ț``) and no Turkish-only
            letter (``ğ``, dotless i, ``İ``, ``ç``, ``ö``, ``ü``), so Turkish ``ş`` is never
            changed.

    Returns:
        The normalized text; empty when nothing but markup or whitespace was given.
    """
    text = unicodedata.normalize("NFC", text)
    text = _strip_html(text)
    text = unicodedata.normalize("NFC", text)
    text = _URL.sub(_replace_url, text)
    text = _MENTION.sub(_MENTION_PLACEHOLDER, text)
    text = _remove_invisible(text)
    text = text.translate(_PERSIAN_LETTERS).translate(_DIGITS)
    if lang == "ro" or (lang is None and _looks_romanian(text)):
        text = text.translate(_ROMANIAN_COMMA_BELOW)
    text = _WHITESPACE.sub(" ", text).strip()
    return _clean_zwnj(text)


def casefold_for_matching(text: str, lang: str | None = None) -> str:
    """Case- and variant-insensitive form of ``text`` for keyword matching.

    Turkish and Azeri map ``İ`` -> ``i`` and ``I`` -> dotless i (U+0131) before folding, so
    ``İSTANBUL`` -> ``istanbul`` and ``IŞIK`` keeps its dotless i; other languages use
    ``str.casefold``. Persian
    letter variants (``ي``, ``ى``, ``ك``) and digits are unified too, and for Romanian the
    cedilla letters become comma-below, so keywords match however they were typed.

    Args:
        text: Text or keyword to fold.
        lang: Language code (``tr``, ``az``, ``fa``, ``ro``, ``en``...) or None when unknown.

    Returns:
        The folded text.
    """
    text = unicodedata.normalize("NFC", text).translate(_PERSIAN_LETTERS).translate(_DIGITS)
    if lang == "ro":
        text = text.translate(_ROMANIAN_COMMA_BELOW)
    if lang in _DOTLESS_TURKIC:
        text = text.replace("İ", "i").replace("I", _DOTLESS_I)
    return text.casefold()
